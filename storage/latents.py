"""The latent store: a Zarr v3 group holding every image's inverted w+, its losses and its status.

Paper: Chai et al., "Ensembling with Deep Generative Views" (CVPR 2021), §3.1 — each image
is projected to ``w*`` (an encoder's ``w_init`` refined by L-BFGS on masked L1 + LPIPS +
a latent term); the views of §3.2 are rendered from ``w*``. This store is where the
projections live and the source of truth for what is done, what failed and why.

Layout (``<store>/``)::

    zarr.json          group; attributes = identity + layout (see ``attrs``)
    manifest.parquet   optional copy of the dataset manifest (row i = store index i)
    w, w_init          [N, num_ws, w_dim] float32, NaN until written
    loss, loss_l1, loss_lpips, loss_latent, psnr, lpips     [N] float32, NaN until written
    iterations         [N] int32, -1 until written
    status             [N] uint8: 0 pending, 1 done, 2 failed
    reason             [N] string (vlen-utf8): why an item failed, "" otherwise
    attempts           [N] int32: failed attempts so far (made at the first failure; absent = 0)
    image_id           [N] string (vlen-utf8), written once at creation
    <extra arrays>     e.g. images/aligned [N, C, H, W] uint8, views/<method>/<setting>

Every array is chunked along axis 0 by ``shard_size``: shard ``k`` is the index range
``[k·shard_size, (k+1)·shard_size)`` and owns exactly one chunk file per array, so workers
on different shards never write the same file. Large extra arrays (≥ 16 KiB per image) use
Zarr's sharding codec with one inner chunk per image: still one file per shard, but one
image can be read without decoding its 63 neighbours.

Durability: every chunk file is written to a temporary name, fsynced and renamed
(:class:`storage.atomic.DurableLocalStore`), and :meth:`LatentStore.write` writes all data
arrays before it writes the status chunk, so a writer killed at any instant leaves no item
marked done without its data. One writer per shard is enforced, not just planned: every
write holds the shard's ``flock`` (:mod:`storage.lease`) from its status check to its status
write, and a shard task holds the shard's writer lease.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr

from storage.atomic import DurableLocalStore, remove_stale_partials
from storage.errors import StoreError
from storage.identity import code_version, diff_mappings, plain
from storage.integrity import decoding
from storage.latent_arrays import ExtraArrays
from storage.latent_attempts import ATTEMPTS, FailedAttempts
from storage.latent_layout import (
    CORE_ARRAYS,
    DONE,
    FAILED,
    FORMAT,
    IDENTITY_KEYS,
    LAYOUT_KEYS,
    METRICS,
    PENDING,
    SESSION_KEYS,
    TEXT,
    check_indices,
    check_metric,
    check_values,
    create_store_folder,
    identity_attrs,
    is_store_dir,
    manifest_frame,
    resolve_ids,
)
from storage.lease import shard_locks
from storage.manifest import manifest_sha256, read_manifest

log = logging.getLogger(__name__)


class LatentStore(ExtraArrays, FailedAttempts):
    """A resumable Zarr v3 store of per-image latents (see the module docstring for the layout).

    Build one with :meth:`create`, :meth:`open` or :meth:`open_or_create`, not the constructor.
    """

    def __init__(self, group: zarr.Group, path: Path, mode: str) -> None:
        self._group = group
        self._path = path
        self._mode = mode
        self._attrs = dict(group.attrs)
        self._arrays: dict[str, zarr.Array] = {}
        self._image_ids: np.ndarray | None = None
        # Test instrumentation: callables run at named points of ``write`` ("after_data",
        # "after_array"), e.g. to stop a child process mid-batch in the SIGKILL tests.
        self._hooks: dict[str, Callable[..., None]] = {}
        self.n_images = int(self._attrs["n_images"])
        self.num_ws = int(self._attrs["num_ws"])
        self.w_dim = int(self._attrs["w_dim"])
        self.shard_size = int(self._attrs["shard_size"])

    # ------------------------------------------------------------------ creation / opening

    @classmethod
    def create(
        cls,
        path: str | Path,
        n_images: int,
        num_ws: int,
        w_dim: int,
        shard_size: int,
        attrs: Mapping[str, Any] | None = None,
        overwrite: bool = False,
        image_ids: Sequence[str] | None = None,
        manifest: pd.DataFrame | str | Path | None = None,
        *,
        durable: bool = True,
    ) -> LatentStore:
        """Create an empty store (all items pending) and return it opened for writing.

        ``attrs`` must name ``generator_sha256``; ``encoder_sha256``, ``config`` (a dict),
        ``config_hash`` (default: sha256 of the canonical JSON of ``config``) and
        ``code_version`` are recorded too, with anything else given. ``image_ids`` default to
        the manifest's ``image_id`` column, else to ``"0"…"N-1"``. An existing store at
        ``path`` is replaced only with ``overwrite=True``; other existing content never is.
        The store is built under a temporary name and renamed into place, so a crash during
        creation never leaves something that looks like a store.
        """
        path = Path(path)
        create_store_folder(
            path, n_images=n_images, num_ws=num_ws, w_dim=w_dim, shard_size=shard_size,
            attrs=attrs, overwrite=overwrite, image_ids=image_ids, manifest=manifest, durable=durable,
        )  # fmt: skip
        log.info("created latent store %s: %d images, shards of %d", path, n_images, shard_size)
        return cls.open(path, mode="a", durable=durable)

    @classmethod
    def open(
        cls,
        path: str | Path,
        mode: str = "r",
        expect_attrs: Mapping[str, Any] | None = None,
        *,
        durable: bool = True,
    ) -> LatentStore:
        """Open an existing store, ``mode="r"`` (read only) or ``"a"`` (read and write).

        ``expect_attrs`` (e.g. ``{"generator_sha256": ..., "config_hash": ...}``) must equal the
        stored values, else StoreError names the key, the stored and the given value.
        """
        if mode not in ("r", "a"):
            raise StoreError(f"mode must be 'r' or 'a', got {mode!r}")
        path = Path(path)
        if not path.exists():
            raise StoreError(f"no latent store at {path}: the path does not exist")
        if not is_store_dir(path):
            raise StoreError(f"{path} is not a latent store (no zarr.json)")
        store = DurableLocalStore(path, read_only=(mode == "r"), durable=durable)
        try:
            group = zarr.open_group(store=store, mode="r" if mode == "r" else "r+", zarr_format=3)
        except (FileNotFoundError, ValueError, TypeError, KeyError) as exc:
            raise StoreError(f"{path} is not a latent store: {exc}") from exc
        if group.attrs.get("format") != FORMAT:
            raise StoreError(
                f"{path} is a Zarr group but not a ganviews latent store "
                f"(attribute format={group.attrs.get('format')!r}, expected {FORMAT!r})"
            )
        missing_layout = [k for k in LAYOUT_KEYS if k not in group.attrs]
        if missing_layout:
            raise StoreError(f"{path}: store attributes lack {missing_layout}")
        self = cls(group, path, mode)
        self._check_arrays()
        if expect_attrs:
            self.check_identity(expect_attrs)
        if mode == "a":
            removed = remove_stale_partials(path)
            if removed:
                log.info("%s: removed %d stale temporary files of killed writers", path, removed)
        return self

    @classmethod
    def open_or_create(
        cls,
        path: str | Path,
        n_images: int,
        num_ws: int,
        w_dim: int,
        shard_size: int,
        attrs: Mapping[str, Any] | None = None,
        image_ids: Sequence[str] | None = None,
        manifest: pd.DataFrame | str | Path | None = None,
        *,
        durable: bool = True,
    ) -> LatentStore:
        """For jobs that may be the first run or a rerun: create if absent, else open ``"a"``.

        On reopen the layout (n_images, num_ws, w_dim, shard_size), the identity in ``attrs``
        (generator/encoder hash, config hash, any other given key except created_at and
        code_version), the image ids and the manifest hash must match, else StoreError.
        """
        path = Path(path)
        if not is_store_dir(path):
            try:
                return cls.create(
                    path, n_images, num_ws, w_dim, shard_size, attrs=attrs,
                    image_ids=image_ids, manifest=manifest, durable=durable,
                )  # fmt: skip
            except StoreError:
                if not is_store_dir(path):  # not a lost creation race: a real error
                    raise
        frame = manifest_frame(manifest)
        expected = {k: v for k, v in identity_attrs(attrs).items() if k not in SESSION_KEYS}
        layout = {"n_images": n_images, "num_ws": num_ws, "w_dim": w_dim, "shard_size": shard_size}
        if frame is not None:
            expected["manifest_sha256"] = manifest_sha256(frame)
        self = cls.open(path, mode="a", expect_attrs={**layout, **expected}, durable=durable)
        if image_ids is not None or frame is not None:
            ids = resolve_ids(self.n_images, image_ids, frame)
            stored = self.image_ids
            if not np.array_equal(stored, np.asarray(ids, dtype=object)):
                first = int(np.flatnonzero(stored != np.asarray(ids, dtype=object))[0])
                raise StoreError(
                    f"{path}: image ids differ from the stored ones, first at index "
                    f"{first}: stored {stored[first]!r}, given {ids[first]!r}"
                )
        given_version = (attrs or {}).get("code_version", code_version())
        if given_version != self._attrs.get("code_version"):
            log.warning(
                "%s was created by code version %s; now writing with %s",
                path,
                self._attrs.get("code_version"),
                given_version,
            )
        return self

    def _check_arrays(self) -> None:
        names = set(self._member_arrays())
        missing = [name for name in CORE_ARRAYS if name not in names]
        if missing:
            raise StoreError(f"{self._path}: latent store is missing array(s) {missing}")
        n, shapes = (
            self.n_images,
            {"w": (self.num_ws, self.w_dim), "w_init": (self.num_ws, self.w_dim)},
        )
        for name in CORE_ARRAYS:
            arr = self._array(name)
            want = (n, *shapes.get(name, ()))
            if tuple(arr.shape) != want or arr.chunks[0] != self.shard_size:
                raise StoreError(
                    f"{self._path}: array {name!r} has shape {arr.shape} and chunks "
                    f"{arr.chunks}, expected shape {want} in chunks of {self.shard_size}"
                )

    # ------------------------------------------------------------------ identity

    @property
    def path(self) -> Path:
        return self._path

    @property
    def mode(self) -> str:
        return self._mode

    @property
    def attrs(self) -> dict[str, Any]:
        """Identity and layout: generator_sha256, encoder_sha256, config, config_hash,
        code_version, created_at, manifest_sha256 (when a manifest was given), n_images,
        num_ws, w_dim, shard_size, format, and any other key given at creation."""
        return plain(self._attrs)

    def record_attrs(self, values: Mapping[str, Any]) -> None:
        """Add run-level attributes (e.g. the numerics of the first writer) to the store;
        identity, layout and session keys are fixed at creation and refused here."""
        self._writable()
        fixed = sorted(set(values) & {*IDENTITY_KEYS, *LAYOUT_KEYS, *SESSION_KEYS, "config"})
        if fixed:
            raise StoreError(f"record_attrs: {fixed} are fixed when the store is created")
        values = plain(dict(values))
        self._group.attrs.update(values)
        self._attrs.update(values)

    def check_identity(self, expect: Mapping[str, Any]) -> None:
        """StoreError naming every key whose stored value differs from ``expect``'s."""
        stored, expect = self.attrs, plain(dict(expect))
        problems = []
        for key, value in expect.items():
            if key not in stored:
                problems.append(f"{key}: not stored, given {value!r}")
            elif key == "config" and isinstance(value, dict):
                problems.extend(f"config.{line}" for line in diff_mappings(stored[key], value))
            elif (
                key == "config_hash"
                and "config" in expect
                and stored.get("config") != expect["config"]
            ):
                continue  # the config's own differences are listed; its hash adds nothing
            elif stored[key] != value:
                problems.append(f"{key}: stored {stored[key]!r}, given {value!r}")
        if problems:
            raise StoreError(
                f"{self._path} holds latents made with other settings; refusing to mix: "
                + "; ".join(problems)
                + " (use another store, or start this one over: "
                "overwrite=True, CLI --overwrite)"
            )

    def manifest(self) -> pd.DataFrame | None:
        """The manifest stored with the store (row i = index i), or None."""
        path = self._path / "manifest.parquet"
        return read_manifest(path) if path.is_file() else None

    @property
    def image_ids(self) -> np.ndarray:
        """All image ids (object array of str), index-aligned with the arrays."""
        if self._image_ids is None:
            with decoding(self, "image_id", 0, self.n_images):
                self._image_ids = np.asarray(self._array("image_id")[:], dtype=object)
        return self._image_ids

    def indices_of(self, image_ids: Sequence[str]) -> np.ndarray:
        """Store indices of the given image ids (StoreError naming the first unknown one)."""
        lookup = {v: i for i, v in enumerate(self.image_ids)}
        missing = [v for v in image_ids if v not in lookup]
        if missing:
            raise StoreError(f"{self._path}: unknown image_id(s) {missing[:5]}")
        return np.asarray([lookup[v] for v in image_ids], dtype=np.int64)

    # ------------------------------------------------------------------ shards

    def shards(self) -> list[tuple[int, int]]:
        """Chunk-aligned index ranges ``(start, stop)``; one writer per shard."""
        step = self.shard_size
        return [(s, min(s + step, self.n_images)) for s in range(0, self.n_images, step)]

    def shard_of(self, index: int) -> int:
        """Position in :meth:`shards` of the shard holding ``index``."""
        self._indices([index])
        return int(index) // self.shard_size

    # ------------------------------------------------------------------ status

    def _status(self) -> np.ndarray:
        with decoding(self, "status", 0, self.n_images):
            return np.asarray(self._array("status")[:])

    def pending(self) -> np.ndarray:
        return np.flatnonzero(self._status() == PENDING).astype(np.int64)

    def done(self) -> np.ndarray:
        return np.flatnonzero(self._status() == DONE).astype(np.int64)

    def failed(self) -> np.ndarray:
        return np.flatnonzero(self._status() == FAILED).astype(np.int64)

    def todo(
        self,
        *,
        retry_failed: bool = True,
        shard: tuple[int, int] | None = None,
        max_attempts: int | None = None,
    ) -> np.ndarray:
        """Indices still to process, optionally in one shard: pending, and failed ones that
        failed fewer than ``max_attempts`` times (None: all; ``retry_failed=False`` ≡ 1)."""
        want = self._retryable(self._status(), max_attempts if retry_failed else 1)
        if shard is not None:  # only the shard's index range
            want[: shard[0]] = False
            want[shard[1] :] = False
        return np.flatnonzero(want).astype(np.int64)

    def status_table(self) -> pd.DataFrame:
        """One row per shard: shard, start, stop, pending, done, failed."""
        status = self._status()
        rows = []
        for k, (start, stop) in enumerate(self.shards()):
            counts = np.bincount(status[start:stop], minlength=3)
            rows.append(
                {
                    "shard": k,
                    "start": start,
                    "stop": stop,
                    "pending": int(counts[PENDING]),
                    "done": int(counts[DONE]),
                    "failed": int(counts[FAILED]),
                }
            )
        return pd.DataFrame(rows, columns=["shard", "start", "stop", "pending", "done", "failed"])

    def failures(self) -> pd.DataFrame:
        """One row per failed item: index, image_id, reason, shard, attempts (failures so far)."""
        idx = self.failed()
        reasons = self._read_rows("reason", idx) if len(idx) else np.empty(0, dtype=object)
        return pd.DataFrame(
            {
                "index": idx,
                "image_id": self.image_ids[idx].astype(str) if len(idx) else np.empty(0, dtype=str),
                "reason": np.asarray(reasons, dtype=object).astype(str),
                "shard": idx // self.shard_size,
                "attempts": np.maximum(self.attempts()[idx], 1),
            }
        )

    # ------------------------------------------------------------------ writing

    def write(
        self,
        indices: Sequence[int] | np.ndarray,
        *,
        w: np.ndarray,
        w_init: np.ndarray | None = None,
        arrays: Mapping[str, np.ndarray] | None = None,
        overwrite: bool = False,
        **metrics: np.ndarray,
    ) -> None:
        """Write results for ``indices`` and only then mark them done.

        ``w`` (and ``w_init``) ``[k, num_ws, w_dim]`` float32; metrics (``loss``, ``loss_l1``,
        ``loss_lpips``, ``loss_latent``, ``psnr``, ``lpips``: ``[k]`` floats; ``iterations``:
        ``[k]`` integers); ``arrays`` maps names made by :meth:`ensure_array` to ``[k, …]``
        values written in the same step. Everything is validated before anything is written.
        Indices already done are refused unless ``overwrite=True`` (done work is never redone
        by accident).
        """
        self._writable()
        idx = self._indices(indices)
        k = len(idx)
        latent_shape = (k, self.num_ws, self.w_dim)
        values: dict[str, np.ndarray] = {"w": check_values("w", w, latent_shape, np.float32)}
        if w_init is not None:
            values["w_init"] = check_values("w_init", w_init, latent_shape, np.float32)
        unknown = sorted(set(metrics) - set(METRICS))
        if unknown:
            raise StoreError(
                f"unknown metric(s) {unknown}; allowed: {sorted(METRICS)} (other "
                "per-image values: ensure_array + arrays=)"
            )
        for name, value in metrics.items():
            if value is not None:
                values[name] = check_metric(name, value, k)
        for name, value in (arrays or {}).items():
            arr = self._extra(name)
            values[name] = check_values(name, value, (k, *arr.shape[1:]), arr.dtype)
        if k == 0:
            return
        order = np.argsort(idx, kind="stable")
        idx_sorted = idx[order]
        with self._locked(idx_sorted):  # check, data, then status: one writer per shard
            status = self._read_rows("status", idx_sorted)  # only the touched shards' chunks
            if not overwrite:
                already = idx_sorted[status == DONE]
                if len(already):
                    raise StoreError(
                        f"{self._path}: indices {already[:10].tolist()} are already done "
                        "(pass overwrite=True to replace finished results)"
                    )
            for name, value in values.items():
                self._write_rows(name, idx_sorted, value[order])
                self._fire("after_array", name)
            self._fire("after_data")
            self._write_rows("status", idx_sorted, np.full(k, DONE, np.uint8))
            stale = idx_sorted[status == FAILED]
            if len(stale):  # the reason of an earlier failure no longer applies
                self._write_rows("reason", stale, np.full(len(stale), "", dtype=object))

    def mark_failed(
        self,
        indices: Sequence[int] | np.ndarray,
        reasons: str | Sequence[str],
        *,
        overwrite: bool = False,
    ) -> None:
        """Record ``reasons`` (one per index, or one string), count a failed attempt, mark failed."""
        self._writable()
        idx = self._indices(indices)
        texts = [reasons] * len(idx) if isinstance(reasons, str) else list(reasons)
        if len(texts) != len(idx):
            raise StoreError(f"reasons has {len(texts)} entries for {len(idx)} indices")
        bad = [t for t in texts if not isinstance(t, str)]
        if bad:
            raise StoreError(f"reasons must be strings, got {type(bad[0]).__name__}: {bad[0]!r}")
        if not len(idx):
            return
        texts = [t or "unspecified" for t in texts]
        self.ensure_array(ATTEMPTS, (), np.int32, fill_value=0)
        with self._locked(idx):
            if not overwrite:
                already = idx[self._read_rows("status", idx) == DONE]
                if len(already):
                    raise StoreError(
                        f"{self._path}: indices {already[:10].tolist()} are done; pass "
                        "overwrite=True to mark finished items failed"
                    )
            order = np.argsort(idx, kind="stable")
            self._write_rows("reason", idx[order], np.asarray(texts, dtype=object)[order])
            self._count_failures(idx[order])
            self._write_rows("status", idx[order], np.full(len(idx), FAILED, np.uint8))

    def reset(self, indices: Sequence[int] | np.ndarray) -> None:
        """Mark ``indices`` pending again (their data stays until overwritten)."""
        self._writable()
        idx = np.sort(self._indices(indices))
        if len(idx):
            with self._locked(idx):
                self._write_rows("status", idx, np.full(len(idx), PENDING, np.uint8))
                self._write_rows("reason", idx, np.full(len(idx), "", dtype=object))

    # ------------------------------------------------------------------ reading

    def read(
        self, indices: Sequence[int] | np.ndarray, fields: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """``{"w", "w_init", <metrics>, "status", "image_id", "reason"}`` for ``indices``, in order.

        Items not written hold NaN (floats) and -1 (iterations); check ``status``.
        """
        idx = self._indices(indices, unique=False)
        names = list(fields) if fields is not None else list(CORE_ARRAYS)
        unknown = [n for n in names if n not in CORE_ARRAYS]
        if unknown:
            raise StoreError(
                f"unknown field(s) {unknown}; fields: {list(CORE_ARRAYS)} "
                "(extra arrays: read_array)"
            )
        out = {name: self._read_rows(name, idx) for name in names}
        for name in TEXT:
            if name in out:
                out[name] = np.asarray(out[name], dtype=object)
        return out

    # ------------------------------------------------------------------ internals

    def _array(self, name: str, missing_ok: bool = False) -> zarr.Array | None:
        arr = self._arrays.get(name)
        if arr is None:
            try:
                node = self._group[name]
            except KeyError:
                node = None
            if not isinstance(node, zarr.Array):
                if missing_ok:
                    return None
                raise StoreError(
                    f"{self._path}: no array named {name!r}; arrays: {self.array_names()}"
                )
            arr = self._arrays[name] = node
        return arr

    def _writable(self) -> None:
        if self._mode != "a":
            raise StoreError(f"{self._path} is open read-only; open it with mode='a' to write")

    def _indices(self, indices: Any, unique: bool = True) -> np.ndarray:
        return check_indices(indices, self.n_images, unique=unique)

    def _write_rows(self, name: str, idx: np.ndarray, values: np.ndarray) -> None:
        """Write sorted ``idx`` rows: one read-modify-write per touched chunk (never a chunk
        file of another shard). Zarr's orthogonal assignment is avoided on purpose: with the
        sharding codec it fails in zarr 3.1 for non-contiguous rows within a shard."""
        arr = self._array(name)
        chunk_of = idx // self.shard_size
        bounds = np.flatnonzero(np.diff(chunk_of)) + 1
        for sel in np.split(np.arange(len(idx)), bounds):
            rows = idx[sel]
            lo, hi = int(rows[0]), int(rows[-1]) + 1
            if hi - lo == len(rows):
                arr[lo:hi] = values[sel]
            else:
                with decoding(self, name, lo, hi):
                    block = np.asarray(arr[lo:hi])
                if block.dtype.kind == "T":  # numpy StringDType from vlen-utf8
                    block = block.astype(object)
                block[rows - lo] = values[sel]
                arr[lo:hi] = block

    def _read_rows(self, name: str, idx: np.ndarray) -> np.ndarray:
        arr = self._array(name)
        if len(idx) == 0:
            return np.empty((0, *arr.shape[1:]), dtype=object if name in TEXT else arr.dtype)
        lo, hi = int(idx.min()), int(idx.max()) + 1
        with decoding(self, name, lo, hi):
            if hi - lo == len(idx) and np.all(np.diff(idx) == 1):
                return np.asarray(arr[lo:hi])
            uniq, inverse = np.unique(idx, return_inverse=True)
            return np.asarray(arr.oindex[uniq])[inverse]

    def _locked(self, idx: np.ndarray) -> contextlib.AbstractContextManager[None]:
        """The write locks of the shards ``idx`` touches (storage.lease), none when empty."""
        if not len(idx):
            return contextlib.nullcontext()
        return shard_locks(self._path, np.unique(np.asarray(idx) // self.shard_size).tolist())

    def _fire(self, point: str, *args: Any) -> None:
        hook = self._hooks.get(point)
        if hook is not None:
            hook(*args)

    def __repr__(self) -> str:
        counts = np.bincount(self._status(), minlength=3)
        return (
            f"LatentStore({str(self._path)!r}, mode={self._mode!r}, n_images={self.n_images}, "
            f"num_ws={self.num_ws}, w_dim={self.w_dim}, shard_size={self.shard_size}, "
            f"done={counts[DONE]}, failed={counts[FAILED]}, pending={counts[PENDING]})"
        )
