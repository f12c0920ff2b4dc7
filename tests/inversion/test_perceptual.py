"""Masked spatial LPIPS: weights-file handling and masking mechanics.

No ImageNet backbone weights are available offline, so the numerical tests use
"lpips-random" (the real `lpips` network with a seeded random AlexNet trunk): they check
mechanics only — shapes, masking, batch independence, gradients, file loading — not that
the distances are perceptually meaningful.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from ganviews.core.errors import CheckpointError
from ganviews.inversion.perceptual import MaskedLPIPS, load_perceptual


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # two OpenMP threads on a shared 2-core runner spin (10x slower)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def lpips_random():
    return load_perceptual("lpips-random", device="cpu")


def _pair(n=3, size=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=gen) * 2 - 1
    y = torch.rand(n, 3, size, size, generator=gen) * 2 - 1
    return x, y


def test_random_backbone_mechanics(lpips_random) -> None:
    """Mechanics only: [N] output, zero on identical inputs, per-image, differentiable."""
    x, y = _pair()
    d = lpips_random(x, y)
    assert d.shape == (3,) and (d > 0).all()
    assert torch.equal(lpips_random(x, x), torch.zeros(3))
    for i in (0, 2):
        assert torch.allclose(
            lpips_random(x[i : i + 1], y[i : i + 1])[0], d[i], rtol=1e-5, atol=1e-7
        )
    xg = x.clone().requires_grad_(True)
    lpips_random(xg, y).sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0
    # The seeded random trunk is the same network every time it is built.
    again = load_perceptual("lpips-random", device="cpu")
    assert torch.equal(again(x, y), d)
    assert not any(p.requires_grad for p in again.parameters())


def test_mask_weighting_and_unknown_pixels_have_no_influence(lpips_random) -> None:
    x, y = _pair(n=2)
    mask = torch.ones(2, 1, 32, 32)
    mask[:, :, :, 20:] = 0  # right part unknown
    d = lpips_random(x, y, mask)
    # Equals the mask-weighted mean of the raw lpips spatial map on mask-zeroed images.
    spatial = lpips_random.model(x * mask, y * mask)  # [N, 1, H, W]
    manual = (spatial * mask).sum(dim=(1, 2, 3)) / mask.sum(dim=(1, 2, 3))
    assert torch.allclose(d, manual, rtol=1e-6)
    # Anything under the zero mask, in either image, changes nothing.
    x2, y2 = x.clone(), y.clone()
    x2[:, :, :, 20:] = 5.0
    y2[:, :, :, 20:] = -3.0
    assert torch.equal(lpips_random(x2, y2, mask), d)
    # Without a mask those pixels do matter.
    assert not torch.allclose(lpips_random(x2, y2), lpips_random(x, y))


def test_resolution_option_downsamples_both_images(lpips_random) -> None:
    x, y = _pair(n=2, size=64)
    low = MaskedLPIPS(lpips_random.model, name="lpips-random", resolution=32)
    expected = lpips_random(
        F.interpolate(x, size=(32, 32), mode="area"), F.interpolate(y, size=(32, 32), mode="area")
    )
    assert torch.allclose(low(x, y), expected, rtol=1e-6)
    # Images already at or below the resolution pass unchanged.
    xs, ys = _pair(n=2, size=32)
    assert torch.equal(low(xs, ys), lpips_random(xs, ys))


def test_float64_variant(lpips_random) -> None:
    x, y = _pair(n=2)
    p64 = copy.deepcopy(lpips_random).to(torch.float64)
    d64 = p64(x.double(), y.double())
    assert d64.dtype == torch.float64
    assert torch.allclose(d64.float(), lpips_random(x, y), rtol=1e-4)


def test_missing_backbone_weights_error_names_file_and_folders(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(CheckpointError) as err:
        load_perceptual("lpips-alex", device="cpu", weights_dir=tmp_path / "weights")
    msg = str(err.value)
    assert "alexnet-owt-7be5be79.pth" in msg
    assert (
        str(tmp_path / "weights") in msg
        and str(tmp_path / "torch_home" / "hub" / "checkpoints") in msg
    )
    assert "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth" in msg
    with pytest.raises(CheckpointError, match="vgg16-397923af.pth"):
        load_perceptual("lpips-vgg", device="cpu", weights_dir=tmp_path)


def test_unknown_name_lists_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match=r"name='lpips-squeeze': unknown; allowed: \['lpips-alex'"):
        load_perceptual("lpips-squeeze")


def test_backbone_loaded_from_local_file(tmp_path, monkeypatch) -> None:
    """A torchvision-format AlexNet file in weights_dir is what the trunk ends up holding."""
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    torch.manual_seed(123)
    state = torchvision.models.alexnet(weights=None).state_dict()
    path = tmp_path / "alexnet-owt-7be5be79.pth"
    torch.save(state, path)
    # Our random stand-in cannot match the hash in the torchvision file name.
    with pytest.raises(CheckpointError, match="does not start with '7be5be79'"):
        load_perceptual("lpips-alex", device="cpu", weights_dir=tmp_path)
    P = load_perceptual("lpips-alex", device="cpu", weights_dir=tmp_path, check_hash=False)
    trunk = P.model.net
    assert torch.equal(trunk.slice1[0].weight, state["features.0.weight"])
    assert torch.equal(getattr(trunk.slice5, "10").bias, state["features.10.bias"])
    x, y = _pair(n=1)
    assert P(x, y).shape == (1,)
    # A file with the right name but the wrong content is rejected with the key it lacks.
    torch.save({"features.0.weight": torch.zeros(64, 3, 11, 11)}, path)
    with pytest.raises(CheckpointError, match=r"missing tensor 'features.0.bias'"):
        load_perceptual("lpips-alex", device="cpu", weights_dir=tmp_path, check_hash=False)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable torch weights file"):
        load_perceptual("lpips-alex", device="cpu", weights_dir=tmp_path, check_hash=False)


@pytest.mark.parametrize("resolution", [None, 32])
def test_cached_target_gives_the_lpips_package_value_bit_for_bit(resolution) -> None:
    """distance(x, target(y, m)) is the `lpips` package's spatial map, masked and averaged,
    bit for bit; rows of a cached target picked by index give the same values too."""
    P = load_perceptual("lpips-random", resolution=resolution)
    x, y = _pair(4, size=64, seed=2)
    m = (torch.rand(4, 1, 64, 64, generator=torch.Generator().manual_seed(3)) > 0.3).float()
    xx, yy, mm = x * m, y * m, m
    if resolution is not None:
        xx, yy, mm = (F.interpolate(t, size=(32, 32), mode="area") for t in (xx, yy, mm))
    reference = (P.model(xx, yy) * mm).sum(dim=(1, 2, 3)) / mm.sum(dim=(1, 2, 3))
    target = P.target(y, m)
    assert torch.equal(P.distance(x, target), reference)
    assert torch.equal(P(x, y, m), reference)
    picked = P.distance(x[[2, 0]], target, torch.tensor([2, 0]))
    assert torch.allclose(picked, reference[[2, 0]], rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match=r"x: expected shape \[4, 3, 64, 64\]"):
        P.distance(x[:, :, :32, :32], target)
