"""Bring your own classifier: TorchScript files and torchvision architectures by name."""

from __future__ import annotations

import pytest
import torch
import torchvision
import yaml
from torch import nn

from ganviews.classifiers.checkpoints import load_classifier
from ganviews.classifiers.model import ClassifierConfig
from ganviews.core.errors import CheckpointError, ConfigError


def tiny_module(k: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, k),
    ).eval()


def test_torchscript_file_with_a_sidecar(tmp_path):
    module = tiny_module()
    path = tmp_path / "mine.pt"
    torch.jit.save(torch.jit.script(module), str(path))
    sidecar = {"arch": "torchscript", "num_outputs": 3, "task": "kind",
               "preprocessing": {"resize": 16, "crop": 16, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}  # fmt: skip
    (tmp_path / "mine.pt.yaml").write_text(yaml.safe_dump(sidecar))
    C = load_classifier(path)
    assert (C.arch, C.num_outputs, C.task) == ("torchscript", 3, "kind")
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    expected = module(C.preprocess(images))  # the module sees the declared preprocessing
    torch.testing.assert_close(C(images), expected)
    # mean = std = 0.5 on [0, 1] inputs is the identity on [-1, 1] images
    x = torch.nn.functional.interpolate(images, size=16, mode="bilinear", antialias=True)
    torch.testing.assert_close(C.preprocess(images), x, atol=1e-5, rtol=0)
    (tmp_path / "mine.pt.yaml").write_text(yaml.safe_dump({**sidecar, "num_outputs": 5}))
    with pytest.raises(CheckpointError, match=r"returns \[1, 3\] for one image, expected \[1, 5\]"):
        load_classifier(path)
    (tmp_path / "mine.pt.yaml").write_text(yaml.safe_dump({**sidecar, "arch": "resnet18"}))
    with pytest.raises(
        CheckpointError, match="a TorchScript file, but its config says arch 'resnet18'"
    ):
        load_classifier(path)


def test_torchvision_architecture_by_name_with_local_weights(tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(weights=None, num_classes=2).eval()
    path = tmp_path / "mnv3.pth"
    torch.save(model.state_dict(), path)
    config = {"arch": "torchvision.mobilenet_v3_small", "num_outputs": 2, "task": "label",
              "preprocessing": {"resize": 32}}  # fmt: skip
    C = load_classifier(path, config=config)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(C(images), model(C.preprocess(images)))
    (tmp_path / "mnv3.yaml").write_text(yaml.safe_dump(config))  # the sidecar works the same
    torch.testing.assert_close(load_classifier(path)(images), model(C.preprocess(images)))
    with pytest.raises(
        ConfigError, match=r"arch: 'torchvision.resnet9000': torchvision has no model 'resnet9000'"
    ):
        ClassifierConfig(arch="torchvision.resnet9000", num_outputs=2)
    with pytest.raises(CheckpointError, match="weights do not fit torchvision.mobilenet_v3_large"):
        load_classifier(path, config={**config, "arch": "torchvision.mobilenet_v3_large"})


def test_timm_architecture_by_name_with_local_weights(tmp_path):
    """timm.<name>: built with pretrained=False (nothing downloaded), local weights loaded strictly."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=3).eval()
    path = tmp_path / "tiny.safetensors"  # a plain safetensors state dict, as timm / HF hubs ship
    from safetensors.torch import save_file

    save_file(model.state_dict(), str(path))
    config = {"arch": "timm.test_resnet", "num_outputs": 3, "task": "kind",
              "preprocessing": {"resize": 32}}  # fmt: skip
    C = load_classifier(path, config=config)
    assert (C.arch, C.num_outputs) == ("timm.test_resnet", 3)
    images = torch.rand(2, 3, 40, 40) * 2 - 1
    torch.testing.assert_close(C(images), model(C.preprocess(images)))
    with pytest.raises(ConfigError, match=r"arch: 'timm.test_resnetzz': timm has no model"):
        ClassifierConfig(arch="timm.test_resnetzz", num_outputs=2)
    with pytest.raises(CheckpointError, match="weights do not fit timm.test_vit"):
        load_classifier(path, config={**config, "arch": "timm.test_vit"})
