"""Contrastive training: positive pairs, the library losses, exact resume from a checkpoint."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ganviews.core.errors import CheckpointError, ConfigError
from ganviews.genrep.contrastive import (
    ContrastiveConfig,
    EncoderConfig,
    load_encoder,
    positive_pairs,
    save_encoder,
    simclr_augment,
    train_contrastive,
)

TINY = ContrastiveConfig(
    encoder=EncoderConfig(arch="resnet18", small_input=False, input_size=16, proj_dim=16),
    steps=3,
    batch_size=4,
    lr=0.05,
    checkpoint_every=2,
    log_every=1,
    seed=3,
)


def _views(n: int = 6, v: int = 2) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, v, 3, 16, 16), dtype=np.uint8)


def test_positive_pairs_take_view_zero_and_another_view() -> None:
    views = _views(5, 3)
    gen = torch.Generator().manual_seed(0)
    a, p = positive_pairs(views, np.array([4, 1]), gen)
    np.testing.assert_array_equal(a.numpy(), views[[4, 1], 0])
    assert all(
        any(np.array_equal(p[i].numpy(), views[k, j]) for j in (1, 2)) for i, k in enumerate([4, 1])
    )
    a1, p1 = positive_pairs(views[:, :1], np.array([2]), gen)  # one view: the anchor twice
    assert torch.equal(a1, p1)


def test_simclr_augment_draws_per_image_on_a_batch() -> None:
    """One batched call gives every image its own crop/flip/jitter/grey draw (identical inputs,
    distinct outputs); grey with p = 1 equalises the channels; the global RNG decides it."""
    batch = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)).repeat(8, 1, 1, 1)
    torch.manual_seed(0)
    out = simclr_augment(TINY, 16)(batch)
    assert out.shape == (8, 3, 16, 16) and 0 <= out.min() and out.max() <= 1
    assert len({tuple(o.flatten()[:32].tolist()) for o in out}) == 8  # eight different views
    torch.manual_seed(0)
    assert torch.equal(simclr_augment(TINY, 16)(batch), out)  # same global seed, same views
    grey = dataclasses.replace(TINY, grayscale_prob=1.0, jitter_prob=0.0)
    g = simclr_augment(grey, 16)(batch)
    assert torch.allclose(g[:, 0], g[:, 1]) and torch.allclose(g[:, 1], g[:, 2])


@pytest.mark.slow  # resnet18 checkpoints (≈ 90 MB each with momentum) dominate
def test_resume_after_interruption_is_exact(tmp_path) -> None:
    views = _views()
    straight = train_contrastive(views, cfg=TINY)

    class Killed(Exception):
        pass

    def stop_after_two(step: int, loss: float) -> None:
        assert np.isfinite(loss)
        if step == 2:
            raise Killed

    ckpt = tmp_path / "enc.ckpt"
    with pytest.raises(Killed):
        train_contrastive(views, cfg=TINY, checkpoint=ckpt, on_step=stop_after_two)
    torch.manual_seed(99)  # other global RNG state: the checkpoint must restore it
    resumed = train_contrastive(views, cfg=TINY, checkpoint=ckpt)
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    # a finished run returns at once; a checkpoint of another run is refused
    again = train_contrastive(views, cfg=TINY, checkpoint=ckpt)
    assert all(
        torch.equal(a, b)
        for a, b in zip(again.state_dict().values(), resumed.state_dict().values(), strict=True)
    )
    with pytest.raises(CheckpointError, match=r"enc\.ckpt: a checkpoint of another training run"):
        train_contrastive(views, cfg=TINY, checkpoint=ckpt, t_x=False)
    path = save_encoder(resumed, tmp_path / "enc.safetensors")
    loaded = load_encoder(path)
    assert loaded.config == TINY.encoder and not loaded.training
    assert all(
        torch.equal(a, b)
        for a, b in zip(loaded.state_dict().values(), resumed.state_dict().values(), strict=True)
    )


def test_supcon_and_errors() -> None:
    views = _views()
    model = train_contrastive(
        views, cfg=TINY, objective="supcon", labels=np.array([0, 1, 0, 1, 2, 2]), t_x=False
    )
    assert not model.training
    with pytest.raises(ConfigError, match=r"supcon needs a class label ≥ 0 for every anchor"):
        train_contrastive(views, cfg=TINY, objective="supcon", labels=-np.ones(6, np.int64))
    with pytest.raises(
        ConfigError, match=r"objective: 'byol' is not one of \['simclr', 'supcon'\]"
    ):
        train_contrastive(views, cfg=TINY, objective="byol")
    with pytest.raises(ConfigError, match=r"encoder\.arch: 'vit' is not one of"):
        train_contrastive(views, cfg=ContrastiveConfig(encoder=EncoderConfig(arch="vit")))
