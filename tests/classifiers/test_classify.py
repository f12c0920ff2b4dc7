"""Classifiers: checkpoint formats, architecture inference, on-device preprocessing numerics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision
import yaml
from PIL import Image
from safetensors import safe_open
from torchvision import transforms
from torchvision.transforms import functional as TF

from ganviews.classifiers.checkpoints import (
    infer_architecture,
    load_backbone_weights,
    load_classifier,
    save_classifier,
)
from ganviews.classifiers.model import (
    ARCHITECTURES,
    PREPROCESSING_PRESETS,
    Classifier,
    ClassifierConfig,
    Preprocessing,
    build_classifier,
)
from ganviews.core.errors import CheckpointError, ConfigError
from ganviews.core.runtime import file_sha256

SMALL_PRE = {"resize": 40, "crop": 32, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def _resnet18(num_outputs: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = torchvision.models.resnet18(num_classes=num_outputs)
    # Non-trivial BN statistics, so a loader that drops buffers is caught.
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return net.eval()


def _images(n: int = 3, h: int = 96, w: int = 80, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, h, w, generator=g) * 2 - 1  # [N, 3, H, W] in [-1, 1]


def _reference_input(x: torch.Tensor, pre: dict) -> torch.Tensor:
    """torchvision's own tensor transforms: Resize(int) → CenterCrop → ToTensor-range → Normalize."""
    x = TF.resize((x + 1) / 2, pre["resize"], antialias=True)
    x = TF.center_crop(x, pre["crop"])
    return TF.normalize(x, pre["mean"], pre["std"])


@pytest.mark.parametrize(
    ("num_outputs", "wrapping"),
    [(1, "plain"), (2, "module"), (5, "state_dict"), (1, "model"), (2, "plain"), (5, "module")],
)
def test_torchvision_checkpoint_gives_the_in_memory_logits(tmp_path, num_outputs, wrapping):
    net = _resnet18(num_outputs)
    state = net.state_dict()
    if wrapping == "module":  # DataParallel prefix
        state = {f"module.{k}": v for k, v in state.items()}
    obj = (
        {wrapping: state, "epoch": 7, "valacc": 0.9}
        if wrapping in ("state_dict", "model")
        else state
    )
    path = tmp_path / "net_best.pth"
    torch.save(obj, path)

    C = load_classifier(path, config={"preprocessing": SMALL_PRE, "task": "attr"})
    assert (C.arch, C.num_outputs, C.task) == ("resnet18", num_outputs, "attr")
    assert not C.training and not any(p.requires_grad for p in C.parameters())
    assert C.sha256 == file_sha256(path)

    x = _images(2)
    with torch.no_grad():
        want = net(_reference_input(x, SMALL_PRE))  # [N, K]
        got = C(x)
    assert got.shape == (2, num_outputs)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_architecture_is_inferred_from_keys_for_every_registered_arch():
    for arch in ARCHITECTURES:
        with torch.device("meta"):
            model = ARCHITECTURES[arch].build(4, 16)
        state = model.state_dict()
        assert infer_architecture(state) == (arch, 4, 16 if arch == "smallcnn" else 32)


def test_old_checkpoints_without_num_batches_tracked_load(tmp_path):
    net = _resnet18(3)
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old.pth")
    C = load_classifier(tmp_path / "old.pth", config={"preprocessing": {"crop": 40}})
    x = _images(2, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(C(x), net(TF.center_crop(x, 40)), atol=1e-5, rtol=1e-5)


def test_sidecar_yaml_supplies_preprocessing(tmp_path):
    net = _resnet18(3)
    torch.save(net.state_dict(), tmp_path / "cars.pth")
    (tmp_path / "cars.yaml").write_text(
        yaml.safe_dump(
            {"task": "car_type", "class_names": ["SUV", "Sedan", "Cab"], "preprocessing": "car"}
        )
    )
    C = load_classifier(tmp_path / "cars.pth")
    assert C.class_names == ("SUV", "Sedan", "Cab")
    assert C.config.preprocessing == PREPROCESSING_PRESETS["car"]
    assert C.name == "car_type-resnet18"


def test_own_format_round_trip(tmp_path):
    cfg = ClassifierConfig(
        arch="smallcnn",
        num_outputs=3,
        task="digit",
        class_names=("a", "b", "c"),
        name="demo-digits",
        width=8,
        preprocessing=Preprocessing(
            resize=24, crop=20, input_range="signed", mean=(0.1, 0.0, -0.1)
        ),
    )
    torch.manual_seed(0)
    C = build_classifier(cfg)
    C.train()
    C(_images(8, 32, 32))  # move the BN running statistics away from their init
    C.eval()
    path = save_classifier(C, tmp_path / "c.safetensors")
    assert C.sha256 == file_sha256(path)
    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
    assert meta["format"] == "ganviews.classifier"
    assert json.loads(meta["config"])["preprocessing"]["crop"] == 20

    C2 = load_classifier(path)
    assert C2.config == cfg
    assert C2.sha256 == C.sha256 and C2.name == "demo-digits"
    x = _images(4, 40, 36)
    with torch.no_grad():
        torch.testing.assert_close(C2(x), C(x), atol=0, rtol=0)


def test_preprocessing_matches_torchvision_pil_pipeline():
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
    pil = Image.fromarray(small).resize((200, 150), Image.BICUBIC)  # smooth content, 150 × 200
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    ref_tf = transforms.Compose(
        [
            transforms.Resize(96),
            transforms.CenterCrop(80),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )
    want = ref_tf(pil)  # [3, 80, 80]

    cfg = ClassifierConfig(
        arch="smallcnn",
        num_outputs=2,
        width=4,
        preprocessing=Preprocessing(resize=96, crop=80, mean=mean, std=std),
    )
    C = build_classifier(cfg).eval()
    x = (
        torch.from_numpy(np.array(pil)).permute(2, 0, 1)[None].float() / 127.5 - 1
    )  # [1, 3, 150, 200]
    got = C.preprocess(x)[0]
    assert got.shape == want.shape == (3, 80, 80)
    diff = (got - want).abs()
    # PIL resizes in 8 bits: rounding (≤ 0.5/255) and its fixed-point filter, scaled by 1/std.
    assert diff.max().item() < 2.5 / 255 / min(std)
    assert diff.mean().item() < 0.6 / 255 / min(std)


def test_trim_and_box_downsample_are_exact():
    x = _images(2, 64, 64)
    car = Preprocessing(
        trim=(0.125, 0.125, 0.0, 0.0), resize=24, crop=24, mean=(0.5,) * 3, std=(0.5,) * 3
    )
    C = build_classifier(
        {"arch": "smallcnn", "num_outputs": 3, "width": 4, "preprocessing": car}
    ).eval()
    want = TF.center_crop(TF.resize(x[..., 8:56, :], 24, antialias=True), 24)
    torch.testing.assert_close(C.preprocess(x), want, atol=1e-6, rtol=0)

    face = build_classifier(
        {"arch": "smallcnn", "num_outputs": 1, "width": 4, "preprocessing": "celebahq"}
    )
    big = _images(1, 1024, 1024)
    box = big.reshape(1, 3, 256, 4, 256, 4).mean(dim=(3, 5))  # the official 4×4 box filter
    torch.testing.assert_close(face.preprocess(big), box, atol=1e-6, rtol=0)


def test_preprocessing_clamps_and_is_differentiable():
    C = build_classifier(
        {"arch": "smallcnn", "num_outputs": 2, "width": 4, "preprocessing": {"resize": 16}}
    )
    x = (_images(2, 32, 32) * 3).requires_grad_(True)  # overshooting GAN output
    y = C.preprocess(x)
    assert y.min() >= -1 - 1e-6 and y.max() <= 1 + 1e-6  # mean = std = 0.5 maps [-1, 1] onto itself
    C(x).sum().backward()
    inside = x.detach().abs() < 1
    assert x.grad is not None and x.grad[inside].abs().sum() > 0
    assert (x.grad[~inside] == 0).all()


def test_probabilities_and_predictions():
    C = build_classifier({"arch": "smallcnn", "num_outputs": 1, "width": 4})
    p = C.probabilities(torch.tensor([[0.0], [2.0]]))
    torch.testing.assert_close(
        p,
        torch.tensor(
            [[0.5, 0.5], [1 - torch.sigmoid(torch.tensor(2.0)), torch.sigmoid(torch.tensor(2.0))]]
        ),
    )
    C3 = build_classifier({"arch": "smallcnn", "num_outputs": 3, "width": 4})
    torch.testing.assert_close(C3.probabilities(torch.zeros(1, 3)), torch.full((1, 3), 1 / 3))


def test_init_from_imagenet_style_weights_keeps_a_fresh_head(tmp_path):
    donor = _resnet18(1000)
    torch.save(donor.state_dict(), tmp_path / "resnet18-imagenet.pth")
    torch.manual_seed(3)
    C = build_classifier({"arch": "resnet18", "num_outputs": 3})
    head_before = C.backbone.fc.weight.detach().clone()
    fresh = load_backbone_weights(C, tmp_path / "resnet18-imagenet.pth")
    assert fresh == ["fc.weight", "fc.bias"]
    assert torch.equal(C.backbone.layer3[1].conv2.weight, donor.layer3[1].conv2.weight)
    assert torch.equal(C.backbone.fc.weight, head_before)

    torch.save(_resnet18(3).state_dict() | {"extra.weight": torch.zeros(1)}, tmp_path / "odd.pth")
    with pytest.raises(
        CheckpointError, match=r"odd\.pth: cannot initialise resnet18 .*extra\.weight"
    ):
        load_backbone_weights(C, tmp_path / "odd.pth")
    # one key check (weights_io.state_mismatch): missing, and wrong shapes with both shapes
    partial = _resnet18(3).state_dict()
    del partial["layer1.0.conv1.weight"]
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(
        CheckpointError, match=r"missing \['layer1\.0\.conv1\.weight'\], unexpected \[\]"
    ):
        load_backbone_weights(C, tmp_path / "partial.pth")
    narrow = _resnet18(3).state_dict() | {"conv1.weight": torch.zeros(32, 3, 7, 7)}
    torch.save(narrow, tmp_path / "narrow.pth")
    with pytest.raises(
        CheckpointError,
        match=r"shape mismatches \['conv1\.weight: \[32, 3, 7, 7\] vs \[64, 3, 7, 7\]'\]",
    ):
        load_backbone_weights(C, tmp_path / "narrow.pth")


# ---------------------------------------------------------------------------- failures


def test_wrong_keys_name_the_file_and_the_closest_architecture(tmp_path):
    state = _resnet18(2).state_dict()
    state.pop("layer4.1.conv2.weight")
    state["layer9.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError) as err:
        load_classifier(tmp_path / "broken.pth", config={})
    msg = str(err.value)
    assert "broken.pth" in msg and "closest is 'resnet18'" in msg
    assert "layer4.1.conv2.weight" in msg and "layer9.weight" in msg
    assert "resnet50" in msg and "smallcnn" in msg  # the registry listing


def test_no_head_is_named(tmp_path):
    torch.save({"conv.weight": torch.zeros(2, 3, 3, 3)}, tmp_path / "headless.pth")
    with pytest.raises(
        CheckpointError,
        match=r"headless\.pth: no classifier head \(4x4\.dense1\.linear\.weight, fc\.weight\)",
    ):
        load_classifier(tmp_path / "headless.pth", config={})


def test_config_disagreeing_with_the_weights(tmp_path):
    torch.save(_resnet18(3).state_dict(), tmp_path / "three.pth")
    with pytest.raises(
        CheckpointError, match=r"three\.pth: config says num_outputs=2 .* has 3 output"
    ):
        load_classifier(tmp_path / "three.pth", config={"num_outputs": 2, "preprocessing": "cat"})
    with pytest.raises(
        CheckpointError, match=r"three\.pth: config says arch='resnet50' .* match 'resnet18'"
    ):
        load_classifier(tmp_path / "three.pth", config={"arch": "resnet50", "preprocessing": "cat"})


def test_disallowed_pickle_global_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"state_dict": _resnet18(2).state_dict(), "hook": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match=r"evil\.pth: refused to unpickle .*open"):
        load_classifier(tmp_path / "evil.pth", config={"preprocessing": "cat"})
    assert not marker.exists()


def test_missing_unreadable_and_unconfigured_files(tmp_path):
    with pytest.raises(CheckpointError, match=r"classifier checkpoint not found: .*nope\.pth"):
        load_classifier(tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=r"junk\.pth: not a readable torch checkpoint"):
        load_classifier(tmp_path / "junk.pth", config={})
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match=r"list\.pth: expected a state dict"):
        load_classifier(tmp_path / "list.pth", config={})
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "nostate.pth")
    with pytest.raises(
        CheckpointError,
        match=r"nostate\.pth: no state dict found: top-level keys \['epoch', 'lr'\]",
    ):
        load_classifier(tmp_path / "nostate.pth", config={})
    torch.save(_resnet18(2).state_dict(), tmp_path / "bare.pth")
    with pytest.raises(
        CheckpointError,
        match=r"bare\.pth: the checkpoint does not record its preprocessing.*bare\.yaml",
    ) as info:
        load_classifier(tmp_path / "bare.pth")
    assert "--classifier-config" not in str(info.value)  # an option that never existed
    assert "load_classifier(..., config=)" in str(info.value)


def test_config_errors_name_the_key():
    with pytest.raises(
        ConfigError,
        match=r"arch: 'vgg16' is not known \(allowed: resnet18, .*smallcnn, celebahq_attribute\)",
    ):
        ClassifierConfig(arch="vgg16", num_outputs=2)
    with pytest.raises(ConfigError, match=r"class_names: 2 names .* num_outputs=3"):
        ClassifierConfig(arch="resnet18", num_outputs=3, class_names=("a", "b"))
    with pytest.raises(ConfigError, match=r"preprocessing: unknown preset 'dogs'"):
        build_classifier({"arch": "resnet18", "num_outputs": 2, "preprocessing": "dogs"})
    with pytest.raises(ConfigError, match=r"preprocessing\.cropp: unknown key"):
        build_classifier({"arch": "resnet18", "num_outputs": 2, "preprocessing": {"cropp": 3}})
    with pytest.raises(ConfigError, match=r"name: 'a/b'"):
        ClassifierConfig(arch="resnet18", num_outputs=2, name="a/b")
    C = Classifier(ClassifierConfig(arch="smallcnn", num_outputs=2, width=4))
    with pytest.raises(ValueError, match=r"images: expected shape \[N, 3, H, W\].*\[2, 1, 8, 8\]"):
        C(torch.zeros(2, 1, 8, 8))
    with pytest.raises(TypeError, match="float tensor"):
        C(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))


def test_loaded_classifier_moves_preprocessing_with_it_and_runs_in_float64(tmp_path):
    C = build_classifier(
        {"arch": "smallcnn", "num_outputs": 2, "width": 4, "preprocessing": "imagenet"}
    ).eval()
    path = save_classifier(C, tmp_path / "c.safetensors")
    C64 = load_classifier(path).double()
    x = _images(2, 300, 260).double()
    out = C64(x)
    assert out.dtype == torch.float64
    with torch.no_grad():
        torch.testing.assert_close(out.float(), C(x.float()), atol=1e-4, rtol=1e-4)


def test_official_attribute_classifier_layout_loads_with_numpy_metadata(tmp_path):
    """The official CelebA-HQ attribute nets: keys/shapes of their layout, numpy scalars beside them."""
    torch.manual_seed(0)
    donor = build_classifier({"arch": "celebahq_attribute", "num_outputs": 1}).backbone
    state = donor.state_dict()
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert len(shapes) == 33 and shapes["lod_in"] == ()
    assert shapes["fromrgb_lod0.conv.conv.weight"] == (64, 3, 1, 1)
    assert shapes["256x256.conv1.conv.weight"] == (128, 64, 3, 3)
    assert shapes["16x16.conv1.wscale.b"] == (512,)
    assert shapes["4x4.dense0.linear.weight"] == (512, 8192)
    assert shapes["4x4.dense1.linear.weight"] == (1, 512)
    torch.save(
        {"state_dict": state, "epoch": np.int64(12), "valacc": np.float64(0.93)},
        tmp_path / "net_best.pth",
    )
    C = load_classifier(
        tmp_path / "net_best.pth", config={"preprocessing": "celebahq", "task": "Smiling"}
    )
    assert (C.arch, C.num_outputs) == ("celebahq_attribute", 1)
    for (k, a), b in zip(state.items(), C.backbone.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    # (A forward pass at 256² takes seconds on CPU; its agreement with the official code is
    # recorded in docs/classifiers.md.)
    with pytest.raises(ValueError, match=r"celebahq_attribute: needs 256×256 inputs"):
        donor(torch.zeros(1, 3, 128, 128))


def test_attribute_classifier_probability_is_the_authors_softmax_of_l_and_minus_l():
    """networks/classifiers/attribute_utils.py (get_softmaxed): P(present) = softmax([l, −l])[1].

    Our logit is −2l, so sigmoid(logit) — the probability every binary classifier here goes
    through (Classifier.probabilities, ganviews.ensemble.scores.probabilities) — equals it.
    """
    from ganviews.ensemble.scores import probabilities

    torch.set_num_threads(1)
    torch.manual_seed(3)
    C = build_classifier(
        {"arch": "celebahq_attribute", "num_outputs": 1, "preprocessing": "celebahq"}
    )
    raw = {}
    C.backbone.get_submodule("4x4.dense1").register_forward_hook(lambda m, i, o: raw.update(l=o))
    x = torch.rand(1, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        logit = C(x)  # [1, 1]
    l = raw["l"]  # [1, 1], the official net's output
    official = torch.softmax(torch.cat([l, -l], dim=1), dim=1)[:, 1]  # [1]
    torch.testing.assert_close(logit, -2.0 * l)
    torch.testing.assert_close(C.probabilities(logit)[:, 1], official)
    np.testing.assert_allclose(
        probabilities(logit.double().numpy())[:, 1], official.double(), rtol=1e-6
    )
    assert not torch.allclose(torch.sigmoid(-l[:, 0]), official)  # the old sigmoid(−l) differs


def test_car_preset_is_the_official_gan_path_256x342_without_antialias_or_clamp():
    """data/data_cars.py TensorBaseTransform: image[:, :, 64:-64, :] of the 512² render,
    torch.nn.Upsample((256, 342), mode='bilinear'), centre crop 256 (offset 43); no clamp."""
    torch.set_num_threads(1)
    C = build_classifier({"arch": "smallcnn", "num_outputs": 3, "width": 4, "preprocessing": "car"})
    render = _images(2, 512, 512) * 1.3  # GAN outputs overshoot [-1, 1]
    official = torch.nn.Upsample((256, 342), mode="bilinear")(render[:, :, 64:-64, :])
    official = official[..., :, 43 : 43 + 256]
    with torch.no_grad():
        got = C.preprocess(render)
    torch.testing.assert_close(got, official, atol=1e-6, rtol=0)
    assert got.abs().max() > 1.0  # not clamped
    with pytest.raises(ConfigError, match=r"preprocessing.size: \[256\]"):
        Preprocessing(size=[256])
