"""The latent store's extra arrays — per-image uint8 images (``images/aligned``, ``images/mask``,
``images/recon``: storage/arrays.py) and persisted views (``views/<method>/<setting>``) —
chunked like the core arrays (one file per shard; large rows sharded one image per inner
chunk). A mixin of :class:`storage.latents.LatentStore`, which provides the group, the index
checks, the locks and the durable row writes.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import zarr
from zarr.errors import ContainsArrayError, ContainsGroupError

from storage.errors import StoreError
from storage.integrity import CHECKSUM
from storage.latent_layout import (
    CORE_ARRAYS,
    INNER_CHUNK_MIN_BYTES,
    NAME_PART,
    check_values,
    codec_for,
    positive_int,
)


class ExtraArrays:
    """Create, write, read and list the store's extra arrays (see the module docstring)."""

    def ensure_array(
        self, name: str, tail_shape: Sequence[int], dtype: Any, fill_value: Any = 0
    ) -> None:
        """Create the per-image array ``name`` ``[N, *tail_shape]`` unless it exists (then check it).

        Chunked by shard along axis 0; images (≥ 16 KiB per item) get one inner chunk per image.
        """
        self._check_name(name)
        tail = tuple(positive_int(f"{name} tail_shape", d) for d in tail_shape)
        try:
            dtype = np.dtype(dtype)
        except TypeError as exc:
            raise StoreError(f"array {name!r}: dtype {dtype!r} is not a numpy dtype") from exc
        if dtype.kind not in "biuf":
            raise StoreError(f"array {name!r}: dtype {dtype} not supported (numbers or bool only)")
        shape = (self.n_images, *tail)
        existing = self._array(name, missing_ok=True)
        if existing is not None:
            if tuple(existing.shape) != shape or existing.dtype != dtype:
                raise StoreError(
                    f"array {name!r} exists with shape {existing.shape} and dtype "
                    f"{existing.dtype}; asked for {shape} {dtype}"
                )
            return
        self._writable()
        item_bytes = int(np.prod(tail, dtype=np.int64)) * dtype.itemsize
        outer = (self.shard_size, *tail)
        inner = (1, *tail) if item_bytes >= INNER_CHUNK_MIN_BYTES else None
        try:
            self._group.create_array(
                name,
                shape=shape,
                chunks=inner or outer,
                shards=outer if inner else None,
                dtype=dtype,
                fill_value=fill_value,
                compressors=[codec_for(dtype), CHECKSUM],
                dimension_names=("image", *(f"dim_{i}" for i in range(1, len(shape)))),
            )
        except (ContainsArrayError, ContainsGroupError):  # created concurrently: check it
            self._arrays.pop(name, None)
            self.ensure_array(name, tail_shape, dtype, fill_value)
        except ValueError as exc:
            raise StoreError(f"array {name!r} cannot be created: {exc}") from exc

    def write_array(
        self, name: str, indices: Sequence[int] | np.ndarray, values: np.ndarray
    ) -> None:
        """Write rows of an extra array (validated first). Does not change any status."""
        self._writable()
        arr = self._extra(name)
        idx = self._indices(indices)
        values = check_values(name, values, (len(idx), *arr.shape[1:]), arr.dtype)
        order = np.argsort(idx, kind="stable")
        with self._locked(idx):
            self._write_rows(name, idx[order], values[order])

    def read_array(self, name: str, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Rows ``indices`` of an extra array, in order."""
        self._extra(name)
        return self._read_rows(name, self._indices(indices, unique=False))

    def array_names(self) -> list[str]:
        """Every array in the store (core and extra), as paths like ``images/aligned``."""
        return sorted(self._member_arrays())

    def _member_arrays(self) -> list[str]:
        with warnings.catch_warnings():  # manifest.parquet is ours, not a stray object
            warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr")
            return [
                name
                for name, node in self._group.members(max_depth=None)
                if isinstance(node, zarr.Array)
            ]

    def _extra(self, name: str) -> zarr.Array:
        if name in CORE_ARRAYS:
            raise StoreError(f"{name!r} is a core array; use write()/read()/mark_failed()")
        arr = self._array(name, missing_ok=True)
        if arr is None:
            raise StoreError(
                f"{self._path}: no array named {name!r}; create it with ensure_array "
                f"(existing: {self.array_names()})"
            )
        return arr

    def _check_name(self, name: str) -> None:
        parts = name.split("/") if isinstance(name, str) else [None]
        if not parts or any(
            p is None or not NAME_PART.match(p) or p.startswith("__") or p in (".", "..")
            for p in parts
        ):
            raise StoreError(
                f"array name {name!r}: use '/'-separated parts of letters, digits, '_', '.', '-'"
            )
        if name in CORE_ARRAYS or parts[0] in CORE_ARRAYS:
            raise StoreError(f"array name {name!r} collides with core array {parts[0]!r}")
