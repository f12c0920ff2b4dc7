"""The bundled demo domain: scikit-learn's handwritten digits rendered as 32×32 RGB PNG files.

Source: ``sklearn.datasets.load_digits`` — the UCI "Optical Recognition of Handwritten Digits"
test set that ships inside scikit-learn (1,797 images, 8×8 px, 17 grey levels 0…16, ten classes
0–9 with 174–183 images each). It loads offline, so the demo needs no download.

Rendering (``render_digit``):

- grey level v ∈ {0…16} → uint8 round(v · 255 / 16): ink is bright on a black background;
- 8 → ``resolution`` px (default 32) with PIL's ``BICUBIC`` filter (Keys cubic, a = −0.5),
  clipped to 0…255: smooth strokes instead of 4×4 blocks, which a convolutional generator with
  a 4 px constant input reproduces far more easily than hard block edges;
- grey → RGB by repeating the channel (the pipeline's images and generators are 3-channel).

Why 32 px: the source has 8×8 pixels, so anything above it is interpolation; 32 px is the smallest
StyleGAN2 with num_ws = 2·log2(32) − 2 = 8 w+ entries, enough for distinct coarse / middle / fine
groups (3 / 2 / 3, ``ganviews.stylegan.generator.default_layer_groups``); 16 px gives only 2 / 2 / 2 with
the "fine" group driving the 16 px layers. Larger sizes cost CPU time without adding information.

Split: stratified by class and seeded (:func:`storage.adapters._common.seeded_split`): per class,
images ordered by ``sha256(f"{seed}/{image_id}")``; the first 20 % are val, the next 20 % test,
the rest train (60 %). Counts (any seed): 1,079 train / 359 val / 359 test.

Layout written under ``root``: ``images/digit_0000.png`` … (index = row of ``load_digits``)
and ``labels.csv`` (image, image_id, split, label), so the folder adapter reads it back too.
Files whose bytes would not change are not rewritten (a second call is a cheap no-op).
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from storage.adapters._common import AdapterError, check_fraction, finalize, seeded_split
from storage.atomic import atomic_write_bytes

log = logging.getLogger(__name__)

SOURCE_LEVELS = 16  # load_digits grey levels run 0…16
DEFAULT_RESOLUTION = 32  # rendered side length (see the module docstring)
DEFAULT_FRACTIONS = {"val": 0.2, "test": 0.2}  # the rest (60 %) is train
FILTERS = ("bicubic", "bilinear", "nearest", "lanczos")
IMAGE_DIR = "images"


def render_digit(
    image8: np.ndarray, *, resolution: int = DEFAULT_RESOLUTION, resample: str = "bicubic"
) -> np.ndarray:
    """One 8×8 digit (values 0…16) → uint8 RGB [resolution, resolution, 3]."""
    from PIL import Image

    if resample not in FILTERS:
        raise AdapterError(f"resample: {resample!r} is not one of {list(FILTERS)}")
    if not isinstance(resolution, int) or resolution < 8:
        raise AdapterError(f"resolution: expected an integer ≥ 8, got {resolution!r}")
    arr = np.asarray(image8, dtype=np.float64)
    if arr.shape != (8, 8):
        raise AdapterError(f"image8: expected shape (8, 8), got {arr.shape}")
    grey = np.clip(np.rint(arr * 255.0 / SOURCE_LEVELS), 0, 255).astype(np.uint8)  # [8, 8]
    # PIL's float mode keeps bicubic overshoot, which we clip ourselves (no wrap-around).
    big = Image.fromarray(grey.astype(np.float32), mode="F").resize(
        (resolution, resolution), resample=getattr(Image.Resampling, resample.upper())
    )
    out = np.clip(np.rint(np.asarray(big)), 0, 255).astype(np.uint8)  # [R, R]
    return np.repeat(out[:, :, None], 3, axis=2)  # [R, R, 3]


def _png_bytes(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _write_if_changed(path: Path, data: bytes) -> bool:
    if path.is_file() and path.read_bytes() == data:
        return False
    atomic_write_bytes(path, data)
    return True


def build_digits(
    root: str | Path,
    *,
    resolution: int = DEFAULT_RESOLUTION,
    resample: str = "bicubic",
    val_fraction: float = DEFAULT_FRACTIONS["val"],
    test_fraction: float = DEFAULT_FRACTIONS["test"],
    seed: int = 0,
) -> pd.DataFrame:
    """Render the scikit-learn digits into ``root`` and return their manifest (see module doc)."""
    from sklearn.datasets import load_digits

    val_fraction = check_fraction("val_fraction", val_fraction)
    test_fraction = check_fraction("test_fraction", test_fraction)
    if val_fraction + test_fraction >= 1.0:
        raise AdapterError(
            f"val_fraction + test_fraction: {val_fraction} + {test_fraction} leaves no training images"
        )
    root = Path(root).expanduser().resolve()
    (root / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    data = load_digits()
    images, labels = data.images, data.target.astype(np.int64)  # [N, 8, 8], [N]
    ids = [f"digit_{i:04d}" for i in range(len(labels))]
    splits = seeded_split(
        ids,
        fractions={"val": val_fraction, "test": test_fraction},
        seed=seed,
        strata=labels.tolist(),
    )
    written = 0
    paths = []
    for image_id, image8 in zip(ids, images, strict=True):
        path = root / IMAGE_DIR / f"{image_id}.png"
        written += _write_if_changed(
            path, _png_bytes(render_digit(image8, resolution=resolution, resample=resample))
        )
        paths.append(str(path))
    df = pd.DataFrame({"image_id": ids, "path": paths, "split": splits, "label": labels})
    table = df.assign(image=[f"{IMAGE_DIR}/{i}.png" for i in ids])[
        ["image", "image_id", "split", "label"]
    ]
    _write_if_changed(root / "labels.csv", table.to_csv(index=False).encode())
    log.info("digits: %d images under %s (%d written)", len(df), root, written)
    options = {
        "resolution": resolution,
        "resample": resample,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "seed": seed,
    }
    return finalize(df, dataset="digits", label_columns=["label"], root=root, options=options)
