"""Parity of ganviews' StyleGAN2 with the official code's reference outputs, plus behaviour.

References: ../shared/fixtures/stylegan2/*.ref.npz (see that folder's README, sections 3-5).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ganviews.core.errors import ConfigError
from ganviews.core.runtime import file_sha256
from ganviews.stylegan.generator import (
    Generator,
    GeneratorConfig,
    default_layer_groups,
    load_generator,
    save_generator,
)

TOL_IMG = 1e-4  # issue 2: max abs error on images, float32 CPU
TOL_W = 1e-5  # fixture README: observed spread on w / ws
NVIDIA = ["nvidia-ada-res32", "nvidia-ada-res32-cond", "nvidia-ada-res256"]


def _ref(folder, name):
    with np.load(folder / f"{name}.ref.npz") as data:
        return {k: torch.from_numpy(data[k]) for k in data.files}


def _maxerr(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.double() - b.double()).abs().max().item()


@pytest.fixture(scope="module")
def loaded(stylegan2_fixtures):
    cache = {}

    def get(name):
        if name not in cache:
            suffix = ".pt" if name.startswith("rosinality") else ".pkl"
            cache[name] = (
                load_generator(stylegan2_fixtures / f"{name}{suffix}"),
                _ref(stylegan2_fixtures, name),
            )
        return cache[name]

    return get


@pytest.mark.parametrize("name", NVIDIA)
def test_nvidia_mapping_matches_reference(loaded, name):
    G, ref = loaded(name)
    c = ref["c"] if G.c_dim else None
    assert G.num_ws == int(ref["num_ws"]) and G.z_dim == 64 and G.w_dim == 64
    assert _maxerr(G.mean_w, ref["w_avg"]) == 0.0
    assert _maxerr(G.mapping(ref["z"], c), ref["ws_psi1"]) <= TOL_W
    assert _maxerr(G.mapping(ref["z"], c, truncation_psi=0.7), ref["ws_psi07"]) <= TOL_W
    for fc in range(2):
        x = G.mapping.fc0(
            torch.cat([_norm(ref["z"]), *([_norm(G.mapping.embed(c))] if G.c_dim else [])], 1)
        )
        if fc == 1:
            x = G.mapping.fc1(x)
        assert _maxerr(x, ref[f"dbg_mapping_fc{fc}"]) <= TOL_W


def _norm(x):
    return x * (x.square().mean(1, keepdim=True) + 1e-8).rsqrt()


@pytest.mark.parametrize("fused", [False, True], ids=["nonfused", "fused"])
@pytest.mark.parametrize("name", NVIDIA)
def test_nvidia_images_match_reference(loaded, name, fused):
    G, ref = loaded(name)
    inter = {}
    img = G.synthesis(ref["ws_psi1"], noise_mode="const", fused_modconv=fused, intermediates=inter)
    assert _maxerr(img, ref["img_const"]) <= TOL_IMG
    for r in G.synthesis.block_resolutions:  # every block's features and skip image
        assert _maxerr(inter[f"b{r}_x"], ref[f"dbg_const_b{r}_x"]) <= TOL_IMG, r
        assert _maxerr(inter[f"b{r}_img"], ref[f"dbg_const_b{r}_img"]) <= TOL_IMG, r
    kw = {"fused_modconv": fused}
    assert _maxerr(G.synthesis(ref["ws_psi1"], noise_mode="none", **kw), ref["img_none"]) <= TOL_IMG
    assert (
        _maxerr(G.synthesis(ref["ws_psi07"], noise_mode="const", **kw), ref["img_psi07_const"])
        <= TOL_IMG
    )
    assert (
        _maxerr(G.synthesis(ref["ws_mixed"], noise_mode="const", **kw), ref["img_mixed_const"])
        <= TOL_IMG
    )


@pytest.mark.parametrize("name", NVIDIA)
def test_nvidia_full_forward_equals_reference(loaded, name):
    G, ref = loaded(name)
    c = ref["c"] if G.c_dim else None
    assert _maxerr(G(ref["z"], c, noise_mode="const"), ref["img_const"]) <= TOL_IMG
    assert _maxerr(G(ref["z"], c, truncation_psi=0.7), ref["img_psi07_const"]) <= TOL_IMG


def test_conditional_accepts_class_indices(loaded):
    G, ref = loaded("nvidia-ada-res32-cond")
    assert G.c_dim == 10
    by_index = G.mapping(ref["z"], ref["labels"])
    by_onehot = G.mapping(ref["z"], ref["c"])
    assert _maxerr(by_index, by_onehot) == 0.0
    assert _maxerr(by_index, ref["ws_psi1"]) <= TOL_W
    with pytest.raises(ValueError, match=r"c: this generator is class-conditional \(c_dim=10\)"):
        G.mapping(ref["z"])
    with pytest.raises(ValueError, match=r"class indices must lie in \[0, 10\)"):
        G.mapping(ref["z"], torch.tensor([0, 1, 2, 10]))


@pytest.mark.parametrize("fused", [False, True], ids=["nonfused", "fused"])
def test_rosinality_matches_reference(loaded, fused):
    G, ref = loaded("rosinality-res32")
    assert G.synthesis.channels == {4: 48, 8: 40, 16: 32, 32: 24}  # from shapes, not the table
    assert _maxerr(G.mean_w, ref["latent_avg"]) == 0.0
    w = G.mapping(ref["z"])  # [N, 8, 64]
    assert _maxerr(w[:, 0], ref["w"]) <= TOL_W
    assert _maxerr(G.mapping(ref["z"], truncation_psi=0.7)[:, 0], ref["w_trunc"]) <= TOL_W
    kw = {"fused_modconv": fused}
    ws = ref["w"][:, None].repeat(1, G.num_ws, 1)  # [N, L, C]
    assert _maxerr(G.synthesis(ws, noise_mode="const", **kw), ref["img_w"]) <= TOL_IMG
    assert _maxerr(G.synthesis(ws, noise_mode="none", **kw), ref["img_w_zero_noise"]) <= TOL_IMG
    assert (
        _maxerr(G.synthesis(ref["ws_mixed"], noise_mode="const", **kw), ref["img_mixed"]) <= TOL_IMG
    )
    wt = ref["w_trunc"][:, None].repeat(1, G.num_ws, 1)
    assert _maxerr(G.synthesis(wt, noise_mode="const", **kw), ref["img_trunc"]) <= TOL_IMG
    inter = {}
    G.synthesis(ws, intermediates=inter, **kw)
    names = ["to_rgb1", "to_rgbs.0", "to_rgbs.1", "to_rgbs.2"]
    for r, rgb in zip(G.synthesis.block_resolutions, names, strict=True):
        assert _maxerr(inter[f"b{r}_img"], ref[f"dbg_w_{rgb}"]) <= TOL_IMG
    assert _maxerr(inter["b4_x"][:, :16], ref["dbg_w_conv1"]) <= TOL_IMG
    assert _maxerr(inter["b32_x"][:, :16], ref["dbg_w_convs.5"]) <= TOL_IMG


def test_loaded_generator_is_frozen_eval(loaded):
    G, _ = loaded("nvidia-ada-res32")
    assert not G.training
    assert not any(p.requires_grad for p in G.parameters())
    assert G.source_format == "nvidia-pickle"
    assert G.img_channels == 3 and G.resolution == 32 and G.c_dim == 0


def test_noise_modes(loaded):
    G, ref = loaded("nvidia-ada-res32")
    ws = ref["ws_psi1"]
    const = G.synthesis(ws, noise_mode="const")
    rnd1 = G.synthesis(ws, noise_mode="random", noise_generator=torch.Generator().manual_seed(1))
    rnd1b = G.synthesis(ws, noise_mode="random", noise_generator=torch.Generator().manual_seed(1))
    rnd2 = G.synthesis(ws, noise_mode="random", noise_generator=torch.Generator().manual_seed(2))
    assert _maxerr(rnd1, const) > 0.1 and _maxerr(rnd1, rnd2) > 0.1
    assert _maxerr(rnd1, rnd1b) == 0.0
    assert _maxerr(G.synthesis(ws, noise_mode="random"), G.synthesis(ws, noise_mode="random")) > 0.1
    # One generator per sample: sample 2's noise does not depend on its batch-mates.
    gens = [torch.Generator().manual_seed(10 + i) for i in range(4)]
    batch = G.synthesis(ws, noise_mode="random", noise_generator=gens)
    alone = G.synthesis(
        ws[2:3], noise_mode="random", noise_generator=[torch.Generator().manual_seed(12)]
    )
    assert _maxerr(batch[2:3], alone) <= 1e-5
    with pytest.raises(ValueError, match="noise_mode: 'fancy' is not one of"):
        G.synthesis(ws, noise_mode="fancy")
    with pytest.raises(ValueError, match="noise_generator: got 1 generators for a batch of 4"):
        G.synthesis(ws, noise_mode="random", noise_generator=gens[:1])


@pytest.mark.parametrize("fused", [False, True], ids=["nonfused", "fused"])
def test_batch_independence(loaded, fused):
    G, ref = loaded("nvidia-ada-res32")
    batch = G.synthesis(ref["ws_mixed"], fused_modconv=fused)  # [4, 3, 32, 32]
    for i in range(4):
        alone = G.synthesis(ref["ws_mixed"][i : i + 1], fused_modconv=fused)
        assert _maxerr(batch[i : i + 1], alone) <= 1e-5


def test_float64(loaded, stylegan2_fixtures):
    G = load_generator(stylegan2_fixtures / "nvidia-ada-res32.pkl").double()
    ref = _ref(stylegan2_fixtures, "nvidia-ada-res32")
    ws = G.mapping(ref["z"].double())
    assert ws.dtype == torch.float64
    assert _maxerr(ws, ref["ws_psi1"]) <= TOL_W
    for fused in (False, True):
        img = G.synthesis(ref["ws_mixed"].double(), fused_modconv=fused)
        assert img.dtype == torch.float64
        assert _maxerr(img, ref["img_mixed_const"]) <= TOL_IMG


def test_ws_shape_is_checked(loaded):
    G, _ = loaded("nvidia-ada-res32")
    with pytest.raises(ValueError, match=r"ws: expected shape \[N, 8, 64\], got \[2, 7, 64\]"):
        G.synthesis(torch.zeros(2, 7, 64))
    with pytest.raises(ValueError, match=r"z: expected shape \[N, 64\], got \[2, 32\]"):
        G.mapping(torch.zeros(2, 32))


def test_truncation_cutoff(loaded):
    G, ref = loaded("nvidia-ada-res32")
    full = G.mapping(ref["z"])
    cut = G.mapping(ref["z"], truncation_psi=0.5, truncation_cutoff=3)
    assert _maxerr(cut[:, 3:], full[:, 3:]) == 0.0
    expect = G.mean_w + 0.5 * (full[:, :3] - G.mean_w)
    assert _maxerr(cut[:, :3], expect) <= 1e-6
    assert _maxerr(cut[:, :3], full[:, :3]) > 0.1


def test_layer_groups_rule():
    assert default_layer_groups(18) == {
        "coarse": [0, 1, 2, 3],
        "middle": list(range(4, 10)),
        "fine": list(range(10, 18)),
    }
    assert default_layer_groups(14) == {
        "coarse": [0, 1, 2, 3],
        "middle": list(range(4, 10)),
        "fine": [10, 11, 12, 13],
    }
    assert default_layer_groups(8) == {"coarse": [0, 1, 2], "middle": [3, 4], "fine": [5, 6, 7]}
    assert default_layer_groups(2) == {"coarse": [0], "middle": [], "fine": [1]}
    for num_ws in range(2, 19, 2):
        g = default_layer_groups(num_ws)
        assert g["coarse"] and g["fine"]
        assert g["coarse"] + g["middle"] + g["fine"] == list(range(num_ws))


def test_layer_groups_on_generators(loaded, stylegan2_fixtures):
    big = Generator(
        GeneratorConfig(
            z_dim=8,
            w_dim=8,
            img_resolution=1024,
            channel_base=4096,
            channel_max=4,
            mapping_layers=1,
        )
    )
    assert big.num_ws == 18 and big.layer_groups == default_layer_groups(18)
    G256 = load_generator(stylegan2_fixtures / "nvidia-ada-res256.pkl")
    assert G256.layer_groups == {
        "coarse": [0, 1, 2, 3],
        "middle": list(range(4, 10)),
        "fine": [10, 11, 12, 13],
    }
    G32, _ = loaded("nvidia-ada-res32")
    assert G32.layer_groups == {"coarse": [0, 1, 2], "middle": [3, 4], "fine": [5, 6, 7]}
    custom = {"coarse": [0, 1], "middle": [2, 3, 4, 5], "fine": [6, 7]}
    G = load_generator(stylegan2_fixtures / "nvidia-ada-res32.pkl", layer_groups=custom)
    assert G.layer_groups == custom and G.config.layer_groups == {
        k: tuple(v) for k, v in custom.items()
    }
    with pytest.raises(ConfigError, match=r"layer_groups.fine: indices \[8\] outside 0…7"):
        load_generator(
            stylegan2_fixtures / "nvidia-ada-res32.pkl",
            layer_groups={"coarse": [0], "middle": [], "fine": [8]},
        )
    with pytest.raises(ConfigError, match="layer_groups: expected keys"):
        GeneratorConfig(img_resolution=32, layer_groups={"coarse": (0,), "fine": (7,)})


def test_own_format_round_trip(loaded, stylegan2_fixtures, tmp_path):
    for name in ("nvidia-ada-res32-cond", "rosinality-res32"):
        G, ref = loaded(name)
        out = save_generator(G, tmp_path / f"{name}.safetensors")
        H = load_generator(out)
        assert H.source_format == "ganviews-safetensors"
        assert H.config == G.config and H.sha256 == file_sha256(out)
        ws = ref["ws_mixed"]
        assert _maxerr(H.synthesis(ws), G.synthesis(ws)) == 0.0
        c = ref["c"] if G.c_dim else None
        assert (
            _maxerr(
                H.mapping(ref["z"], c, truncation_psi=0.7),
                G.mapping(ref["z"], c, truncation_psi=0.7),
            )
            == 0.0
        )
        for key, value in G.state_dict().items():
            assert torch.equal(H.state_dict()[key], value), key


def test_sha256_of_loaded_file(loaded, stylegan2_fixtures):
    G, _ = loaded("nvidia-ada-res32")
    assert G.sha256 == "5f4c532502c24888d6cb58311d07916a7ebfb1f9241d16385489bf5d144c4842"


@pytest.mark.parametrize("resolution", [4, 64])
def test_fresh_generator_trains(resolution, tmp_path):
    torch.manual_seed(0)
    cfg = GeneratorConfig(
        z_dim=16,
        w_dim=16,
        c_dim=3,
        img_resolution=resolution,
        channel_base=256,
        channel_max=16,
        mapping_layers=2,
    )
    G = Generator(cfg)
    assert G.training and all(p.requires_grad for p in G.parameters())
    z = torch.randn(2, 16)
    img = G(z, torch.tensor([0, 2]), noise_mode="random")
    assert img.shape == (2, 3, resolution, resolution) and torch.isfinite(img).all()
    img.square().mean().backward()
    for name, p in G.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # ws gradient for inversion-style use
    ws = G.mapping(z, torch.tensor([1, 1])).detach().requires_grad_(True)
    G.synthesis(ws).sum().backward()
    assert ws.grad is not None and ws.grad.abs().sum() > 0
    # w_avg moves only when asked (training EMA)
    before = G.mean_w.clone()
    G.mapping(z, torch.tensor([0, 1]))
    assert torch.equal(G.mean_w, before)
    G.mapping(z, torch.tensor([0, 1]), update_emas=True)
    assert not torch.equal(G.mean_w, before)
    # initialisation matches the official scheme
    assert torch.all(G.synthesis.b4.conv1.affine.bias == 1) and torch.all(
        G.synthesis.b4.conv1.bias == 0
    )
    assert 50 < G.mapping.fc0.weight.std().item() < 200  # N(0, 1/lr²), lr = 0.01
    H = load_generator(save_generator(G, tmp_path / "g.safetensors"))
    assert _maxerr(H.synthesis(ws.detach()), G.synthesis(ws.detach())) == 0.0


def test_fused_and_nonfused_agree_on_fresh_64px():
    torch.manual_seed(1)
    G = Generator(
        GeneratorConfig(
            z_dim=32,
            w_dim=32,
            img_resolution=64,
            channel_base=512,
            channel_max=32,
            mapping_layers=2,
        )
    ).eval()
    ws = G.mapping(torch.randn(3, 32))
    a = G.synthesis(ws, fused_modconv=True)
    b = G.synthesis(ws, fused_modconv=False)
    assert _maxerr(a, b) <= 1e-4


def test_config_validation():
    with pytest.raises(ConfigError, match="img_resolution: expected a power of two ≥ 4, got 48"):
        GeneratorConfig(img_resolution=48)
    with pytest.raises(ConfigError, match=r"channels: expected 4 positive widths"):
        GeneratorConfig(img_resolution=32, channels=(8, 8, 8))
    with pytest.raises(ConfigError, match=r"channel_base: 64 gives width 0 at 1024 px"):
        GeneratorConfig(img_resolution=1024, channel_base=64)
    assert GeneratorConfig(
        img_resolution=32, channel_base=256, channel_max=64
    ).block_channels() == [64, 32, 16, 8]
