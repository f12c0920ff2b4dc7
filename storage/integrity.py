"""Damaged chunks of a latent store: named on read, listed by ``verify``, reset for recompute.

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
    from storage.latents import LatentStore

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

    def line(self) -> str:
        return (
            f"{self.array} chunk {self.chunk} ({self.key}, images {self.start}-{self.stop}): "
            f"{self.problem}"
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


def _chunk_key(store: LatentStore, name: str, chunk: int) -> str:
    arr = store._array(name)
    return f"{name}/" + arr.metadata.encode_chunk_key((chunk,) + (0,) * (arr.ndim - 1))


def _chunk_problem(store: LatentStore, name: str, chunk: int) -> str | None:
    """Why chunk ``chunk`` of ``name`` does not decode, or None when it does."""
    start, stop = chunk * store.shard_size, min((chunk + 1) * store.shard_size, store.n_images)
    try:
        np.asarray(store._array(name)[start:stop])
    except Exception as exc:  # noqa: BLE001 - any decoding failure is the finding
        return f"does not decode ({_first_line(exc)})"
    return None


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
