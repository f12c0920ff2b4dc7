"""The fused / channels_last / compiled synthesis paths against the reference path.

Images: against the official code's reference outputs (../shared/fixtures/stylegan2, the
same TOL_IMG = 1e-4 as test_generator.py) and against the reference path (float32
rounding: ≤ 2e-5 measured ≤ 9e-6). Gradients w.r.t. ws: relative to the largest entry,
≤ 1e-5 (measured ~6e-7).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ganviews.core.errors import ConfigError
from ganviews.stylegan.fused import LRELU_GAIN, SynthesisOptions, bias_act
from ganviews.stylegan.generator import Generator, GeneratorConfig, load_generator
from ganviews.stylegan.networks import lrelu_agc

TOL_IMG = 1e-4  # vs the official outputs (test_generator.py)
TOL_PATH = 2e-5  # vs the reference path, same process
TOL_GRAD = 1e-5  # gradient, relative to its largest entry
PATHS = {
    "fused": SynthesisOptions(),
    "fused-channels_last": SynthesisOptions(memory_format="channels_last"),
    "reference-channels_last": SynthesisOptions(kernels="reference", memory_format="channels_last"),
}
REFERENCE = SynthesisOptions.reference()


def _maxerr(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.double() - b.double()).abs().max().item()


@pytest.fixture(scope="module")
def nvidia32(stylegan2_fixtures):
    G = load_generator(stylegan2_fixtures / "nvidia-ada-res32.pkl")
    with np.load(stylegan2_fixtures / "nvidia-ada-res32.ref.npz") as data:
        ref = {
            k: torch.from_numpy(data[k])
            for k in ("ws_psi1", "ws_mixed", "img_const", "img_none", "img_mixed_const")
        }
    return G, ref


def _grad(G, ws, options, noise_mode="const", fused_modconv=False):
    ws = ws.clone().requires_grad_(True)
    img = G.synthesis(ws, noise_mode=noise_mode, options=options, fused_modconv=fused_modconv)
    weights = torch.linspace(-1, 1, img.numel(), dtype=img.dtype).view_as(img)
    (grad,) = torch.autograd.grad((img * weights).sum(), ws)
    return img.detach(), grad


@pytest.mark.parametrize("fused_modconv", [False, True], ids=["nonfused", "grouped"])
@pytest.mark.parametrize("path", list(PATHS))
def test_paths_match_official_outputs_and_reference(nvidia32, path, fused_modconv):
    G, ref = nvidia32
    options = PATHS[path]
    for ws, noise, key in (
        (ref["ws_psi1"], "const", "img_const"),
        (ref["ws_psi1"], "none", "img_none"),
        (ref["ws_mixed"], "const", "img_mixed_const"),
    ):
        img, grad = _grad(G, ws, options, noise, fused_modconv)
        img_ref, grad_ref = _grad(G, ws, REFERENCE, noise, fused_modconv)
        assert img.is_contiguous()
        assert _maxerr(img, ref[key]) <= TOL_IMG
        assert _maxerr(img, img_ref) <= TOL_PATH
        assert _maxerr(grad, grad_ref) <= TOL_GRAD * grad_ref.abs().max().item()


def test_fused_is_default_and_reference_one_option_away(stylegan2_fixtures):
    G = load_generator(stylegan2_fixtures / "rosinality-res32.pt")  # clamp-free, other widths
    assert G.synthesis.options == SynthesisOptions(kernels="fused")
    ws = G.mapping(torch.randn(3, G.z_dim, generator=torch.Generator().manual_seed(0)))
    default = G.synthesis(ws)
    G.synthesis.options = REFERENCE
    reference = G.synthesis(ws)
    assert 0 < _maxerr(default, reference) <= TOL_PATH  # not the same ops, same function
    assert torch.equal(reference, G.synthesis(ws, options=REFERENCE))


def test_random_noise_paths_agree(nvidia32):
    G, ref = nvidia32
    out = {}
    for name, options in (("fused", PATHS["fused"]), ("reference", REFERENCE)):
        gens = [torch.Generator().manual_seed(i) for i in range(ref["ws_psi1"].shape[0])]
        out[name] = G.synthesis(
            ref["ws_psi1"], noise_mode="random", noise_generator=gens, options=options
        )
    assert _maxerr(out["fused"], out["reference"]) <= TOL_PATH


def test_bias_act_equals_the_reference_sequence():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 4, 4, generator=gen) * 300
    bias = torch.randn(5, 4, 4, generator=gen)
    scale = torch.rand(2, 5, 1, 1, generator=gen) + 0.5
    for clamp in (None, 256.0):
        want = lrelu_agc(x * scale + bias, clamp)
        got = bias_act(x, bias, scale=scale, clamp=clamp)
        assert _maxerr(got, want) <= 1e-4 * 300
        assert _maxerr(bias_act(x, bias, clamp=clamp), lrelu_agc(x + bias, clamp)) <= 1e-4 * 300
    assert float(bias_act(torch.tensor([-1.0]), torch.tensor([0.0]))) == pytest.approx(
        -0.2 * LRELU_GAIN
    )


def test_options_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"synthesis\.kernels: got 'fast'"):
        SynthesisOptions(kernels="fast")
    with pytest.raises(ConfigError, match=r"synthesis\.memory_format: got 'nhwc'.*channels_last"):
        SynthesisOptions(memory_format="nhwc")
    with pytest.raises(ConfigError, match=r"synthesis\.compile: got 'yes'"):
        SynthesisOptions(compile="yes")


@pytest.mark.slow
def test_compiled_synthesis_matches_reference():
    """SynthesisOptions(compile=True) with Inductor on CPU, forward and backward, captured
    as one graph. An 8 px generator (2 blocks, clamp on) keeps the compile to about half of
    the 32 px fixture's, which was checked the same way: 553 s at load 10 on the 2-core VM
    (docs/generator.md)."""
    torch.manual_seed(0)
    cfg = GeneratorConfig(z_dim=16, w_dim=16, img_resolution=8, channels=(8, 8), conv_clamp=2.0)
    G = Generator(cfg).eval().requires_grad_(False)
    ws = G.mapping(torch.randn(2, 16)) * 3  # [2, 4, 16], large enough to reach the clamp
    breaks = sum(torch._dynamo.utils.counters["graph_break"].values())
    img, grad = _grad(G, ws, SynthesisOptions(compile=True))
    assert sum(torch._dynamo.utils.counters["graph_break"].values()) == breaks  # one graph
    img_ref, grad_ref = _grad(G, ws, REFERENCE)
    assert _maxerr(img, img_ref) <= TOL_PATH
    assert _maxerr(grad, grad_ref) <= TOL_GRAD * grad_ref.abs().max().item()
