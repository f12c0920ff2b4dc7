"""Prefect task: train or fine-tune a classifier on real images, reconstructions or GAN views (Eq. 8).

Chai et al. (CVPR 2021), Sec. 3.4 / Eq. 8: a classifier trained on a mixture of real images
and GAN images of their inverted latents (G(w*) or perturbed G(w̃)) is more consistent with
the views it is later ensembled over.

Data comes through storage only:

- a **manifest** (Parquet; ``source="real"`` only): images are loaded and aligned
  (:func:`tasks.store_io.load_aligned`) and kept in memory as uint8 (N·3·R² bytes);
  unreadable images are skipped and listed in the report.
- a **latent store**: labels and splits from its ``manifest.parquet``; latents ``w`` of the
  done images; real images from ``images/aligned`` (read lazily, one batch ahead), else
  re-aligned from the manifest paths (:func:`tasks.store_io.read_originals`). GAN sources need
  the generator the store was inverted with (checked by content hash); PCA views read the
  store's PCA statistics (:func:`tasks.pca.load_pca`).
- with ``views.real_source: photo`` (the authors' cars) the real images are the raw photos of
  the manifest paths, read at full size by the render stage's photo loader
  (:func:`tasks.store_io.load_photos`) and cropped per sample (``imtrain``; val: ``imval``).

Outputs: the classifier in the project's format at ``out``, a training checkpoint
``<out>.ckpt`` (resumable) and a report ``<out>.train.json`` (configs, data identity,
history). :func:`run_train_classifier` is the stage's one body (``ganviews train-classifier``
and the pipeline); ``train_classifier_task`` wraps it for Prefect and
:func:`pipeline_arguments` maps the pipeline config onto its arguments.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from ganviews.classifiers.batches import SourceConfig, make_batches
from ganviews.classifiers.checkpoints import (
    load_backbone_weights,
    load_classifier,
    save_classifier,
)
from ganviews.classifiers.external import TORCHSCRIPT
from ganviews.classifiers.model import ClassifierConfig, build_classifier
from ganviews.classifiers.training import TrainConfig, classifier_for_labels, train_classifier
from ganviews.core.config import from_dict, to_dict
from ganviews.core.errors import ConfigError
from ganviews.core.images import signed_to_uint8
from ganviews.core.runtime import resolve_device, set_numerics_policy
from ganviews.inversion.align import AlignConfig
from storage.arrays import ALIGNED
from storage.identity import code_version
from storage.latents import LatentStore
from storage.manifest import manifest_sha256, read_manifest
from tasks.pipeline_config import PCAConfig, PipelineConfig, training_views
from tasks.run_state import write_json
from tasks.shard_runner import run_logger
from tasks.store_io import load_aligned, load_photos, read_originals, read_photos

log = logging.getLogger(__name__)


@dataclass
class Split:
    """One split's data as the batch sources take it (tensors or index readers)."""

    ids: list[str]  # image ids
    labels: np.ndarray  # [n] int64
    images: Any = None  # [n, 3, R, R] uint8 tensor or reader(indices) → rows (photo: uint8
    # [3, H, W] list or reader → list); None = none
    ws: Any = None  # reader(indices) → [k, L, C] float32; None = no latents


def _label_column(manifest, task_name: str, where: str) -> np.ndarray:
    labels = list(manifest.attrs.get("label_columns") or [])
    if task_name not in labels:
        raise ConfigError(
            f"task: {task_name!r} is not a label column of {where} (label columns: {labels})"
        )
    return manifest[task_name].to_numpy()


def _manifest_split(
    path: Path, task_name: str, split: str, align: AlignConfig, *, photo: bool, image_root: Path
) -> tuple[Split, dict[str, str]]:
    """Real images of one split of a manifest, aligned and held as uint8 (failures skipped);
    ``photo``: the full-size photos instead, held as uint8 [3, H, W] (about as many bytes)."""
    manifest = read_manifest(path)
    labels = _label_column(manifest, task_name, str(path))
    rows = np.flatnonzero(manifest["split"].to_numpy() == split)
    if photo:
        ok, images, reasons = load_photos(manifest.iloc[rows], None, image_root=image_root)
    else:
        ok, pairs, reasons = load_aligned(manifest.iloc[rows], align, image_root=image_root)
        images = (
            torch.from_numpy(signed_to_uint8(np.stack([p[0] for p in pairs]))) if pairs else None
        )
    failed = {str(manifest["image_id"].iloc[rows[pos]]): why for pos, why in reasons.items()}
    if failed:
        log.warning("%s split %s: skipped %d unreadable images", path, split, len(failed))
    kept = rows[ok]
    ids = manifest["image_id"].to_numpy()[kept].astype(str).tolist()
    return Split(ids, labels[kept].astype(np.int64), images if len(kept) else None), failed


def _store_split(
    store: LatentStore,
    task_name: str,
    split: str,
    *,
    need_w: bool,
    align: AlignConfig | None,
    photo: bool,
    image_root: Path | None,
) -> Split:
    """One split of a latent store; with ``need_w`` only images whose inversion is done;
    ``photo``: the real images are the full-size manifest photos (read one batch ahead)."""
    manifest = store.manifest()
    if manifest is None:
        raise ConfigError(f"{store.path} has no manifest.parquet: splits and labels come from it")
    labels = _label_column(manifest, task_name, f"{store.path}/manifest.parquet")
    idx = np.flatnonzero(manifest["split"].to_numpy() == split)
    has_aligned = ALIGNED in store.array_names()
    if need_w or has_aligned:  # latents and persisted aligned pixels exist for done images only
        done = np.intersect1d(idx, store.done())
        if len(done) < len(idx):
            log.warning(
                "%s split %s: %d of %d images not inverted (pending/failed), left out",
                store.path,
                split,
                len(idx) - len(done),
                len(idx),
            )
        idx = done
    if photo:
        images: Any = lambda sub: read_photos(  # noqa: E731 - uint8 [3, H, W] list
            store, idx[sub], manifest, size=None, image_root=image_root
        )
        if len(idx):
            images(np.array([0]))  # fail now, not after an epoch, if the photos are not there
    elif has_aligned:
        images = lambda sub: store.read_array(ALIGNED, idx[sub])  # noqa: E731 - uint8 rows
    else:
        images = lambda sub: read_originals(  # noqa: E731
            store, idx[sub], manifest, align=align, image_root=image_root
        )
        if len(idx):
            images(
                np.array([0])
            )  # fail now, not after an epoch, if the originals cannot be aligned
    ws = (lambda sub: store.read(idx[sub], ["w"])["w"]) if need_w else None
    return Split(
        store.image_ids[idx].astype(str).tolist(), labels[idx].astype(np.int64), images, ws
    )


def _generator(path: str | Path | None, store: LatentStore | None, device: torch.device):
    from ganviews.stylegan.generator import load_generator

    if path is None:
        raise ConfigError(
            "generator_path: sources 'recon' and 'views' render G(w); pass the generator"
        )
    G = load_generator(path, device=device)
    expected = store.attrs.get("generator_sha256") if store is not None else None
    if expected and G.sha256 != expected:
        raise ConfigError(
            f"generator_path: {path} (sha256 {G.sha256[:12]}…) is not the generator the store's "
            f"latents were inverted with ({expected[:12]}…)"
        )
    return G


def run_train_classifier(
    data: str | Path,
    *,
    task: str,
    config: Mapping[str, Any],
    out: str | Path,
    source: str = "real",
    generator_path: str | Path | None = None,
    device: str = "auto",
    seed: int = 0,
    train: TrainConfig = TrainConfig(),  # noqa: B008 - frozen
    views: SourceConfig = SourceConfig(),  # noqa: B008 - frozen
    align: AlignConfig | None = None,
    init_from: str | Path | None = None,
    resume: bool = False,
    train_split: str = "train",
    val_split: str | None = "val",
    val_source: str = "real",
    class_column: str | None = None,
    pca: PCAConfig = PCAConfig(),  # noqa: B008 - frozen
    image_root: str | Path | None = None,
) -> dict[str, Any]:
    """Train a classifier for label column ``task`` from a manifest or a latent store; save it to ``out``.

    ``config``: the classifier's ClassifierConfig keys (``num_outputs`` defaults to the label
    count, 2 classes → one sigmoid logit). ``views``: the Eq. 8 mixture (:class:`SourceConfig`;
    its ``source`` is overridden by ``source``). ``align``: how images are aligned: a manifest's
    (None: AlignConfig defaults), a store's only when it holds no aligned pixels (None: the
    store's recorded config). ``pca``: settings of
    the PCA statistics when PCA views need them and the store has none. ``val_source``: validate on
    the real val images or on G(w*) of their latents ("recon", as the authors' *_latent.py
    scripts select checkpoints; needs a store). ``image_root``: base of relative manifest paths
    (default: a manifest's folder, a store's folder). ``views.real_source: photo``: the real
    images are the raw photos (the authors' cars, :mod:`ganviews.classifiers.batches`); the val
    split is then their centre windows (``imval``) or, with ``val_source: recon``, G(w*) through
    the classifier's own preprocessing. ``resume``: continue
    ``<out>.ckpt``; without it an existing checkpoint is an error (never silently discarded).
    """
    data, out = Path(data), Path(out)
    _check_output(out, config)
    dev = resolve_device(device)
    set_numerics_policy(dev)
    tcfg = train
    scfg = from_dict(SourceConfig, {**to_dict(views), "source": source}, key="views")
    ckpt = out.with_name(out.name + ".ckpt")
    if ckpt.exists() and not resume:
        raise ConfigError(
            f"{ckpt} exists from an earlier run: pass resume (--resume) to continue it, or delete it"
        )
    if val_source not in ("real", "recon"):
        raise ConfigError(f"val_source: {val_source!r}; allowed: 'real', 'recon'")
    val_w = val_source == "recon"
    need_w = scfg.source != "real" or val_w
    store = LatentStore.open(data, mode="r") if data.is_dir() else None
    failed: dict[str, str] = {}
    photo = scfg.photo is not None
    root = Path(image_root) if image_root is not None else None
    if store is None:
        if need_w:
            what = "val_source: 'recon'" if val_w else f"source: {scfg.source!r}"
            raise ConfigError(f"{what} needs latents; {data} is a manifest, pass a latent store")
        split_of = functools.partial(
            _manifest_split, data, task, align=align or AlignConfig(), photo=photo,
            image_root=root or data.parent,
        )  # fmt: skip
        tr, failed = split_of(train_split)
        va = split_of(val_split)[0] if val_split else None
    else:
        split_of = functools.partial(
            _store_split, store, task, align=align, photo=photo, image_root=root
        )
        tr = split_of(train_split, need_w=scfg.source != "real")
        va = split_of(val_split, need_w=val_w) if val_split else None
    if not len(tr.labels):
        raise ConfigError(f"{data}: no usable {train_split!r} images for task {task!r}")
    va = va if va is not None and len(va.labels) and va.images is not None else None

    C = _initial_classifier(
        classifier_for_labels({"task": task, **to_dict(config)}, tr.labels), init_from
    )
    G = _generator(generator_path, store, dev) if need_w else None
    pca_stats = _pca(store, G, scfg, pca, dev)
    c = _classes(store, G, class_column, train_split)
    try:
        batches = make_batches(
            scfg,
            labels=tr.labels,
            image_ids=tr.ids,
            images=tr.images,
            ws=tr.ws,
            G=G,
            pca=pca_stats,
            c=c,
            seed=seed,
        )
    except ValueError as exc:  # argument checks of the batch source → one clean line in the CLI
        raise ConfigError(f"views: {exc}") from exc
    val = (
        make_batches(
            SourceConfig(
                source=val_source,
                p_generated=1.0,
                batch_size=scfg.batch_size,
                flip=False,
                real_source=None if val_w else scfg.real_source,  # G(w*): the classifier's geometry
                photo_size=scfg.photo_size,
            ),
            labels=va.labels,
            image_ids=va.ids,
            images=None if val_w else va.images,
            ws=va.ws,
            G=G,
            shuffle=False,
        )
        if va is not None
        else None
    )
    if val is None and (tcfg.scheduler == "plateau" or tcfg.select == "best"):
        raise ConfigError(
            f"train: scheduler={tcfg.scheduler!r} / select={tcfg.select!r} need a validation split"
        )
    hyper = asdict(tcfg)
    result = train_classifier(
        C, batches, device=dev, seed=seed, checkpoint=ckpt, resume=resume, val_batches=val, **hyper
    )
    save_classifier(C, out)
    report = {
        "classifier": str(out),
        "sha256": C.sha256,
        "name": C.name,
        "task": task,
        "config": to_dict(C.config),
        "train": to_dict(tcfg),
        "views": to_dict(scfg),
        "seed": seed,
        "data": str(data),
        "n_train": len(tr.labels),
        "n_val": 0 if va is None else len(va.labels),
        "manifest_sha256": manifest_sha256(store.manifest() if store is not None else data),
        "generator_sha256": getattr(G, "sha256", None),
        "init_from": str(init_from) if init_from else None,
        "code_version": code_version(),
        "skipped_images": failed,
        "best_epoch": result.best_epoch,
        "best_val_acc": result.best_val_acc,
        "selected_epoch": result.selected_epoch,
        "history": [asdict(h) for h in result.history],
    }
    write_json(out.with_name(out.name + ".train.json"), report)
    return report


def _initial_classifier(cfg: ClassifierConfig, init_from: str | Path | None):
    """The classifier training starts from (train mode): built from ``cfg`` and initialised from
    ``init_from``'s matching tensors, or — a TorchScript architecture is its file — that file."""
    if cfg.arch != TORCHSCRIPT:
        C = build_classifier(cfg)
        if init_from is not None:
            load_backbone_weights(C, init_from)
        return C
    if init_from is None:
        raise ConfigError(
            "classifier.arch: torchscript is fine-tuned from its file: pass it as init_from (--init)"
        )
    return load_classifier(init_from, config=cfg).train().requires_grad_(True)


def _check_output(out: Path, config: Mapping[str, Any]) -> None:
    if config.get("arch") == TORCHSCRIPT and out.suffix == ".safetensors":
        raise ConfigError(
            f"out: {out} — a fine-tuned TorchScript classifier is saved as a TorchScript archive "
            "(its config inside), not safetensors: name it .pt"
        )


def _pca(store: LatentStore | None, G, scfg: SourceConfig, settings: PCAConfig, device):
    if scfg.source != "views" or scfg.method != "pca":
        return None
    from tasks.pca import load_pca

    return load_pca(store.path, G, settings, device=device)


def _classes(
    store: LatentStore | None, G, class_column: str | None, split: str
) -> torch.Tensor | None:
    if G is None or not G.c_dim:
        return None
    if class_column is None:
        raise ConfigError(
            f"class_column: G is class-conditional (c_dim={G.c_dim}); name the label column"
        )
    manifest = store.manifest()
    idx = np.flatnonzero(manifest["split"].to_numpy() == split)
    idx = np.intersect1d(idx, store.done())
    return torch.nn.functional.one_hot(
        torch.as_tensor(manifest[class_column].to_numpy()[idx]), G.c_dim
    ).float()


def classifier_done(cfg: PipelineConfig) -> bool:
    """The pipeline's trained classifier and its training report exist."""
    out = Path(cfg.models.classifiers[cfg.classifier_training.name].path)
    return out.is_file() and out.with_name(out.name + ".train.json").is_file()


def pipeline_arguments(cfg: PipelineConfig) -> dict[str, Any]:
    """The pipeline's ``classifier_training`` as the arguments of :func:`run_train_classifier`."""
    ct = cfg.classifier_training
    ref = cfg.models.classifiers[ct.name]
    if not ref.task:
        raise ConfigError(
            f"models.classifiers.{ct.name}.task: name the label column the trained classifier predicts"
        )
    out = Path(ref.path)
    return dict(
        data=cfg.paths.store if ct.data == "store" else cfg.data.manifest, task=ref.task,
        config={**ct.classifier, "name": ct.classifier.get("name") or ct.name}, out=out, source=ct.source,
        generator_path=cfg.models.generator, device=cfg.device, seed=cfg.seed, train=ct.train,
        views=training_views(cfg),
        align=cfg.align, init_from=ct.init_from, resume=out.with_name(out.name + ".ckpt").is_file(),
        train_split=ct.train_split, val_split=ct.val_split, val_source=ct.val_source,
        class_column=cfg.models.class_column, pca=cfg.pca, image_root=cfg.image_root,
    )  # fmt: skip


@task(name="train-classifier", cache_policy=NO_CACHE)
def train_classifier_task(data: str | Path, **kwargs: Any) -> dict[str, Any]:
    """Prefect task: :func:`run_train_classifier` (same arguments) → its report."""
    report = run_train_classifier(data, **kwargs)
    run_logger().info(
        "classifier %s: %d train images, best val acc %s",
        report["classifier"],
        report["n_train"],
        report["best_val_acc"],
    )
    return report
