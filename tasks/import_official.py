"""Import the authors' released per-image latents into a latent store (no inversion needed).

Chai et al., CVPR 2021, Sec. 3.2: every image is inverted once (encoder + 500 L-BFGS steps),
the costliest stage of the pipeline. The authors released their inversions
(``celebahq_latents.zip``, ``car_latents.zip``): their ``scripts/optimize_latent/optimize_*.py``
write one ``<image file name without extension>.pth`` per image, ``torch.save({"w": w})``
with ``w`` of shape [1, num_ws, w_dim]. :func:`import_official_latents` matches those files
to a manifest's images by file name, checks each ``w`` against the generator's layout and
writes it as the image's w* (status done); an image without a usable file is marked failed
with the reason. Views, logits and the report then run on the store as after ``invert``.

Files are read with ``torch.load(weights_only=True)``: nothing stored in them runs.
"""

from __future__ import annotations

import logging
import zipfile
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ganviews.core.errors import CheckpointError, ConfigError
from ganviews.core.file_limits import check_tensor_extents, check_zip_records
from storage import LatentStore

log = logging.getLogger(__name__)

SOURCE = "official-latents"  # recorded in the store's config: where its w* came from
WRITE_BATCH = 256  # latents written per store call


def official_latent_files(root: str | Path) -> dict[str, Path]:
    """``<name>.pth`` files anywhere under ``root`` by name (the image file name's stem).

    ConfigError when ``root`` is not a folder or two files share a name (which image would
    they belong to?).
    """
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(
            f"latents folder {root} not found (unzip the authors' *_latents.zip there)"
        )
    files: dict[str, Path] = {}
    for path in sorted(root.rglob("*.pth")):
        if path.stem in files:
            raise ConfigError(
                f"two latent files for image {path.stem!r}: {files[path.stem]} and {path}; "
                "import one folder at a time"
            )
        files[path.stem] = path
    return files


def read_official_latent(path: Path, *, num_ws: int, w_dim: int) -> np.ndarray:
    """``w`` [num_ws, w_dim] float32 of one of the authors' ``.pth`` files; ValueError saying what
    is wrong otherwise (the caller records it as the image's failure reason)."""
    try:
        if zipfile.is_zipfile(path):
            check_zip_records(path)  # the same caps as every weights-only reader
        payload = torch.load(path, map_location="cpu", weights_only=True)
        w = payload.get("w") if isinstance(payload, dict) else None
        if isinstance(w, torch.Tensor):
            check_tensor_extents([("w", w)], path=path, budget=path.stat().st_size)
    except CheckpointError as exc:
        raise ValueError(f"{path.name}: {str(exc).removeprefix(f'{path}: ')}") from exc
    except Exception as exc:  # an unreadable file is this image's failure, not the import's
        raise ValueError(
            f"{path.name}: torch.load(weights_only=True) failed ({type(exc).__name__})"
        ) from exc
    if not isinstance(w, torch.Tensor):
        raise ValueError(f"{path.name}: holds no tensor under 'w'")
    if tuple(w.shape) != (1, num_ws, w_dim):
        raise ValueError(
            f"{path.name}: w has shape {list(w.shape)}, the generator needs [1, {num_ws}, {w_dim}]"
        )
    w = w[0].detach().to(torch.float32)  # [L, C]
    if not torch.isfinite(w).all():
        raise ValueError(f"{path.name}: w holds NaN or infinite values")
    return w.numpy()


def manifest_names(manifest: pd.DataFrame) -> np.ndarray:
    """Each manifest image's file name without extension (the authors' latent file name)."""
    names = np.asarray([Path(str(p)).stem for p in manifest["path"]], dtype=object)
    dupes = sorted(name for name, count in Counter(names.tolist()).items() if count > 1)
    if dupes:
        raise ConfigError(
            f"manifest: several images share the file name {dupes[0]!r}; the authors' "
            "latents are named by file name alone, so they cannot be matched"
        )
    return names


def import_official_latents(
    store: LatentStore, latent_dir: str | Path, *, overwrite: bool = False
) -> dict[str, Any]:
    """Write the authors' latents for the store's manifest images; returns counts and reasons.

    Images already done are kept unless ``overwrite``. Images without a file, or whose file
    is unusable, are marked failed with the reason; ``.pth`` files of no manifest image are
    counted (``unmatched``) and left alone.
    """
    manifest = store.manifest()
    if manifest is None:
        raise ConfigError(f"{store.path} has no manifest.parquet: images are matched through it")
    files = official_latent_files(latent_dir)
    names = manifest_names(manifest)
    done = set(store.done().tolist())
    todo = [i for i in range(store.n_images) if overwrite or i not in done]
    rows, latents, failed = [], [], {}
    for i in todo:
        path = files.get(names[i])
        if path is None:
            failed[i] = f"no official latent {names[i]}.pth under {latent_dir}"
            continue
        try:
            latents.append(read_official_latent(path, num_ws=store.num_ws, w_dim=store.w_dim))
        except ValueError as exc:
            failed[i] = f"official latent {exc}"
            continue
        rows.append(i)
        if len(rows) == WRITE_BATCH:
            store.write(rows, w=np.stack(latents), overwrite=overwrite)
            rows, latents = [], []
    if rows:
        store.write(rows, w=np.stack(latents), overwrite=overwrite)
    if failed:
        store.mark_failed(list(failed), list(failed.values()), overwrite=overwrite)
    matched = set(names.tolist())
    summary = {
        "imported": len(todo) - len(failed),
        "failed": len(failed),
        "kept": store.n_images - len(todo),
        "unmatched": sum(1 for name in files if name not in matched),
        "reasons": _reason_counts(failed),
    }
    log.info("imported official latents into %s: %s", store.path, summary)
    return summary


def _reason_counts(failed: Mapping[int, str]) -> dict[str, int]:
    """Failure reasons grouped by their kind (the text after the file name)."""
    counts: dict[str, int] = {}
    for reason in failed.values():
        kind = "no file" if reason.startswith("no official latent") else reason.split(": ", 1)[-1]
        counts[kind] = counts.get(kind, 0) + 1
    return counts
