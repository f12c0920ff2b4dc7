"""Damaged chunks of a latent or multiview store: named on read, listed by ``verify``, reset
for recompute.

New stores end every array's codec chain with Zarr v3's ``crc32c`` codec, so a flipped or
truncated chunk fails to decode instead of yielding wrong numbers (stores made before keep
their codecs and still open). Three tools on top (issue 18.4):

* :func:`decoding` wraps every read of :class:`~storage.latents.LatentStore`: a codec error
  becomes one :class:`StoreError` line naming the store, the array, the chunk key and its
  image range, instead of an 86-line zstd traceback naming no file.
* :func:`verify` decodes every chunk of every array and checks that each shard with done
  items has its ``w`` and ``status`` chunks and finite ``w`` for them (a deleted ``w`` chunk
  reads as NaN and was noticed only when rendering failed).
* :func:`reset_damaged` rewrites each damaged chunk whole with its fill value (a whole-chunk
  write never reads the old bytes) and marks the chunk's images pending, so ``invert``
  recomputes exactly them.

The GenRep multiview store (:mod:`storage.multiview`) gets the same three:
:func:`multiview_decoding` on its reads, :func:`verify_multiview` (every chunk decodes; a
shard with done anchors has its ``images``, ``latents`` and ``anchor_seed`` chunks and finite
latents) and :func:`reset_multiview` (damaged chunks rewritten with their fill value, their
shards marked pending, so ``ganviews multiview sample`` samples exactly those shards again).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from zarr.codecs import Crc32cCodec

from storage.errors import StoreError

if TYPE_CHECKING:
    import zarr

    from storage.latents import LatentStore
    from storage.multiview import MultiviewStore

CHECKSUM = Crc32cCodec()  # last codec of every array of a new store


@dataclass(frozen=True)
class Damage:
    """One damaged chunk: ``array``'s chunk ``chunk`` (file ``key``) holds images [start, stop)."""

    array: str
    chunk: int
    start: int
    stop: int
    key: str
    problem: str
    unit: str = "images"  # what the rows are: images (latent store) or anchors (multiview)

    def line(self) -> str:
        return (
            f"{self.array} chunk {self.chunk} ({self.key}, {self.unit} {self.start}-{self.stop}): "
            f"{self.problem}"
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


def chunk_key(arr: zarr.Array, name: str, chunk: int) -> str:
    """The file of chunk ``chunk`` (along axis 0) of array ``name``, relative to the store."""
    return f"{name}/" + arr.metadata.encode_chunk_key((chunk,) + (0,) * (arr.ndim - 1))


def chunk_problem(arr: zarr.Array, start: int, stop: int) -> str | None:
    """Why rows [start, stop) of ``arr`` (one chunk) do not decode, or None when they do."""
    try:
        np.asarray(arr[start:stop])
    except Exception as exc:  # noqa: BLE001 - any decoding failure is the finding
        return f"does not decode ({_first_line(exc)})"
    return None


def _chunk_key(store: LatentStore, name: str, chunk: int) -> str:
    return chunk_key(store._array(name), name, chunk)


def _chunk_problem(store: LatentStore, name: str, chunk: int) -> str | None:
    """Why chunk ``chunk`` of ``name`` does not decode, or None when it does."""
    start, stop = chunk * store.shard_size, min((chunk + 1) * store.shard_size, store.n_images)
    return chunk_problem(store._array(name), start, stop)


@contextlib.contextmanager
def decoding(store: LatentStore, name: str, lo: int, hi: int) -> Iterator[None]:
    """Turn a failure to decode rows [lo, hi) of ``name`` into one StoreError line naming the
    damaged chunk(s)."""
    try:
        yield
    except StoreError:
        raise
    except Exception as exc:
        chunks = range(lo // store.shard_size, (max(hi, lo + 1) - 1) // store.shard_size + 1)
        bad = [k for k in chunks if _chunk_problem(store, name, k) is not None] or list(chunks)
        keys = ", ".join(_chunk_key(store, name, k) for k in bad[:4])
        raise StoreError(
            f"{store.path}: array '{name}' chunk {bad[0]} ({keys}) is damaged: "
            f"{_first_line(exc)}; run `ganviews verify {store.path} --reset` to mark its images "
            "pending for recomputation"
        ) from None


def verify(store: LatentStore) -> list[Damage]:
    """Every damaged chunk of ``store``: chunks that do not decode, and shards with done
    images whose ``w``/``status`` chunk is missing or whose ``w`` is not finite."""
    found: list[Damage] = []

    def add(name: str, chunk: int, problem: str) -> None:
        start = chunk * store.shard_size
        stop = min(start + store.shard_size, store.n_images)
        found.append(Damage(name, chunk, start, stop, _chunk_key(store, name, chunk), problem))

    broken_status = set()
    for name in store._member_arrays():
        for chunk in range(len(store.shards())):
            problem = _chunk_problem(store, name, chunk)
            if problem is not None:
                add(name, chunk, problem)
                if name == "status":
                    broken_status.add(chunk)
    from storage.latents import DONE

    for chunk, (start, stop) in enumerate(store.shards()):
        if chunk in broken_status:
            continue
        status = np.asarray(store._array("status")[start:stop])
        if not (status == DONE).any():  # nothing finished, nothing to lose
            continue
        if any(d.array == "w" and d.chunk == chunk for d in found):
            continue
        if not (store.path / _chunk_key(store, "w", chunk)).exists():
            add("w", chunk, "missing, but the shard has done images")
            continue
        w = np.asarray(store._array("w")[start:stop])[status == DONE]
        if not np.isfinite(w).all():
            add("w", chunk, "done images hold non-finite w")
    return found


def reset_damaged(store: LatentStore, damages: list[Damage]) -> int:
    """Rewrite each damaged chunk whole with its fill value and mark its images pending;
    the number of images made pending."""
    from storage.latents import PENDING

    store._writable()
    pending: set[int] = set()
    with store._locked(np.asarray([d.start for d in damages], dtype=np.int64)):
        for d in damages:
            arr = store._array(d.array)
            fill = np.full((d.stop - d.start, *arr.shape[1:]), arr.fill_value, dtype=arr.dtype)
            if arr.dtype.kind in "OTU":
                fill = np.full(d.stop - d.start, "", dtype=object)
            arr[d.start : d.stop] = fill  # a whole chunk: the damaged bytes are never read
            pending.update(range(d.start, d.stop))
        for chunk in sorted({d.chunk for d in damages}):
            start = chunk * store.shard_size
            stop = min(start + store.shard_size, store.n_images)
            store._array("status")[start:stop] = np.full(stop - start, PENDING, np.uint8)
            store._array("reason")[start:stop] = np.full(stop - start, "", dtype=object)
    return len(pending)


# ---------------------------------------------------------------------------- multiview store


@contextlib.contextmanager
def multiview_decoding(store: MultiviewStore, name: str, stop: int) -> Iterator[None]:
    """Turn a failure to decode anchors [0, stop) of ``name`` into one StoreError line naming
    the damaged chunk(s) and the command that resets them."""
    try:
        yield
    except StoreError:
        raise
    except Exception as exc:
        arr = store._group[name]
        bad = [
            k
            for k, (a, b) in enumerate(store.shards())
            if a < stop and chunk_problem(arr, a, b) is not None
        ] or [0]
        keys = ", ".join(chunk_key(arr, name, k) for k in bad[:4])
        raise StoreError(
            f"{store.path}: array '{name}' chunk {bad[0]} ({keys}) is damaged: "
            f"{_first_line(exc)}; run `ganviews verify {store.path} --reset` to mark its "
            "anchors pending for sampling again"
        ) from None


def verify_multiview(store: MultiviewStore) -> list[Damage]:
    """Every damaged chunk of a multiview store: chunks that do not decode, and shards with
    done anchors whose ``images``/``latents``/``anchor_seed`` chunk is missing (a missing chunk
    reads as its fill value: black images) or whose latents are not finite. ``labels`` may be
    absent legitimately: a chunk of an unconditional generator's -1 labels equals the fill
    value, which Zarr does not write."""
    from storage.multiview import DONE

    found: list[Damage] = []

    def add(name: str, chunk: int, problem: str) -> None:
        start, stop = store.shards()[chunk]
        key = chunk_key(store._group[name], name, chunk)
        found.append(Damage(name, chunk, start, stop, key, problem, unit="anchors"))

    names = ("images", "latents", "labels", "anchor_seed", "status")
    for name in names:
        for chunk, (start, stop) in enumerate(store.shards()):
            problem = chunk_problem(store._group[name], start, stop)
            if problem is not None:
                add(name, chunk, problem)
    for chunk, (start, stop) in enumerate(store.shards()):
        if any(d.chunk == chunk and d.array == "status" for d in found):
            continue
        done = np.asarray(store._group["status"][start:stop]) == DONE
        if not done.any():  # nothing finished, nothing to lose
            continue
        for name in ("images", "latents", "anchor_seed"):
            if any(d.chunk == chunk and d.array == name for d in found):
                continue
            if not (store.path / chunk_key(store._group[name], name, chunk)).exists():
                add(name, chunk, "missing, but the shard has done anchors")
            elif name == "latents":
                if not np.isfinite(np.asarray(store._group[name][start:stop])[done]).all():
                    add(name, chunk, "done anchors hold non-finite latents")
    return found


def reset_multiview(store: MultiviewStore, damages: list[Damage]) -> int:
    """Rewrite each damaged chunk whole with its fill value and mark its shard pending (a
    shard is sampled and written whole); the number of anchors made pending."""
    from storage.multiview import PENDING

    if store.read_only:
        raise StoreError(f"{store.path}: opened read-only; reopen with mode='a' to reset")
    pending = 0
    for d in damages:
        arr = store._group[d.array]
        arr[d.start : d.stop] = np.full(
            (d.stop - d.start, *arr.shape[1:]), arr.fill_value, arr.dtype
        )
    for chunk in sorted({d.chunk for d in damages}):
        start, stop = store.shards()[chunk]
        store._group["status"][start:stop] = np.full(stop - start, PENDING, np.uint8)
        pending += stop - start
    return pending
