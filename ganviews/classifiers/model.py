"""Classifiers C that score images and GAN views (paper Sec. 3.3: C(x) and C(G(w̃))).

A :class:`Classifier` is a backbone (a torchvision ResNet, or a small CNN for tiny domains)
plus the preprocessing that belongs to it, applied on the device: images arrive as float
tensors ``[N, 3, H, W]`` in [-1, 1] at *any* resolution (a real aligned image, a GAN's raw
output, a perturbed view) and are clamped, trimmed, resized, centre-cropped and normalised
in torch, batched and differentiable, before the backbone. So the same object scores real
images and views rendered on the GPU, with no round trip through PIL or disk.

Outputs are raw logits ``[N, K]``: K = 1 is a sigmoid binary classifier, K = 2 a two-logit
binary classifier, K ≥ 3 multi-class. Probabilities are computed at analysis time.

Weights come from two kinds of file:

* the project's own format: safetensors holding the backbone's state dict, with the
  :class:`ClassifierConfig` as JSON in the file's metadata (:func:`save_classifier`);
* plain torchvision ResNet checkpoints written by ``torch.save`` (a state dict, or a dict
  holding it under ``state_dict`` / ``model`` / ``model_state_dict`` / ``net``, keys possibly
  prefixed ``module.`` by DataParallel), or a safetensors file without our metadata. These
  are read with ``torch.load(weights_only=True)``; the architecture and the number of
  outputs are inferred from the keys and shapes, and the preprocessing, which no such file
  records, comes from a config (argument, or a YAML file next to the checkpoint).

Facts about the paper's classifiers (official repository chail/gan-ensembling): cars
(SUV/Sedan/Cab) and cats (12 breeds) use torchvision ResNet-18 on inputs normalised with
mean = std = 0.5 (i.e. the [-1, 1] range); cars: the 512² GAN frame holds a 512×384 image
between black bands, which are trimmed before resizing the shorter side to 256 and
centre-cropping 256; cats: resize 256, centre crop 224. The official CelebA-HQ attribute
classifiers are not ResNets (a progressive-GAN-discriminator-like net on 256² box-downsampled
inputs); this project trains ResNet attribute classifiers instead (docs/classifiers.md).
"""

from __future__ import annotations

import functools
import logging
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from ganviews.classifiers import external
from ganviews.classifiers.resampling import (
    center_crop,
    check_images,
    resize_shorter,
    resize_to,
    trim,
)
from ganviews.core.config import from_dict, load_yaml, to_dict
from ganviews.core.errors import CheckpointError, ConfigError
from ganviews.core.weights_io import weights_sha256

log = logging.getLogger(__name__)

FORMAT_NAME = "ganviews.classifier"  # value of the "format" metadata key in our safetensors files
FORMAT_VERSION = "1"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")  # classifier names become Parquet partition values


# ----------------------------------------------------------------------------- configuration

# Caps on declared sizes, so a config (a sidecar next to a downloaded file, say) cannot make
# a load or a forward pass allocate without bound before the weights are compared with it.
MAX_SIDE = 4096  # preprocessing resize / size / crop, pixels (the paper's inputs are ≤ 512)
MAX_OUTPUTS = 100_000  # classes (ImageNet-21k has 21,843)
MAX_WIDTH = 1024  # smallcnn first-stage channels (the default is 32)


@dataclass(frozen=True)
class Preprocessing:
    """How images in [-1, 1] become the backbone's input; applied in this order."""

    clamp: bool = True  # clamp to [-1, 1] first, as an 8-bit image would be (GAN outputs overshoot)
    trim: tuple[float, float, float, float] = (
        0.0,
        0.0,
        0.0,
        0.0,
    )  # fraction of H/W cut from top, bottom, left, right
    resize: int | None = (
        None  # shorter side resized to this many pixels (torchvision Resize(int)); None keeps the size
    )
    size: tuple[int, int] | None = (
        None  # resize to exactly (h, w) instead of `resize` (official car GAN path: (256, 342))
    )
    interpolation: Literal["bilinear", "bicubic", "area", "nearest"] = (
        "bilinear"  # resize filter ("area" = box filter)
    )
    antialias: bool = True  # low-pass when downsampling, like PIL (bilinear/bicubic only)
    crop: int | None = None  # centre crop to crop × crop after resizing; None = no crop
    input_range: Literal["unit", "signed"] = (
        "unit"  # range mean/std refer to: [0, 1] (ToTensor convention) or [-1, 1]
    )
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)  # per-channel mean subtracted (RGB)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)  # per-channel std divided by (RGB)

    def __post_init__(self) -> None:
        if len(self.trim) != 4 or any(not 0.0 <= t < 0.5 for t in self.trim):
            raise ConfigError(
                f"preprocessing.trim: {self.trim!r}; expected 4 fractions in [0, 0.5)"
            )
        if self.size is not None and (
            len(self.size) != 2 or any(not isinstance(v, int) or v < 1 for v in self.size)
        ):
            raise ConfigError(
                f"preprocessing.size: {self.size!r}; expected [height, width] positive integers or null"
            )
        if self.size is not None and max(self.size) > MAX_SIDE:
            raise ConfigError(
                f"preprocessing.size: {list(self.size)!r}; each side at most {MAX_SIDE} pixels"
            )
        for key in ("resize", "crop"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or not 1 <= value <= MAX_SIDE):
                raise ConfigError(
                    f"preprocessing.{key}: {value!r}; expected an integer in [1, {MAX_SIDE}] or null"
                )
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ConfigError(
                f"preprocessing.mean/std: need 3 values each, got {self.mean!r} / {self.std!r}"
            )
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"preprocessing.std: {self.std!r}; every value must be > 0")


# Per-domain preprocessing, from the official code (see module docstring) and torchvision.
PREPROCESSING_PRESETS: dict[str, Preprocessing] = {
    "identity": Preprocessing(),  # [-1, 1] as is, at the input's own resolution (the demo domain)
    "celebahq": Preprocessing(
        resize=256, interpolation="area", antialias=False
    ),  # box-downsample to 256²
    # official data/data_cars.py TensorBaseTransform: drop the black bands of 512² (64 rows
    # each), bilinear resize to exactly 256×342 without antialias, no clamp, centre crop 256
    "car": Preprocessing(
        clamp=False, trim=(0.125, 0.125, 0.0, 0.0), size=(256, 342), antialias=False, crop=256
    ),
    # the same with an antialiased shorter-side resize (256×341) and clamping (before the official path)
    "car_antialias": Preprocessing(trim=(0.125, 0.125, 0.0, 0.0), resize=256, crop=256),
    "cat": Preprocessing(resize=256, crop=224),
    "imagenet": Preprocessing(
        resize=256, crop=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
    ),
}


@dataclass(frozen=True)
class ClassifierConfig:
    """Everything that defines a classifier except its weights."""

    # a key of ARCHITECTURES (resnet18/34/50/101/152, wide_resnet50_2, smallcnn, …), or
    # torchscript, torchvision.<builder>, timm.<model> (ganviews.classifiers.external)
    arch: str
    num_outputs: int  # 1 = sigmoid binary, 2 = two-logit binary, K ≥ 3 = K-way softmax
    task: str = ""  # the manifest label column it predicts (e.g. "Smiling", "car_type")
    class_names: tuple[str, ...] = ()  # names of the classes by index; binary: (negative, positive)
    name: str = ""  # name in logit tables; default "<task>-<arch>"
    width: int = 32  # smallcnn only: channels of its first stage (ResNets ignore it)
    preprocessing: Preprocessing = field(default_factory=Preprocessing)  # see Preprocessing

    def __post_init__(self) -> None:
        if external.is_external(self.arch):
            external.check_external_arch(self.arch)
        elif self.arch not in ARCHITECTURES:
            raise ConfigError(
                f"arch: {self.arch!r} is not known (allowed: {', '.join(ARCHITECTURES)}); or "
                "torchscript, torchvision.<any torchvision model>, timm.<any timm model> "
                "(docs/classifiers.md)"
            )
        if not isinstance(self.num_outputs, int) or not 1 <= self.num_outputs <= MAX_OUTPUTS:
            raise ConfigError(
                f"num_outputs: {self.num_outputs!r}; expected an integer in [1, {MAX_OUTPUTS}]"
            )
        classes = max(self.num_outputs, 2)
        if self.class_names and len(self.class_names) != classes:
            raise ConfigError(
                f"class_names: {len(self.class_names)} names {list(self.class_names)} for "
                f"num_outputs={self.num_outputs} (expected {classes} names, or none)"
            )
        if self.name and not _SAFE_NAME.match(self.name):
            raise ConfigError(f"name: {self.name!r}; use letters, digits, '_', '.', '-' only")
        if not isinstance(self.width, int) or not 1 <= self.width <= MAX_WIDTH:
            raise ConfigError(f"width: {self.width!r}; expected an integer in [1, {MAX_WIDTH}]")

    @property
    def display_name(self) -> str:
        """The configured name, else ``<task>-<arch>`` made safe for partition values."""
        if self.name:
            return self.name
        base = f"{self.task}-{self.arch}" if self.task else self.arch
        return re.sub(r"[^A-Za-z0-9_.\-]", "_", base)

    @property
    def num_classes(self) -> int:
        """Number of classes (2 for a single-logit binary classifier)."""
        return max(self.num_outputs, 2)


# ----------------------------------------------------------------------------- architectures


class SmallCNN(nn.Module):
    """A four-stage conv net for tiny domains (e.g. 32² demo digits); keys ``features.*``, ``fc.*``."""

    def __init__(self, num_outputs: int, width: int = 32) -> None:
        super().__init__()
        chans = [3, width, 2 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = []
        for i in range(4):
            stride = 1 if i == 0 else 2
            layers += [
                nn.Conv2d(chans[i], chans[i + 1], 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(chans[i + 1]),
                nn.ReLU(inplace=True),
            ]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(chans[-1], num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # [N, 4w, h, w]
        return self.fc(x.mean(dim=(2, 3)))  # [N, K]


@dataclass(frozen=True)
class Architecture:
    """One registry entry: how to build a backbone with K outputs."""

    build: Callable[[int, int], nn.Module]  # (num_outputs, width) → nn.Module
    description: str  # one line for docs and error messages
    head: str = "fc."  # name prefix of the output layer's tensors
    head_weight: str = "fc.weight"  # its weight [K, features]: K = num_outputs


class _Bias(nn.Module):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.b = nn.Parameter(torch.zeros(size))


class _WScale(nn.Module):
    """Equalised learning rate: a bias-free layer, output × gain/√fan_in, then + ``wscale.b``."""

    def __init__(self, layer: nn.Conv2d | nn.Linear, fan_in: int, out: int, gain: float) -> None:
        super().__init__()
        self.kind = "conv" if isinstance(layer, nn.Conv2d) else "linear"
        self.add_module(self.kind, layer)
        self.wscale = _Bias(out)
        self.scale = gain / math.sqrt(fan_in)
        nn.init.normal_(layer.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = getattr(self, self.kind)(x) * self.scale
        return y + (self.wscale.b.view(1, -1, 1, 1) if y.ndim == 4 else self.wscale.b)


def _wconv(cin: int, cout: int, k: int, gain: float = math.sqrt(2)) -> _WScale:
    return _WScale(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), cin * k * k, cout, gain)


def _wlinear(cin: int, cout: int, gain: float = math.sqrt(2)) -> _WScale:
    return _WScale(nn.Linear(cin, cout, bias=False), cin, cout, gain)


class AttributeNet(nn.Module):
    """The official CelebA-HQ attribute classifier's layout (chail/gan-ensembling), written anew.

    A progressive-GAN-discriminator-like net on 256² inputs: 1×1 from-RGB (64 ch), six
    blocks of two 3×3 equalised-lr convs with 2× average-pool downscaling between the second
    conv and its activation (256 → 4 px; 64…512 ch), then a 3×3 conv, a dense layer of 512 and
    a dense layer of K outputs; leaky ReLU 0.2. The official net's raw output l is *negative*
    when the attribute is present, and the authors' probability of "present" is
    ``softmax([l, −l])[1]`` = sigmoid(−2l) (``networks/classifiers/attribute_utils.py``,
    ``get_softmaxed``). The logit returned here is :attr:`logit_scale` · l = −2l, so that the
    sigmoid every binary classifier here goes through gives exactly the authors' probability
    and logit > 0 means label 1.
    """

    logit_scale = -2.0  # official P(present) = softmax([l, -l])[1] = sigmoid(-2 l)

    def __init__(self, num_outputs: int = 1, width: int = 0) -> None:
        super().__init__()
        nf = {s: min(8192 // 2**s, 512) for s in range(8)}  # channels per stage
        self.register_buffer("lod_in", torch.zeros((), dtype=torch.float32))  # unused (fixed size)
        self.fromrgb_lod0 = nn.Module()
        self.fromrgb_lod0.conv = _wconv(3, nf[7], 1)
        self.block_names = [f"{2**res}x{2**res}" for res in range(8, 2, -1)]  # 256x256 … 8x8
        for res, name in zip(range(8, 2, -1), self.block_names, strict=True):
            block = nn.Module()
            block.conv0 = _wconv(nf[res - 1], nf[res - 1], 3)
            block.conv1 = _wconv(nf[res - 1], nf[res - 2], 3)
            self.add_module(name, block)
        head = nn.Module()
        head.conv = _wconv(nf[1], nf[1], 3)
        head.dense0 = _wlinear(nf[1] * 16, nf[0])
        head.dense1 = _wlinear(nf[0], num_outputs, gain=1.0)
        self.add_module("4x4", head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (256, 256):
            raise ValueError(
                f"celebahq_attribute: needs 256×256 inputs (preset 'celebahq'), got {list(x.shape[-2:])}"
            )
        act = functools.partial(F.leaky_relu, negative_slope=0.2)
        x = act(self.fromrgb_lod0.conv(x))  # [N, 64, 256, 256]
        for name in self.block_names:
            block = getattr(self, name)
            x = act(block.conv0(x))
            x = act(F.avg_pool2d(block.conv1(x), 2))  # conv → bias → downscale → act
        head = getattr(self, "4x4")
        x = act(head.conv(x))  # [N, 512, 4, 4]
        x = act(head.dense0(x.flatten(1)))  # [N, 512]
        return self.logit_scale * head.dense1(x)  # [N, K]


def _torchvision(name: str) -> Callable[[int, int], nn.Module]:
    def build(num_outputs: int, width: int) -> nn.Module:
        return getattr(torchvision.models, name)(weights=None, num_classes=num_outputs)

    return build


ARCHITECTURES: dict[str, Architecture] = {
    "resnet18": Architecture(
        _torchvision("resnet18"), "torchvision ResNet-18 (BasicBlock 2-2-2-2)"
    ),
    "resnet34": Architecture(
        _torchvision("resnet34"), "torchvision ResNet-34 (BasicBlock 3-4-6-3)"
    ),
    "resnet50": Architecture(
        _torchvision("resnet50"), "torchvision ResNet-50 (Bottleneck 3-4-6-3)"
    ),
    "resnet101": Architecture(
        _torchvision("resnet101"), "torchvision ResNet-101 (Bottleneck 3-4-23-3)"
    ),
    "resnet152": Architecture(
        _torchvision("resnet152"), "torchvision ResNet-152 (Bottleneck 3-8-36-3)"
    ),
    "wide_resnet50_2": Architecture(
        _torchvision("wide_resnet50_2"), "torchvision Wide ResNet-50-2"
    ),
    "smallcnn": Architecture(
        lambda k, w: SmallCNN(k, w), "4-stage conv net for tiny images (width w)"
    ),
    "celebahq_attribute": Architecture(
        lambda k, w: AttributeNet(k),
        "official CelebA-HQ attribute classifier layout (256² input)",
        head="4x4.dense1.",
        head_weight="4x4.dense1.linear.weight",
    ),
}


# ----------------------------------------------------------------------------- the module


class Classifier(nn.Module):
    """Backbone + its own on-device preprocessing: images in [-1, 1], any size → logits [N, K]."""

    def __init__(self, config: ClassifierConfig, backbone: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone if backbone is not None else build_backbone(config)
        pre = config.preprocessing
        mean = torch.tensor(pre.mean, dtype=torch.float32)  # [3]
        std = torch.tensor(pre.std, dtype=torch.float32)  # [3]
        # x in [-1, 1] → ((x + 1) / 2 - mean) / std  (unit)   or   (x - mean) / std  (signed)
        scale = (0.5 / std) if pre.input_range == "unit" else (1.0 / std)  # [3]
        shift = ((0.5 - mean) / std) if pre.input_range == "unit" else (-mean / std)  # [3]
        self.register_buffer("input_scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_shift", shift.view(1, 3, 1, 1), persistent=False)
        self._source_sha256: str | None = None

    # -- identity
    @property
    def name(self) -> str:
        return self.config.display_name

    @property
    def arch(self) -> str:
        return self.config.arch

    @property
    def num_outputs(self) -> int:
        return self.config.num_outputs

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def task(self) -> str:
        return self.config.task

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.config.class_names

    @property
    def sha256(self) -> str:
        """Hash of the file this classifier was loaded from or last saved to, else of its weights."""
        return self._source_sha256 or weights_sha256(self.backbone)

    # -- computation
    def preprocess(self, images: torch.Tensor, *, geometry: bool = True) -> torch.Tensor:
        """[N, 3, H, W] in [-1, 1] → the backbone's input [N, 3, h, w] (differentiable).

        ``geometry=False``: the images are already the backbone's input window (a photo view
        cut as the authors' ``imval``, ``ganviews.views.photo``): clamp and normalise only."""
        return self._normalize(self.resample(images, geometry=geometry))

    @property
    def resample_key(self) -> Preprocessing:
        """The geometric part of the preprocessing: classifiers with equal keys resample a
        batch identically (:meth:`resample`), so the batch can be resampled once for all."""
        return replace(
            self.config.preprocessing, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), input_range="unit"
        )

    def resample(self, images: torch.Tensor, *, geometry: bool = True) -> torch.Tensor:
        """Clamp, trim, resize and crop (``geometry=False``: clamp only): [N, 3, H, W] in
        [-1, 1] → [N, 3, h, w], still in [-1, 1]."""
        check_images(images)
        pre = self.config.preprocessing
        x = images
        if pre.clamp:
            x = x.clamp(-1.0, 1.0)
        if not geometry:
            return x
        x = trim(x, pre.trim)  # [N, 3, H', W']
        if pre.size is not None:
            x = resize_to(x, pre.size, pre.interpolation, pre.antialias)  # [N, 3, h, w]
        elif pre.resize is not None:
            x = resize_shorter(x, pre.resize, pre.interpolation, pre.antialias)  # [N, 3, h, w]
        if pre.crop is not None:
            x = center_crop(x, pre.crop)  # [N, 3, crop, crop]
        return x

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.input_scale.to(x.dtype) + self.input_shift.to(x.dtype)

    def from_resampled(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [N, K] of a batch already :meth:`resample`\\ d: normalise, then the backbone."""
        x = self._normalize(x)  # [N, 3, h, w]
        param = next(self.backbone.parameters())
        if not torch.is_autocast_enabled(x.device.type):
            x = x.to(param.dtype)
        return self.backbone(x)  # [N, K]

    def forward(self, images: torch.Tensor, *, geometry: bool = True) -> torch.Tensor:
        return self.from_resampled(self.resample(images, geometry=geometry))

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits [N, K] → class probabilities [N, max(K, 2)] (sigmoid for K = 1, else softmax)."""
        if self.num_outputs == 1:
            p = torch.sigmoid(logits[:, :1])  # [N, 1]
            return torch.cat([1.0 - p, p], dim=1)  # [N, 2]
        return torch.softmax(logits, dim=1)  # [N, K]

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Predicted class index [N] (int64)."""
        logits = self(images)  # [N, K]
        if self.num_outputs == 1:
            return (logits[:, 0] > 0).long()
        return logits.argmax(dim=1)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, arch={self.arch!r}, num_outputs={self.num_outputs}"


def build_classifier(config: ClassifierConfig | Mapping[str, Any]) -> Classifier:
    """A fresh, randomly initialised, trainable classifier (train mode)."""
    if not isinstance(config, ClassifierConfig):
        config = classifier_config(config)
    return Classifier(config)


def build_backbone(config: ClassifierConfig) -> nn.Module:
    if external.is_external(config.arch):
        return external.build_external(config.arch, config.num_outputs)
    return ARCHITECTURES[config.arch].build(config.num_outputs, config.width)


def head_prefix(C: Classifier) -> str:
    """Name prefix of the backbone's output layer (``fc.``; found by shape for external kinds)."""
    if C.arch in ARCHITECTURES:
        return ARCHITECTURES[C.arch].head
    return external.head_prefix(C.backbone, C.num_outputs)


# ----------------------------------------------------------------------------- configs from data


def classifier_config(
    data: ClassifierConfig | Mapping[str, Any] | str | Path,
    *,
    inferred: tuple[str, int] | None = None,
    source: str = "config",
) -> ClassifierConfig:
    """A ClassifierConfig from a config, a mapping or a YAML path.

    ``preprocessing`` may be a preset name (``car``, ``cat``, ``celebahq``, ``imagenet``,
    ``identity``) or a mapping. With ``inferred=(arch, num_outputs)`` (read off a checkpoint),
    missing ``arch``/``num_outputs`` are filled in and given ones must agree (else
    CheckpointError naming ``source``).
    """
    if isinstance(data, ClassifierConfig):
        mapping: dict[str, Any] = to_dict(data)
    elif isinstance(data, (str, Path)):
        mapping = load_yaml(data)
        source = str(data)
    elif isinstance(data, Mapping):
        mapping = to_dict(data)  # nested dataclasses (a Preprocessing value) become mappings
    else:
        raise TypeError(
            f"config: expected ClassifierConfig, mapping or YAML path, got {type(data).__name__}"
        )
    pre = mapping.get("preprocessing")
    if isinstance(pre, str):
        if pre not in PREPROCESSING_PRESETS:
            raise ConfigError(
                f"preprocessing: unknown preset {pre!r} (allowed: {', '.join(PREPROCESSING_PRESETS)})"
            )
        mapping["preprocessing"] = to_dict(PREPROCESSING_PRESETS[pre])
    if inferred is not None:
        arch, num_outputs = inferred
        if mapping.get("arch", arch) != arch:
            raise CheckpointError(
                f"{source}: config says arch={mapping['arch']!r} but the checkpoint's keys and "
                f"shapes match {arch!r}"
            )
        if mapping.get("num_outputs", num_outputs) != num_outputs:
            raise CheckpointError(
                f"{source}: config says num_outputs={mapping['num_outputs']!r} but the checkpoint's "
                f"output layer has {num_outputs} output(s)"
            )
        mapping["arch"], mapping["num_outputs"] = arch, num_outputs
    return from_dict(ClassifierConfig, mapping)


# ----------------------------------------------------------------------------- save / load


# ----------------------------------------------------------------------------- architecture inference


_MOVED_TO_CHECKPOINTS = (
    "save_classifier",
    "load_classifier",
    "load_backbone_weights",
    "infer_architecture",
)


def __getattr__(name: str):
    """Names that moved to :mod:`ganviews.classifiers.checkpoints` stay importable from here."""
    if name in _MOVED_TO_CHECKPOINTS:
        from ganviews.classifiers import checkpoints

        return getattr(checkpoints, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
