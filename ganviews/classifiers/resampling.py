"""The geometric half of a classifier's preprocessing: crop bands, resize, centre crop.

Images in [-1, 1], any size → the backbone's input size, on the device, differentiable
(:meth:`ganviews.classifiers.model.Classifier.resample`); the per-channel normalisation is the
other half (:class:`~ganviews.classifiers.model.Preprocessing`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor):
        raise TypeError(
            f"images: expected a torch.Tensor [N, 3, H, W], got {type(images).__name__}"
        )
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(
            f"images: expected shape [N, 3, H, W] in [-1, 1], got {list(images.shape)}"
        )
    if not images.is_floating_point():
        raise TypeError(f"images: expected a float tensor in [-1, 1], got dtype {images.dtype}")


def trim(x: torch.Tensor, fractions: tuple[float, float, float, float]) -> torch.Tensor:
    """Cut fractions of H/W from top, bottom, left, right."""
    if not any(fractions):
        return x
    h, w = x.shape[-2:]
    top, bottom = round(fractions[0] * h), round(fractions[1] * h)
    left, right = round(fractions[2] * w), round(fractions[3] * w)
    return x[..., top : h - bottom, left : w - right]


def resized_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """Output (h, w) when the shorter side becomes ``size`` (torchvision's Resize(int) rule)."""
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


def resize_shorter(x: torch.Tensor, size: int, mode: str, antialias: bool) -> torch.Tensor:
    return resize_to(x, resized_shape(*x.shape[-2:], size), mode, antialias)


def resize_to(x: torch.Tensor, out: tuple[int, int], mode: str, antialias: bool) -> torch.Tensor:
    h, w = x.shape[-2:]
    out = tuple(out)
    if out == (h, w):
        return x
    if mode == "area":
        return F.interpolate(x, size=out, mode="area")
    if mode == "nearest":
        return F.interpolate(x, size=out, mode="nearest-exact")
    return F.interpolate(x, size=out, mode=mode, align_corners=False, antialias=antialias)


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    if h < size or w < size:  # pad with black, as torchvision's CenterCrop does
        pad_h, pad_w = max(size - h, 0), max(size - w, 0)
        x = F.pad(x, (pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2), value=-1.0)
        h, w = x.shape[-2:]
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return x[..., top : top + size, left : left + size]
