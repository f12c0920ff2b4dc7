"""Crash-safe file writes: a temporary name, ``fsync``, then an atomic rename.

Zarr 3's ``LocalStore`` already writes every key to ``<key>.<uuid>.partial`` and renames it
into place (zarr/storage/_local.py, ``_atomic_write``), so a process killed with SIGKILL
never leaves a half-written chunk behind: readers see the old bytes or the new bytes. It
does not ``fsync``, so after a power loss or a kernel crash the page cache may have put a
later file (a status chunk) on disk before an earlier one (the latents it vouches for).
:class:`DurableLocalStore` adds the missing ``fsync`` of the file and of its directory, so
the latent store's ordering "data first, then the done mark" also holds across a machine
crash. :func:`atomic_write_bytes` (and :func:`atomic_write_parquet`, :func:`atomic_write_json`) does
the same for every other file written outside the library (the library has
``ganviews.core.atomic.write_atomically``); :func:`write_output` is its variant for a file a user
names, which may be a device or a pipe.
"""

from __future__ import annotations

import asyncio
import errno
import io
import json
import os
import time
import uuid
from pathlib import Path

from zarr.core.buffer import Buffer
from zarr.storage import LocalStore

PARTIAL_SUFFIX = ".partial"
DISK_FULL = (
    errno.ENOSPC,
    errno.EDQUOT,
)  # re-raised naming the final path; the CLI makes it one line


def fsync_dir(folder: Path) -> None:
    """Persist a directory's entries (a rename into it) where the filesystem allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(
    path: str | Path, data: bytes | memoryview, *, durable: bool = True, exclusive: bool = False
) -> int:
    """Write ``data`` to ``path`` so readers see either the old file or the complete new one.

    ``exclusive``: fail with FileExistsError instead of replacing an existing file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}{PARTIAL_SUFFIX}")
    try:
        with open(tmp, "wb") as fh:
            written = fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        if exclusive:
            os.link(tmp, path)  # raises FileExistsError when path exists
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno in DISK_FULL:  # name the file it was for (not the temporary one)
            raise OSError(exc.errno, os.strerror(exc.errno), str(path)) from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)
    return written


def atomic_write_parquet(table, path: str | Path, *, compression: str = "zstd") -> Path:
    """Write the pyarrow ``table`` as one Parquet file via :func:`atomic_write_bytes`."""
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(table, sink, compression=compression)
    atomic_write_bytes(path, sink.getvalue())
    return Path(path)


def atomic_write_json(path: str | Path, obj, *, indent: int | None = 2) -> Path:
    """``obj`` as JSON (one trailing newline) via :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, (json.dumps(obj, indent=indent) + "\n").encode("utf-8"))
    return Path(path)


def write_output(path: str | Path, data: bytes | memoryview) -> Path:
    """A user-named output file: atomic (:func:`atomic_write_bytes`) when ``path`` is a regular
    file or does not exist yet; written in place when it is a device, FIFO or ``/dev/stdout``
    (a rename would replace the special file). A full disk names ``path`` either way."""
    path = Path(path)
    if not path.exists() or path.is_file():
        atomic_write_bytes(path, data)
        return path
    try:
        with open(path, "wb") as fh:
            fh.write(data)
    except OSError as exc:
        if exc.errno in DISK_FULL:
            raise OSError(exc.errno, os.strerror(exc.errno), str(path)) from exc
        raise
    return path


def remove_stale_partials(root: str | Path, *, min_age_s: float = 3600.0) -> int:
    """Delete ``*.partial`` files older than ``min_age_s`` under ``root`` (left by killed writers).

    Young files are kept: they may belong to a writer that is still running.
    """
    now = time.time()
    removed = 0
    for path in Path(root).rglob(f"*{PARTIAL_SUFFIX}"):
        try:
            if now - path.stat().st_mtime >= min_age_s:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            continue
    return removed


class DurableLocalStore(LocalStore):
    """A Zarr ``LocalStore`` whose writes are temp file → fsync → rename → fsync(directory)."""

    def __init__(self, root: Path | str, *, read_only: bool = False, durable: bool = True) -> None:
        super().__init__(root, read_only=read_only)
        self.durable = durable

    def with_read_only(self, read_only: bool = False) -> DurableLocalStore:
        return type(self)(root=self.root, read_only=read_only, durable=self.durable)

    def _put(self, key: str, value: Buffer, exclusive: bool) -> None:
        self._check_writable()
        if not isinstance(value, Buffer):
            raise TypeError(f"store value for {key!r} must be a zarr Buffer, got {type(value)}")
        atomic_write_bytes(
            self.root / key, value.as_buffer_like(), durable=self.durable, exclusive=exclusive
        )

    async def set(self, key: str, value: Buffer) -> None:
        if not self._is_open:
            await self._open()
        await asyncio.to_thread(self._put, key, value, False)

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        if not self._is_open:
            await self._open()
        try:
            await asyncio.to_thread(self._put, key, value, True)
        except FileExistsError:
            pass

    def set_sync(self, key: str, value: Buffer) -> None:
        self._ensure_open_sync()
        self._put(key, value, False)
