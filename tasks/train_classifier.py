"""Prefect task: train or fine-tune a classifier on real images, reconstructions or GAN views (Eq. 8).

Chai et al. (CVPR 2021), Sec. 3.4 / Eq. 8: a classifier trained on a mixture of real images
and GAN images of their inverted latents (G(w*) or perturbed G(w̃)) is more consistent with
the views it is later ensembled over.

Data comes through storage only:

- a **manifest** (Parquet; ``source="real"`` only): images are loaded with
  :func:`ganviews.core.images.load_image`, aligned with :func:`ganviews.inversion.align.align_image` and kept
  in memory as uint8 (N·3·R² bytes); unreadable images are skipped and listed in the report.
- a **latent store**: labels and splits from its ``manifest.parquet``; latents ``w`` of the
  done images; real images from ``images/aligned`` (read lazily, one batch ahead), else
  re-aligned from the manifest paths (:func:`tasks.render.load_originals`). GAN sources need
  the generator the store was inverted with (checked by content hash).

Outputs: the classifier in the project's format at ``out``, a training checkpoint
``<out>.ckpt`` (resumable) and a report ``<out>.train.json`` (configs, data identity,
history). :func:`run_train_classifier` is the plain function; ``train_classifier_task`` wraps
it for Prefect.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from prefect import task

from ganviews.classifiers.model import build_classifier, load_backbone_weights, save_classifier
from ganviews.classifiers.training import (
    SourceConfig,
    TrainConfig,
    classifier_for_labels,
    make_batches,
    train_classifier,
)
from ganviews.core.config import from_dict, load_yaml, to_dict
from ganviews.core.errors import ConfigError, ImageError
from ganviews.core.runtime import resolve_device, set_numerics_policy
from storage.identity import code_version
from storage.latents import LatentStore
from storage.manifest import manifest_sha256, read_manifest

log = logging.getLogger(__name__)

ALIGNED = "images/aligned"


@dataclass
class Split:
    """One split's data as the batch sources take it (tensors or index readers)."""

    ids: list[str]  # image ids
    labels: np.ndarray  # [n] int64
    images: Any = None  # [n, 3, R, R] uint8 tensor or reader(indices) → rows; None = none
    ws: Any = None  # reader(indices) → [k, L, C] float32; None = no latents


def _as_config(cls: type, value: Any, key: str) -> Any:
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, (str, Path)):
        value = load_yaml(value)
    return from_dict(cls, value, key=key)


def _label_column(manifest, task_name: str, where: str) -> np.ndarray:
    labels = list(manifest.attrs.get("label_columns") or [])
    if task_name not in labels:
        raise ConfigError(
            f"task: {task_name!r} is not a label column of {where} (label columns: {labels})"
        )
    return manifest[task_name].to_numpy()


def _manifest_split(
    path: Path, task_name: str, split: str, align: Any
) -> tuple[Split, dict[str, str]]:
    """Real images of one split of a manifest, aligned and held as uint8 (failures skipped)."""
    from ganviews.core.images import load_image, signed_to_uint8
    from ganviews.inversion.align import AlignConfig, align_image

    manifest = read_manifest(path)
    labels = _label_column(manifest, task_name, str(path))
    cfg = (
        align
        if isinstance(align, AlignConfig)
        else from_dict(AlignConfig, align or {}, key="align")
    )
    rows, images, failed = [], [], {}
    for i in np.flatnonzero(manifest["split"].to_numpy() == split):
        row = manifest.iloc[int(i)]
        file = Path(row["path"]) if Path(row["path"]).is_absolute() else path.parent / row["path"]
        try:
            img, _ = align_image(
                load_image(file), cfg, bbox=row.get("bbox"), landmarks=row.get("landmarks")
            )
        except ImageError as exc:
            failed[str(row["image_id"])] = getattr(exc, "reason", str(exc))
            continue
        rows.append(int(i))
        images.append(signed_to_uint8(img))  # [3, R, R]
    if failed:
        log.warning("%s split %s: skipped %d unreadable images", path, split, len(failed))
    ids = manifest["image_id"].to_numpy()[rows].astype(str).tolist()
    stack = torch.from_numpy(np.stack(images)) if images else None
    return Split(ids, labels[rows].astype(np.int64), stack), failed


def _store_split(
    store: LatentStore, task_name: str, split: str, *, need_w: bool, align: Any
) -> Split:
    """One split of a latent store; with ``need_w`` only images whose inversion is done."""
    from tasks.render import load_originals

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
    if has_aligned:
        images: Any = lambda sub: store.read_array(ALIGNED, idx[sub])  # noqa: E731 - uint8 rows
    else:
        images = lambda sub: load_originals(store, idx[sub], manifest, align=align)  # noqa: E731
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
    config: Any,
    out: str | Path,
    source: str = "real",
    generator_path: str | Path | None = None,
    device: str = "auto",
    seed: int = 0,
    train: TrainConfig | Mapping[str, Any] | str | Path | None = None,
    views: SourceConfig | Mapping[str, Any] | str | Path | None = None,
    align: Any = None,
    init_from: str | Path | None = None,
    resume: bool = False,
    train_split: str = "train",
    val_split: str | None = "val",
    class_column: str | None = None,
) -> dict[str, Any]:
    """Train a classifier for label column ``task`` from a manifest or a latent store; save it to ``out``.

    ``config``: the classifier (ClassifierConfig, mapping or YAML; ``num_outputs`` defaults
    to the label count, 2 classes → one sigmoid logit). ``views``: the Eq. 8 mixture
    (:class:`SourceConfig`; its ``source`` is overridden by ``source``). ``resume``: continue
    ``<out>.ckpt``; without it an existing checkpoint is an error (never silently discarded).
    """
    data, out = Path(data), Path(out)
    dev = resolve_device(device)
    set_numerics_policy(dev)
    tcfg = _as_config(TrainConfig, train, "train")
    scfg = from_dict(
        SourceConfig,
        {**to_dict(_as_config(SourceConfig, views, "views")), "source": source},
        key="views",
    )
    ckpt = out.with_name(out.name + ".ckpt")
    if ckpt.exists() and not resume:
        raise ConfigError(
            f"{ckpt} exists from an earlier run: pass resume (--resume) to continue it, or delete it"
        )
    need_w = scfg.source != "real"
    store = LatentStore.open(data, mode="r") if data.is_dir() else None
    failed: dict[str, str] = {}
    if store is None:
        if need_w:
            raise ConfigError(
                f"source: {scfg.source!r} needs latents; {data} is a manifest, pass a latent store"
            )
        tr, failed = _manifest_split(data, task, train_split, align)
        va = _manifest_split(data, task, val_split, align)[0] if val_split else None
    else:
        tr = _store_split(store, task, train_split, need_w=need_w, align=align)
        va = _store_split(store, task, val_split, need_w=False, align=align) if val_split else None
    if not len(tr.labels):
        raise ConfigError(f"{data}: no usable {train_split!r} images for task {task!r}")
    va = va if va is not None and len(va.labels) and va.images is not None else None

    cfg_map = to_dict(config) if not isinstance(config, (str, Path)) else load_yaml(config)
    C = build_classifier(classifier_for_labels({"task": task, **cfg_map}, tr.labels))
    if init_from is not None:
        load_backbone_weights(C, init_from)
    G = _generator(generator_path, store, dev) if need_w else None
    pca = _pca(store, G, scfg, dev)
    c = _classes(store, G, class_column, train_split)
    try:
        batches = make_batches(
            scfg,
            labels=tr.labels,
            image_ids=tr.ids,
            images=tr.images,
            ws=tr.ws,
            G=G,
            pca=pca,
            c=c,
            seed=seed,
        )
    except ValueError as exc:  # argument checks of the batch source → one clean line in the CLI
        raise ConfigError(f"views: {exc}") from exc
    val = (
        make_batches(
            SourceConfig(source="real", batch_size=scfg.batch_size, flip=False),
            labels=va.labels,
            image_ids=va.ids,
            images=va.images,
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
    out.with_name(out.name + ".train.json").write_text(json.dumps(report, indent=2, default=str))
    return report


def _pca(store: LatentStore | None, G, scfg: SourceConfig, device: torch.device):
    if scfg.source != "views" or scfg.method != "pca":
        return None
    from ganviews.views.render import GanGroup, ViewConfig
    from tasks.render import prepare_pca

    probe = ViewConfig(gan=(GanGroup("pca", scfg.layers, (float(scfg.setting or 0.0),)),))
    return prepare_pca(store.path, G, probe, device=device)


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


@task(name="train-classifier")
def train_classifier_task(data: str, **kwargs: Any) -> dict[str, Any]:
    """Prefect wrapper of :func:`run_train_classifier` (same arguments)."""
    return run_train_classifier(data, **kwargs)
