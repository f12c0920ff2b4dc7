"""The single-image fallback: view 0 (the original image) alone, for images without views.

Chai et al. (CVPR 2021), Sec. 3.4: the ensemble at α = 0 is the classifier on the original
image x. An image whose inversion failed has no latent and so no views; with
``ensemble.on_missing_views: single`` it is predicted from C(x) at every α, so accuracy covers
every test image. :func:`classify_originals` computes C(x) the way
:func:`ganviews.views.render.render_and_classify` computes view 0 (the same classifiers, the
render's autocast dtype and batch size), so a fallback row holds what the image's view-0 row
would have held.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ganviews.core.runtime import assert_shape
from ganviews.views.config import ViewConfig


@torch.no_grad()
def classify_originals(
    classifiers: Mapping[str, Any],
    images: torch.Tensor,
    *,
    config: ViewConfig,
    device: torch.device | str,
) -> dict[str, np.ndarray]:
    """Logits of view 0 alone: images ``[N, 3, H, W]`` in [-1, 1] → name → float32 ``[N, K]``.

    ``images``: the aligned originals, or with ``config.original_source == "photo"`` the photos'
    centre windows (:func:`ganviews.views.photo.center_windows`), classified like the render's
    view 0 with the classifiers' normalisation only."""
    device = torch.device(device)
    assert_shape(images, [None, 3, None, None], "images")
    if images.shape[0] == 0:
        raise ValueError("images: got 0 images; classify_originals needs at least one")
    dtype = None if config.dtype == "float32" else getattr(torch, config.dtype)
    autocast = (
        torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    )
    geometry = config.original_source == "aligned"  # photo windows are the classifier's input
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in classifiers}
    with autocast:
        for start in range(0, images.shape[0], config.batch_size):
            batch = images[start : start + config.batch_size].to(device, torch.float32)
            for name, C in classifiers.items():
                logits = C(batch) if geometry else C(batch, geometry=False)  # [B, K]
                parts[name].append(logits.float().cpu())
    return {name: torch.cat(p).numpy() for name, p in parts.items()}
