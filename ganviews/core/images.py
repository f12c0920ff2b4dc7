"""Robust image loading: any file on disk → ``np.uint8 [H, W, 3]`` RGB, or a recorded reason.

The inversion pipeline (paper Sec. 3.2) runs over whole datasets, where a few files are
always odd: grayscale scans, RGBA or palette PNGs, CMYK JPEGs from print sources, 16-bit
PNGs, thumbnails, truncated downloads, HTML pages saved as ``.jpg``, or decompression
bombs. Each one is either converted by a fixed rule or rejected with an
:class:`~ganviews.core.errors.ImageError` whose ``reason`` attribute is a short phrase that the
store records for that image, so a batch goes on.

Conversion rules (docs/alignment_encoder.md lists them with the reasons):

* EXIF orientation is applied (a broken EXIF block is ignored, with a log line).
* Multi-frame files (GIF, TIFF pages) use the first frame.
* ``1``/``L`` → gray replicated to RGB; ``LA``/``RGBA``/``PA``/``P`` with transparency are
  alpha-composited over ``background`` (white by default).
* ``CMYK`` → through the embedded ICC profile to sRGB when there is one, else PIL's
  ``CMYK → RGB`` formula (Adobe-inverted JPEGs are un-inverted by PIL's decoder).
* 16-bit (``I;16*``, and ``I`` with every value in ``[0, 65535]``) → ``round(v / 257)``, so
  0 → 0 and 65535 → 255 exactly; float ``F`` in ``[0, 1]`` → ``round(255 v)``. 16-bit
  colour PNGs (which PIL would cut to their high byte) are decoded with OpenCV and scaled
  the same way; their alpha is composited in 16-bit precision.
* Everything else PIL can convert to ``RGB`` (``RGBX``, ``YCbCr``, ``LAB`` …) is converted.

Rejections: missing file, unidentified format, truncated or corrupt data, a side shorter
than ``min_size``, more than ``max_pixels`` pixels or a decoded size (pixels × bytes per
pixel of the source mode) above ``max_decoded_bytes`` (both checked from the header before
any decoding; PIL's own DecompressionBombWarning/Error also become rejections), modes that
cannot be mapped to RGB.

Peak memory per image is bounded: 8-bit sources are decoded in 8 bits, and alpha
compositing and 16-bit scaling run over row blocks of about :data:`BLOCK_BYTES`, so besides
the decoded image and the ``uint8`` output only one small block is alive (the whole-image
float64 copies cost 7.7 GB for an 8192² RGBA PNG).
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, UnidentifiedImageError

from ganviews.core.errors import ImageError

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = (
    1 << 26
)  # 67,108,864 px (8192²): ~200 MB as uint8 RGB; larger is treated as a bomb
DEFAULT_MAX_DECODED_BYTES = 1 << 30  # decoded source bytes: 8192² RGBA 16-bit is 512 MiB
BLOCK_BYTES = 1 << 22  # working set of one row block in compositing and 16-bit scaling
DEFAULT_MIN_SIZE = 16  # shortest side in pixels; smaller images carry too little to invert
DEFAULT_BACKGROUND = (255, 255, 255)  # transparent pixels are composited over white

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_EXIF_ORIENTATION = 0x0112


def signed_to_uint8(images):
    """Float pixels in [-1, 1] (the GAN's range) → uint8 [0, 255]: clamped, rounded half to even.

    A NumPy array gives a NumPy array; a torch tensor gives a uint8 tensor on its device.
    With :func:`uint8_to_signed` the project's one pair of pixel conversions.
    """
    if isinstance(images, np.ndarray) or not hasattr(images, "clamp"):
        x = np.clip(np.asarray(images), -1.0, 1.0)
        return np.round((x + 1.0) * 127.5).astype(np.uint8)
    import torch

    return ((images.detach().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)


def uint8_to_signed(pixels, dtype=None):
    """uint8 pixels [0, 255] (or floats on that scale) → floats in [-1, 1] (the GAN's range).

    A NumPy array gives float32 (or ``dtype``); a torch tensor gives ``dtype`` (default
    float32) on its device. The inverse of :func:`signed_to_uint8` on uint8 input.
    """
    if isinstance(pixels, np.ndarray) or not hasattr(pixels, "to"):
        return np.asarray(pixels).astype(dtype or np.float32) / 127.5 - 1.0
    import torch

    return pixels.to(dtype or torch.float32) / 127.5 - 1.0


def _reject(path: Path, reason: str) -> ImageError:
    err = ImageError(f"{path}: {reason}")
    err.reason = reason  # the short phrase recorded per image in the store
    return err


def load_image(
    path: str | os.PathLike,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
    min_size: int = DEFAULT_MIN_SIZE,
    background: tuple[int, int, int] = DEFAULT_BACKGROUND,
) -> np.ndarray:
    """Read one image file as ``np.uint8 [H, W, 3]`` RGB, or raise ImageError with a reason.

    ``max_pixels`` bounds width × height (decompression-bomb guard, checked before decoding);
    ``max_decoded_bytes`` bounds width × height × bytes per pixel of the source (likewise);
    ``min_size`` bounds the shortest side; ``background`` is the RGB colour transparent
    pixels are composited over.
    """
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be >= 1, got {max_pixels}")
    if min_size < 1:
        raise ValueError(f"min_size must be >= 1, got {min_size}")
    path = Path(path)
    if not path.is_file():
        raise _reject(path, "file not found" if not path.exists() else "not a regular file")
    try:
        with warnings.catch_warnings():
            # PIL warns (not raises) between MAX_IMAGE_PIXELS and twice that: make it a rejection.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                _check_size(path, im.size, max_pixels=max_pixels, min_size=min_size)
                sixteen_bit_colour = _is_16bit_colour_png(path, im)
                _check_decoded_bytes(path, im, sixteen_bit_colour, budget=max_decoded_bytes)
                orientation = _exif_orientation(path, im)
                if sixteen_bit_colour:
                    rgb = _decode_16bit_colour_png(path, background)
                else:
                    im.seek(0)
                    im.load()
                    rgb = _to_rgb(path, im, background)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _reject(path, f"decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise _reject(path, "unreadable: not a recognised image format") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # PIL reports truncated/corrupt data as OSError ("image file is truncated", "broken
        # data stream"), SyntaxError (bad PNG chunks) or ValueError/EOFError (bad headers).
        raise _reject(path, f"truncated or corrupt: {_first_line(exc)}") from exc
    rgb = np.ascontiguousarray(orient_array(rgb, orientation))  # [H, W, 3]
    _check_size(path, (rgb.shape[1], rgb.shape[0]), max_pixels=max_pixels, min_size=min_size)
    return rgb


def load_images(
    paths: Sequence[str | os.PathLike], **kwargs
) -> tuple[list[np.ndarray | None], dict[int, str]]:
    """Load many files; a failure does not stop the batch.

    Returns ``(arrays, failures)``: ``arrays[i]`` is the image or None when it failed, and
    ``failures`` maps each failed index to its short reason. ``kwargs`` go to :func:`load_image`.
    """
    arrays: list[np.ndarray | None] = []
    failures: dict[int, str] = {}
    for index, path in enumerate(paths):
        try:
            arrays.append(load_image(path, **kwargs))
        except ImageError as exc:
            reason = getattr(exc, "reason", str(exc))
            log.warning("image %d rejected: %s", index, exc)
            failures[index] = reason
            arrays.append(None)
    return arrays, failures


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _check_size(path: Path, size: tuple[int, int], *, max_pixels: int, min_size: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise _reject(
            path,
            f"decompression bomb guard: {width}x{height} = {width * height} px exceeds "
            f"max_pixels={max_pixels}",
        )
    if min(width, height) < min_size:
        raise _reject(path, f"too small: {width}x{height} px (shortest side must be >= {min_size})")


def _check_decoded_bytes(
    path: Path, im: Image.Image, sixteen_bit_colour: bool, *, budget: int
) -> None:
    """Refuse a file whose decoded source (pixels × bytes per pixel) exceeds ``budget``."""
    if sixteen_bit_colour:
        per_pixel = 8  # OpenCV decodes up to 4 channels of uint16
    else:
        per_pixel = len(im.getbands()) * (2 if im.mode in _SIXTEEN_BIT_MODES else 1)
        per_pixel *= 4 if im.mode in ("I", "F") else 1
    width, height = im.size
    need = width * height * max(per_pixel, 3)  # the RGB output is at least this
    if need > budget:
        raise _reject(
            path,
            f"too large to decode: {width}x{height} {im.mode} needs {need} bytes, more than "
            f"max_decoded_bytes={budget}",
        )


def _row_blocks(height: int, row_bytes: int):
    """Row slices of about BLOCK_BYTES each."""
    step = max(1, BLOCK_BYTES // max(row_bytes, 1))
    for top in range(0, height, step):
        yield slice(top, min(top + step, height))


def _exif_orientation(path: Path, im: Image.Image) -> int:
    try:
        value = int(im.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception as exc:  # noqa: BLE001 - a malformed EXIF block must not sink the image
        log.warning("%s: ignoring unreadable EXIF block (%s)", path, _first_line(exc))
        return 1
    if value not in range(1, 9):
        log.warning("%s: ignoring invalid EXIF orientation %d", path, value)
        return 1
    return value


def orient_array(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply EXIF orientation 1–8 to an ``[H, W, ...]`` array (same result as PIL's exif_transpose)."""
    if orientation == 2:
        return arr[:, ::-1]
    if orientation == 3:
        return arr[::-1, ::-1]
    if orientation == 4:
        return arr[::-1]
    if orientation == 5:
        return arr.swapaxes(0, 1)
    if orientation == 6:
        return np.rot90(arr, -1)
    if orientation == 7:
        return arr[::-1, ::-1].swapaxes(0, 1)
    if orientation == 8:
        return np.rot90(arr, 1)
    return arr


def _is_16bit_colour_png(path: Path, im: Image.Image) -> bool:
    """PIL keeps only the high byte of 16-bit colour PNGs; those are decoded with OpenCV instead."""
    if im.format != "PNG":
        return False
    with open(path, "rb") as fh:
        head = fh.read(33)  # signature (8) + IHDR length/type (8) + IHDR data (13)
    bit_depth, colour_type = head[24], head[25]
    return bit_depth == 16 and colour_type in (2, 4, 6)  # RGB, gray+alpha, RGBA


def _decode_16bit_colour_png(path: Path, background: tuple[int, int, int]) -> np.ndarray:
    import cv2

    data = np.fromfile(path, dtype=np.uint8)
    arr = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)  # [H, W(, C)] uint16, BGR(A) order
    if arr is None or arr.dtype != np.uint16:
        raise _reject(path, "truncated or corrupt: 16-bit PNG data could not be decoded")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    height, width, channels = arr.shape
    out = np.empty((height, width, 3), dtype=np.uint8)  # [H, W, 3]
    bg = np.asarray(background, dtype=np.float64).reshape(1, 1, 3) / 255.0
    for rows in _row_blocks(height, width * channels * 8):
        values = arr[rows].astype(np.float64) / 65535.0  # [h, W, C] in [0, 1]
        colour = values[:, :, :1].repeat(3, axis=2) if channels <= 2 else values[:, :, 2::-1]
        if channels in (2, 4):
            alpha = values[:, :, -1:]
            colour = colour * alpha + bg * (1.0 - alpha)
        out[rows] = np.clip(np.round(colour * 255.0), 0, 255)
    return out


def _to_rgb(path: Path, im: Image.Image, background: tuple[int, int, int]) -> np.ndarray:
    """One conversion per source mode; see the module docstring for the rules."""
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im, dtype=np.uint8).copy()
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        return _gray_to_rgb(_scale_16bit(path, np.asarray(im), mode))
    if mode == "F":
        return _gray_to_rgb(_scale_float(path, np.asarray(im, dtype=np.float64)))
    if mode in ("1", "L"):
        return _gray_to_rgb(np.asarray(im.convert("L"), dtype=np.uint8))
    if (mode == "P" and "transparency" in im.info) or mode in ("PA", "LA", "La", "RGBA", "RGBa"):
        return _composite(im.convert("RGBA"), background)
    if mode == "CMYK":
        return _cmyk_to_rgb(path, im)
    try:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (ValueError, OSError) as exc:
        raise _reject(path, f"unsupported colour mode {mode!r}") from exc


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[:, :, None], 3, axis=2)  # [H, W, 3]


def _scale_16bit(path: Path, values: np.ndarray, mode: str) -> np.ndarray:
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise _reject(
            path,
            f"unsupported {mode!r} image: values span [{values.min()}, {values.max()}], "
            "outside the 16-bit range",
        )
    out = np.empty(values.shape, dtype=np.uint8)  # [H, W]
    for rows in _row_blocks(values.shape[0], values.shape[1] * 8):
        block = values[rows].astype(np.int64)
        out[rows] = (block * 255 + 32767) // 65535  # round(v / 257), exact ends
    return out


def _scale_float(path: Path, values: np.ndarray) -> np.ndarray:
    if values.size and (not np.isfinite(values).all() or values.min() < 0 or values.max() > 1):
        raise _reject(path, "unsupported float image: values are not all within [0, 1]")
    return np.round(values * 255.0).astype(np.uint8)


def _composite(rgba: Image.Image, background: tuple[int, int, int]) -> np.ndarray:
    """Exact integer "over": round((c·a + bg·(255 − a)) / 255), block by block.

    The numerator is an integer and 255 is odd, so the quotient is never a tie and
    ``(n + 127) // 255`` equals the float rounding the whole-image float64 version did.
    """
    arr = np.asarray(rgba)  # [H, W, 4] uint8
    height, width = arr.shape[:2]
    out = np.empty((height, width, 3), dtype=np.uint8)  # [H, W, 3]
    bg = np.asarray(background, dtype=np.uint32).reshape(1, 1, 3)
    for rows in _row_blocks(height, width * 4 * 4):
        block = arr[rows].astype(np.uint32)  # [h, W, 4]
        alpha = block[:, :, 3:4]
        out[rows] = (block[:, :, :3] * alpha + bg * (255 - alpha) + 127) // 255
    return out


def _cmyk_to_rgb(path: Path, im: Image.Image) -> np.ndarray:
    icc = im.info.get("icc_profile")
    if icc:
        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            dst = ImageCms.createProfile("sRGB")
            out = ImageCms.profileToProfile(im, src, dst, outputMode="RGB")
            return np.asarray(out, dtype=np.uint8).copy()
        except (ImageCms.PyCMSError, OSError, ValueError) as exc:
            log.warning("%s: CMYK ICC profile unusable (%s); using the plain formula", path, exc)
    return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
