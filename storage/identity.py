"""What an artefact was made by: canonical JSON, config hashes and readable identity diffs.

Every artefact records the resolved config, the code version and the model hashes that
produced it (STYLE.md habit 3); these helpers make the comparison on reopen exact and the
error, when they differ, say which key differs and how.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from importlib import metadata as importlib_metadata
from typing import Any


def _plain(value: Any) -> Any:
    """Tuples → lists, numpy scalars → Python, non-finite floats → strings; keys → str."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if hasattr(value, "tolist") and callable(value.tolist):
        return _plain(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def canonical_json(value: Any) -> str:
    """A deterministic JSON text of ``value`` (sorted keys, no spaces): equal configs, equal text."""
    return json.dumps(_plain(value), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def plain(value: Any) -> Any:
    """``value`` as it comes back from JSON (what the store's attributes hold)."""
    return json.loads(canonical_json(value))


def config_hash(config: Mapping[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of a resolved config."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()


def code_version() -> str:
    """The installed ganviews distribution's version (from package metadata), or "unknown"."""
    try:
        return importlib_metadata.version("ganviews")
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


def diff_mappings(stored: Any, given: Any, prefix: str = "") -> list[str]:
    """Dotted keys at which two JSON-like values differ, with both values: ``a.b: stored 1, given 2``."""
    if isinstance(stored, dict) and isinstance(given, dict):
        lines: list[str] = []
        for key in sorted(set(stored) | set(given)):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in stored:
                lines.append(f"{name}: not stored, given {given[key]!r}")
            elif key not in given:
                lines.append(f"{name}: stored {stored[key]!r}, not given")
            else:
                lines.extend(diff_mappings(stored[key], given[key], name))
        return lines
    if stored != given:
        return [f"{prefix or '<value>'}: stored {stored!r}, given {given!r}"]
    return []
