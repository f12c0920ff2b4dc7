"""Prefect task: render and classify the views of one shard of the latent store.

Chai et al. (CVPR 2021), Sec. 3.3–3.4: for every inverted image of the shard (status done),
the original, the reconstruction G(w*) and the perturbed / augmented views are classified in
one fused pass (:func:`ganviews.views.render.render_and_classify`); the logits go to the Parquet
dataset under ``logits_dir`` with the shard key ``f"{start:08d}-{stop:08d}"`` (re-running a
shard replaces its rows of the same groups), and, when ``view_cfg.persist_views`` is set,
uint8 views go to the store as ``views/<method>/<setting>`` (setting "" → "none"), indexed by
view number (index 0 = the original).

Inputs: ``w`` and the aligned originals ``images/aligned`` from the store (written by the
inversion step); if that array is missing, the originals are loaded from the manifest paths
and aligned again with ``align`` (or the store's recorded ``config.align``). PCA statistics
are read from ``<store>/pca_stats.npz`` (computed and cached there when missing).

:func:`run_render_shard` is the plain function (usable without Prefect); ``render_shard_task``
is its Prefect wrapper; :func:`render_shards` loads the models once for several shards (CLI).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from prefect import task
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger

from ganviews.core.config import load_yaml, to_dict
from ganviews.core.errors import ConfigError, GanviewsError
from ganviews.core.runtime import resolve_device, set_numerics_policy
from ganviews.views.perturb import PCAStats, compute_pca_stats
from ganviews.views.render import GroupLogits, ViewConfig, render_and_classify, view_config
from storage.identity import code_version
from storage.latents import LatentStore
from storage.logits import write_logits
from storage.pca_stats import cache_path, load_pca_stats, save_pca_stats

log = logging.getLogger(__name__)

ALIGNED = "images/aligned"
PCA_SAMPLES = 100_000  # w samples for the PCA statistics when they must be computed
PCA_SEED = 0  # their seed (fixed, so every worker computes the same cache)


def shard_key(start: int, stop: int) -> str:
    """The logits file key of a shard: ``00000064-00000128``."""
    return f"{start:08d}-{stop:08d}"


def resolve_view_config(view_cfg: ViewConfig | Mapping[str, Any] | str | Path | None) -> ViewConfig:
    """A ViewConfig from itself, a mapping, a YAML path, or None (the "faces" preset)."""
    if isinstance(view_cfg, ViewConfig):
        return view_cfg
    if view_cfg is None:
        return view_config(preset="faces")
    if isinstance(view_cfg, (str, Path)):
        return view_config(load_yaml(view_cfg))
    return view_config(view_cfg)


def load_models(
    generator_path: str | Path, classifier_paths: Mapping[str, str | Path], *, device: torch.device
) -> tuple[Any, dict[str, Any]]:
    """The generator and the classifiers (name → Classifier), on ``device``, in eval mode."""
    from ganviews.classifiers.model import load_classifier
    from ganviews.stylegan.generator import load_generator

    if not classifier_paths:
        raise ConfigError("classifier_paths: need at least one NAME → checkpoint path")
    G = load_generator(generator_path, device=device)
    classifiers = {
        name: load_classifier(path, device=device) for name, path in classifier_paths.items()
    }
    return G, classifiers


def classifier_tasks(
    classifiers: Mapping[str, Any], tasks: Mapping[str, str] | None, label_columns: Sequence[str]
) -> dict[str, str]:
    """The label column each classifier predicts: ``tasks[name]``, else the classifier's own task."""
    out = {}
    for name, C in classifiers.items():
        col = (tasks or {}).get(name) or getattr(C, "task", "")
        if not col:
            raise ConfigError(
                f"classifier {name!r}: no task (label column) given and its config names none; "
                f"pass NAME=PATH:TASK, one of {list(label_columns)}"
            )
        if col not in label_columns:
            raise ConfigError(
                f"classifier {name!r}: task {col!r} is not a label column of the manifest "
                f"(label columns: {list(label_columns)})"
            )
        out[name] = col
    return out


def prepare_pca(
    store_path: str | Path,
    G,
    config: ViewConfig,
    *,
    device: torch.device,
    n_samples: int = PCA_SAMPLES,
) -> PCAStats | None:
    """The PCA statistics the config needs (None if no PCA group): cached next to the store."""
    if not any(g.method == "pca" for g in config.gan):
        return None
    path = cache_path(store_path)
    if path.is_file():
        data = load_pca_stats(path, generator_sha256=G.sha256)
    else:
        log.info("computing PCA statistics of %d w samples → %s", n_samples, path)
        stats = compute_pca_stats(G, n_samples=n_samples, seed=PCA_SEED, device=device)
        save_pca_stats(
            path, **stats.as_arrays(), generator_sha256=G.sha256, n_samples=n_samples, seed=PCA_SEED
        )
        data = load_pca_stats(path, generator_sha256=G.sha256)
    return PCAStats.from_arrays(
        data["mean"], data["components"], data["stdevs"],
        generator_sha256=data["generator_sha256"], n_samples=data["n_samples"],
    )  # fmt: skip


def _shard_range(store: LatentStore, shard: int | Sequence[int]) -> tuple[int, int]:
    shards = store.shards()
    if isinstance(shard, (int, np.integer)):
        if not 0 <= int(shard) < len(shards):
            raise ConfigError(
                f"shard: index {shard} out of range (the store has {len(shards)} shards)"
            )
        return shards[int(shard)]
    start, stop = (int(v) for v in shard)
    if (start, stop) not in shards:
        raise ConfigError(
            f"shard: {(start, stop)} is not a shard of {store.path} (shards: {shards[:4]}…)"
        )
    return start, stop


def load_originals(
    store: LatentStore,
    idx: np.ndarray,
    manifest: pd.DataFrame,
    *,
    align: Any = None,
    image_root: str | Path | None = None,
) -> torch.Tensor:
    """The aligned originals [k, 3, R, R] in [-1, 1]: from ``images/aligned``, else re-aligned."""
    if ALIGNED in store.array_names():
        pixels = store.read_array(ALIGNED, idx)  # [k, 3, R, R] uint8
        return torch.from_numpy(pixels.astype(np.float32) / 127.5 - 1.0)
    from ganviews.core.config import from_dict
    from ganviews.core.images import load_image
    from ganviews.inversion.align import AlignConfig, align_image

    recorded = (store.attrs.get("config") or {}).get("align")
    spec = align if align is not None else recorded
    if spec is None:
        raise ConfigError(
            f"{store.path} has no {ALIGNED!r} array and no align config was given or recorded; "
            "pass align= (AlignConfig or mapping) to re-align the originals from the manifest"
        )
    cfg = spec if isinstance(spec, AlignConfig) else from_dict(AlignConfig, spec, key="align")
    root = Path(image_root) if image_root is not None else store.path
    out = []
    for i in idx:
        row = manifest.iloc[int(i)]
        path = Path(row["path"])
        path = path if path.is_absolute() else root / path
        img, _ = align_image(
            load_image(path), cfg, bbox=row.get("bbox"), landmarks=row.get("landmarks")
        )
        out.append(img)
    return torch.from_numpy(np.stack(out))  # [k, 3, R, R]


def logit_frame(
    groups: Sequence[GroupLogits],
    *,
    image_ids: np.ndarray,
    splits: np.ndarray,
    labels: Mapping[str, np.ndarray],
    tasks: Mapping[str, str],
) -> pd.DataFrame:
    """Rows of the logits table (storage.logits schema) for one batch of images."""
    parts = []
    for g in groups:
        rows = g.image_index
        seed = pd.array(np.where(g.has_seed, g.seed, 0), dtype="Int64")
        seed[~g.has_seed] = pd.NA
        for name, logits in g.logits.items():
            parts.append(
                pd.DataFrame(
                    {
                        "image_id": image_ids[rows].astype(str),
                        "split": splits[rows].astype(str),
                        "task": tasks[name],
                        "classifier": name,
                        "method": g.method,
                        "setting": g.setting,
                        "view": g.view.astype(np.int32),
                        "logits": list(logits.astype(np.float32)),
                        "label": labels[tasks[name]][rows].astype(np.int64),
                        "seed": seed,
                    }
                )
            )
    return pd.concat(parts, ignore_index=True)


def render_shard_with(
    store: LatentStore,
    shard: int | Sequence[int],
    G,
    classifiers: Mapping[str, Any],
    *,
    view_cfg: ViewConfig,
    logits_dir: str | Path,
    device: torch.device,
    seed: int,
    tasks: Mapping[str, str] | None = None,
    pca: PCAStats | None = None,
    class_column: str | None = None,
    align: Any = None,
    image_root: str | Path | None = None,
) -> dict[str, Any]:
    """Render + classify the done images of one shard with loaded models; write logits (+ views)."""
    start, stop = _shard_range(store, shard)
    manifest = store.manifest()
    if manifest is None:
        raise ConfigError(f"{store.path} has no manifest.parquet: splits and labels come from it")
    label_columns = list(manifest.attrs.get("label_columns") or [])
    col_of = classifier_tasks(classifiers, tasks, label_columns)
    done = store.done()
    idx = done[(done >= start) & (done < stop)]  # [k] inverted images of the shard
    summary = {"shard": shard_key(start, stop), "images": int(len(idx)), "rows": 0, "files": 0}
    if not len(idx):
        log.info("shard %s: no inverted images, nothing to render", summary["shard"])
        return summary
    w = torch.from_numpy(store.read(idx, ["w"])["w"])  # [k, L, C]
    images = load_originals(store, idx, manifest, align=align, image_root=image_root)
    c = None
    if G.c_dim:
        if class_column is None:
            raise ConfigError(
                f"class_column: G is class-conditional (c_dim={G.c_dim}); name the label column"
            )
        c = torch.nn.functional.one_hot(
            torch.as_tensor(manifest[class_column].to_numpy()[idx]), G.c_dim
        ).float()
    ids = store.image_ids[idx]
    groups = render_and_classify(
        G,
        classifiers,
        w,
        images,
        image_ids=list(ids),
        config=view_cfg,
        device=device,
        seed=seed,
        c=c,
        pca=pca,
    )
    labels = {col: manifest[col].to_numpy() for col in set(col_of.values())}
    frame = logit_frame(
        groups,
        image_ids=np.asarray(ids),
        splits=manifest["split"].to_numpy()[idx],
        labels={col: v[idx] for col, v in labels.items()},
        tasks=col_of,
    )
    metadata = {
        "view_config": to_dict(view_cfg),
        "seed": seed,
        "generator_sha256": G.sha256,
        "classifier_sha256": {name: C.sha256 for name, C in classifiers.items()},
        "store": str(store.path),
        "code_version": code_version(),
    }
    files = write_logits(logits_dir, frame, shard=summary["shard"], metadata=metadata)
    if view_cfg.persist_views:
        persist_views(store, idx, groups)
    summary.update(rows=int(len(frame)), files=len(files))
    return summary


def persist_views(store: LatentStore, idx: np.ndarray, groups: Iterable[GroupLogits]) -> list[str]:
    """Write each group's uint8 views to ``views/<method>/<setting or "none">`` → array names."""
    names = []
    for g in groups:
        if g.views is None:
            continue
        name = f"views/{g.method}/{g.setting or 'none'}"
        store.ensure_array(name, g.views.shape[1:], np.uint8)
        store.write_array(name, idx, g.views)
        names.append(name)
    return names


def _check_generator(store: LatentStore, G) -> None:
    stored = store.attrs.get("generator_sha256")
    if stored and stored != G.sha256:
        raise GanviewsError(
            f"{store.path} holds latents of generator sha256 {stored[:16]}…, but the given "
            f"generator is {G.sha256[:16]}…; render with the generator the images were inverted with"
        )


def render_shards(
    store_path: str | Path,
    shards: Iterable[int | Sequence[int]] | None = None,
    *,
    generator_path: str | Path,
    classifier_paths: Mapping[str, str | Path],
    tasks: Mapping[str, str] | None = None,
    view_cfg: ViewConfig | Mapping[str, Any] | str | Path | None = None,
    logits_dir: str | Path,
    device: str | torch.device = "auto",
    seed: int = 0,
    class_column: str | None = None,
    align: Any = None,
    image_root: str | Path | None = None,
    pca_samples: int = PCA_SAMPLES,
) -> list[dict[str, Any]]:
    """Load the models once and render several shards (None = every shard) → one summary each."""
    cfg = resolve_view_config(view_cfg)
    device = resolve_device(device)
    set_numerics_policy(device)
    store = LatentStore.open(store_path, mode="a" if cfg.persist_views else "r")
    G, classifiers = load_models(generator_path, classifier_paths, device=device)
    _check_generator(store, G)
    pca = prepare_pca(store.path, G, cfg, device=device, n_samples=pca_samples)
    out = []
    for shard in store.shards() if shards is None else shards:
        out.append(
            render_shard_with(
                store, shard, G, classifiers, view_cfg=cfg, logits_dir=logits_dir, device=device, seed=seed,
                tasks=tasks, pca=pca, class_column=class_column, align=align, image_root=image_root,
            )
        )  # fmt: skip
        log.info(
            "rendered shard %s: %d images, %d rows",
            out[-1]["shard"],
            out[-1]["images"],
            out[-1]["rows"],
        )
    return out


def run_render_shard(
    store_path: str | Path,
    shard: int | Sequence[int],
    *,
    generator_path: str | Path,
    classifier_paths: Mapping[str, str | Path],
    tasks: Mapping[str, str] | None = None,
    view_cfg: ViewConfig | Mapping[str, Any] | str | Path | None = None,
    logits_dir: str | Path,
    device: str | torch.device = "auto",
    seed: int = 0,
    class_column: str | None = None,
    align: Any = None,
    image_root: str | Path | None = None,
    pca_samples: int = PCA_SAMPLES,
) -> dict[str, Any]:
    """Render and classify one shard (index into ``store.shards()`` or ``(start, stop)``) → summary."""
    return render_shards(
        store_path, [shard], generator_path=generator_path, classifier_paths=classifier_paths, tasks=tasks,
        view_cfg=view_cfg, logits_dir=logits_dir, device=device, seed=seed, class_column=class_column,
        align=align, image_root=image_root, pca_samples=pca_samples,
    )[0]  # fmt: skip


@task(name="render-shard")
def render_shard_task(
    store_path: str | Path, shard: int | Sequence[int], **kwargs: Any
) -> dict[str, Any]:
    """Prefect wrapper of :func:`run_render_shard` (same keyword arguments)."""
    summary = run_render_shard(store_path, shard, **kwargs)
    try:
        get_run_logger().info(
            "render %s: %d images → %d logit rows",
            summary["shard"],
            summary["images"],
            summary["rows"],
        )
    except MissingContextError:
        pass
    return summary
