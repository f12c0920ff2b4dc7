"""Models loaded once per process: a small cache keyed by the file and the device.

A worker renders many shards (issue 14 item 7): reloading the generator and every classifier
for each shard reads, parses, hashes and uploads the same files again. :class:`ModelCache`
keeps loaded models keyed by what makes them: the resolved path, the file's size and
modification time (a replaced file is loaded again), the device, and anything else the
caller names (a classifier's declared config, the state of its sidecar YAML). The models it
holds are shared: callers use them read-only (eval mode, no gradients).
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


def file_stamp(path: str | Path) -> tuple[str, int, int] | None:
    """(resolved path, size, mtime in ns) of an existing file, else None."""
    p = Path(path).resolve()
    try:
        st = p.stat()
    except OSError:
        return None
    return str(p), st.st_size, st.st_mtime_ns


class ModelCache:
    """Least-recently-used models, at most ``max_entries`` of them; thread-safe."""

    def __init__(self, max_entries: int = 64) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries: got {max_entries}, must be ≥ 1")
        self.max_entries = max_entries
        self._models: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0  # models loaded (cache misses) since creation or clear()

    def get(
        self,
        kind: str,
        path: str | Path,
        device: torch.device | str,
        loader: Callable[[], Any],
        *,
        extra: Any = None,
        watch: Iterable[str | Path] = (),
    ) -> Any:
        """The model ``loader()`` makes from ``path`` on ``device``, loaded on the first call.

        ``extra`` (JSON-able) and the state of the ``watch`` files (e.g. a sidecar config) are
        part of the key: another config or an edited sidecar loads the model again.
        """
        key = json.dumps(
            [
                kind,
                file_stamp(path) or str(path),
                str(torch.device(device)),
                [file_stamp(p) for p in watch],
                extra,
            ],
            sort_keys=True,
            default=str,
        )
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            model = loader()
            self.loads += 1
            self._models[key] = model
            while len(self._models) > self.max_entries:
                self._models.popitem(last=False)
            log.debug("model cache: loaded %s %s on %s", kind, path, device)
            return model

    def clear(self) -> None:
        with self._lock:
            self._models.clear()
            self.loads = 0

    def __len__(self) -> int:
        return len(self._models)


MODELS = ModelCache()  # the process's cache (one per worker process)


_HASHES: dict[tuple[str, int, int], str] = {}
_HASH_LOCK = threading.Lock()


def cached_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, computed once per (path, size, mtime) in this process."""
    from ganviews.core.runtime import file_sha256

    stamp = file_stamp(path)
    if stamp is None:
        return file_sha256(path)  # raises the usual error for a missing file
    with _HASH_LOCK:
        known = _HASHES.get(stamp)
    if known is None:
        known = file_sha256(path)
        with _HASH_LOCK:
            _HASHES[stamp] = known
    return known
