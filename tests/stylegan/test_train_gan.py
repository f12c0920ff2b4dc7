"""StyleGAN2 discriminator and trainer: shapes, learning signal, exact resume, export, CLI, errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ganviews.core.errors import CheckpointError, ConfigError
from ganviews.stylegan.discriminator import Discriminator, DiscriminatorConfig, minibatch_stddev
from ganviews.stylegan.generator import load_generator
from ganviews.stylegan.training import (
    CHECKPOINT_NAME,
    GENERATOR_NAME,
    ShuffledImages,
    TrainGANConfig,
    build_state,
    r1_penalty,
    sample_ws,
    train_gan,
    train_step,
)


def tiny_config(**changes) -> TrainGANConfig:
    base = dict(
        resolution=8,
        z_dim=8,
        w_dim=8,
        mapping_layers=1,
        g_channels=(16, 8),
        d_channels=(8, 16),
        batch_size=4,
        total_kimg=0.024,  # 6 steps of 4
        checkpoint_every=3,
        ema_kimg=0.01,
    )
    base.update(changes)
    return TrainGANConfig(**base)


def blob_images(n: int = 12, res: int = 8, seed: int = 0) -> torch.Tensor:
    """A real-looking toy domain: a bright square at a random place on black, uint8 [N, 3, R, R]."""
    gen = torch.Generator().manual_seed(seed)
    out = torch.zeros([n, 3, res, res], dtype=torch.uint8)
    for i in range(n):
        y, x = (int(v) for v in torch.randint(0, res - 3, [2], generator=gen))
        out[i, :, y : y + 3, x : x + 3] = 255
    return out


def test_discriminator_shapes_and_widths():
    D = Discriminator(DiscriminatorConfig(img_resolution=16, channels=(8, 16, 32)))
    assert [name for name, _ in D.named_children() if name.startswith("b")] == ["b16", "b8"]
    out = D(torch.randn(4, 3, 16, 16))
    assert out.shape == (4,)
    assert D.b16.conv1.weight.shape == (16, 8, 3, 3) and D.b8.skip.weight.shape == (32, 16, 1, 1)
    assert D.epilogue_conv.weight.shape == (32, 33, 3, 3)  # + 1 minibatch-stddev channel
    with pytest.raises(
        ValueError, match=r"img: expected shape \[N, 3, 16, 16\], got \[4, 3, 8, 8\]"
    ):
        D(torch.randn(4, 3, 8, 8))


def test_minibatch_stddev_matches_direct_formula():
    x = torch.randn(8, 6, 4, 4, dtype=torch.float64)
    y = minibatch_stddev(x, group_size=4, num_channels=1)
    assert y.shape == (8, 7, 4, 4)
    # Official grouping: sample n belongs to group n mod (N / G).
    for m in range(2):
        members = x[m::2]  # [4, 6, 4, 4]
        std = (members.var(dim=0, unbiased=False) + 1e-8).sqrt().mean()
        assert torch.allclose(y[m::2, 6], std.expand(4, 4, 4))
    assert torch.equal(y[:, :6], x)
    with pytest.raises(ValueError, match="batch size 6 is not divisible by the group size 4"):
        minibatch_stddev(x[:6], group_size=4, num_channels=1)


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="channels: expected 2 positive widths"):
        DiscriminatorConfig(img_resolution=8, channels=(8, 8, 8))
    with pytest.raises(ConfigError, match="img_resolution: expected a power of two ≥ 8, got 12"):
        DiscriminatorConfig(img_resolution=12)
    with pytest.raises(
        ConfigError, match="batch_size: expected a positive multiple of mbstd_group_size=4, got 6"
    ):
        tiny_config(batch_size=6)
    with pytest.raises(ConfigError, match="style_mixing_prob"):
        tiny_config(style_mixing_prob=1.5)
    with pytest.raises(ConfigError, match="total_kimg: expected > 0"):
        tiny_config(total_kimg=0)


def test_shuffled_images_is_a_function_of_the_step():
    images = blob_images(10)
    a = ShuffledImages(images, batch_size=4, seed=3)
    b = ShuffledImages(images, batch_size=4, seed=3)
    seen = torch.cat([a.batch(k) for k in range(5)])  # 20 images = 2 epochs
    assert torch.equal(b.batch(4), a.batch(4)) and torch.equal(b.batch(1), seen[4:8])
    # every image exactly once per epoch, values mapped to [-1, 1]
    as_uint8 = ((seen + 1) * 127.5).round().to(torch.uint8)
    for epoch in range(2):
        chunk = as_uint8[epoch * 10 : (epoch + 1) * 10]
        assert sorted(map(lambda t: t.sum().item(), chunk)) == sorted(
            map(lambda t: t.sum().item(), images)
        )
    assert seen.min() == -1 and seen.max() == 1
    with pytest.raises(ValueError, match="expected a uint8 tensor"):
        ShuffledImages(images.float(), batch_size=4)


def test_style_mixing_takes_the_tail_from_a_second_latent():
    torch.manual_seed(0)
    cfg = tiny_config(resolution=16, g_channels=(8, 8, 8), d_channels=(8, 8, 8))
    state = build_state(cfg)
    ws = sample_ws(state.G, 4, torch.Generator().manual_seed(1), mixing_prob=1.0)
    distinct = [not torch.equal(ws[:, i], ws[:, 0]) for i in range(ws.shape[1])]
    k = distinct.index(True)
    assert 1 <= k < ws.shape[1] and all(distinct[k:]) and not any(distinct[:k])
    ws = sample_ws(state.G, 4, torch.Generator().manual_seed(1), mixing_prob=0.0)
    assert all(torch.equal(ws[:, i], ws[:, 0]) for i in range(ws.shape[1]))


def test_r1_penalty_equals_squared_input_gradient():
    D = Discriminator(DiscriminatorConfig(img_resolution=8, channels=(4, 4))).double()
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    pen = r1_penalty(D, x)
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(D(xr).sum(), xr)
    assert torch.allclose(pen, g.square().sum(dim=[1, 2, 3]))
    pen.sum().backward()  # differentiable w.r.t. D (create_graph)
    assert D.b8.conv0.weight.grad is not None and D.b8.conv0.weight.grad.abs().sum() > 0


def test_training_teaches_d_to_separate_and_g_to_follow():
    """30 steps on bright squares: D's margin opens, R1 is applied, G_ema moves towards the data."""
    torch.set_num_threads(1)
    cfg = tiny_config(total_kimg=30 * 4 / 1000, r1_interval=4, ema_kimg=0.02)
    state = build_state(cfg)
    data = ShuffledImages(blob_images(32), batch_size=4, seed=0)
    with torch.no_grad():
        z = torch.randn(64, cfg.z_dim, generator=torch.Generator().manual_seed(5))
        before = state.G_ema(z)  # [64, 3, 8, 8]
    stats = [train_step(state, data.batch(k), cfg) for k in range(30)]
    assert state.step == 30
    assert sum("r1" in s for s in stats) == 8  # steps 0, 4, …, 28
    early = sum(s["loss_D"] for s in stats[:5]) / 5
    late = sum(s["loss_D"] for s in stats[-5:]) / 5
    assert late < early < 2 * math.log(2) + 0.2
    assert all(s["D_real"] > s["D_fake"] for s in stats[-5:])
    with torch.no_grad():
        after = state.G_ema(z)
        reals = data.batch(0)
    # the mostly-black data set: generated mean brightness moves towards the real mean
    assert abs(after.mean() - reals.mean()) < abs(before.mean() - reals.mean())
    assert all(torch.isfinite(p).all() for p in state.G.parameters())


def _params(state) -> dict[str, torch.Tensor]:
    out = {}
    for name, module in (("G", state.G), ("D", state.D), ("G_ema", state.G_ema)):
        out.update({f"{name}.{k}": v.clone() for k, v in module.state_dict().items()})
    return out


def test_resume_is_bit_exact(tmp_path: Path):
    torch.set_num_threads(1)
    cfg = tiny_config(r1_interval=2)
    images = blob_images(16)
    full = train_gan(cfg, ShuffledImages(images, batch_size=4, seed=0), out_dir=tmp_path / "full")
    half = tiny_config(r1_interval=2, total_kimg=0.012)  # 3 steps, then stop (a "crash")
    train_gan(half, ShuffledImages(images, batch_size=4, seed=0), out_dir=tmp_path / "split")
    resumed = train_gan(
        cfg, ShuffledImages(images, batch_size=4, seed=0), out_dir=tmp_path / "split", resume=True
    )
    assert full.step == resumed.step == 6
    a, b = _params(full), _params(resumed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][
        :5
    ]
    assert torch.equal(full.rng.get_state(), resumed.rng.get_state())
    sa, sb = full.opt_D.state_dict()["state"], resumed.opt_D.state_dict()["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    log_lines = (tmp_path / "split" / "log.jsonl").read_text().splitlines()
    assert len(log_lines) == 2  # checkpoints at steps 3 and 6


def test_export_loads_with_load_generator(tmp_path: Path):
    torch.set_num_threads(1)
    cfg = tiny_config(total_kimg=0.008, checkpoint_every=1)
    state = train_gan(cfg, ShuffledImages(blob_images(8), batch_size=4), out_dir=tmp_path)
    G = load_generator(tmp_path / GENERATOR_NAME)
    assert (G.resolution, G.z_dim, G.w_dim, G.num_ws) == (8, 8, 8, 4)
    z = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(G(z, noise_mode="const"), state.G_ema(z, noise_mode="const"))
    assert not torch.equal(G.mean_w, torch.zeros(8))  # w_avg was tracked during training
    assert (tmp_path / CHECKPOINT_NAME).is_file()


def test_resume_and_overwrite_errors(tmp_path: Path):
    cfg = tiny_config(total_kimg=0.004, checkpoint_every=1)
    data = ShuffledImages(blob_images(8), batch_size=4)
    with pytest.raises(CheckpointError, match="resume: no training checkpoint at"):
        train_gan(cfg, data, out_dir=tmp_path / "none", resume=True)
    train_gan(cfg, data, out_dir=tmp_path / "run")
    with pytest.raises(CheckpointError, match="exists: pass resume"):
        train_gan(cfg, data, out_dir=tmp_path / "run")
    other = tiny_config(total_kimg=0.004, r1_gamma=1.0)
    with pytest.raises(
        CheckpointError, match=r"different config \(r1_gamma: checkpoint 0.01 vs now 1.0\)"
    ):
        train_gan(other, data, out_dir=tmp_path / "run", resume=True)


def test_cli_trains_from_a_labelled_folder(tmp_path: Path, capsys):
    from PIL import Image

    from ganviews.cli import main

    root = tmp_path / "data"
    (root / "img").mkdir(parents=True)
    rows = ["image,split,label"]
    for i, arr in enumerate(blob_images(12, res=16).permute(0, 2, 3, 1).numpy()):
        Image.fromarray(arr).save(root / "img" / f"{i}.png")
        rows.append(f"img/{i}.png,{'train' if i < 8 else 'test'},0")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    args = [
        "train-gan",
        "--data",
        str(root),
        "--out",
        str(tmp_path / "run"),
        "--resolution",
        "8",
        "--kimg",
        "0.008",
        "--batch-size",
        "4",
        "--z-dim",
        "8",
        "--w-dim",
        "8",
        "--mapping-layers",
        "1",
        "--g-channels",
        "8,8",
        "--d-channels",
        "8,8",
        "--checkpoint-every",
        "1",
        "--threads",
        "1",
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "8 images of 8 px, 2 steps on cpu" in out  # train split only, resized 16 → 8
    assert (tmp_path / "run" / "samples.png").is_file()
    assert load_generator(tmp_path / "run" / GENERATOR_NAME).resolution == 8
    assert main([*args[:-2], "--device", "cpu", "--g-channels", "8,x"]) == 2
    assert "--g-channels: expected comma-separated integers, got '8,x'" in capsys.readouterr().err
