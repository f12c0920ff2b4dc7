"""One writer per shard of a latent store: advisory ``flock`` locks under ``<store>/.leases``.

Zarr writes each array's chunk by read-modify-write, one array after the other, so two
processes writing rows of the same shard lose each other's rows (issue 18.3: 20 of 256 items
done with NaN ``w``, 24 done marks lost). Two kinds of lock, one file each per shard:

* ``shard-<k>.lock`` — taken by every :class:`~storage.latents.LatentStore` write
  (``write``, ``mark_failed``, ``reset``, ``write_array``) for the shards it touches, in
  ascending order, for the length of that write. A second writer waits: the store's
  read-check-write of a shard is atomic with respect to other processes.
* ``shard-<k>.lease`` — the writer lease a shard task holds while it works on the shard
  (inversion). A second one exits at once with :class:`StoreError` naming the holder (pid,
  host, start time, command), or waits up to ``wait`` seconds.

:func:`file_lock` is the same waiting lock for one file outside a store: the logits dataset
takes it around each shard file's read-merge-write and its identity record's
(:func:`storage.logits.write_logits`), so two renders of one shard lose no rows.

Both are ``fcntl.flock`` locks: the kernel drops them when the holder's process dies (even by
``kill -9``), so a crashed writer never leaves a shard locked. Linux NFS clients map ``flock``
onto POSIX byte-range locks, which lockd shares between nodes.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from storage.errors import StoreError

LEASE_DIR = ".leases"  # inside the store folder; not a Zarr node
POLL_SECONDS = 0.05  # how often a waiting lease retries


def _lock_path(store: Path, shard: int, kind: str) -> Path:
    return Path(store) / LEASE_DIR / f"shard-{shard}.{kind}"


def _open(path: Path) -> int:
    path.parent.mkdir(exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o664)


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def holder_of(path: Path) -> str:
    """The holder a lease file names (pid, host, since, command), or 'unknown holder'."""
    try:
        info = json.loads(path.read_text() or "{}")
        return f"pid {info['pid']} on {info['host']} since {info['since']} ({info['command']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "an unknown holder"


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold the exclusive ``flock`` of the lock file ``path`` (created; waits for a holder) for a
    read-modify-write of one file by several processes (a logits shard file, its identity)."""
    fd = _open(Path(path))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases its flock


@contextlib.contextmanager
def shard_locks(store: str | os.PathLike, shards: Iterable[int]) -> Iterator[None]:
    """Hold the write lock of every shard in ``shards`` (ascending, so no two writers deadlock)."""
    fds: list[int] = []
    try:
        for shard in sorted(set(int(s) for s in shards)):
            fd = _open(_lock_path(Path(store), shard, "lock"))
            fds.append(fd)
            fcntl.flock(fd, fcntl.LOCK_EX)  # waits: holders keep it for one write only
        yield
    finally:
        for fd in reversed(fds):
            os.close(fd)  # closing the descriptor releases its flock


@contextlib.contextmanager
def shard_lease(store: str | os.PathLike, shard: int, *, wait: float = 0.0) -> Iterator[None]:
    """Hold the writer lease of ``shard`` of ``store``; StoreError naming the holder when
    another live process holds it for longer than ``wait`` seconds."""
    path = _lock_path(Path(store), int(shard), "lease")
    fd = _open(path)
    try:
        deadline = time.monotonic() + max(wait, 0.0)
        while not _try_flock(fd):
            if time.monotonic() >= deadline:
                raise StoreError(
                    f"{store}: shard {shard} is being written by {holder_of(path)}; "
                    "wait for it to finish or stop it (a killed holder releases the lease)"
                )
            time.sleep(POLL_SECONDS)
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)[:200] or "python",
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        yield
    finally:
        os.close(fd)
