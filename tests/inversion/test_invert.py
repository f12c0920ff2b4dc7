"""Inversion (paper Sec. 3.2): batch independence, reconstruction quality, masking, options.

The generator is the shared 32 px StyleGAN2-ADA fixture (random weights: its images are
noise-like, values about ±8). LPIPS runs with "lpips-random" (seeded random AlexNet trunk):
it checks the mechanics of the perceptual term only, not perceptual quality.
"""

from __future__ import annotations

import copy

import pytest
import torch

from ganviews.core.errors import ConfigError
from ganviews.inversion.encoder import Encoder, EncoderConfig
from ganviews.inversion.invert import InversionConfig, invert, masked_l1, masked_psnr
from ganviews.inversion.lbfgs import Status
from ganviews.inversion.perceptual import load_perceptual
from ganviews.stylegan.generator import load_generator


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Two OpenMP threads on a shared 2-core runner spin against each other (10x slower).
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def G(stylegan2_fixtures):
    return load_generator(stylegan2_fixtures / "nvidia-ada-res32.pkl")


@pytest.fixture(scope="module")
def P():
    return load_perceptual("lpips-random", device="cpu")


def _tiny_encoder(G, dtype=torch.float32):
    torch.manual_seed(7)
    cfg = EncoderConfig(num_ws=G.num_ws, w_dim=G.w_dim, depth=18, resolution=32, width=8)
    E = Encoder(cfg, mean_w=G.mean_w.detach().float())
    return E.to(dtype).eval().requires_grad_(False)


def _targets(G, n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, G.z_dim, generator=gen, dtype=G.mean_w.dtype)
    ws = G.mapping(z)  # [n, L, C]
    return G.synthesis(ws, noise_mode="const"), ws


@pytest.mark.slow
def test_batch_independence_float64(G, P) -> None:
    """An image's w* alone equals its w* inside a batch of 8 (float64, CPU, 1e-10).

    Full objective: masked L1 + masked LPIPS (random trunk: mechanics) + encoder
    consistency with an encoder re-run on G(w) at every evaluation, masks differing per image.
    """
    G64 = load_generator(G.source_path).double()
    P64 = copy.deepcopy(P).to(torch.float64)
    E64 = _tiny_encoder(G, torch.float64)
    x, _ = _targets(G64, 8, seed=1)
    x = x.clamp(-1, 1)
    masks = torch.ones(8, 1, 32, 32, dtype=torch.float64)
    for i in range(8):
        masks[i, :, :, 32 - 2 * i :] = 0  # image i loses its 2i rightmost columns
    batch = invert(G64, x, masks, encoder=E64, perceptual=P64, steps=8)
    assert batch.w.dtype == torch.float64
    assert (batch.loss < batch.loss_init).all()
    for i in (0, 3, 7):
        alone = invert(G64, x[i : i + 1], masks[i : i + 1], encoder=E64, perceptual=P64, steps=8)
        assert torch.allclose(alone.w[0], batch.w[i], rtol=0, atol=1e-10), i
        assert torch.allclose(alone.loss[0], batch.loss[i], rtol=0, atol=1e-12)
        assert alone.iterations.item() == batch.iterations[i].item()
        assert alone.evaluations.item() == batch.evaluations[i].item()
    # The same images through 3 slots (continuous batching: a finished image's slot is
    # refilled with the next image and its fresh L-BFGS state).
    # ``on_finished`` hands over each image the moment it stops (the shard task stores it
    # then): every row exactly once, in several calls, each equal to the returned rows.
    handed = []
    split = invert(
        G64, x, masks, encoder=E64, perceptual=P64, steps=8, batch_size=3,
        on_finished=lambda rows, part: handed.append((rows.tolist(), part)),
    )  # fmt: skip
    assert torch.allclose(split.w, batch.w, rtol=0, atol=1e-10)
    assert torch.equal(split.evaluations, batch.evaluations)
    assert len(handed) >= 3 and sorted(r for rows, _ in handed for r in rows) == list(range(8))
    for rows, part in handed:
        for name in ("w", "loss", "psnr", "lpips", "loss_init", "recon"):
            ours = getattr(part, name)
            assert torch.allclose(ours, getattr(split, name)[rows], rtol=0, atol=1e-12), name
            assert torch.allclose(ours, getattr(batch, name)[rows], rtol=0, atol=1e-9), name
        assert torch.equal(part.iterations, split.iterations[rows])


def test_generated_images_are_reconstructed_far_better_than_the_init(G, P) -> None:
    """Images G(w_true) from the mean-w init, 40 L-BFGS steps, float32.

    Measured (this fixture, seeds 0..3): init PSNR 5–12 dB, total loss 0.42–0.96; after 40
    steps PSNR 18.1–25.8 dB and loss 0.065–0.16 (14–17 % of the init). Thresholds leave
    margin for float rounding across machines: loss ≤ 30 % of the init, PSNR ≥ 16 dB and
    ≥ 8 dB above the init's PSNR for every image.
    """
    x, _ = _targets(G, 4, seed=0)
    res = invert(G, x, perceptual=P, steps=40, latent_weight=0.0)
    ones = torch.ones(4, 1, 32, 32)
    psnr_init = masked_psnr(G.synthesis(res.w_init), x, ones)
    assert torch.allclose(res.w_init, G.mean_w.expand(4, G.num_ws, G.w_dim))
    assert (res.loss <= 0.3 * res.loss_init).all(), (res.loss, res.loss_init)
    assert (res.psnr >= 16.0).all(), res.psnr
    assert (res.psnr >= psnr_init + 8.0).all(), (res.psnr, psnr_init)
    assert (res.iterations == 40).all() and (res.status == Status.MAX_STEPS).all()
    # Reported pieces are consistent with each other and with the returned images.
    assert torch.allclose(res.loss, res.loss_l1 + res.loss_lpips + res.loss_latent)
    assert torch.allclose(res.loss_l1, 0.5 * masked_l1(res.recon, x, ones))
    assert torch.allclose(res.loss_lpips, 0.5 * res.lpips)
    assert torch.equal(res.loss_latent, torch.zeros(4))
    assert torch.allclose(res.recon, G.synthesis(res.w), atol=1e-5)


def test_pixels_under_a_zero_mask_have_no_influence(G, P) -> None:
    x, _ = _targets(G, 2, seed=3)
    masks = torch.ones(2, 1, 32, 32)
    masks[:, :, 10:22, 10:22] = 0  # a hole in the middle
    masks[1, :, :, 24:] = 0  # and a border on the second image
    E = _tiny_encoder(G)
    kwargs = dict(encoder=E, perceptual=P, steps=6)
    ref = invert(G, x, masks, **kwargs)
    changed = x.clone()
    changed[masks.expand_as(x) == 0] = torch.randn(int((masks.expand_as(x) == 0).sum())) * 5
    other = invert(G, changed, masks, **kwargs)
    assert torch.equal(ref.w_init, other.w_init)
    assert torch.equal(ref.w, other.w)
    assert torch.equal(ref.loss, other.loss) and torch.equal(ref.psnr, other.psnr)
    # Known pixels do matter (the test above could not pass vacuously).
    moved = x.clone()
    moved[:, :, :5, :5] += 1.0
    assert not torch.equal(invert(G, moved, masks, **kwargs).w, ref.w)


def test_encoder_init_and_latent_terms(G) -> None:
    x, _ = _targets(G, 3, seed=5)
    E = _tiny_encoder(G)
    w_enc = E(x, torch.ones(3, 1, 32, 32))
    # steps=0: w* = w_init = E(x); the paper's ℓ2 term is then exactly 0.
    res = invert(G, x, encoder=E, steps=0, latent_term="l2")
    assert torch.allclose(res.w_init, w_enc) and torch.equal(res.w, res.w_init)
    assert torch.equal(res.loss_latent, torch.zeros(3)) and torch.equal(res.loss, res.loss_init)
    assert torch.isnan(res.lpips).all()  # no perceptual net
    # The official encoder-consistency term: 0.25 · mean((E(x) − E(G(w)))²).
    res = invert(G, x, encoder=E, steps=0)
    expected = 0.25 * (w_enc - E(G.synthesis(w_enc), torch.ones(3, 1, 32, 32))).square().mean(
        dim=(1, 2)
    )
    assert torch.allclose(res.loss_latent, expected, rtol=1e-5)
    # An explicit w_init overrides E(x) as the start; the ℓ2 target stays E(x).
    start = G.mean_w.expand(3, G.num_ws, G.w_dim).clone()
    res = invert(G, x, encoder=E, w_init=start, steps=0, latent_term="l2")
    assert torch.equal(res.w_init, start)
    assert torch.allclose(res.loss_latent, 0.25 * (start - w_enc).square().mean(dim=(1, 2)))
    # Optimising lowers every image's total loss.
    res = invert(G, x, encoder=E, steps=5)
    assert (res.loss < res.loss_init).all()


def test_adam_option(G) -> None:
    """Adam runs its steps and is batch-independent: in float64 an image's w* alone equals
    its w* in the batch to 1e-10 (measured 2e-15). In float32 Adam's per-entry
    normalisation can amplify G's batch-size rounding (~1e-5 per image) into steps of
    1e-3 wherever a gradient entry is near zero, so float32 is no test of independence."""
    G64 = copy.deepcopy(G).double()
    x, _ = _targets(G64, 2, seed=9)
    res = invert(G64, x, steps=30, optimizer="adam", adam_lr=0.05, latent_weight=0.0)
    assert (res.iterations == 30).all()
    assert (res.loss < 0.8 * res.loss_init).all()
    alone = invert(G64, x[1:], steps=30, optimizer="adam", adam_lr=0.05, latent_weight=0.0)
    assert torch.allclose(alone.w[0], res.w[1], rtol=0, atol=1e-10)
    handed = []  # Adam's images all stop together: one hand-over at the end
    invert(
        G64, x, steps=30, optimizer="adam", adam_lr=0.05, latent_weight=0.0,
        on_finished=lambda rows, part: handed.append((rows.tolist(), part.w)),
    )  # fmt: skip
    assert [rows for rows, _ in handed] == [[0, 1]] and torch.equal(handed[0][1], res.w)


def test_input_errors_name_the_problem(G, P) -> None:
    x, _ = _targets(G, 2)
    with pytest.raises(
        ValueError,
        match=r"images \(at the generator's resolution\): expected shape \[2, 3, 32, 32\]",
    ):
        invert(G, x[:, :, :16, :16])
    masks = torch.ones(2, 1, 32, 32)
    masks[1] = 0
    with pytest.raises(ValueError, match=r"images \[1\] have no known pixel"):
        invert(G, x, masks)
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['lambda'\]"):
        invert(G, x, **{"lambda": 0.3})
    with pytest.raises(ConfigError, match=r"invert.optimizer: got 'sgd'"):
        invert(G, x, optimizer="sgd")
    with pytest.raises(ConfigError, match=r"invert.noise_mode: got 'random'"):
        InversionConfig(noise_mode="random")
    with pytest.raises(
        ValueError,
        match=r"perceptual: its weights are torch.float32 but the generator is torch.float64",
    ):
        invert(load_generator(G.source_path).double(), x.double(), perceptual=P)
    E = _tiny_encoder(G).train()
    with pytest.raises(ValueError, match=r"encoder: is in training mode"):
        invert(G, x, encoder=E)
    with pytest.raises(ValueError, match=r"w_init: expected shape \[2, 8, 64\]"):
        invert(G, x, w_init=torch.zeros(2, 64))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(G) -> None:
    x, _ = _targets(G, 2)
    cpu = invert(G, x, steps=5, latent_weight=0.0)
    Gc = load_generator(G.source_path, device="cuda")
    gpu = invert(Gc, x.cuda(), steps=5, latent_weight=0.0)
    assert gpu.w.device.type == "cuda"
    assert torch.allclose(gpu.loss.cpu(), cpu.loss, rtol=1e-3)


def test_precision_policies_and_progress_rule(G, P) -> None:
    """exact / tf32 are the same on CPU; bf16 autocast reaches a comparable loss (measured
    in exact fp32 after 8 steps: within 4–6 % of the exact run's, either side); the progress
    rule stops early."""
    x, _ = _targets(G, 2, seed=0)
    kw = dict(perceptual=P, steps=8, latent_weight=0.0)
    exact = invert(G, x, precision="exact", **kw)
    tf32 = invert(G, x, precision="tf32", **kw)
    assert torch.equal(exact.w, tf32.w)  # no TF32 on the CPU
    bf16 = invert(G, x, precision="bf16", **kw)
    assert bf16.w.dtype == torch.float32 and bf16.loss.dtype == torch.float32
    assert ((bf16.loss - exact.loss).abs() <= 0.15 * exact.loss).all(), (bf16.loss, exact.loss)
    assert (bf16.loss < 0.7 * bf16.loss_init).all()
    early = invert(G, x, precision="exact", progress_tol=0.5, progress_window=2, **kw)
    assert (early.status == Status.PROGRESS_TOL).any()
    assert early.evaluations.sum() < exact.evaluations.sum()
    with pytest.raises(ConfigError, match=r"invert.precision: got 'fp16'"):
        InversionConfig(precision="fp16")


def test_synthesis_paths_reach_the_same_inversion(G, P) -> None:
    """The fused kernels (default), channels_last and the reference kernels compute the same
    objective: after 8 L-BFGS steps the final losses agree to 1e-3 relative (float32
    rounding amplified by the optimiser; measured ≤ 2e-5), the start loss to 1e-5."""
    x, _ = _targets(G, 2, seed=1)
    kw = dict(perceptual=P, steps=8, latent_weight=0.0)
    ref = invert(G, x, synthesis_kernels="reference", **kw)
    for options in ({}, {"memory_format": "channels_last"}):
        res = invert(G, x, **options, **kw)
        assert torch.allclose(res.loss_init, ref.loss_init, rtol=1e-5), options
        assert torch.allclose(res.loss, ref.loss, rtol=1e-3), (options, res.loss, ref.loss)
    assert (ref.loss < 0.7 * ref.loss_init).all()
    with pytest.raises(ConfigError, match=r"invert.synthesis_kernels: got 'cuda'"):
        InversionConfig(synthesis_kernels="cuda")
    with pytest.raises(ConfigError, match=r"invert.memory_format: got 'nhwc'"):
        InversionConfig(memory_format="nhwc")
    with pytest.raises(ConfigError, match=r"invert.compile: got 1"):
        InversionConfig(compile=1)


def test_auto_batch_and_out_of_memory_back_off(G) -> None:
    """batch_size="auto" is 16 on CPU; an evaluation that runs out of memory is split in
    halves and retried, with the same losses and gradients and no lost work."""
    from ganviews.inversion.batching import ChunkedEvaluation, auto_batch_size

    x, _ = _targets(G, 3, seed=4)
    res = invert(G, x, steps=3, batch_size="auto")
    ref = invert(G, x, steps=3, batch_size=3)
    assert torch.allclose(res.w, ref.w, atol=1e-6)
    assert auto_batch_size(None, torch.zeros(40, 2), torch.arange(40), limit=40) == 16
    calls = []

    def limited(xb, index):  # a real objective that "runs out of memory" above 3 rows
        calls.append(len(index))
        if len(index) > 3:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated budget: 3 rows)")
        return (xb**2).sum(dim=-1), 2 * xb

    evaluate = ChunkedEvaluation(limited, 8)
    xb = torch.randn(7, 5)
    loss, grad = evaluate(xb, torch.arange(7))
    assert torch.equal(loss, (xb**2).sum(dim=-1)) and torch.equal(grad, 2 * xb)
    assert evaluate.chunk == 3 and calls == [7, 3, 3, 1]  # 8 → 7 rows fail → 3 at a time
    evaluate(xb, torch.arange(7))  # the halved size is kept: no new failures
    assert calls[4:] == [3, 3, 1]
