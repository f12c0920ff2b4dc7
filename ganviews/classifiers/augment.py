"""Training augmentation of the Eq. 8 batch sources besides the flip: the authors'
RandomResizedCrop (scale 0.8–1, aspect 3/4–4/3) on real and generated images.

The authors crop a random box (``torchvision.transforms.RandomResizedCrop``'s sampling rule)
and resize it to the classifier's input. In ganviews the classifier applies its own
preprocessing after the batch (e.g. the cat preset's centre crop 224 of 256), so the resized
box is written into the centred ``window`` (fractions of H and W) that this preprocessing
keeps, and the rest of the canvas repeats the box's edge pixels. For cats (window 0.875) the
classifier then sees exactly the authors' 224-px RandomResizedCrop output.

The box of each sample is drawn from its own seed (base seed, "train-crop", image id, epoch):
results do not depend on the batch size or on which samples share a batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torchvision.transforms import RandomResizedCrop

from ganviews.core.runtime import item_seed


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
) -> torch.Tensor:
    """Each image [B, 3, H, W] replaced by a random resized crop of its centred ``region``,
    written into its centred ``window`` (fractions of H, W; edge pixels repeated around it).

    ``seeds`` [B]: one box seed per sample (:func:`crop_box`). ``antialias`` [B] bool: low-pass
    when downsampling (the authors: PIL's antialiased resize for real photos, plain bilinear
    ``nn.Upsample`` for GAN images); default False for every sample.
    """
    n, _, H, W = images.shape
    if len(seeds) != n:
        raise ValueError(f"seeds: {len(seeds)} seeds for {n} images")
    ry, rh = _span(H, region[0])
    rx, rw = _span(W, region[1])
    wy, wh = _span(H, window[0])
    wx, ww = _span(W, window[1])
    out = []
    for k in range(n):
        top, left, h, w = crop_box(int(seeds[k]), rh, rw, scale=scale, ratio=ratio)
        box = images[k : k + 1, :, ry + top : ry + top + h, rx + left : rx + left + w]
        smooth = bool(antialias[k]) if antialias is not None else False
        box = F.interpolate(
            box.float(), size=(wh, ww), mode="bilinear", align_corners=False, antialias=smooth
        )  # [1, 3, wh, ww]
        pad = (wx, W - wx - ww, wy, H - wy - wh)
        out.append(F.pad(box, pad, mode="replicate") if any(pad) else box)
    return torch.cat(out).to(images.dtype)


def crop_seeds(seed: int, image_ids: Sequence[str], epoch: int) -> list[int]:
    """The box seed of each sample in this epoch: (seed, "train-crop", image id, epoch)."""
    return [item_seed(seed, "train-crop", i, epoch) for i in image_ids]
