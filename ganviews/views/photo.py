"""The raw photo as the classifier's view 0 and the source of image crops (``original_source: photo``).

Chai et al., "Ensembling with Deep Generative Views" (CVPR 2021), Sec. 4, cars: the authors
classify the raw Stanford Cars photo, not the aligned GAN frame (chail/gan-ensembling
``data/data_cars.py``): ``imval`` = ``Resize(256, PIL ANTIALIAS)`` (the shorter side to 256,
the longer one ``int(256 · long / short)``) + ``CenterCrop(256)``, and the crop views
``imcrop`` = the same resize + ``RandomCrop(256)`` + ``RandomHorizontalFlip``: a window at a
whole-pixel offset uniform over the resized photo, no zoom. Only the GAN side uses the aligned
512 frame.

:func:`resize_photo` is their resize, done by torchvision on a PIL image with the same filter
(``ANTIALIAS`` is PIL's Lanczos), so the uint8 pixels are theirs. The strips it returns have one
side ``size`` and the other ≥ ``size``; :func:`center_windows` and :func:`random_windows` cut the
``size × size`` views from strips of different widths, seeded per view like every image view
(:func:`ganviews.views.augment.draw_uniforms`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from ganviews.views.augment import UNIFORM_SLOTS, draw_uniforms


def resize_photo(rgb: np.ndarray, size: int) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` → uint8 ``[3, h, w]``, the shorter side ``size`` (torchvision's
    ``Resize(size)`` rule), resampled with PIL's Lanczos filter (the authors' ``ANTIALIAS``)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb: expected uint8 [H, W, 3], got {rgb.dtype} {list(rgb.shape)}")
    small = TF.resize(Image.fromarray(rgb), [size], interpolation=InterpolationMode.LANCZOS)
    return torch.from_numpy(np.asarray(small).copy()).permute(2, 0, 1).contiguous()  # [3, h, w]


def _check_strips(strips: Sequence[torch.Tensor], size: int) -> None:
    for i, s in enumerate(strips):
        if s.ndim != 3 or s.shape[0] != 3 or min(s.shape[1:]) < size:
            raise ValueError(
                f"photos[{i}]: expected [3, h, w] with h, w ≥ {size}, got {list(s.shape)}"
            )


def center_windows(strips: Sequence[torch.Tensor], size: int) -> torch.Tensor:
    """``CenterCrop(size)`` of each strip (torchvision's offsets: round((h − size) / 2)) →
    ``[N, 3, size, size]``."""
    _check_strips(strips, size)
    return torch.stack([TF.center_crop(s, [size, size]) for s in strips])


def window_draws(
    shapes: Sequence[tuple[int, int]], seeds: Sequence[int], size: int
) -> list[tuple[int, int, bool]]:
    """(top, left, flip) of ``RandomCrop(size)`` + ``RandomHorizontalFlip`` per strip of
    ``shapes`` (h, w), one seed each: whole-pixel offsets uniform over 0 … h − size and
    0 … w − size (the seed's crop-row and crop-column uniforms), the flip coin p = 1/2."""
    seeds = list(seeds)
    if len(seeds) != len(shapes):
        raise ValueError(f"seeds: expected one seed per photo ({len(shapes)}), got {len(seeds)}")
    out = []
    for (h, w), row in zip(shapes, draw_uniforms(seeds, "cpu"), strict=True):  # row: [7]
        top = min(int(row[UNIFORM_SLOTS["row"]] * (h - size + 1)), h - size)
        left = min(int(row[UNIFORM_SLOTS["col"]] * (w - size + 1)), w - size)
        out.append((top, left, bool(row[UNIFORM_SLOTS["flip"]] < 0.5)))
    return out


def random_windows(
    strips: Sequence[torch.Tensor], seeds: Sequence[int], size: int, *, flip: bool
) -> torch.Tensor:
    """``RandomCrop(size)`` + ``RandomHorizontalFlip`` (when ``flip``) of each strip, one seed
    each (:func:`window_draws`) → ``[N, 3, size, size]``."""
    _check_strips(strips, size)
    draws = window_draws([tuple(s.shape[1:]) for s in strips], seeds, size)
    out = []
    for s, (top, left, coin) in zip(strips, draws, strict=True):
        window = s[:, top : top + size, left : left + size]  # [3, size, size]
        out.append(window.flip(-1) if flip and coin else window)
    return torch.stack(out)
