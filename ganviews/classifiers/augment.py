"""Training augmentation of the Eq. 8 batch sources besides the flip: the authors'
RandomResizedCrop (scale 0.8–1, aspect 3/4–4/3) on real and generated images.

The authors crop a random box (``torchvision.transforms.RandomResizedCrop``'s sampling rule)
and resize it to the classifier's input. In ganviews the classifier applies its own
preprocessing after the batch (e.g. the cat preset's centre crop 224 of 256), so the resized
box is written into the centred ``window`` (fractions of H and W) that this preprocessing
keeps, and the rest of the canvas repeats the box's edge pixels. For cats (window 0.875) the
classifier then sees exactly the authors' 224-px RandomResizedCrop output.

With the real images taken from the raw photo (``real_source: photo``, the authors' cars),
:func:`photo_resized_crops` is their ``imtrain`` itself: torchvision's ``RandomResizedCrop``
with PIL's Lanczos filter (``ANTIALIAS``) on the full-size photo, and the GAN images' box, drawn
inside the band-free area, is resized straight to the same square (``size``), as their
``TensorCombinedTransformTrain``; the classifier then only normalises these windows.

The box of each sample is drawn from its own seed (base seed, "train-crop", image id, epoch):
results do not depend on the batch size or on which samples share a batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode, RandomResizedCrop

from ganviews.core.runtime import item_seed
from ganviews.views.photo import center_windows, resize_photo


def crop_box(
    seed: int,
    height: int,
    width: int,
    *,
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of one RandomResizedCrop box in an ``height`` × ``width`` image.

    torchvision's own sampling rule (10 tries, then the central fallback), run on a torch RNG
    seeded by ``seed`` alone (the global RNG state is restored afterwards).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        top, left, h, w = RandomResizedCrop.get_params(
            torch.empty(0, height, width), list(scale), list(ratio)
        )
    return int(top), int(left), int(h), int(w)


def _span(size: int, fraction: float) -> tuple[int, int]:
    """Start and length of the centred ``fraction`` of ``size`` pixels (at least 1)."""
    length = max(1, min(size, round(size * fraction)))
    return (size - length) // 2, length


def resized_crops(
    images: torch.Tensor,
    seeds: Sequence[int],
    *,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    region: tuple[float, float] = (1.0, 1.0),
    window: tuple[float, float] = (1.0, 1.0),
    antialias: torch.Tensor | None = None,
    size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Each image [B, 3, H, W] replaced by a random resized crop of its centred ``region``,
    written into its centred ``window`` (fractions of H, W; edge pixels repeated around it).

    ``seeds`` [B]: one box seed per sample (:func:`crop_box`). ``antialias`` [B] bool: low-pass
    when downsampling (the authors: PIL's antialiased resize for real photos, plain bilinear
    ``nn.Upsample`` for GAN images); default False for every sample. ``size`` (h, w): return
    the boxes resized to this size instead ([B, 3, h, w]; ``window`` must then be whole).
    """
    n, _, H, W = images.shape
    if len(seeds) != n:
        raise ValueError(f"seeds: {len(seeds)} seeds for {n} images")
    if size is not None and tuple(window) != (1.0, 1.0):
        raise ValueError(f"window: {tuple(window)} with size {size}; the box is the output")
    ry, rh = _span(H, region[0])
    rx, rw = _span(W, region[1])
    wy, wh = _span(H, window[0]) if size is None else (0, size[0])
    wx, ww = _span(W, window[1]) if size is None else (0, size[1])
    out = []
    for k in range(n):
        top, left, h, w = crop_box(int(seeds[k]), rh, rw, scale=scale, ratio=ratio)
        box = images[k : k + 1, :, ry + top : ry + top + h, rx + left : rx + left + w]
        smooth = bool(antialias[k]) if antialias is not None else False
        box = F.interpolate(
            box.float(), size=(wh, ww), mode="bilinear", align_corners=False, antialias=smooth
        )  # [1, 3, wh, ww]
        pad = (wx, W - wx - ww, wy, H - wy - wh)
        out.append(F.pad(box, pad, mode="replicate") if size is None and any(pad) else box)
    return torch.cat(out).to(images.dtype)


def photo_resized_crops(
    photos: Sequence[torch.Tensor],
    seeds: Sequence[int],
    size: int,
    *,
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> torch.Tensor:
    """The authors' ``imtrain`` crop of each full-size photo (uint8 ``[3, H, W]``, any sizes):
    ``RandomResizedCrop(size, scale, ratio, interpolation=ANTIALIAS)`` on the PIL image — the box
    of :func:`crop_box` from the sample's seed, resized by PIL's Lanczos filter → uint8
    ``[N, 3, size, size]``. Equal to torchvision's transform after ``torch.manual_seed(seed)``."""
    if len(seeds) != len(photos):
        raise ValueError(f"seeds: {len(seeds)} seeds for {len(photos)} photos")
    out = []
    for photo, seed in zip(photos, seeds, strict=True):
        _, height, width = photo.shape
        top, left, h, w = crop_box(int(seed), height, width, scale=scale, ratio=ratio)
        pil = Image.fromarray(_hwc(photo))
        window = TF.resized_crop(
            pil, top, left, h, w, [size, size], interpolation=InterpolationMode.LANCZOS
        )
        out.append(torch.from_numpy(np.asarray(window).copy()).permute(2, 0, 1))
    return torch.stack(out)  # [N, 3, size, size]


def photo_center_windows(photos: Sequence[torch.Tensor], size: int) -> torch.Tensor:
    """The authors' ``imval`` of each full-size photo (uint8 ``[3, H, W]``): ``Resize(size)``
    with PIL's Lanczos filter + ``CenterCrop(size)`` → uint8 ``[N, 3, size, size]``."""
    strips = [resize_photo(_hwc(p), size) for p in photos]
    return center_windows(strips, size)


def crop_seeds(seed: int, image_ids: Sequence[str], epoch: int) -> list[int]:
    """The box seed of each sample in this epoch: (seed, "train-crop", image id, epoch)."""
    return [item_seed(seed, "train-crop", i, epoch) for i in image_ids]


def _hwc(photo: torch.Tensor) -> np.ndarray:
    """uint8 [3, H, W] tensor → contiguous [H, W, 3] array."""
    return np.ascontiguousarray(photo.permute(1, 2, 0).cpu().numpy())
