"""The library's one crash-safe file write: a temporary name, ``fsync``, then an atomic rename.

The library cannot import ``storage`` (the layering rule), so its writers — weights
(``weights_io``), report tables, Markdown/HTML and plots — share this helper; everything
outside the library writes through :mod:`storage.atomic`. Both keep the same contract: a
reader sees the old file or the complete new one, also after a power loss, and a leftover
temporary file ends in ``.partial`` (``storage.atomic.remove_stale_partials`` clears them).
"""

from __future__ import annotations

import errno
import os
import uuid
from collections.abc import Callable
from pathlib import Path


def write_atomically(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` to a temporary file next to ``path``, ``fsync`` it, rename it onto ``path``
    and ``fsync`` the folder. The parent folder is created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        # a full disk names the file it was for, not the temporary one, whoever wrote it
        # (pyarrow's errors carry errno but no file name), as storage.atomic does
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OSError(exc.errno, os.strerror(exc.errno), str(path)) from exc
        raise
    finally:
        tmp.unlink(missing_ok=True)
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening directories
        return path
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
    return path
