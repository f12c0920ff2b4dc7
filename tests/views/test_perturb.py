"""GAN perturbations of w*: layer locality, per-view determinism, σ = 0, PCA statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ganviews.stylegan.generator import load_generator
from ganviews.views.perturb import (
    PERTURBATIONS,
    PCAStats,
    attach_pca_stats,
    compute_pca_stats,
    format_setting,
    perturb,
    perturb_from_seeds,
    sample_w,
    view_seed,
)
from storage.errors import StoreError
from storage.pca_stats import cache_path, load_pca_stats, save_pca_stats

IDS = ["img-a", "img-b", "img-c"]
SETTINGS = {"isotropic": 0.3, "pca": 2.0, "stylemix": None}


@pytest.fixture(scope="module")
def G(stylegan2_fixtures):
    return load_generator(stylegan2_fixtures / "nvidia-ada-res32.pkl")


@pytest.fixture(scope="module")
def G_cond(stylegan2_fixtures):
    return load_generator(stylegan2_fixtures / "nvidia-ada-res32-cond.pkl")


@pytest.fixture(scope="module")
def pca(G):
    return compute_pca_stats(G, n_samples=3000, seed=1, batch_size=1000)


@pytest.fixture(scope="module")
def w(G):
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(len(IDS), G.z_dim, generator=gen)
    ws = G.mapping(z)  # [3, L, C]
    # a w+ latent with distinct rows, as L-BFGS leaves them
    return ws + 0.1 * torch.randn(ws.shape, generator=gen)


def _others(G, layers):
    return [i for i in range(G.num_ws) if i not in G.layer_groups[layers]]


@pytest.mark.parametrize("method", sorted(PERTURBATIONS))
@pytest.mark.parametrize("layers", ["coarse", "fine"])
def test_layer_locality(G, w, pca, method, layers):
    out = perturb(G, w, method, layers, SETTINGS[method], n_views=5, image_ids=IDS, seed=3, pca=pca)
    assert out.shape == (3, 5, G.num_ws, G.w_dim)
    rest = _others(G, layers)
    group = G.layer_groups[layers]
    assert rest and group
    # every layer outside the group is bit-for-bit w*
    assert torch.equal(out[:, :, rest], w[:, None, rest].expand(-1, 5, -1, -1))
    # every layer of the group moved, in every view
    moved = (out[:, :, group] - w[:, None, group]).abs().amax(dim=-1)  # [3, 5, |g|]
    assert bool((moved > 1e-4).all())


@pytest.mark.parametrize("method", sorted(PERTURBATIONS))
def test_view_depends_only_on_its_keys_not_on_the_batch(G, w, pca, method):
    s = SETTINGS[method]
    full = perturb(G, w, method, "fine", s, n_views=6, image_ids=IDS, seed=7, pca=pca)
    # another composition and order, fewer views: the overlapping views are the same
    part = perturb(
        G, w[[2, 0]], method, "fine", s, n_views=3, image_ids=["img-c", "img-a"], seed=7, pca=pca
    )
    torch.testing.assert_close(part[0], full[2, :3], rtol=0, atol=1e-6)
    torch.testing.assert_close(part[1], full[0, :3], rtol=0, atol=1e-6)
    if method != "stylemix":  # pure element-wise maths: exactly equal
        assert torch.equal(part[0], full[2, :3])
    # ... and the same call twice is identical
    assert torch.equal(
        perturb(G, w, method, "fine", s, n_views=6, image_ids=IDS, seed=7, pca=pca), full
    )
    # views differ from each other, across images' ids and across base seeds
    assert not torch.equal(full[0, 0], full[0, 1])
    other_id = perturb(G, w[:1], method, "fine", s, n_views=1, image_ids=["other"], seed=7, pca=pca)
    assert not torch.equal(other_id[0, 0], full[0, 0])
    other_seed = perturb(G, w, method, "fine", s, n_views=1, image_ids=IDS, seed=8, pca=pca)
    assert not torch.equal(other_seed[0, 0], full[0, 0])


def test_stored_seed_rerenders_the_view(G, w, pca):
    out = perturb(G, w, "pca", "coarse", 1.0, n_views=4, image_ids=IDS, seed=5, pca=pca)
    # view j of image i is table view 2 + j; its seed alone reproduces it
    s = view_seed(5, "img-b", "pca", "coarse", 1.0, 2 + 3)
    again = perturb_from_seeds(G, w[1:2], [s], method="pca", layers="coarse", setting=1.0, pca=pca)
    assert torch.equal(again[0], out[1, 3])
    # the setting key is canonical: 1, 1.0 and "1.0" name the same views
    assert (
        view_seed(5, "img-b", "pca", "coarse", 1, 5)
        == s
        == view_seed(5, "img-b", "pca", "coarse", "1.0", 5)
    )
    assert (
        format_setting(None) == "" and format_setting(0.3) == "0.3" and format_setting(2) == "2.0"
    )


@pytest.mark.parametrize("method", ["isotropic", "pca"])
def test_sigma_zero_gives_the_reconstruction(G, w, pca, method):
    out = perturb(G, w, method, "fine", 0.0, n_views=4, image_ids=IDS, seed=0, pca=pca)
    assert torch.equal(out, w[:, None].expand_as(out))
    img = G.synthesis(out[:, 2], noise_mode="const")
    assert torch.equal(img, G.synthesis(w, noise_mode="const"))


def test_isotropic_noise_has_the_requested_scale(G, w):
    ids = [f"i{k}" for k in range(40)]
    base = w[:1].expand(40, -1, -1)
    out = perturb(G, base, "isotropic", "fine", 0.5, n_views=10, image_ids=ids, seed=0)
    eps = (out - base[:, None])[:, :, G.layer_groups["fine"]] / 0.5
    n = eps.numel()
    assert abs(float(eps.mean())) < 4 / n**0.5
    assert abs(float(eps.std()) - 1.0) < 0.03
    # layers of the group get independent noise
    fine = G.layer_groups["fine"]
    assert not torch.equal(eps[:, :, 0], eps[:, :, 1]) and len(fine) > 1


def test_pca_moves_along_one_top_direction_within_sigma(G, w, pca):
    sigma = 1.5
    out = perturb(G, w, "pca", "fine", sigma, n_views=30, image_ids=IDS, seed=2, pca=pca)
    fine = G.layer_groups["fine"]
    delta = (out - w[:, None])[:, :, fine]  # [3, 30, |g|, C]
    # the same displacement on every layer of the group
    assert torch.allclose(delta, delta[:, :, :1].expand_as(delta), atol=1e-6)
    d = delta[:, :, 0].reshape(-1, G.w_dim).double()  # [90, C]
    coef = d @ pca.components.T  # [90, D] coordinates in the PCA basis
    top = coef.abs().argmax(dim=1)
    assert int(top.max()) < 20  # d among the top 20 directions
    # exactly one direction, with |β| ≤ σ, β·λ_d the coordinate
    resid = d - coef.gather(1, top[:, None]) * pca.components[top]
    assert float(resid.abs().max()) < 1e-4
    beta = coef.gather(1, top[:, None])[:, 0] / pca.stdevs[top]
    assert float(beta.abs().max()) <= sigma + 1e-5
    assert float(beta.abs().max()) > sigma / 2  # the range is used
    assert len(set(top.tolist())) > 5  # several directions drawn


def test_pca_stats_cached_on_the_generator(stylegan2_fixtures, w, pca):
    G2 = load_generator(stylegan2_fixtures / "nvidia-ada-res32.pkl")
    with pytest.raises(ValueError, match="pca: method 'pca' needs PCA statistics"):
        perturb(G2, w, "pca", "fine", 1.0, n_views=2, image_ids=IDS)
    attach_pca_stats(G2, pca)
    cached = perturb(G2, w, "pca", "fine", 1.0, n_views=2, image_ids=IDS)
    assert torch.equal(
        cached, perturb(G2, w, "pca", "fine", 1.0, n_views=2, image_ids=IDS, pca=pca)
    )
    foreign = PCAStats(pca.mean, pca.components, pca.stdevs, generator_sha256="e" * 64)
    with pytest.raises(ValueError, match="pca: statistics belong to generator eeeeeeeeeeee"):
        attach_pca_stats(G2, foreign)


def test_pca_components_limit(G, w, pca):
    out = perturb(
        G, w, "pca", "fine", 1.0, n_views=20, image_ids=IDS, seed=2, pca=pca, pca_components=1
    )
    d = (out - w[:, None])[:, :, G.layer_groups["fine"][0]].reshape(-1, G.w_dim).double()
    # every displacement is parallel to the first component
    cos = (d @ pca.components[0]).abs() / d.norm(dim=1)
    assert float(cos.min()) > 1 - 1e-6


def test_stylemix_replaces_the_group_with_mapping_of_the_view_z(G, w):
    out = perturb(G, w, "stylemix", "coarse", None, n_views=3, image_ids=IDS, seed=4)
    coarse = G.layer_groups["coarse"]
    s = view_seed(4, "img-a", "stylemix", "coarse", None, 2 + 1)
    z = torch.randn(G.z_dim, generator=torch.Generator().manual_seed(s))
    expected = G.mapping(z[None], truncation_psi=1.0)[0]  # [L, C]
    torch.testing.assert_close(out[0, 1, coarse], expected[coarse], rtol=0, atol=1e-6)
    # the group really changed, and differently per view
    assert float((out[0, 0, coarse] - w[0, coarse]).abs().mean()) > 0.05
    assert not torch.allclose(out[0, 0, coarse], out[0, 1, coarse])


def test_stylemix_conditional_uses_the_given_class(G_cond):
    w = G_cond.mapping(torch.randn(2, G_cond.z_dim), torch.eye(G_cond.c_dim)[[1, 2]])
    with pytest.raises(ValueError, match=r"c: G is class-conditional \(c_dim=10\)"):
        perturb(G_cond, w, "stylemix", "fine", n_views=2, image_ids=["a", "b"])
    c1 = torch.eye(10)[[1, 2]]
    c2 = torch.eye(10)[[3, 2]]
    a = perturb(G_cond, w, "stylemix", "fine", n_views=2, image_ids=["a", "b"], c=c1)
    b = perturb(G_cond, w, "stylemix", "fine", n_views=2, image_ids=["a", "b"], c=c2)
    assert not torch.allclose(a[0], b[0])  # another class, another mixing latent
    torch.testing.assert_close(a[1], b[1], rtol=0, atol=1e-6)  # same class, same view


def test_pca_stats_match_numpy_pca_on_the_same_samples(G):
    stats = compute_pca_stats(G, n_samples=2500, seed=3, batch_size=700)
    ws = torch.cat(list(sample_w(G, n_samples=2500, seed=3, batch_size=700))).double().numpy()
    assert ws.shape == (2500, G.w_dim)
    centred = ws - ws.mean(0)
    _, S, Vt = np.linalg.svd(centred, full_matrices=False)
    np.testing.assert_allclose(stats.mean.numpy(), ws.mean(0), atol=1e-10)
    np.testing.assert_allclose(stats.stdevs.numpy(), S / np.sqrt(len(ws) - 1), rtol=1e-7, atol=1e-9)
    comps = stats.components.numpy()
    np.testing.assert_allclose(comps @ comps.T, np.eye(G.w_dim), atol=1e-10)  # orthonormal
    assert np.all(np.diff(stats.stdevs.numpy()) <= 0)  # descending
    # same directions up to sign, where the spectrum is not degenerate
    gaps = np.abs(np.diff(S)) / S[0]
    for d in range(10):
        if gaps[d] > 1e-3 and (d == 0 or gaps[d - 1] > 1e-3):
            assert abs(abs(float(comps[d] @ Vt[d])) - 1.0) < 1e-6
    assert stats.n_samples == 2500 and stats.generator_sha256 == G.sha256
    # the batch size only changes how the samples are drawn, not the estimator
    again = compute_pca_stats(G, n_samples=2500, seed=3, batch_size=700)
    assert torch.equal(again.components, stats.components)


def test_pca_stats_conditional_generator(G_cond):
    stats = compute_pca_stats(G_cond, n_samples=500, seed=0)
    assert stats.components.shape == (G_cond.w_dim, G_cond.w_dim)
    assert bool((stats.stdevs > 0).all())


def test_pca_stats_file_roundtrip_and_generator_guard(G, pca, tmp_path):
    path = cache_path(tmp_path / "store")
    assert path == tmp_path / "store" / "pca_stats.npz"
    save_pca_stats(
        path, **pca.as_arrays(), generator_sha256=G.sha256, n_samples=pca.n_samples, seed=1
    )
    data = load_pca_stats(path, generator_sha256=G.sha256)
    back = PCAStats.from_arrays(
        data["mean"],
        data["components"],
        data["stdevs"],
        generator_sha256=data["generator_sha256"],
        n_samples=data["n_samples"],
    )
    assert torch.equal(back.components, pca.components) and torch.equal(back.stdevs, pca.stdevs)
    assert data["seed"] == 1 and data["n_samples"] == 3000
    with pytest.raises(StoreError, match="computed for generator sha256 .* not for this generator"):
        load_pca_stats(path, generator_sha256="0" * 64)
    with pytest.raises(StoreError, match="PCA statistics not found: .*ganviews pca-stats"):
        load_pca_stats(tmp_path / "nope.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(StoreError, match="not a readable PCA statistics file"):
        load_pca_stats(tmp_path / "bad.npz")
    with pytest.raises(StoreError, match="generator_sha256 is required"):
        save_pca_stats(path, **pca.as_arrays(), generator_sha256="", n_samples=1, seed=0)
    # statistics made for another generator are refused by perturb too
    foreign = PCAStats(pca.mean, pca.components, pca.stdevs, generator_sha256="f" * 64)
    with pytest.raises(ValueError, match="pca: statistics belong to generator ffffffffffff"):
        perturb(
            G,
            torch.zeros(1, G.num_ws, G.w_dim),
            "pca",
            "fine",
            1.0,
            n_views=1,
            image_ids=["a"],
            pca=foreign,
        )


def test_errors_name_the_parameter(G, w, pca):
    kw = dict(n_views=2, image_ids=IDS)
    with pytest.raises(
        ValueError, match=r"method: got 'rotate', allowed: \['isotropic', 'pca', 'stylemix'\]"
    ):
        perturb(G, w, "rotate", "fine", 0.1, **kw)
    with pytest.raises(
        ValueError, match=r"layers: got 'top', allowed: \['coarse', 'fine', 'middle'\]"
    ):
        perturb(G, w, "isotropic", "top", 0.1, **kw)
    with pytest.raises(ValueError, match="setting: method 'isotropic' needs σ"):
        perturb(G, w, "isotropic", "fine", -0.1, **kw)
    with pytest.raises(ValueError, match="setting: method 'isotropic' needs σ"):
        perturb(G, w, "isotropic", "fine", None, **kw)
    with pytest.raises(ValueError, match="setting: method 'stylemix' takes no setting, got 0.5"):
        perturb(G, w, "stylemix", "fine", 0.5, **kw)
    with pytest.raises(ValueError, match="pca: method 'pca' needs PCA statistics"):
        perturb(G, w, "pca", "fine", 1.0, **kw)
    with pytest.raises(ValueError, match="image_ids: required"):
        perturb(G, w, "isotropic", "fine", 0.1, n_views=2)
    with pytest.raises(ValueError, match=r"image_ids: expected 3 ids \(one per row of w\), got 2"):
        perturb(G, w, "isotropic", "fine", 0.1, n_views=2, image_ids=IDS[:2])
    with pytest.raises(ValueError, match=r"w: expected shape \[\*, 8, 64\], got \[3, 64\]"):
        perturb(G, w[:, 0], "isotropic", "fine", 0.1, **kw)
    with pytest.raises(ValueError, match="seeds: expected one per row of w"):
        perturb_from_seeds(G, w, [1, 2], method="isotropic", layers="fine", setting=0.1)
    with pytest.raises(ValueError, match="n_samples: got 1, need at least 2"):
        compute_pca_stats(G, n_samples=1)
