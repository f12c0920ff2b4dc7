"""The authors' RandomResizedCrop for Eq. 8 fine-tuning (chail/gan-ensembling
data/data_cats.py and data/data_cars.py: ``imtrain`` and ``TensorCombinedTransformTrain``,
scale (0.8, 1.0), ratio (3/4, 4/3), bilinear resize to the classifier input, then flip)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms as T
import yaml
from PIL import Image
from torchvision.transforms import RandomResizedCrop

from ganviews.classifiers.augment import (
    crop_box,
    crop_seeds,
    photo_center_windows,
    photo_resized_crops,
    resized_crops,
)
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


@pytest.mark.parametrize(("domain", "window"), [("cats", (0.875, 0.875)), ("cars", (1.0, 1.0))])
def test_paper_configs_commented_eq8_block_sets_the_crop(domain, window):
    root = Path(__file__).resolve().parents[2]
    lines = (root / "configs" / f"{domain}.yaml").read_text().splitlines()
    start = lines.index("# classifier_training:")
    rest = itertools.takewhile(lambda ln: ln.startswith("#  "), lines[start + 1 :])
    block = [ln[2:] for ln in [lines[start], *rest]]
    views = yaml.safe_load("\n".join(block))["classifier_training"]["views"]
    cfg = from_dict(SourceConfig, views, key="views")
    assert cfg.resized_crop == (0.8, 1.0) and cfg.crop_window == window and cfg.flip


# ------------------------------------------------------------ real_source: photo (the authors' cars)


def _photos(*shapes: tuple[int, int]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return [torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8) for h, w in shapes]


def _pil(photo: torch.Tensor) -> Image.Image:
    return Image.fromarray(photo.permute(1, 2, 0).contiguous().numpy())


def _tensor(pil: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1)


def test_photo_train_crop_is_torchvisions_random_resized_crop_of_the_raw_photo():
    """data_cars.py imtrain: RandomResizedCrop(256, scale (0.8, 1), ANTIALIAS) of the full photo;
    the same box drawn → bit for bit torchvision's output; imval: Resize(256) + CenterCrop."""
    photos = _photos((300, 400), (400, 300))
    imtrain = T.RandomResizedCrop(
        256, scale=SCALE, ratio=RATIO, interpolation=T.InterpolationMode.LANCZOS
    )
    for seed in (0, 1, 2):
        got = photo_resized_crops(photos, [seed, seed], 256, scale=SCALE, ratio=RATIO)
        assert got.shape == (2, 3, 256, 256) and got.dtype == torch.uint8
        for k, photo in enumerate(photos):
            torch.manual_seed(seed)  # the authors' transform on the same RNG stream
            assert torch.equal(got[k], _tensor(imtrain(_pil(photo))))
    # the box is drawn in the photo's own pixels: 300×400 → ≥ 80 % of 120,000 px, squashed to 256²
    top, left, h, w = crop_box(0, 300, 400, scale=SCALE, ratio=RATIO)
    assert 0.8 * 120_000 * 0.99 <= h * w <= 120_000 and 0 <= top <= 300 - h and 0 <= left <= 400 - w
    imval = T.Compose([T.Resize(256, T.InterpolationMode.LANCZOS), T.CenterCrop(256)])
    centre = photo_center_windows(photos, 256)
    assert all(torch.equal(centre[k], _tensor(imval(_pil(p)))) for k, p in enumerate(photos))


def test_photo_gan_side_is_the_authors_box_between_the_bands_upsampled_to_the_square():
    """TensorCombinedTransformTrain: image[:, :, 64:-64] (384×512 of 512²), the box drawn in that
    area, nn.Upsample((256, 256), bilinear); here at a quarter of the size (96×128 of 128² → 64²)."""
    g = torch.Generator().manual_seed(4)
    fake = torch.rand(2, 3, 128, 128, generator=g) * 2 - 1
    out = resized_crops(fake, [5, 6], scale=SCALE, ratio=RATIO, region=(0.75, 1.0), size=(64, 64))
    assert out.shape == (2, 3, 64, 64)
    for k, s in enumerate((5, 6)):
        top, left, h, w = crop_box(s, 96, 128, scale=SCALE, ratio=RATIO)
        box = fake[k : k + 1, :, 16:-16][:, :, top : top + h, left : left + w]
        want = torch.nn.Upsample((64, 64), mode="bilinear")(box)
        torch.testing.assert_close(out[k : k + 1], want, atol=1e-6, rtol=0)


def test_photo_batches_yield_the_photo_windows_and_the_trainer_feeds_them_unresized(
    stylegan2_fixtures,
):
    """The Eq. 8 mixture with real_source photo: real samples = imtrain of their photo (any
    size), GAN samples = the box of G(w*) between the bands at photo_size², flipped by their
    coin; train_classifier classifies them with normalisation only (geometry False)."""
    from ganviews.classifiers.model import ClassifierConfig, Preprocessing, build_classifier
    from ganviews.classifiers.training import train_classifier
    from ganviews.stylegan.generator import load_generator

    G = load_generator(stylegan2_fixtures / "nvidia-ada-res32.pkl")
    photos = _photos((30, 40), (40, 30), (24, 24), (36, 48), (30, 30), (50, 40))
    with torch.no_grad():
        ws = G.mapping(torch.randn(6, G.z_dim, generator=torch.Generator().manual_seed(0)), None)
    cfg = SourceConfig(
        source="recon", batch_size=3, real_source="photo", photo_size=16,
        resized_crop=(0.8, 1.0), crop_region=(0.75, 1.0),
    )  # fmt: skip
    ids = [f"car{i}" for i in range(6)]
    src = make_batches(cfg, labels=[0, 1] * 3, image_ids=ids, images=photos, ws=ws, G=G, seed=9)
    batches = list(src.epoch(0))
    plan, use_gen, flips = src._plan(0, cfg.p_generated)  # the epoch's order and coins
    seen = {"gan": 0, "real": 0}
    for batch, idx in zip(batches, plan, strict=True):
        assert batch.geometry is False and batch.images.shape[1:] == (3, 16, 16)
        order = np.concatenate([idx[use_gen[idx].numpy()], idx[~use_gen[idx].numpy()]])
        for row, i in enumerate(order):
            seed = crop_seeds(9, [ids[i]], 0)
            if use_gen[i]:
                with torch.no_grad():
                    render = G.synthesis(ws[i : i + 1], noise_mode="const")
                want = resized_crops(
                    render, seed, scale=SCALE, ratio=RATIO, region=(0.75, 1.0), size=(16, 16)
                )[0]
                seen["gan"] += 1
            else:
                want = (
                    photo_resized_crops([photos[i]], seed, 16, scale=SCALE, ratio=RATIO)[0].float()
                    / 127.5
                    - 1
                )
                seen["real"] += 1
            want = want.flip(-1) if flips[i] else want
            torch.testing.assert_close(batch.images[row], want, atol=1e-5, rtol=0)
    assert seen["gan"] and seen["real"]  # both sides of Eq. 8 checked

    # the trainer: the backbone gets the normalised windows, not the preprocessing's 32² resize
    C = build_classifier(
        ClassifierConfig(
            arch="smallcnn", num_outputs=1, width=4, preprocessing=Preprocessing(size=(32, 32))
        )
    )
    inputs = []
    C.backbone.register_forward_pre_hook(lambda _, args: inputs.append(args[0].detach().clone()))
    train_classifier(C, src, epochs=1, lr=1e-6, log_every=0)
    assert len(inputs) == len(batches)
    for x, batch in zip(inputs, batches, strict=True):
        torch.testing.assert_close(x, C.preprocess(batch.images, geometry=False), atol=1e-6, rtol=0)


def test_photo_source_config_checks():
    with pytest.raises(
        ConfigError, match=r"views.crop_window: \[0.75, 0.75\] with real_source 'photo'"
    ):
        SourceConfig(real_source="photo", resized_crop=(0.8, 1.0), crop_window=(0.75, 0.75))
    with pytest.raises(
        ConfigError, match=r"views.resized_crop: null with real_source 'photo' and source 'recon'"
    ):
        SourceConfig(source="recon", real_source="photo")
    with pytest.raises(ConfigError, match=r"views.real_source: 'raw'; allowed"):
        SourceConfig(real_source="raw")
    assert SourceConfig(real_source="photo").photo == 256 and SourceConfig().photo is None
    # real images only, no crop: the authors' imval windows (their image classifier's val)
    photos = _photos((30, 40), (20, 20))
    src = make_batches(
        SourceConfig(real_source="photo", photo_size=16, flip=False),
        labels=[0, 1],
        images=photos,
        shuffle=False,
    )
    (batch,) = list(src.epoch(0))
    assert batch.geometry is False
    torch.testing.assert_close(batch.images, photo_center_windows(photos, 16).float() / 127.5 - 1)
