"""The authors' RandomResizedCrop for Eq. 8 fine-tuning (chail/gan-ensembling
data/data_cats.py and data/data_cars.py: ``imtrain`` and ``TensorCombinedTransformTrain``,
scale (0.8, 1.0), ratio (3/4, 4/3), bilinear resize to the classifier input, then flip)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torchvision.transforms import RandomResizedCrop

from ganviews.classifiers.augment import crop_box, crop_seeds, resized_crops
from ganviews.classifiers.batches import ImageBatches, SourceConfig, make_batches
from ganviews.core.config import from_dict
from ganviews.core.errors import ConfigError

torch.set_num_threads(1)

SCALE, RATIO = (0.8, 1.0), (3 / 4, 4 / 3)


def test_crop_box_keeps_the_authors_scale_and_ratio_bounds_and_is_seeded():
    boxes = [crop_box(s, 256, 256, scale=SCALE, ratio=RATIO) for s in range(200)]
    for top, left, h, w in boxes:
        # integer rounding of w and h moves area and ratio by at most ~1 px on a side
        assert 0.8 * 256**2 * (1 - 2 / 200) <= h * w <= 256**2
        assert 0.75 * (1 - 2 / 200) <= w / h <= 4 / 3 * (1 + 2 / 200)
        assert 0 <= top <= 256 - h and 0 <= left <= 256 - w
        assert min(h, w) >= math.floor(256 * math.sqrt(0.8 * 0.75))  # 198 px at least
    areas = [h * w / 256**2 for _, _, h, w in boxes]
    assert min(areas) < 0.82 and max(areas) > 0.98  # the whole scale range is used
    assert len(set(boxes)) > 170  # seeds give different boxes
    assert crop_box(7, 256, 256, scale=SCALE, ratio=RATIO) == boxes[7]  # same seed, same box
    torch.manual_seed(7)  # torchvision's own sampling rule on the same RNG stream
    assert boxes[7] == tuple(
        int(v)
        for v in RandomResizedCrop.get_params(torch.empty(0, 256, 256), list(SCALE), list(RATIO))
    )
    state = torch.get_rng_state()
    crop_box(3, 256, 256, scale=SCALE, ratio=RATIO)
    assert torch.equal(state, torch.get_rng_state())  # global RNG untouched


def test_cat_window_gives_the_classifier_exactly_the_authors_224_crop():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 256, 256, generator=g) * 2 - 1
    seeds = [11, 12, 13]
    out = resized_crops(images, seeds, scale=SCALE, ratio=RATIO, window=(0.875, 0.875))
    assert out.shape == images.shape
    seen = out[..., 16:240, 16:240]  # the cat preset's centre crop 224 of 256
    for k, s in enumerate(seeds):
        top, left, h, w = crop_box(s, 256, 256, scale=SCALE, ratio=RATIO)
        box = images[k : k + 1, :, top : top + h, left : left + w]
        want = torch.nn.Upsample((224, 224), mode="bilinear")(box)  # the authors' GAN path
        torch.testing.assert_close(seen[k : k + 1], want, atol=1e-6, rtol=0)
    # edge pixels repeated outside the window
    assert torch.equal(out[:, :, :16, 16:240], seen[:, :, :1].expand(-1, -1, 16, -1))


def test_car_region_draws_the_box_inside_the_bands():
    images = torch.zeros(1, 3, 64, 64)
    images[..., :8, :] = 5.0  # the black bands of the aligned car frame (1/8 of H each)
    images[..., 56:, :] = 5.0
    for s in range(30):
        out = resized_crops(images, [s], scale=SCALE, ratio=RATIO, region=(0.75, 1.0))
        assert float(out.abs().max()) == 0.0  # the bands never enter the crop


def test_crops_are_per_sample_so_batches_do_not_change_them():
    g = torch.Generator().manual_seed(1)
    images = (torch.rand(6, 3, 32, 32, generator=g) * 255).to(torch.uint8)
    labels = torch.arange(6)
    crop = {"scale": SCALE, "ratio": RATIO, "region": (1.0, 1.0), "window": (0.875, 0.875)}

    def by_label(batch_size):
        src = ImageBatches(images, labels, batch_size=batch_size, seed=5, crop=crop)
        rows = {}
        for b in src.epoch(2):
            for img, lab in zip(b.images, b.labels, strict=True):
                rows[int(lab)] = img
        return rows

    one, four = by_label(1), by_label(4)
    for i in range(6):
        torch.testing.assert_close(one[i], four[i], atol=0, rtol=0)
    # a crop, not the plain image: the first epoch's samples differ from the input (flip aside)
    plain = {
        int(b.labels[0]): b.images[0]
        for b in ImageBatches(images, labels, batch_size=1, seed=5).epoch(2)
    }
    assert all(not torch.allclose(one[i], plain[i]) for i in range(6))
    assert crop_seeds(5, ["a"], 2) != crop_seeds(5, ["a"], 3)  # a new box every epoch


def test_source_config_turns_it_on_and_checks_bounds():
    cfg = SourceConfig(resized_crop=(0.8, 1.0), crop_window=(0.875, 0.875))
    src = make_batches(cfg, labels=[0, 1], images=torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    assert src.crop == {
        "scale": (0.8, 1.0),
        "ratio": (0.75, 4 / 3),
        "region": (1.0, 1.0),
        "window": (0.875, 0.875),
    }
    assert make_batches(SourceConfig(), labels=[0], images=torch.zeros(1, 3, 8, 8)).crop is None
    with pytest.raises(ConfigError, match=r"views.resized_crop: \[0.0, 1.0\]"):
        SourceConfig(resized_crop=(0.0, 1.0))
    with pytest.raises(ConfigError, match="views.crop_window"):
        SourceConfig(crop_window=(1.5, 1.0))


def test_real_photos_are_antialiased_gan_images_are_not():
    g = torch.Generator().manual_seed(2)
    images = torch.rand(2, 3, 64, 64, generator=g)
    images[1] = images[0]
    out = resized_crops(
        images,
        [4, 4],
        scale=SCALE,
        ratio=RATIO,
        window=(0.5, 0.5),
        antialias=torch.tensor([True, False]),
    )
    top, left, h, w = crop_box(4, 64, 64, scale=SCALE, ratio=RATIO)
    box = images[:1, :, top : top + h, left : left + w]
    smooth = F.interpolate(box, size=(32, 32), mode="bilinear", antialias=True)
    torch.testing.assert_close(out[:1, :, 16:48, 16:48], smooth, atol=1e-6, rtol=0)
    assert not torch.allclose(out[0], out[1])


@pytest.mark.parametrize(("domain", "window"), [("cats", (0.875, 0.875)), ("cars", (0.75, 0.7485))])
def test_paper_configs_commented_eq8_block_sets_the_crop(domain, window):
    root = Path(__file__).resolve().parents[2]
    lines = (root / "configs" / f"{domain}.yaml").read_text().splitlines()
    start = lines.index("# classifier_training:")
    rest = itertools.takewhile(lambda ln: ln.startswith("#  "), lines[start + 1 :])
    block = [ln[2:] for ln in [lines[start], *rest]]
    views = yaml.safe_load("\n".join(block))["classifier_training"]["views"]
    cfg = from_dict(SourceConfig, views, key="views")
    assert cfg.resized_crop == (0.8, 1.0) and cfg.crop_window == window and cfg.flip
