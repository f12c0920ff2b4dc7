"""GenRep multiview sampling: the truncated distributions, σ, per-item seeds and exact re-rendering."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy.stats import truncnorm

from ganviews.core.errors import ConfigError
from ganviews.genrep.sampling import SamplingConfig, sample_latents, sample_multiview
from ganviews.stylegan.generator import load_generator


@pytest.fixture(scope="module")
def G(stylegan2_fixtures):
    return load_generator(stylegan2_fixtures / "nvidia-ada-res32.pkl")


@pytest.fixture(scope="module")
def G_cond(stylegan2_fixtures):
    return load_generator(stylegan2_fixtures / "nvidia-ada-res32-cond.pkl")


def test_anchor_and_view_truncation_and_sigma(G) -> None:
    """Anchors ~ N(0,1) cut at ±2, offsets ~ σ·N(0,1) cut at ±2σ: bounds and moments match scipy."""
    cfg = SamplingConfig(n_anchors=400, sigma=0.3, z_truncation=2.0, view_truncation=2.0)
    lat, labels = sample_latents(G, cfg, range(400))  # [400, 2, 64]
    assert lat.shape == (400, 2, G.z_dim) and (labels == -1).all()
    z, offset = lat[:, 0].numpy().ravel(), (lat[:, 1] - lat[:, 0]).numpy().ravel()
    want_std = truncnorm(-2, 2).std()  # 0.8796
    assert abs(want_std - 0.8796) < 1e-4
    assert np.abs(z).max() <= 2.0 and np.abs(z).max() > 1.95
    assert abs(z.std() - want_std) < 0.01 and abs(z.mean()) < 0.01
    assert np.abs(offset).max() <= 2 * 0.3 + 1e-6 and np.abs(offset).max() > 0.58
    assert abs(offset.std() - 0.3 * want_std) < 0.004
    # no truncation: plain N(0, σ²) offsets, some beyond 2σ
    loose = dataclasses.replace(cfg, view_truncation=None, z_truncation=None)
    lat2, _ = sample_latents(G, loose, range(400))
    off2 = (lat2[:, 1] - lat2[:, 0]).numpy().ravel()
    assert abs(off2.std() - 0.3) < 0.005 and np.abs(off2).max() > 2 * 0.3
    assert np.abs(lat2[:, 0].numpy()).max() > 2.0


def test_seeds_are_per_item_and_pinned(G) -> None:
    """A subset re-renders the same pixels as the full batch; the first values are pinned."""
    cfg = SamplingConfig(n_anchors=8, n_views=3, sigma=0.2, seed=7, batch_size=3)
    full = sample_multiview(G, cfg, range(8))
    part = sample_multiview(G, dataclasses.replace(cfg, batch_size=1), [5, 2])
    assert full["images"].shape == (8, 3, 3, 32, 32) and full["images"].dtype == np.uint8
    np.testing.assert_array_equal(part["latents"], full["latents"][[5, 2]])  # bit-exact latents
    # pixels: another batch size may round a rare value the other way (float summation order)
    diff = np.abs(part["images"].astype(int) - full["images"][[5, 2]].astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.999
    np.testing.assert_allclose(full["latents"][0, 0, :3], PINNED_Z, atol=1e-6)
    # views differ from the anchor and from each other; another seed gives other anchors
    assert not np.array_equal(full["images"][:, 0], full["images"][:, 1])
    assert not np.array_equal(full["latents"][:, 1], full["latents"][:, 2])
    other = sample_latents(G, dataclasses.replace(cfg, seed=8), [0])[0]
    assert not torch.equal(other[0, 0], torch.from_numpy(full["latents"][0, 0]))


PINNED_Z = [
    -0.62054127,
    -0.01520580,
    -0.13289353,
]  # item_generator(7, "anchor", 0), trunc_normal_ ±2


def test_conditional_w_space_independent_and_none(G_cond) -> None:
    """Class per anchor shared by its views; w-space views around mapping(z, c); T_z variants."""
    cfg = SamplingConfig(n_anchors=6, space="w", sigma=0.5)
    lat, labels = sample_latents(G_cond, cfg, range(6))
    assert lat.shape == (6, 2, G_cond.w_dim) and labels.min() >= 0 and labels.max() < 10
    z_lat, z_labels = sample_latents(G_cond, dataclasses.replace(cfg, space="z"), range(6))
    np.testing.assert_array_equal(labels, z_labels)  # the class does not depend on the space
    w0 = G_cond.mapping(z_lat[:, 0], torch.as_tensor(labels))[:, 0]
    torch.testing.assert_close(lat[:, 0], w0)
    assert (lat[:, 1] - lat[:, 0]).abs().max() <= 2 * 0.5 + 1e-5
    ind, ind_labels = sample_latents(
        G_cond, dataclasses.replace(cfg, t_z="independent", space="z"), range(6)
    )
    np.testing.assert_array_equal(ind_labels, labels)
    assert (ind[:, 1] - ind[:, 0]).std() > 1.0  # a fresh draw, not a neighbour
    none = sample_multiview(G_cond, dataclasses.replace(cfg, t_z="none", n_views=2), range(3))
    np.testing.assert_array_equal(none["images"][:, 0], none["images"][:, 1])


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"n_views: t_z='gauss' needs ≥ 2 views, got 1"):
        SamplingConfig(n_views=1)
    with pytest.raises(ConfigError, match=r"space: 'x' is not one of \['z', 'w'\]"):
        SamplingConfig(space="x")
    with pytest.raises(ConfigError, match=r"view_truncation: expected > 0 or null, got 0"):
        SamplingConfig(view_truncation=0)
