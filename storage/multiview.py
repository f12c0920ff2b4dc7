"""The multiview store: a Zarr v3 group of generated anchors and their views (GenRep data).

Jahanian et al. (ICLR 2022), Sec. 3.2.2 / 4.1: a dataset of anchors ``G(z)`` and their latent
views ``G(T_z(z))``, materialised once and read by every contrastive training run.

Layout (``<store>/``)::

    zarr.json      group; attributes: format, layout (below), generator_sha256, config (the
                   resolved SamplingConfig), config_hash, code_version, created_at
    images         [N, V, C, R, R] uint8   view 0 = the anchor
    latents        [N, V, D] float32       the latents rendered (z, or w for space = w)
    labels         [N] int64               the anchor's class (-1: unconditional generator)
    anchor_seed    [N] int64               the anchor's derived seed (item_seed(seed, "anchor", i))
    status         [N] uint8               0 pending, 1 done

Every array is chunked along axis 0 by ``shard_size``: shard k is ``[k·shard_size,
(k+1)·shard_size)`` and owns exactly one chunk file per array, so two workers on different
shards never write the same file. :meth:`MultiviewStore.write_shard` writes all data arrays
first and the status chunk last, each chunk by temp file + fsync + rename
(:class:`storage.atomic.DurableLocalStore`): a writer killed at any instant leaves no anchor
marked done without its data, and a rerun rewrites only shards with pending anchors. Every
array ends its codec chain with crc32c (:mod:`storage.integrity`), so a damaged chunk fails to
decode instead of giving wrong pixels: a read names the chunk in one line, and
``ganviews verify STORE [--reset]`` lists damaged or missing chunks and marks their shards
pending for sampling again.
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from storage.atomic import DurableLocalStore, remove_stale_partials
from storage.errors import StoreError
from storage.identity import code_version, config_hash, diff_mappings, plain
from storage.integrity import CHECKSUM, multiview_decoding

log = logging.getLogger(__name__)

FORMAT = "ganviews.multiview/1"
PENDING, DONE = 0, 1
LAYOUT_KEYS = ("n_anchors", "n_views", "latent_dim", "channels", "resolution", "shard_size")
IDENTITY_KEYS = ("generator_sha256", "config_hash")
CODEC = ZstdCodec(level=3)


def _arrays(layout: Mapping[str, int]) -> dict[str, tuple[tuple[int, ...], str, Any]]:
    """name → (shape, dtype, fill value): the store's arrays, declared once."""
    n, v = layout["n_anchors"], layout["n_views"]
    c, r = layout["channels"], layout["resolution"]
    return {
        "images": ((n, v, c, r, r), "uint8", 0),
        "latents": ((n, v, layout["latent_dim"]), "float32", np.nan),
        "labels": ((n,), "int64", -1),
        "anchor_seed": ((n,), "int64", -1),
        "status": ((n,), "uint8", PENDING),
    }


class MultiviewStore:
    """A resumable multiview dataset (see the module docstring); build with :meth:`open_or_create`."""

    def __init__(self, group: zarr.Group, path: Path, *, read_only: bool = False) -> None:
        self._group, self.path, self.read_only = group, path, read_only
        self.attrs = dict(group.attrs)
        self.layout = {k: int(self.attrs[k]) for k in LAYOUT_KEYS}
        self.n_anchors, self.shard_size = self.layout["n_anchors"], self.layout["shard_size"]
        # Test instrumentation: callables run at named points of write_shard ("after_data").
        self._hooks: dict[str, Callable[[], None]] = {}

    @classmethod
    def open_or_create(
        cls, path: str | Path, *, layout: Mapping[str, int], attrs: Mapping[str, Any]
    ) -> MultiviewStore:
        """Create the store (all anchors pending) or reopen it; on reopen the layout,
        ``generator_sha256`` and the config hash must match, else StoreError naming them.

        ``attrs`` needs ``generator_sha256`` and ``config`` (a mapping).
        """
        path = Path(path)
        layout = {k: int(layout[k]) for k in LAYOUT_KEYS}
        bad = [k for k, v in layout.items() if v < 1]
        if bad:
            raise StoreError(f"layout: {bad} must be positive integers, got {layout}")
        if not attrs.get("generator_sha256") or not isinstance(attrs.get("config"), Mapping):
            raise StoreError("attrs: need generator_sha256 (str) and config (a mapping)")
        identity = {
            "generator_sha256": attrs["generator_sha256"],
            "config": plain(dict(attrs["config"])),
            "config_hash": config_hash(attrs["config"]),
        }
        if (path / "zarr.json").is_file():
            store = cls.open(path, mode="a")
            stored = {k: store.attrs.get(k) for k in (*LAYOUT_KEYS, "generator_sha256", "config")}
            diff = diff_mappings(
                stored, {**layout, **{k: identity[k] for k in stored if k in identity}}
            )
            if diff:
                raise StoreError(
                    f"{path}: a multiview store made with other settings ({'; '.join(diff[:4])}); "
                    "use another store path or delete it"
                )
            return store
        group = zarr.create_group(
            store=DurableLocalStore(path),
            zarr_format=3,
            attributes={
                "format": FORMAT,
                **layout,
                **identity,
                **plain({k: v for k, v in attrs.items() if k not in identity}),
                "code_version": code_version(),
                "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            },
        )
        for name, (shape, dtype, fill) in _arrays(layout).items():
            group.create_array(
                name,
                shape=shape,
                chunks=(layout["shard_size"], *shape[1:]),
                dtype=dtype,
                fill_value=fill,
                compressors=[CODEC, CHECKSUM],  # crc32c: a damaged chunk fails to decode
            )
        log.info("created multiview store %s: %s", path, layout)
        return cls(group, path)

    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> MultiviewStore:
        """Open an existing store read-only (``"r"``) or for writing (``"a"``)."""
        path = Path(path)
        if not (path / "zarr.json").is_file():
            raise StoreError(f"no multiview store at {path} (no zarr.json)")
        if mode not in ("r", "a"):
            raise StoreError(f"mode: expected 'r' or 'a', got {mode!r}")
        zstore = DurableLocalStore(path, read_only=mode == "r")
        group = zarr.open_group(store=zstore, mode="r" if mode == "r" else "r+", zarr_format=3)
        if group.attrs.get("format") != FORMAT:
            raise StoreError(
                f"{path}: not a multiview store (format={group.attrs.get('format')!r}, expected {FORMAT!r})"
            )
        if mode == "a":
            remove_stale_partials(path)
        return cls(group, path, read_only=mode == "r")

    # ------------------------------------------------------------------ shards and status

    def shards(self) -> list[tuple[int, int]]:
        """Every shard's ``(start, stop)``."""
        n, size = self.n_anchors, self.shard_size
        return [(s, min(s + size, n)) for s in range(0, n, size)]

    def status(self) -> np.ndarray:
        with multiview_decoding(self, "status", self.n_anchors):
            return np.asarray(self._group["status"][:])

    def pending_shards(self) -> list[tuple[int, int]]:
        """Shards with at least one anchor not done (what a rerun must still write)."""
        status = self.status()
        return [(a, b) for a, b in self.shards() if (status[a:b] != DONE).any()]

    def n_done(self) -> int:
        return int((self.status() == DONE).sum())

    def write_shard(self, start: int, data: Mapping[str, np.ndarray]) -> None:
        """Write one whole shard's ``images``, ``latents``, ``labels``, ``anchor_seed``, then
        mark its anchors done. ``start`` must be a shard boundary and the arrays cover the shard."""
        bounds = dict(self.shards())
        if start not in bounds:
            raise StoreError(
                f"start: {start} is not a shard boundary (shard_size {self.shard_size})"
            )
        stop = bounds[start]
        specs = _arrays(self.layout)
        values = {}
        for name in ("images", "latents", "labels", "anchor_seed"):
            shape, dtype, _ = specs[name]
            value = np.asarray(data[name])
            want = (stop - start, *shape[1:])
            if value.shape != want:
                raise StoreError(f"{name}: expected shape {list(want)}, got {list(value.shape)}")
            values[name] = value.astype(dtype, copy=False)
        for name, value in values.items():
            self._group[name][start:stop] = value
        if "after_data" in self._hooks:
            self._hooks["after_data"]()
        self._group["status"][start:stop] = np.full(stop - start, DONE, np.uint8)

    def read(self, stop: int | None = None) -> dict[str, np.ndarray]:
        """The first ``stop`` anchors (default all) as arrays; StoreError if any is not done."""
        stop = self.n_anchors if stop is None else int(stop)
        if not 0 < stop <= self.n_anchors:
            raise StoreError(f"stop: expected 1…{self.n_anchors}, got {stop}")
        status = self.status()[:stop]
        if (status != DONE).any():
            raise StoreError(
                f"{self.path}: {int((status != DONE).sum())} of the first {stop} anchors are not "
                "sampled yet; run `ganviews multiview sample` (it resumes)"
            )
        out = {}
        for name in ("images", "latents", "labels", "anchor_seed"):
            with multiview_decoding(self, name, stop):
                out[name] = np.asarray(self._group[name][:stop])
        return out


def is_multiview_store(path: str | Path) -> bool:
    """Whether ``path`` holds a multiview store (its zarr.json names this format)."""
    import json

    meta = Path(path) / "zarr.json"
    if not meta.is_file():
        return False
    try:
        return json.loads(meta.read_text()).get("attributes", {}).get("format") == FORMAT
    except (OSError, ValueError):
        return False
