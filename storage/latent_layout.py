"""The latent store's layout on disk: format and status codes, the core arrays (names, dtypes,
fill values, codecs), the identity and layout attributes, value checks, and how a new store's
folder is made (core arrays, identity, manifest frame, image ids, the atomic move into place).
:class:`storage.latents.LatentStore` reads and writes through these definitions.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import shutil
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from storage.atomic import DurableLocalStore, fsync_dir
from storage.errors import StoreError
from storage.identity import code_version, config_hash, plain
from storage.integrity import CHECKSUM
from storage.manifest import manifest_sha256, read_manifest, validate_manifest, write_manifest

FORMAT = "ganviews.latents/1"
PENDING, DONE, FAILED = 0, 1, 2
STATUS_NAMES = {PENDING: "pending", DONE: "done", FAILED: "failed"}

# Per-image scalar metrics written by ``write``: name → (dtype, fill value for "not written").
METRICS: dict[str, tuple[np.dtype, Any]] = {
    "loss": (np.dtype("float32"), np.nan),  # total objective at the end of the optimisation
    "loss_l1": (np.dtype("float32"), np.nan),  # masked L1 term
    "loss_lpips": (np.dtype("float32"), np.nan),  # masked LPIPS term
    "loss_latent": (np.dtype("float32"), np.nan),  # latent (encoder-consistency) term
    "psnr": (np.dtype("float32"), np.nan),  # reconstruction PSNR in dB (masked)
    "lpips": (np.dtype("float32"), np.nan),  # reconstruction LPIPS distance
    "iterations": (np.dtype("int32"), -1),  # optimiser steps taken
}
LATENTS = ("w", "w_init")
TEXT = ("reason", "image_id")
CORE_ARRAYS = (*LATENTS, *METRICS, "status", *TEXT)
IDENTITY_KEYS = ("generator_sha256", "encoder_sha256", "config_hash")
LAYOUT_KEYS = ("n_images", "num_ws", "w_dim", "shard_size")
# Keys that describe one writing session, not what the latents are: never compared on reopen.
SESSION_KEYS = ("created_at", "code_version", "format")

# Compression (docs/storage.md, "Compression"): Blosc-zstd level 5 with bit shuffle had the
# best or near-best ratio on every measured latent profile (plain zstd, Blosc-lz4 and byte
# shuffle lost) at ≥ 350 MB/s; images are uint8, where shuffling is moot.
LATENT_CODEC = BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle", typesize=4)
IMAGE_CODEC = ZstdCodec(level=3)
SMALL_CODEC = ZstdCodec(level=3)
INNER_CHUNK_MIN_BYTES = 16 * 1024
NAME_PART = re.compile(r"^[A-Za-z0-9_.\-]+$")


def codec_for(dtype: np.dtype) -> Any:
    if dtype.kind == "f" and dtype.itemsize >= 4:
        return BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle", typesize=dtype.itemsize)
    return IMAGE_CODEC if dtype.kind in "ub" else SMALL_CODEC


def positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise StoreError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def is_store_dir(path: Path) -> bool:
    return (path / "zarr.json").is_file()


def move_into_place(tmp: Path, path: Path, overwrite: bool) -> None:
    old = None
    if path.exists() and overwrite:
        old = path.with_name(f".{path.name}.replaced-{uuid.uuid4().hex[:12]}")
        os.replace(path, old)
    try:
        os.rename(tmp, path)
    except OSError as exc:
        raise StoreError(
            f"{path} appeared while the store was being created (another process?): {exc}"
        ) from exc
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def identity_attrs(attrs: Mapping[str, Any] | None) -> dict[str, Any]:
    given = plain(dict(attrs or {}))
    for key in ("format", *LAYOUT_KEYS):
        if key in given:
            raise StoreError(f"attrs key {key!r} is set by the store itself; remove it")
    generator = given.get("generator_sha256")
    if not isinstance(generator, str) or not generator:
        raise StoreError(
            "attrs must name generator_sha256 (the generator checkpoint's content hash, "
            f"e.g. ganviews.core.runtime.file_sha256), got {generator!r}"
        )
    config = given.setdefault("config", {})
    if not isinstance(config, dict):
        raise StoreError(f"attrs['config'] must be a mapping, got {type(config).__name__}")
    given.setdefault("config_hash", config_hash(config))
    given.setdefault("encoder_sha256", None)
    given.setdefault("code_version", code_version())
    return given


def manifest_frame(manifest: pd.DataFrame | str | Path | None) -> pd.DataFrame | None:
    if manifest is None:
        return None
    if isinstance(manifest, (str, Path)):
        return read_manifest(manifest)
    _, labels = validate_manifest(manifest)
    frame = manifest.reset_index(drop=True)
    frame.attrs = {**manifest.attrs, "label_columns": labels}
    return frame


def resolve_ids(
    n_images: int, image_ids: Sequence[str] | None, frame: pd.DataFrame | None
) -> list[str]:
    if frame is not None:
        if len(frame) != n_images:
            raise StoreError(f"manifest has {len(frame)} rows but n_images={n_images}")
        from_manifest = [str(v) for v in frame["image_id"].tolist()]
        if image_ids is not None and list(image_ids) != from_manifest:
            raise StoreError("image_ids differ from the manifest's image_id column; pass one")
        return from_manifest
    if image_ids is None:
        return [str(i) for i in range(n_images)]
    ids = list(image_ids)
    if len(ids) != n_images:
        raise StoreError(f"image_ids has {len(ids)} entries but n_images={n_images}")
    bad = [v for v in ids if not isinstance(v, str) or not v]
    if bad:
        raise StoreError(f"image_ids must be non-empty strings, got {bad[0]!r}")
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dupe = next(v for v in ids if v in seen or seen.add(v))
        raise StoreError(f"image_ids must be unique; {dupe!r} appears twice")
    return ids


def create_core_arrays(group: zarr.Group, n: int, num_ws: int, w_dim: int, shard: int) -> None:
    for name in LATENTS:
        group.create_array(
            name,
            shape=(n, num_ws, w_dim),
            chunks=(shard, num_ws, w_dim),
            dtype="float32",
            fill_value=np.nan,
            compressors=[LATENT_CODEC, CHECKSUM],
            dimension_names=("image", "layer", "channel"),
        )
    for name, (dtype, fill) in METRICS.items():
        group.create_array(
            name,
            shape=(n,),
            chunks=(shard,),
            dtype=dtype,
            fill_value=fill,
            compressors=[SMALL_CODEC, CHECKSUM],
            dimension_names=("image",),
        )
    group.create_array(
        "status",
        shape=(n,),
        chunks=(shard,),
        dtype="uint8",
        fill_value=PENDING,
        compressors=[SMALL_CODEC, CHECKSUM],
        dimension_names=("image",),
    )
    for name in TEXT:
        group.create_array(
            name,
            shape=(n,),
            chunks=(shard,),
            dtype=str,
            fill_value="",
            compressors=[SMALL_CODEC, CHECKSUM],
            dimension_names=("image",),
        )


def check_values(name: str, value: Any, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise StoreError(
            f"{name} must be a numpy array, got {type(value).__name__} "
            "(convert tensors with .cpu().numpy())"
        )
    if tuple(value.shape) != tuple(shape):
        raise StoreError(f"{name} has shape {tuple(value.shape)}, expected {tuple(shape)}")
    if value.dtype != np.dtype(dtype):
        raise StoreError(f"{name} has dtype {value.dtype}, expected {np.dtype(dtype)}")
    return value


def check_metric(name: str, value: Any, k: int) -> np.ndarray:
    dtype = METRICS[name][0]
    arr = np.asarray(value)
    if arr.shape != (k,):
        raise StoreError(f"{name} has shape {arr.shape}, expected ({k},)")
    if dtype.kind == "f" and arr.dtype.kind not in "fiu":
        raise StoreError(f"{name} has dtype {arr.dtype}, expected a real number type")
    if dtype.kind == "i":
        if arr.dtype.kind not in "iu":
            raise StoreError(f"{name} has dtype {arr.dtype}, expected integers")
        if len(arr) and (arr.min() < np.iinfo(dtype).min or arr.max() > np.iinfo(dtype).max):
            raise StoreError(f"{name} values outside the {dtype} range")
    return arr.astype(dtype)


def create_store_folder(
    path: Path,
    *,
    n_images: int,
    num_ws: int,
    w_dim: int,
    shard_size: int,
    attrs: Mapping[str, Any] | None,
    overwrite: bool,
    image_ids: Sequence[str] | None,
    manifest: pd.DataFrame | str | Path | None,
    durable: bool,
) -> None:
    """Build a new store under a temporary name and rename it into place (LatentStore.create)."""
    path = Path(path)
    n_images = positive_int("n_images", n_images)
    num_ws = positive_int("num_ws", num_ws)
    w_dim = positive_int("w_dim", w_dim)
    shard_size = positive_int("shard_size", shard_size)
    frame = manifest_frame(manifest)
    ids = resolve_ids(n_images, image_ids, frame)
    stored = identity_attrs(attrs)
    if frame is not None:
        stored["manifest_sha256"] = manifest_sha256(frame)
    stored.update(
        format=FORMAT,
        n_images=n_images,
        num_ws=num_ws,
        w_dim=w_dim,
        shard_size=shard_size,
        created_at=now_iso(),
    )
    if path.exists():
        if not overwrite:
            raise StoreError(f"{path} already exists; pass overwrite=True to replace it")
        if path.is_file() or (any(path.iterdir()) and not is_store_dir(path)):
            raise StoreError(f"refusing to overwrite {path}: it exists and is not a latent store")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.creating-{uuid.uuid4().hex[:12]}")
    try:
        group = zarr.create_group(
            store=DurableLocalStore(tmp, durable=durable), attributes=stored, zarr_format=3
        )
        create_core_arrays(group, n_images, num_ws, w_dim, shard_size)
        group["image_id"][:] = np.asarray(ids, dtype=object)
        if frame is not None:
            write_manifest(frame, tmp / "manifest.parquet")
        move_into_place(tmp, path, overwrite)
        if durable:
            fsync_dir(path.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def check_indices(indices: Any, n_images: int, *, unique: bool = True) -> np.ndarray:
    """``indices`` as a 1-D int64 array of valid store indices (StoreError naming the problem)."""
    idx = np.asarray(indices)
    if idx.ndim == 0:
        idx = idx.reshape(1)
    if idx.ndim != 1:
        raise StoreError(f"indices must be 1-D, got shape {idx.shape}")
    if idx.size == 0:
        return idx.astype(np.int64)
    if idx.dtype.kind not in "iu":
        raise StoreError(f"indices must be integers, got dtype {idx.dtype}")
    idx = idx.astype(np.int64)
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= n_images:
        bad = lo if lo < 0 else hi
        raise StoreError(
            f"index {bad} out of range for a store of {n_images} images (valid: 0…{n_images - 1})"
        )
    if unique and len(np.unique(idx)) != len(idx):
        vals, counts = np.unique(idx, return_counts=True)
        raise StoreError(f"indices must be unique; {vals[counts > 1][:5].tolist()} repeat")
    return idx
