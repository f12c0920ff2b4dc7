"""The paper's domain configs (configs/celebahq.yaml, cars.yaml, cats.yaml): they validate, hold
the paper's settings (Chai et al., CVPR 2021, Sec. 3–4 and the official code), fit a generator
of the stated resolution, and a missing checkpoint fails with a message that names the file."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from ganviews.core.config import from_dict, load_yaml
from ganviews.core.errors import CheckpointError, ConfigError
from ganviews.inversion.align import AlignConfig
from ganviews.stylegan.generator import Generator, GeneratorConfig, default_layer_groups
from ganviews.views.render import PRESETS, view_groups
from tasks.pipeline_config import STAGES, PipelineConfig, load_pipeline_config

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"

# domain → (config file, generator resolution, generator file, view preset, align mode)
DOMAINS = {
    "celebahq": ("celebahq.yaml", 1024, "stylegan2-ffhq-config-f.pkl", "faces", "none"),
    "cars": ("cars.yaml", 512, "stylegan2-car-config-f.pkl", "cars", "object"),
    "cats": ("cats.yaml", 256, "stylegan2-cat-config-f.pkl", "cats", "object"),
}

# official networks/perturb_settings.py: (isotropic fine, isotropic coarse, PCA) σ grids
GRIDS = {
    "celebahq": ((0.1, 0.2, 0.3), (0.1, 0.2, 0.3), (1.0, 2.0, 3.0)),
    "cars": ((0.3, 0.5, 0.7), (1.0, 1.5, 2.0), (1.0, 2.0, 3.0)),
    "cats": ((0.1, 0.2, 0.3), (0.5, 0.7, 1.0), (0.5, 0.7, 1.0)),
}

CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose "
    "Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee "
    "Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard "
    "Oval_Face Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair "
    "Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()


def _config(domain: str) -> PipelineConfig:
    return load_pipeline_config(CONFIGS / DOMAINS[domain][0])


def _tiny_generator(resolution: int) -> Generator:
    """A config-f layout at the real resolution with 8-channel blocks (same num_ws and groups)."""
    return Generator(
        GeneratorConfig(
            z_dim=16, w_dim=16, img_resolution=resolution, channel_base=4096, channel_max=8
        )
    )


@pytest.mark.parametrize("domain", list(DOMAINS))
def test_config_validates_both_ways(domain):
    path = CONFIGS / DOMAINS[domain][0]
    raw = from_dict(PipelineConfig, load_yaml(path))  # the plain schema, no preset expansion
    cfg = load_pipeline_config(path)  # what `ganviews run` uses: paths resolved against configs/
    assert raw.views == cfg.views and raw.invert == cfg.invert and raw.align == cfg.align
    assert not raw.models.generator.is_absolute()
    assert cfg.models.generator == (ROOT / "checkpoints" / DOMAINS[domain][2]).resolve()
    assert cfg.models.lpips_weights_dir == (ROOT / "checkpoints").resolve()
    for ref in cfg.models.classifiers.values():
        assert ref.path.is_relative_to((ROOT / "checkpoints" / "classifiers").resolve())
    assert cfg.paths.store.is_relative_to((ROOT / "runs").resolve())  # runs/ is git-ignored


@pytest.mark.parametrize("domain", list(DOMAINS))
def test_paper_inversion_and_ensemble_values(domain):
    from ganviews.ensemble.evaluate import alpha_grid

    cfg = _config(domain)
    inv = cfg.invert
    assert (inv.steps, inv.optimizer, inv.lambda_lpips, inv.latent_weight) == (
        500,
        "lbfgs",
        0.5,
        0.25,
    )
    assert (inv.latent_term, inv.lpips_net, inv.lpips_resolution) == (
        "encoder_consistency",
        "lpips-alex",
        None,
    )
    assert (inv.lbfgs_history, inv.lbfgs_max_evals) == (10, 10)
    assert cfg.views.n_views == 32
    alphas = alpha_grid(cfg.report.ensemble.num_alphas)
    np.testing.assert_allclose(alphas, np.arange(21) * 0.05, atol=1e-12)  # 0:0.05:1
    assert cfg.data.splits == ("val", "test")
    enc = cfg.encoder_training
    assert not enc.enabled  # the paper started from the authors' released encoders
    assert (enc.depth, enc.lr, enc.lambda_latent, enc.resolution) == (
        34,
        1e-4,
        1.0,
        256,
    )
    released = {"celebahq": "ffhq", "cars": "car", "cats": "cat"}[domain]
    assert cfg.models.encoder.name == f"sgan_encoders_{released}_RGBM_model_initial.pth.tar"


@pytest.mark.parametrize("domain", list(DOMAINS))
def test_generator_resolution_alignment_and_layer_groups(domain):
    _, resolution, _, _, mode = DOMAINS[domain]
    cfg = _config(domain)
    assert cfg.align.resolution == resolution and cfg.align.mode == mode
    G = _tiny_generator(resolution)
    expected_ws = {1024: 18, 512: 16, 256: 14}[resolution]
    assert G.num_ws == expected_ws
    groups = {k: list(v) for k, v in G.layer_groups.items()}
    assert groups == default_layer_groups(expected_ws)
    assert groups == {
        "coarse": [0, 1, 2, 3],
        "middle": list(range(4, 10)),
        "fine": list(range(10, expected_ws)),
    }
    for group in cfg.views.gan:
        assert group.layers in groups, group


@pytest.mark.parametrize("domain", list(DOMAINS))
def test_perturbation_grids_match_the_official_settings(domain):
    cfg = _config(domain)
    iso_fine, iso_coarse, pca = GRIDS[domain]
    got = {(g.method, g.layers): tuple(g.settings) for g in cfg.views.gan}
    assert got == {
        ("isotropic", "fine"): iso_fine,
        ("isotropic", "coarse"): iso_coarse,
        ("pca", "fine"): pca,
        ("pca", "coarse"): pca,
        ("stylemix", "fine"): (),
        ("stylemix", "coarse"): (),
    }
    preset = PRESETS[DOMAINS[domain][3]]  # the library's official presets agree
    assert {(g.method, g.layers): tuple(g.settings) for g in preset.gan} == got
    assert cfg.views.jitter.crop_scale == pytest.approx(preset.jitter.crop_scale)
    assert cfg.views.jitter.crop_mode == preset.jitter.crop_mode
    assert (
        cfg.views.combined_renders == preset.combined_renders == 8
    )  # official 8 renders × jitters
    assert cfg.views.jitter.crop_window == pytest.approx(preset.jitter.crop_window)
    assert cfg.views.jitter.combined_color == preset.jitter.combined_color
    # colour jitter exists only in the authors' data_celebahq.py (imcolor); cars and cats: crops
    image_methods = ("color", "crop") if domain == "celebahq" else ("crop",)
    assert cfg.views.image_methods == preset.image_methods == image_methods
    assert all(g.combined for g in cfg.views.gan)
    kinds = [g.kind for g in view_groups(cfg.views)]
    # 4 σ-groups × 3 settings + 2 style-mix = 14 GAN groups, as many combined, colour and crop
    assert (kinds.count("gan"), kinds.count("combined"), kinds.count("image")) == (
        14,
        14,
        len(image_methods),
    )


@pytest.mark.parametrize("domain", list(DOMAINS))
def test_view_counts_are_the_authors(domain):
    """evaluate_gan_ensemble.py (n_ens 32): original, reconstruction and 32 perturbed views, or
    8 renders × 4 tensor transforms = 32 combined views; ImageEnsemble (n_ens 32): the original
    + 31 augmented copies. The notebook resamples 31 of the 33 GAN columns (reconstruction + 32)
    and 32 of the 32 image columns (16 + 16 with crops)."""
    from ganviews.ensemble.paper import PaperProtocol
    from ganviews.views.render import _combined_views

    cfg = _config(domain).views
    assert (cfg.perturbed_views, PRESETS[DOMAINS[domain][3]].perturbed_views) == (32, 32)
    # data_cars.py: the raw photo (imval / imcrop at 256) is view 0 and the crops' source
    source = ("photo", 256) if domain == "cars" else ("aligned", 256)
    assert (cfg.original_source, cfg.photo_size) == source
    preset = PRESETS[DOMAINS[domain][3]]  # `ganviews render --preset cars` classifies the photo too
    assert (preset.original_source, preset.photo_size) == source
    sizes = {g.kind: g.num_views for g in view_groups(cfg)}
    assert sizes == {"gan": 34, "combined": 34, "image": 32}  # views 0, 1, 2..33 / 0, 1..31
    gan_columns, image_columns = sizes["gan"] - 1, sizes["image"]
    assert (gan_columns, image_columns) == (33, 32)
    renders = {}  # combined view → (render, jitter)
    for v in range(2, 34):
        for combined, jitter in _combined_views(v, cfg):
            renders[combined] = (v, jitter)
    assert sorted(renders) == list(range(2, 34))  # 32 combined views, each made once
    assert sorted({r for r, _ in renders.values()}) == list(range(2, 10))  # from 8 renders
    assert sorted({j for _, j in renders.values()}) == [0, 1, 2, 3]  # × 4 jitters
    protocol = PaperProtocol()
    assert (protocol.ensemble_size, protocol.combined_size) == (31, 16)


@pytest.mark.parametrize("domain", list(DOMAINS))
def test_preset_is_the_config_s_views_but_for_combined_groups_and_batch(domain):
    """The library presets (`ganviews render --preset …`, `views: {preset: …}`) hold the paper
    config's view settings; they differ only in the combined flag of the GAN groups and the
    forward-pass batch size."""
    from ganviews.core.config import to_dict

    config, preset = to_dict(_config(domain).views), to_dict(PRESETS[DOMAINS[domain][3]])
    for views in (config, preset):
        views.pop("batch_size")
        for g in views["gan"]:
            g.pop("combined")
    assert config == preset


def test_cars_preset_keeps_the_photo_refusals():
    """`views: {preset: cars}` expands to original_source photo: with a corruptions section it is
    refused at load (a condition has no photo); `original_source: aligned` on top is accepted."""
    data = load_yaml(CONFIGS / "cars.yaml")
    data["views"] = {"preset": "cars"}
    data["corruptions"] = {"conditions": [{"kind": "jpeg", "quality": 20}]}
    with pytest.raises(ConfigError, match=r"corruptions: the conditions corrupt the aligned"):
        load_pipeline_config(data, base_dir=CONFIGS)
    data["views"] = {"preset": "cars", "original_source": "aligned"}
    assert load_pipeline_config(data, base_dir=CONFIGS).views.original_source == "aligned"


@pytest.mark.parametrize("domain", ["cars", "cats"])
def test_eq8_real_side_follows_the_source_of_view_0(domain):
    """The commented classifier_training block, enabled: for cars the real side of Eq. 8 reads
    the raw photo (real_source follows views.original_source: photo, photo_size 256), GAN images
    their box between the bands; cats keep the aligned frame and the 224 window."""
    import itertools

    from tasks.pipeline_config import training_views
    from tasks.train_classifier import pipeline_arguments

    lines = (CONFIGS / f"{domain}.yaml").read_text().splitlines()
    start = lines.index("# classifier_training:")
    rest = itertools.takewhile(lambda ln: ln.startswith("#  "), lines[start + 1 :])
    data = load_yaml(CONFIGS / f"{domain}.yaml")
    import yaml

    data.update(yaml.safe_load("\n".join(ln[2:] for ln in [lines[start], *rest])))
    data["data"]["splits"] = ["train", "val", "test"]  # as the block's comment says
    data["models"]["classifiers"][data["classifier_training"]["name"]] = {
        "path": "../checkpoints/classifiers/mine.safetensors",
        "task": "label",
    }
    cfg = load_pipeline_config(data, base_dir=CONFIGS)
    got = training_views(cfg)
    photo = domain == "cars"
    assert (got.source, got.resized_crop) == ("views", (0.8, 1.0))
    assert (got.real_source, got.photo) == (("photo", 256) if photo else ("aligned", None))
    assert got.crop_window == ((1.0, 1.0) if photo else (0.875, 0.875))
    args = pipeline_arguments(cfg)
    assert args["views"] == got and args["image_root"] == cfg.image_root
    if photo:  # a GAN mixture from the photo needs the crop that makes its windows
        data["classifier_training"]["views"].pop("resized_crop")
        with pytest.raises(ConfigError, match=r"classifier_training.views.resized_crop: null"):
            load_pipeline_config(data, base_dir=CONFIGS)


def test_domain_specific_alignment():
    cars = _config("cars").align
    assert cars.object_scale == "width" and cars.frame_size() == (512, 384) and cars.fill == 0.0
    cats = _config("cats").align
    assert (
        cats.object_scale == "bbox"
        and cats.object_without_bbox == "reject"
        and cats.frame_size() == (256, 256)
    )
    faces = _config("celebahq").align
    assert faces == AlignConfig(mode="none", resolution=1024)


def test_classifiers_per_domain():
    faces = _config("celebahq").models.classifiers
    assert sorted(faces) == sorted(CELEBA_ATTRIBUTES) and len(faces) == 40
    assert all(ref.task == name for name, ref in faces.items())
    assert all(
        ref.path.parts[-3:] == ("celebahq", name, "net_best.pth") for name, ref in faces.items()
    )
    for domain, dirs in (
        ("cars", {"imageclassifier", "latentclassifier_stylemix_fine"}),
        ("cats", {"imageclassifier", "latentclassifier_stylemix_coarse"}),
    ):
        refs = _config(domain).models.classifiers
        assert {ref.path.parent.name for ref in refs.values()} == dirs
        assert {ref.task for ref in refs.values()} == {"label"}  # the adapters' label column


# ----------------------------------------------------------------------------- missing files


@pytest.fixture
def relocated(tmp_path, monkeypatch):
    """Each domain config copied to an empty tree: every checkpoint path points at nothing."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "configs").mkdir()

    def load(domain: str) -> PipelineConfig:
        dst = tmp_path / "configs" / DOMAINS[domain][0]
        shutil.copy(CONFIGS / DOMAINS[domain][0], dst)
        return load_pipeline_config(dst)

    return load


@pytest.mark.parametrize("domain", list(DOMAINS))
def test_missing_generator_names_the_file(relocated, domain):
    from ganviews.stylegan.generator import load_generator

    cfg = relocated(domain)
    assert not cfg.models.generator.exists()
    with pytest.raises(CheckpointError) as err:
        load_generator(cfg.models.generator)
    msg = str(err.value)
    assert (
        str(cfg.models.generator) in msg
        and "not found" in msg
        and "put the weights file there" in msg
    )


@pytest.mark.parametrize("domain", list(DOMAINS))
def test_pipeline_file_check_lists_every_missing_input(relocated, domain):
    from tasks.pipeline_config import check_files

    cfg = relocated(domain)
    with pytest.raises(ConfigError) as err:
        check_files(cfg, STAGES)
    lines = str(err.value).splitlines()
    assert f"models.generator: {cfg.models.generator} not found" in lines
    assert f"data.manifest: {cfg.data.manifest} not found" in lines
    for name, ref in cfg.models.classifiers.items():
        assert f"models.classifiers.{name}.path: {ref.path} not found" in lines
    encoder = [line for line in lines if line.startswith("models.encoder")]
    assert encoder == [
        f"models.encoder: {cfg.models.encoder} not found (put the authors' released RGBM encoder "
        "for this generator there, sgan_encoders_<ffhq|car|cat>_RGBM_model_initial.pth.tar, "
        "docs/quickstart.md; or name a .safetensors file and set encoder_training.enabled: true "
        "to train one)"
    ]
    assert lines[-1] == "(put the files there or fix the paths in the config)"


def test_missing_encoder_classifier_and_lpips_weights_say_what_to_do(relocated):
    from ganviews.classifiers.checkpoints import load_classifier
    from ganviews.inversion.encoder import load_encoder
    from ganviews.inversion.perceptual import load_perceptual

    cfg = relocated("cars")
    with pytest.raises(CheckpointError, match="train-encoder") as err:
        load_encoder(cfg.models.encoder)
    assert str(cfg.models.encoder) in str(err.value)
    ref = cfg.models.classifiers["car-stylemix-fine"]
    with pytest.raises(CheckpointError) as err:
        load_classifier(ref.path)
    assert str(ref.path) in str(err.value) and "put the weights file there" in str(err.value)
    with pytest.raises(CheckpointError) as err:
        load_perceptual(cfg.invert.lpips_net, weights_dir=cfg.models.lpips_weights_dir)
    msg = str(err.value)
    assert "alexnet-owt-7be5be79.pth" in msg and str(cfg.models.lpips_weights_dir) in msg
    assert "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth" in msg


# ----------------------------------------------------------------------------- official classifier files

# The sidecar YAMLs docs/quickstart.md tells the user to write next to the released net_best.pth files.
SIDECARS = {
    "car": "task: label\nclass_names: [SUV, Sedan, Cab]\npreprocessing: car\n",
    "cat": (
        "task: label\nclass_names: [Abyssinian, Bengal, Birman, Bombay, British_Shorthair, Egyptian_Mau,\n"
        "  Maine_Coon, Persian, Ragdoll, Russian_Blue, Siamese, Sphynx]\npreprocessing: cat\n"
    ),
}


@pytest.mark.parametrize(("kind", "classes", "side"), [("car", 3, 512), ("cat", 12, 256)])
def test_released_classifier_layout_loads_with_the_documented_sidecar(
    tmp_path, kind, classes, side
):
    import torch
    import torchvision

    from ganviews.classifiers.checkpoints import load_classifier
    from ganviews.classifiers.model import PREPROCESSING_PRESETS

    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=classes).eval()
    folder = tmp_path / kind / "imageclassifier"
    folder.mkdir(parents=True)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    # the official util.make_checkpoint layout
    torch.save(
        {
            "state_dict": net.state_dict(),
            "optimizer": opt.state_dict(),
            "epoch": 7,
            "valacc": torch.tensor(91.5),
        },
        folder / "net_best.pth",
    )
    with pytest.raises(CheckpointError, match="does not record its preprocessing"):
        load_classifier(folder / "net_best.pth")
    (folder / "net_best.pth.yaml").write_text(SIDECARS[kind])
    C = load_classifier(folder / "net_best.pth")
    assert (C.arch, C.num_outputs, C.task, len(C.class_names)) == (
        "resnet18",
        classes,
        "label",
        classes,
    )
    assert C.config.preprocessing == PREPROCESSING_PRESETS[kind]
    x = torch.rand(2, 3, side, side) * 2 - 1  # a render at the generator's resolution
    with torch.no_grad():
        np.testing.assert_allclose(C(x).numpy(), net(C.preprocess(x)).numpy(), atol=1e-5)
