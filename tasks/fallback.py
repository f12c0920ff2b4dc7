"""The evaluate stage's single-image fallback for images that have no views at all.

An image of the val/test splits whose inversion failed has no latent, so the render stage
writes no logit row of it, and an accuracy over the other images silently changes the test
set. With ``ensemble.on_missing_views: single`` the evaluate stage classifies the original
image instead: it is read and aligned from the manifest as the inversion would have done,
classified by every classifier of the render job (:func:`ganviews.views.fallback.classify_originals`),
and given a view-0 row in every view group; the ensemble evaluation then predicts it from
view 0 alone at every α and counts it in ``n_test_fallback`` (``fallback`` in
predictions.parquet). With ``views.original_source: photo`` the original is the centre window of the photo, as
the render's view 0. An original that cannot be read or aligned (often the reason the
inversion failed) cannot be classified either: it stays excluded, and its reason says both.

The rows exist only inside the evaluation; they are not written to the logits dataset, where
a stale view-0 row would sit next to the rendered one once a retried inversion succeeds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ganviews.core.config import from_dict
from ganviews.core.images import uint8_to_signed
from ganviews.core.runtime import resolve_device
from ganviews.ensemble.config import SPLITS
from ganviews.inversion.align import AlignConfig
from ganviews.views.config import view_groups
from ganviews.views.fallback import classify_originals
from ganviews.views.photo import center_windows
from storage.latents import LatentStore
from storage.logits import CLEAN, table_to_frame, to_table
from tasks.jobs import RenderJob
from tasks.render import classifier_tasks
from tasks.store_io import is_condition_store, load_aligned, load_photos


@dataclass(frozen=True)
class Fallback:
    """View-0 rows for images without views, and the images that could not get one."""

    rows: pd.DataFrame  # logit rows as read_logits(arrow_logits=True) returns them (may be empty)
    unusable: dict[str, str] = field(default_factory=dict)  # image_id → why no row was made


def fallback_rows(job: RenderJob, *, device: str | torch.device = "auto") -> Fallback:
    """View-0 logit rows of the store's failed val/test images (every classifier × view group)."""
    store = LatentStore.open(job.store, mode="r")
    rows = _failed_rows(store)
    if not len(rows):
        return Fallback(pd.DataFrame())
    manifest = store.manifest()
    images, ok, failed = _originals(job, store, rows, _root(job, store))
    unusable = {str(rows.iloc[p]["image_id"]): reason for p, reason in failed.items()}
    if not ok:
        return Fallback(pd.DataFrame(), unusable)
    from ganviews.classifiers.checkpoints import load_classifier

    device = resolve_device(device)
    classifiers = {
        name: load_classifier(path, device=device, config=job.classifier_configs.get(name))
        for name, path in job.classifiers.items()
    }
    tasks = classifier_tasks(classifiers, job.tasks, manifest.attrs.get("label_columns") or [])
    logits = classify_originals(classifiers, images, config=job.views, device=device)
    kept = rows.iloc[ok]
    frames = [
        pd.DataFrame(
            {
                "image_id": kept["image_id"].astype(str).to_numpy(),
                "split": kept["split"].astype(str).to_numpy(),
                "task": tasks[name],
                "classifier": name,
                "method": group.method,
                "setting": group.setting,
                "view": np.zeros(len(kept), np.int32),
                "logits": list(logits[name]),
                "label": kept[tasks[name]].to_numpy().astype(np.int64),
                "seed": pd.array([pd.NA] * len(kept), dtype="Int64"),
                "condition": CLEAN,
            }
        )
        for group in view_groups(job.views)
        for name in classifiers
    ]
    frame = table_to_frame(to_table(pd.concat(frames, ignore_index=True)), arrow_logits=True)
    return Fallback(frame, unusable)


def fallback_inputs(job: RenderJob) -> dict[str, object]:
    """What the fallback rows depend on besides the models: each failed val/test image and its
    file's (size, mtime) or None (the evaluate stage's marker key)."""
    store = LatentStore.open(job.store, mode="r")
    root = _root(job, store)
    out: dict[str, object] = {}
    for row in _failed_rows(store).itertuples():
        path = Path(row.path) if Path(row.path).is_absolute() else root / row.path
        out[str(row.image_id)] = (
            [path.stat().st_size, path.stat().st_mtime_ns] if path.is_file() else None
        )
    return out


def _failed_rows(store: LatentStore) -> pd.DataFrame:
    """Manifest rows of the store's failed val/test images (none for a condition's store)."""
    manifest = store.manifest()
    if manifest is None or is_condition_store(store):  # a condition's store has no manifest files
        return pd.DataFrame(columns=["image_id", "path", "split"])
    idx = store.failed()
    return manifest.iloc[idx[np.isin(manifest["split"].to_numpy()[idx], SPLITS)]]


def _root(job: RenderJob, store: LatentStore) -> Path:
    return Path(job.image_root) if job.image_root is not None else store.path


def _originals(job: RenderJob, store: LatentStore, rows: pd.DataFrame, root: Path):
    """View 0 of ``rows`` as the render makes it → (images [k, 3, H, W] in [-1, 1] or None,
    positions that worked, {position: reason}): the aligned frame, or with
    ``views.original_source: photo`` the centre window of the resized photo."""
    if job.views.original_source == "photo":
        ok, photos, failed = load_photos(rows, job.views.photo_size, image_root=root)
        windows = center_windows(photos, job.views.photo_size) if photos else None
        return (None if windows is None else uint8_to_signed(windows)), ok, failed
    ok, pairs, failed = load_aligned(rows, _align(job, store), image_root=root)
    images = torch.from_numpy(np.stack([p[0] for p in pairs])) if pairs else None
    return images, ok, failed  # [k, 3, R, R]


def _align(job: RenderJob, store: LatentStore) -> AlignConfig:
    """The job's alignment, else the one the store was inverted with."""
    if job.align is not None:
        return job.align
    return from_dict(AlignConfig, (store.attrs.get("config") or {}).get("align") or {}, key="align")
