"""``original_source: photo``: the authors' car ``imval`` (Resize(256) + CenterCrop(256) of the raw
photo) and ``imcrop`` (the same resize + RandomCrop(256) + RandomHorizontalFlip),
chail/gan-ensembling ``data/data_cars.py``, pinned by their offsets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from ganviews.views.photo import center_windows, random_windows, resize_photo, window_draws


def _photo(height: int, width: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _imval(rgb: np.ndarray) -> torch.Tensor:
    """The authors' imval up to ToTensor, run by torchvision itself (ANTIALIAS = Lanczos)."""
    pil = T.Compose([T.Resize(256, T.InterpolationMode.LANCZOS), T.CenterCrop(256)])(
        Image.fromarray(rgb)
    )
    return torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1)


def test_photo_view_is_the_authors_imval_resize_256_and_center_crop():
    landscape = _photo(300, 400)
    strip = resize_photo(landscape, 256)
    assert strip.shape == (3, 256, 341) and strip.dtype == torch.uint8  # int(256 · 400 / 300)
    view = center_windows([strip], 256)[0]
    assert torch.equal(view, strip[:, :, 42:298])  # round((341 − 256) / 2) = 42, no vertical cut
    assert torch.equal(view, _imval(landscape))  # bit for bit torchvision's Resize + CenterCrop
    portrait = _photo(400, 300)
    strip = resize_photo(portrait, 256)
    assert strip.shape == (3, 341, 256)
    view = center_windows([strip], 256)[0]
    assert torch.equal(view, strip[:, 42:298, :]) and torch.equal(view, _imval(portrait))
    with pytest.raises(ValueError, match=r"photos\[0\]: expected \[3, h, w\] with h, w ≥ 256"):
        center_windows([strip[:, :200]], 256)
    with pytest.raises(ValueError, match=r"rgb: expected uint8 \[H, W, 3\], got float64"):
        resize_photo(landscape.astype(np.float64), 256)


def test_photo_crops_are_the_authors_randomcrop_offsets_0_to_85_and_flip():
    """RandomCrop(256) of the 256×341 resize: every horizontal offset 0 … 85 (86 values), never
    a vertical one; RandomHorizontalFlip on half of them; the window is that crop, whole."""
    torch.set_num_threads(1)
    n = 1000
    draws = window_draws([(256, 341)] * n, range(n), 256)
    tops, lefts, coins = (np.array(v) for v in zip(*draws, strict=True))
    assert (tops == 0).all()  # no vertical jitter on a landscape photo
    assert lefts.min() == 0 and lefts.max() == 85
    assert len(set(lefts.tolist())) == 86  # every offset of the authors' randint(0, 85)
    assert 0.45 < coins.mean() < 0.55
    portrait = window_draws([(341, 256)] * 200, range(200), 256)
    assert {d[1] for d in portrait} == {0} and max(d[0] for d in portrait) == 85
    cols = torch.arange(341, dtype=torch.float32).view(1, 1, 341).expand(1, 256, 341)
    rows = torch.arange(256, dtype=torch.float32).view(1, 256, 1).expand(1, 256, 341)
    strip = torch.cat([cols, rows, cols])  # [3, 256, 341]: channel 0 = column, 1 = row
    views = random_windows([strip] * 8, range(8), 256, flip=True)  # [8, 3, 256, 256]
    for k in range(8):
        expected = strip[:, :, lefts[k] : lefts[k] + 256]
        assert torch.equal(views[k], expected.flip(-1) if coins[k] else expected)
    plain = random_windows([strip] * 8, range(8), 256, flip=False)
    assert torch.equal(plain[:, 0, 0, 0].long(), torch.as_tensor(lefts[:8]))
    assert torch.equal(random_windows([strip], [5], 256, flip=True)[0], views[5])  # per seed
    with pytest.raises(ValueError, match=r"seeds: expected one seed per photo \(2\), got 1"):
        window_draws([(256, 341)] * 2, [0], 256)
