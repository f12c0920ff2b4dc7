"""The RGBM encoder: a ResNet mapping (masked image, mask) to w+, and its training.

Paper Sec. 3.2 (Eq. 2–3): inversion starts from an encoder's guess E(x, m), which the
L-BFGS optimisation then refines. The encoder sees the image multiplied by its mask plus
the mask itself (4 channels, "RGBM"), so it can tell unknown pixels (padding left by
centring an object) from dark ones. It is trained on pairs drawn from the generator,
(w, G(w)), with random masks, minimising

    L1(G(E(x, m)), x) + LPIPS(G(E(x, m)), x) + λ · ‖E(x, m) − w‖²,    x = G(w), λ = 1.

Architecture: a standard ResNet (torchvision's BasicBlock/Bottleneck, depth 18/34/50,
randomly initialised — no ImageNet weights offline; the official encoder is a torchvision
ResNet too) with a 4-channel stem, global average pooling and a linear head to
``num_ws × w_dim``. The head predicts an *offset* from the generator's mean w (stored as a
buffer) and is initialised to zero, so an untrained encoder returns exactly the mean w
— the usual starting point of inversion without an encoder.

Inputs of any size are resized to ``resolution`` inside ``forward`` (area-like antialiased
bilinear), images multiplied by the mask first, so pixels under a zero mask can never
influence the output. The mask channel enters as ``mask − 0.5`` (zero-centred).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from ganviews.core.config import from_dict, to_dict
from ganviews.core.errors import CheckpointError, ConfigError
from ganviews.core.file_limits import check_declared_bytes, parse_json_config
from ganviews.core.runtime import (
    assert_shape,
    file_sha256,
    item_seed,
)
from ganviews.core.weights_io import (
    container_format,
    read_safetensors,
    state_mismatch,
    weights_sha256,
    write_safetensors,
)
from ganviews.inversion.official_encoder import OfficialEncoder, load_official_encoder

log = logging.getLogger(__name__)

FORMAT_NAME = "ganviews.encoder"  # "format" key in the safetensors metadata
FORMAT_VERSION = "1"
_EXPECTED = "a ganviews encoder (.safetensors) or the authors' RGBM encoder (.pth.tar)"
_STAGES = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
}
MAX_RESOLUTION = 4096  # internal input side (every input is resized to it); StyleGAN2 tops at 1024


@dataclass(frozen=True)
class EncoderConfig:
    """Architecture of the RGBM ResNet encoder."""

    num_ws: int = 18  # w+ entries predicted (the generator's num_ws)
    w_dim: int = 512  # size of each w (the generator's w_dim)
    depth: int = 34  # ResNet depth: 18, 34 or 50
    resolution: int = 256  # internal input side; inputs of any size are resized to it
    width: int = 64  # stem channels; the four stages use 1×, 2×, 4×, 8× this (64 = standard ResNet)
    norm: Literal["batch", "group"] = (
        "batch"  # BatchNorm (torchvision default) or GroupNorm (batch-size free)
    )
    img_channels: int = 3  # image channels; the mask adds one more input channel

    def __post_init__(self) -> None:
        checks = [
            (self.depth in _STAGES, "depth", "one of 18, 34, 50"),
            (
                isinstance(self.resolution, int) and 16 <= self.resolution <= MAX_RESOLUTION,
                "resolution",
                f"an integer in [16, {MAX_RESOLUTION}]",
            ),
            (isinstance(self.num_ws, int) and self.num_ws >= 1, "num_ws", "a positive integer"),
            (isinstance(self.w_dim, int) and self.w_dim >= 1, "w_dim", "a positive integer"),
            (
                isinstance(self.width, int) and self.width >= 4 and self.width % 4 == 0,
                "width",
                "a multiple of 4, >= 4",
            ),
            (self.norm in ("batch", "group"), "norm", "'batch' or 'group'"),
            (self.img_channels in (1, 3), "img_channels", "1 or 3"),
        ]
        for ok, name, allowed in checks:
            if not ok:
                raise ConfigError(
                    f"encoder.{name}: got {getattr(self, name)!r}, expected {allowed}"
                )


def weight_bytes_bound(config: EncoderConfig) -> int:
    """An upper bound of the bytes of a float32 ``Encoder(config)``'s tensors, computed from
    the config alone (nothing is built); at most a few times the true size (tested)."""
    block, counts = _STAGES[config.depth]
    width = config.width
    total = 49 * (config.img_channels + 1) * width + 4 * width + 2  # stem conv + norm
    inplanes = width
    for index, count in enumerate(counts):
        mid = width * 2**index  # a block's inner channels
        out = mid * block.expansion  # and the channels it returns
        widest = max(inplanes, out)  # a block's input: the stage's first block takes inplanes
        if block.expansion == 1:  # 3×3 widest→mid, 3×3 mid→out
            convs = 9 * mid * (widest + out)
        else:  # 1×1 widest→mid, 3×3 mid→mid, 1×1 mid→out
            convs = mid * (widest + 9 * mid + out)
        # + a 1×1 shortcut, ≤ 4 norms of ≤ out channels (4 tensors each) and their counters
        total += count * (convs + widest * out + 16 * out + 8)
        inplanes = out
    total += config.num_ws * config.w_dim * (inplanes + 1) + config.w_dim  # head + mean w
    return 4 * total


def _norm_layer(kind: str) -> Callable[[int], nn.Module]:
    if kind == "batch":
        return nn.BatchNorm2d
    return lambda channels: nn.GroupNorm(math.gcd(32, channels), channels)


class Encoder(nn.Module):
    """``E(images [N, C, H, W] in [-1, 1], masks [N, 1, H, W] or None) → ws [N, num_ws, w_dim]``."""

    def __init__(
        self,
        config: EncoderConfig | None = None,
        *,
        mean_w: torch.Tensor | None = None,
        seed: int = 0,
    ) -> None:
        """``mean_w`` [w_dim]: the generator's mean w (zeros if None); ``seed`` fixes the
        random initial weights (the global RNG is left untouched)."""
        super().__init__()
        config = EncoderConfig() if config is None else config
        if not isinstance(config, EncoderConfig):
            raise TypeError(f"config: expected an EncoderConfig, got {type(config).__name__}")
        self.config = config
        self.num_ws, self.w_dim, self.resolution = config.num_ws, config.w_dim, config.resolution
        block, counts = _STAGES[config.depth]
        norm = _norm_layer(config.norm)
        width = config.width
        self.stem = nn.Sequential(
            nn.Conv2d(
                config.img_channels + 1, width, kernel_size=7, stride=2, padding=3, bias=False
            ),
            norm(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        stages, inplanes = [], width
        for index, count in enumerate(counts):
            planes = width * 2**index
            stages.append(
                _make_stage(
                    block, inplanes, planes, count, stride=1 if index == 0 else 2, norm=norm
                )
            )
            inplanes = planes * block.expansion
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(inplanes, config.num_ws * config.w_dim)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(item_seed(seed, "encoder-init"))
            _init_weights(self)
        if mean_w is None:
            mean_w = torch.zeros(config.w_dim)
        assert_shape(mean_w, [config.w_dim], "mean_w")
        self.register_buffer("mean_w", mean_w.detach().clone().to(torch.float32))  # [w_dim]
        self.generator_sha256: str = ""  # the generator it was trained against ("" = unknown)
        self._file_sha256: str | None = None

    @classmethod
    def for_generator(cls, G: nn.Module, *, seed: int = 0, **config_kwargs) -> Encoder:
        """A fresh encoder whose layout and mean w come from ``G``; ``resolution`` defaults
        to min(G.resolution, 256); other EncoderConfig fields as keywords."""
        config_kwargs.setdefault("resolution", min(int(G.resolution), 256))
        config = EncoderConfig(
            num_ws=int(G.num_ws),
            w_dim=int(G.w_dim),
            img_channels=int(G.img_channels),
            **config_kwargs,
        )
        E = cls(config, mean_w=G.mean_w.detach().to("cpu", torch.float32), seed=seed)
        E.generator_sha256 = str(G.sha256)
        return E.to(G.mean_w.device)

    @property
    def sha256(self) -> str:
        """sha256 of the file this encoder was saved to / loaded from, else of its weights."""
        return self._file_sha256 or weights_sha256(self)

    def forward(self, images: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        N, C, H, W = images.shape if images.ndim == 4 else (None,) * 4
        assert_shape(images, [None, self.config.img_channels, None, None], "images")
        if masks is None:
            masks = images.new_ones(N, 1, H, W)  # [N, 1, H, W]
        assert_shape(masks, [N, 1, H, W], "masks")
        masks = masks.to(images.dtype)
        x = images * masks  # [N, C, H, W] unknown pixels → 0: they cannot reach the output
        if (H, W) != (self.resolution, self.resolution):
            size = (self.resolution, self.resolution)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
            masks = F.interpolate(
                masks, size=size, mode="bilinear", align_corners=False, antialias=True
            )
        features = self.stages(self.stem(torch.cat([x, masks - 0.5], dim=1)))  # [N, F, h, w]
        offset = self.head(features.mean(dim=(2, 3)))  # [N, num_ws * w_dim]
        return self.mean_w.to(offset.dtype) + offset.view(N, self.num_ws, self.w_dim)  # [N, L, C]

    def extra_repr(self) -> str:
        c = self.config
        return f"depth={c.depth}, resolution={c.resolution}, width={c.width}, norm={c.norm}, out=[{c.num_ws}, {c.w_dim}]"


def _make_stage(
    block: type, inplanes: int, planes: int, count: int, *, stride: int, norm
) -> nn.Sequential:
    downsample = None
    if stride != 1 or inplanes != planes * block.expansion:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
            norm(planes * block.expansion),
        )
    layers = [block(inplanes, planes, stride, downsample, norm_layer=norm)]
    layers += [block(planes * block.expansion, planes, norm_layer=norm) for _ in range(count - 1)]
    return nn.Sequential(*layers)


def _init_weights(E: Encoder) -> None:
    """He init for convs, unit norms (torchvision's ResNet init, without zero-init residuals:
    those would make the untrained body see only every 8th stem position through the strided
    shortcuts), and a zero head: the untrained encoder outputs exactly mean w."""
    for module in E.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    nn.init.zeros_(E.head.weight)
    nn.init.zeros_(E.head.bias)


# --------------------------------------------------------------------------- files


def save_encoder(
    E: Encoder, path: str | os.PathLike, *, metadata: dict[str, str] | None = None
) -> Path:
    """Write ``E`` as safetensors with its config JSON in the metadata (atomic replace).

    Sets and returns nothing but the path; afterwards ``E.sha256`` is the file's hash.
    """
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "config": json.dumps(to_dict(E.config), sort_keys=True),
        "generator_sha256": E.generator_sha256,
        **(metadata or {}),
    }
    path = write_safetensors(E.state_dict(), path, meta)
    E._file_sha256 = file_sha256(path)
    log.info("saved encoder to %s (sha256 %s)", path, E._file_sha256[:12])
    return path


def read_encoder_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata of an encoder file (format, config JSON, generator hash, training info)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"encoder file {path} not found: train one with `ganviews train-encoder --generator G "
            f"--out {path}`, or put the authors' RGBM encoder for this generator there "
            "(sgan_encoders_{ffhq,car,cat}_RGBM_model_initial.pth.tar, docs/quickstart.md)"
        )
    meta, _ = read_safetensors(path, tensors=False)
    if meta.get("format") != FORMAT_NAME:
        raise CheckpointError(
            f"{path}: not a ganviews encoder file (metadata format={meta.get('format')!r}, expected {FORMAT_NAME!r})"
        )
    return meta


def load_encoder(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> Encoder | OfficialEncoder:
    """An encoder file, eval mode, no gradients, on ``device``: one written by :func:`save_encoder`
    (safetensors) or the authors' released RGBM encoder (torch file, read weights-only; see
    :mod:`ganviews.inversion.official_encoder`). The format comes from the file's bytes."""
    path = Path(path)
    if path.is_file() and container_format(path, expected=_EXPECTED) != "safetensors":
        return load_official_encoder(path, device)
    meta = read_encoder_metadata(path)
    try:
        config = from_dict(
            EncoderConfig, parse_json_config(meta.get("config"), path=path, what="encoder config")
        )
    except ConfigError as exc:
        raise CheckpointError(
            f"{path}: encoder config in the metadata is missing or invalid: {exc}"
        ) from exc
    check_declared_bytes(weight_bytes_bound(config), path=path, what="an encoder")
    E = Encoder(config)  # at most a small multiple of the file's size
    _, state = read_safetensors(path)
    expected = E.state_dict()
    missing, unexpected, wrong = state_mismatch(expected, state)
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{path}: tensors do not fit the encoder config (missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, wrong shape {wrong[:5]})"
        )
    E.load_state_dict(state)
    E.generator_sha256 = meta.get("generator_sha256", "")
    E._file_sha256 = file_sha256(path)
    return E.to(device).eval().requires_grad_(False)


_MOVED_TO_TRAINING = (
    "TRAIN_FORMAT_NAME",
    "EncoderTrainResult",
    "random_masks",
    "blob_masks",
    "sample_training_batch",
    "train_encoder",
)


def __getattr__(name: str):
    """Names that moved to :mod:`ganviews.inversion.encoder_training` stay importable from here."""
    if name in _MOVED_TO_TRAINING:
        from ganviews.inversion import encoder_training

        return getattr(encoder_training, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
