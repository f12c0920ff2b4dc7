"""Reading a stage's inputs: shard ranges, manifest splits, and aligned images.

:func:`load_aligned` is the one load-and-align loop (manifest rows → aligned images, each
unusable image a recorded reason instead of an error); the inversion, the render stage (when
the store holds no aligned pixels) and classifier training on a manifest all use it.
:func:`read_originals` is the render / training view of it: the store's ``images/aligned``
when present, else the manifest's images aligned again. :func:`read_photos` reads the raw
photos themselves (``views.original_source: photo``), resized as the authors' ``imval``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ganviews.core.errors import ConfigError, GanviewsError
from ganviews.core.images import load_image, uint8_to_signed
from ganviews.inversion.align import AlignConfig, align_image
from ganviews.views.photo import resize_photo
from storage.arrays import ALIGNED, CORRUPTION_DONE, MASK
from storage.latents import LatentStore


def shard_range(store: LatentStore, shard: int | Sequence[int]) -> tuple[int, int]:
    """``(start, stop)`` of a shard given as an index into ``store.shards()`` or as the range."""
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


def select_splits(
    manifest: pd.DataFrame, splits: Sequence[str], *, key: str, source: Any
) -> pd.DataFrame:
    """The manifest's rows whose split is in ``splits`` (all rows when empty).

    ConfigError naming ``key`` (``data.splits``, ``--split``) when a split is not in ``source``.
    """
    if not splits:
        return manifest
    present = sorted(set(manifest["split"]))
    missing = [s for s in splits if s not in present]
    if missing:
        raise ConfigError(f"{key}: {missing} not in {source} (its splits: {present})")
    frame = manifest[manifest["split"].isin(list(splits))].reset_index(drop=True)
    frame.attrs = dict(manifest.attrs)
    return frame


def _optional(row: pd.Series, column: str) -> Any:
    value = row.get(column)
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return value


def _image_path(row: pd.Series, image_root: Path) -> Path:
    path = Path(row["path"])
    return path if path.is_absolute() else Path(image_root) / path


def load_aligned(
    rows: pd.DataFrame, align_cfg: AlignConfig, *, image_root: Path
) -> tuple[list[int], list, dict[int, str]]:
    """Load and align manifest ``rows`` → (positions that worked, (image, mask) pairs, {position: reason}).

    Images are floats in [-1, 1] ``[3, R, R]`` with masks ``[1, R, R]``; relative paths are
    found under ``image_root``; an image that cannot be used gives its reason, not an error.
    """
    ok, pairs, failed = [], [], {}
    for pos, (_, row) in enumerate(rows.iterrows()):
        try:
            img, mask = align_image(
                load_image(_image_path(row, image_root)),
                align_cfg,
                bbox=_optional(row, "bbox"),
                landmarks=_optional(row, "landmarks"),
            )
        except GanviewsError as exc:
            failed[pos] = getattr(exc, "reason", None) or str(exc)
            continue
        ok.append(pos)
        pairs.append((img, mask))
    return ok, pairs, failed


def read_originals(
    store: LatentStore,
    idx: np.ndarray,
    manifest: pd.DataFrame,
    *,
    align: AlignConfig | None = None,
    image_root: str | Path | None = None,
    uint8: bool = False,
) -> torch.Tensor:
    """The aligned originals [k, 3, R, R] in [-1, 1]: from ``images/aligned``, else re-aligned.

    Re-aligning uses ``align``, else the store's recorded ``config.align``; relative paths
    are found under ``image_root`` (default: the store folder). ``uint8``: stored originals
    come back as their uint8 pixels (a quarter of the bytes to move to a device;
    ``uint8_to_signed`` there gives the same floats); re-aligned ones are floats either way.
    """
    if ALIGNED in store.array_names():
        pixels = store.read_array(ALIGNED, idx)
        return torch.from_numpy(pixels if uint8 else uint8_to_signed(pixels))
    if align is None:
        recorded = (store.attrs.get("config") or {}).get("align")
        if recorded is None:
            raise ConfigError(
                f"{store.path} has no {ALIGNED!r} array and no align config was given or recorded; "
                "pass align= (an AlignConfig) to re-align the originals from the manifest"
            )
        from ganviews.core.config import from_dict

        align = from_dict(AlignConfig, recorded, key="align")
    root = Path(image_root) if image_root is not None else store.path
    rows = manifest.iloc[np.asarray(idx, dtype=np.int64)]
    ok, pairs, failed = load_aligned(rows, align, image_root=root)
    if failed:
        pos, reason = next(iter(failed.items()))
        raise GanviewsError(
            f"image {rows.iloc[pos]['image_id']} of {store.path} cannot be aligned again: {reason}"
        )
    return torch.from_numpy(np.stack([p[0] for p in pairs]))  # [k, 3, R, R]


def read_photos(
    store: LatentStore,
    idx: np.ndarray,
    manifest: pd.DataFrame,
    *,
    size: int | None,
    image_root: str | Path | None = None,
) -> list[torch.Tensor]:
    """The raw photos of ``idx`` from the manifest, each resized so its shorter side is
    ``size`` (uint8 ``[3, h, w]``, :func:`ganviews.views.photo.resize_photo`; ``size`` None:
    full size, as classifier training crops them); relative paths are
    found under ``image_root`` (default: the store folder). Read at render time, so any
    worker that can invert the images can render them, and the store holds no extra pixels."""
    if is_condition_store(store):
        raise ConfigError(
            f"views.original_source: 'photo' cannot render condition store {store.path}: its "
            "inputs are the corrupted aligned frames, not photos; render conditions with "
            "original_source: aligned (docs/corruptions.md)"
        )
    root = Path(image_root) if image_root is not None else store.path
    rows = manifest.iloc[np.asarray(idx, dtype=np.int64)]
    _, photos, failed = load_photos(rows, size, image_root=root)
    if failed:
        pos, reason = next(iter(failed.items()))
        raise GanviewsError(
            f"image {rows.iloc[pos]['image_id']} of {store.path}: its photo cannot be read "
            f"again: {reason}"
        )
    return photos


def load_photos(
    rows: pd.DataFrame, size: int | None, *, image_root: Path
) -> tuple[list[int], list[torch.Tensor], dict[int, str]]:
    """Load manifest ``rows``' photos resized to ``size`` (None: full size) as uint8
    ``[3, h, w]`` → (positions that worked, photos, {position: reason}), as :func:`load_aligned`."""
    ok, photos, failed = [], [], {}
    for pos, (_, row) in enumerate(rows.iterrows()):
        try:
            rgb = load_image(_image_path(row, image_root))
            photos.append(
                torch.from_numpy(rgb).permute(2, 0, 1) if size is None else resize_photo(rgb, size)
            )
        except GanviewsError as exc:
            failed[pos] = getattr(exc, "reason", None) or str(exc)
            continue
        ok.append(pos)
    return ok, photos, failed


# ---------------------------------------------------------------- condition stores (Fig. 7)


def is_condition_store(store: LatentStore) -> bool:
    """Whether ``store`` holds a condition's corrupted copies (docs/corruptions.md): its
    inversion targets are the stored 8-bit images, not the manifest's files."""
    return "condition" in store.attrs


def corrupted(store: LatentStore, idx: np.ndarray) -> np.ndarray:
    """The items of ``idx`` whose corrupted image is stored (the others wait for the corrupt stage)."""
    idx = np.asarray(idx, dtype=np.int64)
    if not len(idx) or CORRUPTION_DONE not in store.array_names():
        return idx[:0]
    return idx[store.read_array(CORRUPTION_DONE, idx) == 1]


def stored_targets(store: LatentStore, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A condition store's inversion targets: aligned uint8 ``[k, 3, R, R]`` and masks in
    [0, 1] float32 ``[k, 1, R, R]``."""
    masks = store.read_array(MASK, idx).astype(np.float32) / 255.0
    return store.read_array(ALIGNED, idx), masks
