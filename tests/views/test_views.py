"""The fused render → classify pass: completeness, agreement with a slow per-view reference,
batch-composition independence, stored seeds, persisted views, configs and presets."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ganviews.classifiers.model import build_classifier
from ganviews.core.errors import ConfigError
from ganviews.stylegan.generator import load_generator
from ganviews.views.augment import augment, image_view_seed, jitter_seed
from ganviews.views.perturb import compute_pca_stats, perturb_from_seeds, view_seed
from ganviews.views.render import (
    PRESETS,
    GanGroup,
    ViewConfig,
    render_and_classify,
    to_uint8,
    view_config,
    view_groups,
)

IDS = ["a", "b", "c"]
N_VIEWS = 3


@pytest.fixture(scope="module")
def G(stylegan2_fixtures):
    return load_generator(stylegan2_fixtures / "nvidia-ada-res32.pkl")


@pytest.fixture(scope="module")
def pca(G):
    return compute_pca_stats(G, n_samples=2000, seed=0)


@pytest.fixture(scope="module")
def classifiers():
    torch.manual_seed(0)
    out = {}
    for name, k, res in (("binary", 1, 24), ("multi", 3, 32)):
        cfg = {
            "arch": "smallcnn",
            "num_outputs": k,
            "task": name,
            "width": 4,
            "preprocessing": {"resize": res},
        }
        out[name] = build_classifier(cfg).eval().requires_grad_(False)
    return out


@pytest.fixture(scope="module")
def batch(G):
    gen = torch.Generator().manual_seed(1)
    w = G.mapping(torch.randn(3, G.z_dim, generator=gen))  # [3, L, C]
    w = w + 0.05 * torch.randn(w.shape, generator=gen)
    images = torch.rand(3, 3, 40, 40, generator=gen) * 2 - 1  # originals at their own size
    return w, images


@pytest.fixture(scope="module")
def config():
    return ViewConfig(
        n_views=N_VIEWS,
        gan=(
            GanGroup("isotropic", "fine", (0.0, 0.5), combined=True),
            GanGroup("pca", "coarse", (2.0,)),
            GanGroup("stylemix", "fine"),
        ),
        image_methods=("color", "crop"),
        batch_size=5,  # not a divisor of anything: batches mix images, groups and views
    )


@pytest.fixture(scope="module")
def result(G, classifiers, batch, config, pca):
    w, images = batch
    return render_and_classify(
        G, classifiers, w, images, image_ids=IDS, config=config, device="cpu", seed=9, pca=pca
    )


def _by_key(groups):
    out = {}
    for g in groups:
        for r in range(len(g.view)):
            for name, logits in g.logits.items():
                out[(g.method, g.setting, int(g.image_index[r]), int(g.view[r]), name)] = logits[r]
    return out


def test_groups_and_row_counts(result, config, classifiers):
    names = [(g.method, g.setting) for g in result]
    assert names == [
        ("isotropic_fine", "0.0"),
        ("combined_isotropic_fine", "0.0"),
        ("isotropic_fine", "0.5"),
        ("combined_isotropic_fine", "0.5"),
        ("pca_coarse", "2.0"),
        ("stylemix_fine", ""),
        ("color", ""),
        ("crop", ""),
    ]
    for g in result:
        image = g.group.kind == "image"
        per_image = N_VIEWS if image else N_VIEWS + 1  # N views + view 0 (GAN: 0, 1, 2..N)
        assert len(g.view) == 3 * per_image
        assert sorted(set(g.view.tolist())) == list(range(per_image))
        assert np.bincount(g.image_index).tolist() == [per_image] * 3
        first_seeded = 1 if image else 2
        assert (g.has_seed == (g.view >= first_seeded)).all()
        for name, C in classifiers.items():
            assert g.logits[name].shape == (len(g.view), C.num_outputs)
            assert g.logits[name].dtype == np.float32 and np.isfinite(g.logits[name]).all()


def test_views_0_and_1_are_the_original_and_the_reconstruction(result, batch, classifiers, G):
    w, images = batch
    recon = G.synthesis(w, noise_mode="const")
    for name, C in classifiers.items():
        orig = C(images).numpy()
        rec = C(recon).numpy()
        for g in result:
            rows0 = g.view == 0
            np.testing.assert_allclose(g.logits[name][rows0], orig, rtol=0, atol=1e-5)
            if g.group.kind != "image":
                np.testing.assert_allclose(g.logits[name][g.view == 1], rec, rtol=0, atol=1e-5)


def test_every_row_equals_a_slow_per_view_reference(result, batch, classifiers, G, pca, config):
    """Re-render each view of one image alone from its stored seed and classify it alone."""
    w, images = batch
    i = 1
    checked = 0
    for g in result:
        for r in np.flatnonzero(g.has_seed & (g.image_index == i)):
            v, s = int(g.view[r]), int(g.seed[r])
            if g.group.kind == "image":
                assert s == image_view_seed(9, IDS[i], g.group.base, v)
                x = augment(images[i : i + 1], [s], g.group.base, config=config.jitter)
            else:
                assert s == view_seed(9, IDS[i], g.group.base, g.group.layers, g.group.sigma, v)
                wv = perturb_from_seeds(
                    G,
                    w[i : i + 1],
                    [s],
                    method=g.group.base,
                    layers=g.group.layers,
                    setting=g.group.sigma,
                    pca=pca,
                )
                x = G.synthesis(wv, noise_mode="const")
                if g.group.kind == "combined":
                    x = augment(x, [jitter_seed(s)], "combined", config=config.jitter)
            for name, C in classifiers.items():
                np.testing.assert_allclose(g.logits[name][r], C(x)[0].numpy(), rtol=0, atol=1e-4)
            checked += 1
    assert checked == 6 * (N_VIEWS - 1) + 2 * (N_VIEWS - 1)
    # the other images' seeds are the ones their keys give
    for g in result:
        for r in np.flatnonzero(g.has_seed):
            j, v = int(g.image_index[r]), int(g.view[r])
            expect = (
                image_view_seed(9, IDS[j], g.group.base, v)
                if g.group.kind == "image"
                else view_seed(9, IDS[j], g.group.base, g.group.layers, g.group.sigma, v)
            )
            assert int(g.seed[r]) == expect


def test_combined_views_share_the_gan_views_seeds_and_add_jitter(result):
    plain, combined = result[2], result[3]
    assert plain.method == "isotropic_fine" and combined.method == "combined_isotropic_fine"
    assert np.array_equal(plain.seed, combined.seed)
    seeded = plain.has_seed
    assert not np.allclose(plain.logits["multi"][seeded], combined.logits["multi"][seeded])
    np.testing.assert_array_equal(plain.logits["multi"][~seeded], combined.logits["multi"][~seeded])


def test_sigma_zero_views_equal_the_reconstruction(result):
    g = result[0]
    assert (g.method, g.setting) == ("isotropic_fine", "0.0")
    logits = g.logits["multi"].reshape(3, N_VIEWS + 1, -1)
    for v in range(2, N_VIEWS + 1):
        np.testing.assert_allclose(logits[:, v], logits[:, 1], rtol=0, atol=1e-5)


def test_independent_of_batch_composition_order_and_batch_size(
    result, G, classifiers, batch, config, pca
):
    w, images = batch
    cfg = dataclasses.replace(config, batch_size=64)
    again = render_and_classify(
        G,
        classifiers,
        w[[2, 0]],
        images[[2, 0]],
        image_ids=["c", "a"],
        config=cfg,
        device="cpu",
        seed=9,
        pca=pca,
    )
    ref = _by_key(result)
    got = _by_key(again)
    assert len(got) == len(ref) * 2 // 3
    back = {0: 2, 1: 0}
    for (m, s, i, v, name), logits in got.items():
        np.testing.assert_allclose(logits, ref[(m, s, back[i], v, name)], rtol=0, atol=1e-5)
    # another base seed gives other views
    small = dataclasses.replace(cfg, gan=(config.gan[1],), image_methods=())
    other = render_and_classify(
        G, classifiers, w, images, image_ids=IDS, config=small, device="cpu", seed=10, pca=pca
    )
    assert other[0].method == result[4].method == "pca_coarse"
    seeded = result[4].has_seed
    assert not np.allclose(other[0].logits["multi"][seeded], result[4].logits["multi"][seeded])


def test_persisted_views_are_the_classified_images(G, classifiers, batch, pca):
    w, images = batch
    cfg = ViewConfig(
        n_views=3,
        gan=(GanGroup("stylemix", "coarse", combined=True),),
        image_methods=("crop",),
        persist_views=True,
        persist_resolution=16,
    )
    out = render_and_classify(
        G, classifiers, w, images, image_ids=IDS, config=cfg, device="cpu", seed=2
    )
    for g in out:
        assert g.views.shape == (3, g.group.num_views, 3, 16, 16) and g.views.dtype == np.uint8
        np.testing.assert_array_equal(g.views[:, 0], to_uint8(images, 16).numpy())
    g = out[0]
    np.testing.assert_array_equal(g.views[:, 1], to_uint8(G.synthesis(w), 16).numpy())
    s = int(g.seed[g.view == 2][1])  # image 1, view 2
    x = G.synthesis(perturb_from_seeds(G, w[1:2], [s], method="stylemix", layers="coarse"))
    assert np.abs(g.views[1, 2].astype(int) - to_uint8(x, 16)[0].numpy().astype(int)).max() <= 1
    crop = out[2]
    s = int(crop.seed[(crop.image_index == 2) & (crop.view == 1)][0])
    expected = to_uint8(augment(images[2:3], [s], "crop", config=cfg.jitter), 16)[0].numpy()
    np.testing.assert_array_equal(crop.views[2, 1], expected)
    assert (
        out[0].views is not None
        and render_and_classify(
            G,
            classifiers,
            w,
            images,
            image_ids=IDS,
            config=dataclasses.replace(cfg, persist_views=False),
            device="cpu",
            seed=2,
        )[0].views
        is None
    )


def test_autocast_bfloat16_stays_close(G, classifiers, batch):
    w, images = batch[0][:2], batch[1][:2]
    cfg = ViewConfig(n_views=2, gan=(GanGroup("isotropic", "fine", (0.2,)),), image_methods=())
    a = render_and_classify(
        G, classifiers, w, images, image_ids=IDS[:2], config=cfg, device="cpu", seed=0
    )
    b = render_and_classify(
        G,
        classifiers,
        w,
        images,
        image_ids=IDS[:2],
        config=dataclasses.replace(cfg, dtype="bfloat16"),
        device="cpu",
        seed=0,
    )
    assert np.array_equal(a[0].seed, b[0].seed)
    scale = np.abs(a[0].logits["multi"]).max()
    assert np.abs(a[0].logits["multi"] - b[0].logits["multi"]).max() < 0.1 * scale


def test_presets_hold_the_official_grids():
    def grid(preset, method, layers):
        return next(
            g.settings for g in PRESETS[preset].gan if (g.method, g.layers) == (method, layers)
        )

    assert grid("faces", "isotropic", "fine") == (0.1, 0.2, 0.3)
    assert grid("faces", "pca", "coarse") == (1.0, 2.0, 3.0)
    assert grid("cars", "isotropic", "fine") == (0.3, 0.5, 0.7)
    assert grid("cars", "isotropic", "coarse") == (1.0, 1.5, 2.0)
    assert grid("cats", "isotropic", "fine") == (0.1, 0.2, 0.3)
    assert grid("cats", "isotropic", "coarse") == (0.5, 0.7, 1.0)
    assert grid("cats", "pca", "fine") == (0.5, 0.7, 1.0)
    assert grid("cats", "stylemix", "fine") == ()
    assert (PRESETS["faces"].n_views, PRESETS["faces"].perturbed_views) == (32, 32)
    groups = view_groups(PRESETS["faces"])
    assert len(groups) == 2 * (3 + 3 + 1) + 2
    assert {g.num_views for g in groups if g.kind == "gan"} == {34}  # 0, 1 and 32 perturbed
    assert {g.num_views for g in groups if g.kind == "image"} == {32}  # 0 and 31 copies
    assert PRESETS["cars"].image_methods == PRESETS["cats"].image_methods == ("crop",)
    assert view_groups(ViewConfig(n_views=5))[-1].num_views == 5  # perturbed_views 0 → N − 1
    assert ViewConfig(n_views=5).num_perturbed == 4


def test_view_config_from_mapping_with_preset_and_overrides():
    cfg = view_config({"preset": "cats", "n_views": 8, "jitter": {"flip": False}})
    assert cfg.n_views == 8 and cfg.gan == PRESETS["cats"].gan
    assert cfg.num_perturbed == 7  # n_views alone shrinks the preset's 32 perturbed views too
    assert view_config({"preset": "cats"}).num_perturbed == 32
    assert view_config({"n_views": 8, "perturbed_views": 16}, preset="cats").num_perturbed == 16
    assert cfg.jitter.flip is False and cfg.jitter.crop_scale == PRESETS["cats"].jitter.crop_scale
    cfg = view_config(
        {"gan": [{"method": "pca", "layers": "fine", "settings": [1, 2]}]}, preset="faces"
    )
    assert cfg.gan == (GanGroup("pca", "fine", (1.0, 2.0)),)
    with pytest.raises(ConfigError, match=r"n_view: unknown key \(allowed: .*n_views"):
        view_config({"n_view": 3})
    with pytest.raises(
        ConfigError, match=r"preset: got 'dogs', allowed: \['cars', 'cats', 'faces'\]"
    ):
        view_config({"preset": "dogs"})


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="n_views: got 1, must be ≥ 2"):
        ViewConfig(n_views=1)
    with pytest.raises(
        ConfigError, match=r"image_methods: got \['blur'\], allowed: \['color', 'crop'\]"
    ):
        ViewConfig(image_methods=("blur",))
    with pytest.raises(ConfigError, match="gan.method: got 'warp'"):
        GanGroup("warp", "fine", (1.0,))
    with pytest.raises(ConfigError, match="gan.settings: isotropic needs a σ grid"):
        GanGroup("isotropic", "fine")
    with pytest.raises(ConfigError, match=r"gan.settings: stylemix takes no settings, got \[0.1\]"):
        GanGroup("stylemix", "fine", (0.1,))
    with pytest.raises(ConfigError, match=r"gan: \(method, layers\) pairs must be unique"):
        ViewConfig(gan=(GanGroup("stylemix", "fine"), GanGroup("stylemix", "fine")))
    with pytest.raises(ConfigError, match="noise_mode: got 'random'"):
        ViewConfig(noise_mode="random")


def test_render_errors(G, classifiers, batch, config):
    w, images = batch
    kw = dict(config=config, device="cpu", seed=0)
    with pytest.raises(ValueError, match="pca: the config has PCA groups but no PCA statistics"):
        render_and_classify(G, classifiers, w, images, image_ids=IDS, **kw)
    with pytest.raises(ValueError, match="image_ids: ids must be unique"):
        render_and_classify(G, classifiers, w, images, image_ids=["a", "a", "b"], **kw)
    with pytest.raises(ValueError, match="w: got 0 images"):
        render_and_classify(G, classifiers, w[:0], images[:0], image_ids=[], **kw)
    with pytest.raises(ValueError, match="classifiers: need at least one"):
        render_and_classify(G, {}, w, images, image_ids=IDS, **kw)
    with pytest.raises(
        ValueError, match=r"images: expected shape \[3, 3, \*, \*\], got \[2, 3, 40, 40\]"
    ):
        render_and_classify(G, classifiers, w, images[:2], image_ids=IDS, **kw)
    bad = ViewConfig(gan=(GanGroup("stylemix", "top"),))
    with pytest.raises(
        ValueError,
        match=r"layers: group stylemix_top needs 'top', G has \['coarse', 'fine', 'middle'\]",
    ):
        render_and_classify(
            G, classifiers, w, images, image_ids=IDS, config=bad, device="cpu", seed=0
        )


def test_combined_renders_reuse_few_renders_with_several_jitters(G, classifiers, batch):
    """scripts/eval_ensemble/evaluate_gan_ensemble.py --apply_tensor_transform: 8 renders, each
    through the random tensor transform 4 times (32 views). Here R = 2 renders feed views 2..5:
    render r → views 2 + r + 2p with jitter p."""
    torch.set_num_threads(1)
    w, images = batch
    cfg = ViewConfig(
        n_views=3, perturbed_views=4, gan=(GanGroup("isotropic", "fine", (0.5,), combined=True),),
        image_methods=(), combined_renders=2, batch_size=4,
    )  # fmt: skip
    C = {"multi": classifiers["multi"]}
    plain, combined = render_and_classify(
        G, C, w[:1], images[:1], image_ids=["a"], config=cfg, device="cpu", seed=9
    )
    renders = {v: view_seed(9, "a", "isotropic", "fine", 0.5, v) for v in (2, 3)}
    for r in np.flatnonzero(combined.view >= 2):
        v = int(combined.view[r])
        base, jitter = 2 + (v - 2) % 2, (v - 2) // 2
        assert int(combined.seed[r]) == renders[base]
        wv = perturb_from_seeds(
            G, w[:1], [renders[base]], method="isotropic", layers="fine", setting=0.5
        )
        x = augment(
            G.synthesis(wv, noise_mode="const"), [jitter_seed(renders[base], jitter)], "combined"
        )
        np.testing.assert_allclose(combined.logits["multi"][r], C["multi"](x)[0].numpy(), atol=1e-4)
    assert sorted(set(combined.view.tolist())) == list(range(6))  # 4 perturbed views, n_views 3
    assert len(set(combined.seed[combined.view >= 2].tolist())) == 2
    assert len(set(plain.seed[plain.view >= 2].tolist())) == 4  # the plain group: 4 renders
    with pytest.raises(ConfigError, match=r"combined_renders: got -1, must be ≥ 0"):
        ViewConfig(n_views=5, combined_renders=-1)
    with pytest.raises(
        ConfigError, match=r"perturbed_views: got -1, must be ≥ 0 \(0 → n_views − 1\)"
    ):
        ViewConfig(perturbed_views=-1)


def test_subset_config_renders_only_the_wanted_groups():
    from ganviews.views.config import subset_config

    cfg = ViewConfig(
        n_views=3,
        gan=(
            GanGroup("isotropic", "fine", (0.1, 0.2), combined=True),
            GanGroup("stylemix", "coarse"),
        ),
        image_methods=("crop", "color"),
    )
    # a combined group keeps its GAN group's renders (the caller drops those rows)
    sub = subset_config(cfg, {("combined_isotropic_fine", "0.2"), ("crop", "")})
    assert sub.gan == (GanGroup("isotropic", "fine", (0.2,), combined=True),)
    assert sub.image_methods == ("crop",) and sub.n_views == 3
    assert [(g.method, g.setting) for g in view_groups(sub)] == [
        ("isotropic_fine", "0.2"), ("combined_isotropic_fine", "0.2"), ("crop", "")
    ]  # fmt: skip
    # a GAN group alone drops its combined twin; stylemix has no settings
    sub = subset_config(cfg, {("isotropic_fine", "0.1"), ("stylemix_coarse", "")})
    assert sub.gan == (
        GanGroup("isotropic", "fine", (0.1,), combined=False),
        GanGroup("stylemix", "coarse"),
    )
    assert sub.image_methods == ()
    assert subset_config(cfg, {(g.method, g.setting) for g in view_groups(cfg)}) == cfg
    with pytest.raises(ConfigError, match=r"groups \[\('pca_fine', '1.0'\)\] are not groups"):
        subset_config(cfg, {("pca_fine", "1.0")})


def _pinned_inputs(G):
    """The inputs data/render_reference.npz was made from: the render path of commit c5d7003
    (before the flat device tables, segment slices, shared resample and uint8 uploads; the
    fused synthesis of df4c807). A deliberate numerics change elsewhere (generator,
    classifiers, augmentations) moves these outputs: regenerate the file from the commit
    before it with this module's inputs, render_and_classify and np.savez_compressed of
    ``<config>/<method>/<setting>/<classifier | seed | views>``."""
    torch.manual_seed(0)
    classifiers = {}
    for name, k, pre in (
        ("a", 1, {"resize": 24}),
        ("b", 3, {"resize": 24, "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.3, 0.4]}),
        ("c", 2, {"resize": 32, "clamp": False}),
    ):
        cfg = {"arch": "smallcnn", "num_outputs": k, "task": name, "width": 4, "preprocessing": pre}
        classifiers[name] = build_classifier(cfg).eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(1)
    w = G.mapping(torch.randn(3, G.z_dim, generator=gen))
    w = w + 0.05 * torch.randn(w.shape, generator=gen)
    u8 = torch.randint(0, 256, (3, 3, 40, 40), generator=gen, dtype=torch.uint8)
    configs = {
        "mixed": ViewConfig(
            n_views=3,
            gan=(
                GanGroup("isotropic", "fine", (0.0, 0.5), combined=True),
                GanGroup("pca", "coarse", (2.0,)),
                GanGroup("stylemix", "fine"),
            ),
            image_methods=("color", "crop"),
            batch_size=5,
            persist_views=True,
            persist_resolution=16,
        ),
        "renders": ViewConfig(
            n_views=5,
            gan=(GanGroup("isotropic", "coarse", (0.3,), combined=True),),
            image_methods=(),
            batch_size=7,
            combined_renders=2,
        ),
    }
    return classifiers, w, u8, configs


def test_cpu_output_is_bit_identical_to_the_pinned_render(G, pca):
    """Logits, seeds and persisted views of the render path on CPU equal, bit for bit, what
    the render path produced before its bookkeeping moved to flat device tables — with the
    originals given as floats or as uint8 (converted on the device). Classifiers a and b
    share one resampled batch (same resize, other normalisation); c resamples its own."""
    from pathlib import Path

    classifiers, w, u8, configs = _pinned_inputs(G)
    assert classifiers["a"].resample_key == classifiers["b"].resample_key
    assert classifiers["a"].resample_key != classifiers["c"].resample_key
    ref = np.load(Path(__file__).parent / "data" / "render_reference.npz")
    seen = set()
    for images in (u8.float() / 127.5 - 1.0, u8):
        for cname, cfg in configs.items():
            out = render_and_classify(
                G, classifiers, w, images, image_ids=["x", "y", "z"], config=cfg,
                device="cpu", seed=9, pca=pca,
            )  # fmt: skip
            for g in out:
                key = f"{cname}/{g.method}/{g.setting}"
                for name, logits in g.logits.items():
                    np.testing.assert_array_equal(logits, ref[f"{key}/{name}"], err_msg=key)
                    seen.add(f"{key}/{name}")
                np.testing.assert_array_equal(np.where(g.has_seed, g.seed, -1), ref[f"{key}/seed"])
                seen.add(f"{key}/seed")
                if g.views is not None:
                    np.testing.assert_array_equal(g.views, ref[f"{key}/views"])
                    seen.add(f"{key}/views")
    assert seen == set(ref.files)


def test_classifier_precision_follows_the_numerics_policy(G, classifiers, batch, config):
    w, images = batch
    cfg = dataclasses.replace(config, gan=config.gan[:1], image_methods=())
    exact = render_and_classify(G, classifiers, w, images, image_ids=IDS, config=cfg,
                                device="cpu", seed=9)  # fmt: skip
    bf16 = render_and_classify(G, classifiers, w, images, image_ids=IDS,
                               config=dataclasses.replace(cfg, precision="bf16"),
                               device="cpu", seed=9)  # fmt: skip
    for e, b in zip(exact, bf16, strict=True):
        for name in classifiers:
            assert b.logits[name].dtype == np.float32
            assert not np.array_equal(e.logits[name], b.logits[name])  # bf16 did run
            np.testing.assert_allclose(b.logits[name], e.logits[name], rtol=0, atol=0.05)
    with pytest.raises(ConfigError, match="precision: got 'fp8', allowed"):
        ViewConfig(precision="fp8")
    with pytest.raises(ConfigError, match="precision: 'bf16' with dtype 'float16': choose one"):
        ViewConfig(precision="bf16", dtype="float16")
