"""RGBM encoder: shapes, the mask really gates the input, files, training and exact resume.

Training runs on the 32 px fixture generator (random weights, z = w = 64, num_ws = 8) with a
small ResNet-18 (width 16) so each test takes seconds on two CPU cores.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from ganviews.cli import main as cli_main
from ganviews.core.errors import CheckpointError, ConfigError
from ganviews.core.runtime import file_sha256
from ganviews.inversion.encoder import (
    Encoder,
    EncoderConfig,
    load_encoder,
    read_encoder_metadata,
    save_encoder,
    weight_bytes_bound,
)
from ganviews.inversion.encoder_training import (
    blob_masks,
    random_masks,
    sample_training_batch,
    train_encoder,
)
from ganviews.stylegan.generator import load_generator

SMALL = {"depth": 18, "width": 16, "resolution": 32}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Hundreds of tiny ops per training step: on the shared 2-core test machine, two
    OpenMP threads spin at every op's barrier while other processes hold the cores (measured:
    263 s wall / 67 s CPU for the 30-step test vs 19 s / 7 s with one thread)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def G(stylegan2_fixtures):
    return load_generator(stylegan2_fixtures / "nvidia-ada-res32.pkl")


def _randomise_head(E: Encoder, seed: int = 0) -> Encoder:
    """The head starts at zero (output = mean w); give it weights so inputs matter."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        E.head.weight.copy_(torch.randn(E.head.weight.shape, generator=gen) * 0.1)
    return E.eval()


def _images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("depth", [18, 34, 50])
def test_shapes_and_untrained_output_is_mean_w(depth):
    mean_w = torch.randn(24)
    E = Encoder(
        EncoderConfig(num_ws=5, w_dim=24, depth=depth, width=8, resolution=32), mean_w=mean_w
    ).eval()
    for size in (32, 48, 20):  # any input size is resized to the internal 32 px
        ws = E(_images(3, size), torch.ones(3, 1, size, size))
        assert ws.shape == (3, 5, 24)
        torch.testing.assert_close(ws, mean_w.expand(3, 5, 24), rtol=0, atol=0)
    assert E(_images(2, 32)).shape == (2, 5, 24)  # masks=None means all known


def test_mask_gates_the_input():
    E = _randomise_head(Encoder(EncoderConfig(num_ws=4, w_dim=16, **SMALL)))
    x = _images(2, 48)  # resized inside: the gating must hold through the resize
    mask = torch.ones(2, 1, 48, 48)
    mask[:, :, :, 30:] = 0
    base = E(x, mask)
    hidden = x.clone()
    hidden[:, :, :, 30:] = torch.rand_like(hidden[:, :, :, 30:]) * 2 - 1
    assert torch.equal(E(hidden, mask), base)  # changes under a zero mask: no effect at all
    visible = x.clone()
    visible[:, :, :, :10] = -visible[:, :, :, :10]
    assert (E(visible, mask) - base).abs().max() > 1e-4
    assert (E(x, torch.ones_like(mask)) - base).abs().max() > 1e-4  # the mask itself is an input


def test_eval_output_does_not_depend_on_batch_mates():
    E = _randomise_head(Encoder(EncoderConfig(num_ws=4, w_dim=16, **SMALL)), seed=1)
    x = _images(5, 32, seed=2)
    torch.testing.assert_close(E(x[2:3]), E(x)[2:3], rtol=1e-5, atol=1e-5)


def test_group_norm_float64_and_batch_of_one(G):
    result = train_encoder(
        G, steps=1, batch_size=1, config=EncoderConfig(norm="group", **SMALL), log_every=1
    )
    E = result.encoder.double()
    ws = E(_images(2, 32).double(), torch.ones(2, 1, 32, 32, dtype=torch.float64))
    assert ws.dtype == torch.float64 and ws.shape == (2, G.num_ws, G.w_dim)
    assert not torch.equal(ws, G.mean_w.double().expand_as(ws))  # one step moved the head


def test_input_validation_and_config_errors():
    E = Encoder(EncoderConfig(num_ws=4, w_dim=16, **SMALL))
    with pytest.raises(
        ValueError, match=r"masks: expected shape \[2, 1, 32, 32\], got \[2, 1, 16, 16\]"
    ):
        E(_images(2, 32), torch.ones(2, 1, 16, 16))
    with pytest.raises(
        ValueError, match=r"images: expected shape \[\*, 3, \*, \*\], got \[2, 4, 32, 32\]"
    ):
        E(torch.zeros(2, 4, 32, 32))
    with pytest.raises(ConfigError, match=r"encoder.depth: got 101, expected one of 18, 34, 50"):
        EncoderConfig(depth=101)
    with pytest.raises(
        ConfigError, match=r"encoder.resolution: got 8192, expected an integer in \[16, 4096\]"
    ):
        EncoderConfig(resolution=8192)  # forward resizes every input to it
    with pytest.raises(ValueError, match=r"mean_w: expected shape \[16\], got \[8\]"):
        Encoder(EncoderConfig(num_ws=4, w_dim=16, **SMALL), mean_w=torch.zeros(8))


@pytest.mark.parametrize(
    "config",
    [
        dict(depth=18, width=8, num_ws=8, w_dim=32),
        dict(depth=34, width=16, num_ws=8, w_dim=64, norm="group"),
        dict(depth=50, width=8, num_ws=4, w_dim=16),
        dict(depth=50, width=16, num_ws=14, w_dim=512, img_channels=1),
    ],
)
def test_weight_bytes_bound_is_an_upper_bound_within_2x(config):
    """What load_encoder compares with the file's size before building anything (issue 18.2)."""
    cfg = EncoderConfig(resolution=32, **config)
    true = sum(t.numel() * t.element_size() for t in Encoder(cfg).state_dict().values())
    assert true <= weight_bytes_bound(cfg) <= 2 * true


def test_save_load_roundtrip(tmp_path, G):
    E = _randomise_head(Encoder.for_generator(G, **SMALL), seed=3)
    assert E.generator_sha256 == G.sha256
    path = save_encoder(E, tmp_path / "E.safetensors", metadata={"note": "test"})
    assert E.sha256 == file_sha256(path)
    E2 = load_encoder(path)
    assert not E2.training and not any(p.requires_grad for p in E2.parameters())
    assert E2.config == E.config and E2.sha256 == E.sha256 and E2.generator_sha256 == G.sha256
    assert (E2.resolution, E2.num_ws, E2.w_dim) == (32, G.num_ws, G.w_dim)
    torch.testing.assert_close(E2.mean_w, G.mean_w)
    x, m = _images(3, 32), torch.ones(3, 1, 32, 32)
    assert torch.equal(E2(x, m), E(x, m))
    meta = read_encoder_metadata(path)
    assert meta["note"] == "test" and json.loads(meta["config"])["depth"] == 18


def test_load_errors(tmp_path):
    with pytest.raises(
        CheckpointError, match=r"encoder file .*missing.safetensors not found: train one with"
    ):
        load_encoder(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="junk.safetensors: unknown file format"):
        load_encoder(tmp_path / "junk.safetensors")
    save_file(
        {"a": torch.zeros(2)},
        str(tmp_path / "other.safetensors"),
        metadata={"format": "ganviews.generator"},
    )
    with pytest.raises(
        CheckpointError, match=r"not a ganviews encoder file \(metadata format='ganviews.generator'"
    ):
        load_encoder(tmp_path / "other.safetensors")
    E = Encoder(EncoderConfig(num_ws=4, w_dim=16, **SMALL))
    path = save_encoder(E, tmp_path / "E.safetensors")
    state = {k: v.contiguous() for k, v in E.state_dict().items()}
    meta = read_encoder_metadata(path)
    meta["config"] = json.dumps({**json.loads(meta["config"]), "w_dim": 32})
    save_file(state, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(
        CheckpointError,
        match=r"tensors do not fit the encoder config .*wrong shape \['mean_w', 'head.weight'",
    ):
        load_encoder(tmp_path / "bad.safetensors")


def test_random_masks_are_deterministic_and_of_three_kinds():
    masks = random_masks(400, 32, generator=torch.Generator().manual_seed(0))
    again = random_masks(400, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(masks, again) and masks.shape == (400, 1, 32, 32)
    assert set(masks.unique().tolist()) == {0.0, 1.0}
    known = masks.mean(dim=(1, 2, 3))
    full = known == 1
    assert 0.2 < full.float().mean() < 0.4  # full_prob = 0.3
    # border kind: the known pixels form one solid rectangle covering ≥ 0.5² of the frame
    rect = []
    for m in masks[~full, 0]:
        rows, cols = m.any(dim=1).nonzero(), m.any(dim=0).nonzero()
        box = m[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        rect.append(bool(box.all()) and m.sum() == box.numel())
    rect = torch.tensor(rect)
    assert 0.45 < rect.float().mean() < 0.7  # border_prob 0.4 of the 0.7 non-full ones ≈ 0.57
    assert (known[~full][rect] >= 0.24).all()


def test_training_batch_depends_only_on_seed_and_step(G):
    ws, x, m = sample_training_batch(G, 4, seed=5, step=7, device=torch.device("cpu"))
    ws2, x2, m2 = sample_training_batch(G, 4, seed=5, step=7, device=torch.device("cpu"))
    assert torch.equal(ws, ws2) and torch.equal(x, x2) and torch.equal(m, m2)
    assert (
        ws.shape == (4, G.num_ws, G.w_dim)
        and x.shape == (4, 3, 32, 32)
        and m.shape == (4, 1, 32, 32)
    )
    ws_all, _, _ = sample_training_batch(
        G, 64, seed=5, step=7, device=torch.device("cpu"), style_mix_prob=1.0
    )
    differs = (ws_all[:, 0] != ws_all[:, -1]).any(
        dim=1
    )  # style mixing: first and last layers differ
    assert differs.all()
    ws_none, _, _ = sample_training_batch(
        G, 8, seed=5, step=7, device=torch.device("cpu"), style_mix_prob=0.0
    )
    assert torch.equal(ws_none, ws_none[:, :1].expand_as(ws_none))


def _eval_losses(E: Encoder, G, batch) -> tuple[float, float]:
    ws, x, m = batch
    with torch.no_grad():
        pred = E(x, m)
        recon = G.synthesis(pred, noise_mode="const")
    return float((recon - x).abs().mean()), float((pred - ws).square().mean())


def test_training_reduces_the_loss(G):
    held_out = sample_training_batch(G, 32, seed=999, step=0, device=torch.device("cpu"))
    l1_0, lat_0 = _eval_losses(Encoder.for_generator(G, **SMALL).eval(), G, held_out)  # mean w
    result = train_encoder(
        G, steps=30, batch_size=8, lr=1e-3, config=EncoderConfig(**SMALL), log_every=10, seed=1
    )
    assert result.steps == 30 and [h["step"] for h in result.history] == [10, 20, 30]
    assert not result.encoder.training
    l1_1, lat_1 = _eval_losses(result.encoder, G, held_out)
    assert l1_1 + lat_1 < 0.85 * (l1_0 + lat_0), (l1_0, lat_0, l1_1, lat_1)
    assert lat_1 < lat_0 and l1_1 < l1_0
    assert all(not p.requires_grad for p in G.parameters())  # G's flags restored (it was frozen)


def test_training_with_perceptual_term(G):
    from ganviews.inversion.perceptual import load_perceptual

    # lpips-random: a randomly initialised backbone: this checks the plumbing only.
    P = load_perceptual("lpips-random")
    result = train_encoder(
        G, steps=2, batch_size=2, perceptual=P, config=EncoderConfig(**SMALL), log_every=1
    )
    assert all(h["perceptual"] > 0 for h in result.history)
    total = [h["l1"] + h["perceptual"] + h["latent"] for h in result.history]
    assert [h["loss"] for h in result.history] == pytest.approx(total, rel=1e-5)


def test_checkpoint_resume_is_exact(tmp_path, G):
    kw = {"batch_size": 4, "lr": 1e-3, "config": EncoderConfig(**SMALL), "seed": 3, "log_every": 1}
    straight = train_encoder(G, steps=4, **kw).encoder
    ckpt = tmp_path / "train.ckpt"
    first = train_encoder(G, steps=2, checkpoint=ckpt, **kw)
    assert first.steps == 2 and ckpt.is_file()
    resumed = train_encoder(G, steps=4, checkpoint=ckpt, resume=True, **kw)
    assert resumed.steps == 4 and [h["step"] for h in resumed.history] == [1, 2, 3, 4]
    a, b = straight.state_dict(), resumed.encoder.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    again = train_encoder(G, steps=4, checkpoint=ckpt, resume=True, **kw)  # already done: no steps
    assert again.steps == 4 and torch.equal(again.encoder.head.weight, straight.head.weight)
    with pytest.raises(CheckpointError, match=r"checkpoint seed 3 differs from seed=4"):
        train_encoder(G, steps=5, checkpoint=ckpt, **{**kw, "seed": 4})
    with pytest.raises(CheckpointError, match=r"checkpoint encoder config .* differs"):
        train_encoder(
            G,
            steps=5,
            checkpoint=ckpt,
            **{**kw, "config": EncoderConfig(depth=34, width=16, resolution=32)},
        )


def test_checkpoint_from_another_generator_is_refused(tmp_path, G, stylegan2_fixtures):
    kw = {"batch_size": 2, "config": EncoderConfig(**SMALL), "log_every": 1}
    ckpt = tmp_path / "train.ckpt"
    train_encoder(G, steps=1, checkpoint=ckpt, **kw)
    other = load_generator(stylegan2_fixtures / "rosinality-res32.pt")
    if (other.num_ws, other.w_dim) != (G.num_ws, G.w_dim):
        pytest.skip("the second fixture has another latent layout")
    with pytest.raises(
        CheckpointError, match=r"trained against generator .* delete the checkpoint"
    ):
        train_encoder(other, steps=2, checkpoint=ckpt, **kw)


def test_training_argument_errors(G):
    with pytest.raises(ValueError, match=r"steps=0: expected a positive integer"):
        train_encoder(G, steps=0)
    with pytest.raises(ValueError, match=r"batch_size=1: BatchNorm needs >= 2 samples"):
        train_encoder(G, steps=1, batch_size=1, config=EncoderConfig(**SMALL))
    with pytest.raises(ConfigError, match=r"encoder layout .* does not match the generator"):
        train_encoder(G, steps=1, encoder=Encoder(EncoderConfig(num_ws=3, w_dim=16, **SMALL)))


def test_cli_trains_saves_and_refuses_to_restart(tmp_path, stylegan2_fixtures, capsys):
    out = tmp_path / "E.safetensors"
    argv = [
        "train-encoder", "--generator", str(stylegan2_fixtures / "nvidia-ada-res32.pkl"), "--out", str(out),
        "--steps", "2", "--batch-size", "2", "--perceptual", "none", "--depth", "18", "--width", "16",
        "--device", "cpu", "--log-every", "1",
    ]  # fmt: skip
    assert cli_main(argv) == 0
    E = load_encoder(out)
    assert (
        E.config.depth == 18 and E.resolution == 32 and read_encoder_metadata(out)["steps"] == "2"
    )
    assert "2 steps" in capsys.readouterr().out
    assert cli_main(argv) == 2  # the checkpoint exists and --resume was not given
    assert "pass --resume to continue it" in capsys.readouterr().err
    assert cli_main([*argv[:5], "--steps", "3", *argv[7:], "--resume"]) == 0
    assert read_encoder_metadata(out)["steps"] == "3"


def test_blob_masks_are_the_authors_thresholded_upsampled_noise():
    """latent-composition utils/masking.py mask_upsample: U[0,1) on a 6×6 grid, bilinear to the
    image size, known below one cutoff ~ U[0.3, 1) per batch."""
    gen = torch.Generator().manual_seed(0)
    m = blob_masks(64, 32, generator=gen)
    assert m.shape == (64, 1, 32, 32) and set(m.unique().tolist()) <= {0.0, 1.0}
    gen = torch.Generator().manual_seed(0)
    noise = torch.rand(64, 1, 6, 6, generator=gen)
    cutoff = 0.3 + 0.7 * float(torch.rand((), generator=gen))
    smooth = torch.nn.functional.interpolate(
        noise, size=(32, 32), mode="bilinear", align_corners=False
    )
    assert torch.equal(m, (smooth < cutoff).float())
    assert 0.3 <= cutoff < 1.0 and abs(float(m.mean()) - cutoff) < 0.15  # known share ≈ cutoff


def test_authors_recipe_mse_blobs_beta_half_no_mixing(G):
    """latent-composition training/train_sgan_encoder.py: MSE pixel term, blob masks, Adam β1 0.5,
    w from one z (no style mixing)."""
    result = train_encoder(
        G, steps=2, batch_size=2, config=EncoderConfig(**SMALL), log_every=1, betas=(0.5, 0.999),
        pixel_loss="mse", mask_kind="blobs", style_mix_prob=0.0,
    )  # fmt: skip
    assert all("mse" in h and "l1" not in h for h in result.history)
    total = [h["mse"] + h["latent"] for h in result.history]
    assert [h["loss"] for h in result.history] == pytest.approx(total, rel=1e-5)
    _, _, masks = sample_training_batch(
        G, 4, seed=0, step=0, device=torch.device("cpu"), mask_kind="blobs"
    )
    _, _, rects = sample_training_batch(G, 4, seed=0, step=0, device=torch.device("cpu"))
    assert not torch.equal(masks, rects)
    with pytest.raises(ValueError, match=r"pixel_loss: got 'l2', allowed: \['l1', 'mse'\]"):
        train_encoder(G, steps=1, pixel_loss="l2")
