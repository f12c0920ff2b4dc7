"""PCA statistics of a generator's w space, as one ``.npz`` file (no torch here).

Layout (all arrays float64 unless noted):
- ``mean`` [w_dim], ``components`` [D, w_dim] (orthonormal rows, descending variance),
  ``stdevs`` [D] (standard deviation along each row, ddof = 1);
- ``generator_sha256`` (0-d unicode), ``n_samples`` and ``seed`` (0-d int64),
  ``format_version`` (0-d int64).

The file records the content hash of the generator it was computed for; loading it for a
different generator is refused, because PCA directions of one network mean nothing for
another. The cache sits next to the latent store: ``<store>/pca_stats.npz``.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from storage.atomic import atomic_write_bytes
from storage.errors import StoreError

FORMAT_VERSION = 1
CACHE_NAME = "pca_stats.npz"


def cache_path(store_path: str | Path) -> Path:
    """Where the PCA statistics of a store's generator are cached."""
    return Path(store_path) / CACHE_NAME


def save_pca_stats(
    path: str | Path,
    *,
    mean: np.ndarray,
    components: np.ndarray,
    stdevs: np.ndarray,
    generator_sha256: str,
    n_samples: int,
    seed: int,
) -> Path:
    """Write the statistics atomically (temporary name, then rename)."""
    mean, components, stdevs = (np.asarray(a, dtype=np.float64) for a in (mean, components, stdevs))
    if mean.ndim != 1 or components.ndim != 2 or components.shape[1] != mean.shape[0]:
        raise StoreError(
            f"PCA stats for {path}: expected mean [w_dim] and components [D, w_dim], got "
            f"{list(mean.shape)} and {list(components.shape)}"
        )
    if stdevs.shape != (components.shape[0],):
        raise StoreError(
            f"PCA stats for {path}: expected stdevs [{components.shape[0]}], got {list(stdevs.shape)}"
        )
    if not generator_sha256:
        raise StoreError(
            f"PCA stats for {path}: generator_sha256 is required (it guards against mix-ups)"
        )
    sink = io.BytesIO()
    np.savez(
        sink,
        mean=mean,
        components=components,
        stdevs=stdevs,
        generator_sha256=np.array(str(generator_sha256)),
        n_samples=np.array(int(n_samples), dtype=np.int64),
        seed=np.array(int(seed), dtype=np.int64),
        format_version=np.array(FORMAT_VERSION, dtype=np.int64),
    )
    atomic_write_bytes(path, sink.getvalue())
    return Path(path)


def load_pca_stats(path: str | Path, *, generator_sha256: str | None = None) -> dict[str, Any]:
    """Read the statistics; refuse a file made for another generator when a hash is given.

    Returns ``mean``, ``components``, ``stdevs`` (arrays), ``generator_sha256`` (str),
    ``n_samples`` and ``seed`` (int).
    """
    path = Path(path)
    if not path.is_file():
        raise StoreError(
            f"PCA statistics not found: {path} (compute them with "
            "`ganviews pca-stats --generator G --out FILE`)"
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            contents = {key: data[key] for key in data.files}
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path}: not a readable PCA statistics file ({exc})") from exc
    required = (
        "mean",
        "components",
        "stdevs",
        "generator_sha256",
        "n_samples",
        "seed",
        "format_version",
    )
    missing = [key for key in required if key not in contents]
    if missing:
        raise StoreError(f"{path}: not a ganviews PCA statistics file (missing {missing})")
    version = int(contents["format_version"])
    if version != FORMAT_VERSION:
        raise StoreError(
            f"{path}: PCA statistics format {version}, this code reads {FORMAT_VERSION}"
        )
    recorded = str(contents["generator_sha256"])
    if generator_sha256 is not None and recorded != generator_sha256:
        raise StoreError(
            f"{path}: PCA statistics were computed for generator sha256 {recorded[:16]}…, "
            f"not for this generator ({generator_sha256[:16]}…); recompute them"
        )
    return {
        "mean": contents["mean"],
        "components": contents["components"],
        "stdevs": contents["stdevs"],
        "generator_sha256": recorded,
        "n_samples": int(contents["n_samples"]),
        "seed": int(contents["seed"]),
    }
