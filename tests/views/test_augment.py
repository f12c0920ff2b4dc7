"""Image-space views: per-sample seeding, agreement with torchvision's colour ops, crops, flips."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF

from ganviews.views.augment import (
    IMAGE_AUGMENTATIONS,
    JitterConfig,
    augment,
    color_jitter,
    combined_jitter,
    draw_uniforms,
    image_view_seed,
    jitter_seed,
    spatial_jitter,
)


@pytest.fixture(scope="module")
def images():
    gen = torch.Generator().manual_seed(0)
    # smooth colourful images in [-1, 1] (noise would make every op look alike)
    base = torch.rand(6, 3, 4, 4, generator=gen) * 2 - 1
    return F.interpolate(base, size=(24, 24), mode="bilinear", align_corners=False)


SEEDS = [11, 12, 13, 14, 15, 16]


@pytest.mark.parametrize("method", sorted(IMAGE_AUGMENTATIONS))
def test_each_sample_depends_only_on_its_seed(images, method):
    full = augment(images, SEEDS, method)
    assert full.shape == images.shape and full.dtype == images.dtype
    part = augment(images[[4, 1]], [SEEDS[4], SEEDS[1]], method)
    assert torch.equal(part[0], full[4]) and torch.equal(part[1], full[1])
    assert torch.equal(augment(images, SEEDS, method), full)
    others = augment(images[:1].expand(8, -1, -1, -1), list(range(900, 908)), method)
    assert any(not torch.equal(o, full[0]) for o in others)
    assert not torch.equal(full, images)


def test_seed_helpers_are_stable_and_distinct():
    assert image_view_seed(0, "a", "color", 1) == image_view_seed(0, "a", "color", 1)
    seeds = {image_view_seed(0, i, m, v) for i in "ab" for m in ("color", "crop") for v in (1, 2)}
    assert len(seeds) == 8
    assert jitter_seed(5) != 5 and jitter_seed(5) == jitter_seed(5)
    u = draw_uniforms([1, 2], "cpu")
    assert u.shape == (2, 7) and bool(((u >= 0) & (u < 1)).all())


def test_color_jitter_matches_torchvision_ops_with_the_drawn_parameters(images):
    cfg = JitterConfig(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.2)
    out = color_jitter(images, SEEDS, config=cfg)
    u = draw_uniforms(SEEDS, "cpu").float()
    for k in range(len(SEEDS)):
        x = (images[k] + 1) / 2
        if u[k, 0] < 0.5:
            x = TF.hflip(x)
        x = TF.adjust_brightness(x, float(1 + 0.4 * (2 * u[k, 1] - 1)))
        x = TF.adjust_contrast(x, float(1 + 0.4 * (2 * u[k, 2] - 1)))
        x = TF.adjust_saturation(x, float(1 + 0.4 * (2 * u[k, 3] - 1)))
        x = TF.adjust_hue(x, float(0.2 * (2 * u[k, 4] - 1)))
        torch.testing.assert_close(out[k], x * 2 - 1, rtol=0, atol=3e-6)
    flips = int((u[:, 0] < 0.5).sum())
    assert 0 < flips < len(SEEDS)  # both branches exercised


def test_zero_strength_colour_jitter_is_identity_up_to_rounding(images):
    cfg = JitterConfig(brightness=0, contrast=0, saturation=0, hue=0, flip=False)
    x = images.clamp(-1, 1)
    torch.testing.assert_close(color_jitter(x, SEEDS, config=cfg), x, rtol=0, atol=1e-6)


def test_spatial_jitter_is_an_upscaled_crop(images):
    cfg = JitterConfig(crop_scale=1.25, flip=False)
    out = spatial_jitter(images, SEEDS, config=cfg)
    big = F.interpolate(images, size=(30, 30), mode="bilinear", align_corners=False)
    u = draw_uniforms(SEEDS, "cpu")
    offsets = set()
    for k in range(len(SEEDS)):
        top, left = int(u[k, 5] * 7), int(u[k, 6] * 7)
        offsets.add((top, left))
        assert torch.equal(out[k], big[k, :, top : top + 24, left : left + 24])
    assert len(offsets) > 1
    # crop_scale 1 and no flip: the identity
    same = spatial_jitter(images, SEEDS, config=JitterConfig(crop_scale=1.0, flip=False))
    assert torch.equal(same, images)


def test_flip_happens_for_about_half_of_the_seeds(images):
    cfg = JitterConfig(crop_scale=1.0, flip=True)
    x = images[:1].expand(200, -1, -1, -1)
    out = spatial_jitter(x, list(range(200)), config=cfg)
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert bool((flipped | kept).all())
    assert 70 < int(flipped.sum()) < 130


def test_combined_is_crop_flip_then_colour_without_hue(images):
    cfg = JitterConfig(crop_scale=1.1, combined_color=False)
    assert torch.equal(
        combined_jitter(images, SEEDS, config=cfg), spatial_jitter(images, SEEDS, config=cfg)
    )
    with_color = combined_jitter(images, SEEDS, config=JitterConfig(crop_scale=1.1, hue=0.5))
    no_hue = combined_jitter(images, SEEDS, config=JitterConfig(crop_scale=1.1, hue=0.0))
    assert torch.equal(with_color, no_hue)  # the hue setting never touches combined views
    assert not torch.equal(with_color, spatial_jitter(images, SEEDS, config=cfg))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_same_views_on_the_gpu(images):
    for method in IMAGE_AUGMENTATIONS:
        cpu = augment(images, SEEDS, method)
        gpu = augment(images.cuda(), SEEDS, method).cpu()
        torch.testing.assert_close(gpu, cpu, rtol=0, atol=1e-4)


def test_errors_name_the_parameter(images):
    with pytest.raises(
        ValueError, match=r"method: got 'blur', allowed: \['color', 'combined', 'crop'\]"
    ):
        augment(images, SEEDS, "blur")
    with pytest.raises(ValueError, match=r"seeds: expected one seed per image \(6\), got 2"):
        augment(images, [1, 2], "crop")
    with pytest.raises(
        ValueError, match=r"images: expected shape \[N, 3, H, W\], got \[3, 24, 24\]"
    ):
        augment(images[0], [1], "crop")
    with pytest.raises(ValueError, match="JitterConfig.crop_scale: got 0.9, must be ≥ 1"):
        JitterConfig(crop_scale=0.9)
    with pytest.raises(ValueError, match=r"JitterConfig.contrast: got 1.5, must be in \[0, 1\)"):
        JitterConfig(contrast=1.5)
    with pytest.raises(ValueError, match=r"JitterConfig.hue: got 0.7, must be in \[0, 0.5\]"):
        JitterConfig(hue=0.7)


def _coordinates(h: int, w: int) -> torch.Tensor:
    """[1, 3, h, w]: channel 0 = row index, 1 = column index, 2 = 0 (exact in float32)."""
    rows = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
    cols = torch.arange(w, dtype=torch.float32)[None, :].expand(h, w)
    return torch.stack([rows, cols, torch.zeros(h, w)])[None]


def _window_offsets(x: torch.Tensor, cfg: JitterConfig, crop: tuple[int, int], n: int):
    """Offsets (row, col) of the window a classifier's centre crop of ``crop`` sees."""
    h, w = x.shape[-2:]
    top, left = round((h - crop[0]) / 2), round((w - crop[1]) / 2)
    out = spatial_jitter(x.expand(n, -1, -1, -1), list(range(n)), config=cfg)  # [n, 3, h, w]
    seen = out[:, :, top : top + crop[0], left : left + crop[1]]
    # the window is an unscaled, contiguous block of the input: rows/cols step by exactly 1
    assert (seen[:, 0].diff(dim=1) == 1).all() and (seen[:, 1].diff(dim=2).abs() == 1).all()
    return seen[:, 0, 0, 0].long(), seen[:, 1, 0, :].amin(dim=1).long()


def test_cat_crop_is_the_official_randomcrop_224_of_256_without_zoom():
    """data/data_cats.py 'imcrop' / 'tensormixed': RandomCrop(224) of the 256 image (offsets
    0–32 on both axes, no rescaling); the classifier's centre crop 224 sees that window."""
    torch.set_num_threads(1)
    from ganviews.views.render import PRESETS

    cfg = PRESETS["cats"].jitter
    assert (cfg.crop_mode, cfg.crop_window) == ("window", (0.875, 0.875))
    # thin images keep it fast: each axis's window depends on that axis's size only
    rows, _ = _window_offsets(_coordinates(256, 16), cfg, (224, 14), 400)
    _, cols = _window_offsets(_coordinates(16, 256), cfg, (14, 224), 400)
    assert set(rows.tolist()) == set(range(33)) and set(cols.tolist()) == set(range(33))


def test_car_crop_jitters_horizontally_only_without_zoom():
    """data/data_cars.py 'tensormixed': RandomCrop(256) of the 342×256 resize of the 512×384
    render = a 384-wide window of the 512² frame moved sideways (render pixels 0–128)."""
    torch.set_num_threads(1)
    from ganviews.views.render import PRESETS

    cfg = dataclasses.replace(PRESETS["cars"].jitter, flip=False)
    rows, _ = _window_offsets(_coordinates(512, 16), cfg, (512, 12), 300)
    _, cols = _window_offsets(_coordinates(16, 512), cfg, (16, 384), 300)
    assert set(rows.tolist()) == {0}  # no vertical jitter into the black bands
    assert cols.min() == 0 and cols.max() == 128 and len(set(cols.tolist())) > 100
    with pytest.raises(ValueError, match=r"JitterConfig.crop_window: got \(1.0, 0.0\)"):
        JitterConfig(crop_mode="window", crop_window=(1.0, 0.0))
    with pytest.raises(ValueError, match=r"JitterConfig.crop_mode: got 'shift'"):
        JitterConfig(crop_mode="shift")
