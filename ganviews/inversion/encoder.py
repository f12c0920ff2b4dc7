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

import dataclasses
import json
import logging
import math
import os
import time
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
from ganviews.core.file_limits import parse_json_config
from ganviews.core.runtime import (
    assert_shape,
    file_sha256,
    item_generator,
    item_seed,
    resolve_device,
)
from ganviews.core.weights_io import (
    container_format,
    load_training_state,
    read_safetensors,
    restore_rng_states,
    rng_states,
    save_training_state,
    weights_sha256,
    write_safetensors,
)
from ganviews.inversion.official_encoder import OfficialEncoder, load_official_encoder

log = logging.getLogger(__name__)

FORMAT_NAME = "ganviews.encoder"  # "format" key in the safetensors metadata
FORMAT_VERSION = "1"
_EXPECTED = "a ganviews encoder (.safetensors) or the authors' RGBM encoder (.pth.tar)"
TRAIN_FORMAT_NAME = "ganviews.encoder-train"  # training checkpoint (model + optimiser + step + RNG)
_STAGES = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
}


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
                isinstance(self.resolution, int) and self.resolution >= 16,
                "resolution",
                "an integer >= 16",
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
    E = Encoder(config)
    _, state = read_safetensors(path)
    expected = E.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{path}: tensors do not fit the encoder config (missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, wrong shape {wrong[:5]})"
        )
    E.load_state_dict(state)
    E.generator_sha256 = meta.get("generator_sha256", "")
    E._file_sha256 = file_sha256(path)
    return E.to(device).eval().requires_grad_(False)


# --------------------------------------------------------------------------- training


@dataclass
class EncoderTrainResult:
    """What :func:`train_encoder` returns."""

    encoder: Encoder  # the trained encoder, eval mode, no gradients
    steps: int  # optimiser steps done in total (including resumed ones)
    history: list[
        dict[str, float]
    ]  # one entry per logging window: step, loss, l1, perceptual, latent
    seconds: float  # wall time of this call


def random_masks(
    n: int,
    size: int,
    *,
    generator: torch.Generator,
    full_prob: float = 0.3,
    border_prob: float = 0.4,
    max_holes: int = 3,
) -> torch.Tensor:
    """Training masks ``[n, 1, size, size]`` (1 = known) of three kinds, as in the paper's
    encoder training: all known (``full_prob``); only a random rectangle covering 50–100 %
    of each side known, the border unknown, as after shifting an object to the centre
    (``border_prob``); or 1…``max_holes`` unknown rectangles of 10–50 % side (the rest)."""
    masks = torch.ones(n, 1, size, size)
    kinds = torch.rand(n, generator=generator)

    def extent(lo: float, hi: float) -> tuple[int, int]:
        side = [
            max(1, int(size * (lo + (hi - lo) * float(torch.rand((), generator=generator)))))
            for _ in range(2)
        ]
        return side[0], side[1]

    def place(h: int, w: int) -> tuple[int, int]:
        top = int(torch.randint(0, size - h + 1, (), generator=generator))
        left = int(torch.randint(0, size - w + 1, (), generator=generator))
        return top, left

    for i in range(n):
        if kinds[i] < full_prob:
            continue
        if kinds[i] < full_prob + border_prob:
            h, w = extent(0.5, 1.0)
            top, left = place(h, w)
            masks[i] = 0.0
            masks[i, :, top : top + h, left : left + w] = 1.0
        else:
            for _ in range(int(torch.randint(1, max_holes + 1, (), generator=generator))):
                h, w = extent(0.1, 0.5)
                top, left = place(h, w)
                masks[i, :, top : top + h, left : left + w] = 0.0
    return masks  # [n, 1, size, size]


def blob_masks(
    n: int,
    size: int,
    *,
    generator: torch.Generator,
    grid: int = 6,
    cutoff: tuple[float, float] = (0.3, 1.0),
) -> torch.Tensor:
    """The authors' encoder-training masks (chail/latent-composition ``utils/masking.py``,
    ``mask_upsample``): uniform noise on a ``grid`` × ``grid`` lattice, bilinearly upsampled to
    ``size``, known where it is below one cutoff ~ U[cutoff) per batch → ``[n, 1, size, size]``."""
    noise = torch.rand(n, 1, grid, grid, generator=generator)  # [n, 1, g, g]
    smooth = F.interpolate(noise, size=(size, size), mode="bilinear", align_corners=False)
    level = cutoff[0] + (cutoff[1] - cutoff[0]) * float(torch.rand((), generator=generator))
    return (smooth < level).float()  # [n, 1, size, size]


def sample_training_batch(
    G: nn.Module,
    batch_size: int,
    *,
    seed: int,
    step: int,
    device: torch.device,
    truncation_psi: float = 1.0,
    style_mix_prob: float = 0.9,
    mask_full_prob: float = 0.3,
    mask_border_prob: float = 0.4,
    mask_kind: Literal["rects", "blobs"] = "rects",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ws [B, L, C], images [B, C, R, R], masks [B, 1, R, R]) for one step; the draws depend
    only on (seed, step), so a resumed run sees exactly the batches it would have seen."""
    gen = item_generator(seed, "train-encoder", step)  # CPU: identical on every device
    z = torch.randn(2, batch_size, G.z_dim, generator=gen)  # [2, B, z_dim]
    c = None
    if getattr(G, "c_dim", 0):
        labels = torch.randint(0, G.c_dim, (batch_size,), generator=gen)
        c = F.one_hot(labels, G.c_dim).float().to(device)  # [B, c_dim]
    mixing = torch.rand(batch_size, generator=gen) < style_mix_prob  # [B]
    cutoff = torch.randint(
        1, max(G.num_ws, 2), (batch_size,), generator=gen
    )  # [B] first layer of w2
    cutoff = torch.where(mixing, cutoff, torch.full_like(cutoff, G.num_ws))
    if mask_kind == "blobs":
        masks = blob_masks(batch_size, G.resolution, generator=gen)
    else:
        masks = random_masks(
            batch_size,
            G.resolution,
            generator=gen,
            full_prob=mask_full_prob,
            border_prob=mask_border_prob,
        )
    with torch.no_grad():
        w1 = G.mapping(z[0].to(device), c, truncation_psi=truncation_psi)  # [B, L, C]
        w2 = G.mapping(z[1].to(device), c, truncation_psi=truncation_psi)  # [B, L, C]
        layer = torch.arange(G.num_ws, device=device)[None, :, None]  # [1, L, 1]
        ws = torch.where(layer < cutoff.to(device)[:, None, None], w1, w2)  # [B, L, C]
        images = G.synthesis(ws, noise_mode="const")  # [B, C, R, R]
    return ws, images, masks.to(device)


def train_encoder(
    G: nn.Module,
    *,
    steps: int,
    batch_size: int = 8,
    lr: float = 1e-4,
    betas: tuple[float, float] = (0.9, 0.999),
    lambda_latent: float = 1.0,
    lambda_l1: float = 1.0,
    lambda_perceptual: float = 1.0,
    perceptual: Callable[..., torch.Tensor] | None = None,
    encoder: Encoder | None = None,
    config: EncoderConfig | None = None,
    truncation_psi: float = 1.0,
    style_mix_prob: float = 0.9,
    mask_full_prob: float = 0.3,
    mask_border_prob: float = 0.4,
    mask_kind: Literal["rects", "blobs"] = "rects",
    pixel_loss: Literal["l1", "mse"] = "l1",
    device: str | torch.device = "cpu",
    seed: int = 0,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 1000,
    resume: bool = True,
    log_every: int = 100,
) -> EncoderTrainResult:
    """Train an RGBM encoder on (w, G(w)) pairs (paper Eq. 2–3) with Adam for ``steps`` steps.

    Per step: w from the mapping of random z (style-mixed with a second w at a random layer
    with probability ``style_mix_prob``), x = G(w) (constant noise), a random mask m; loss
    ``lambda_l1·D(G(E(x,m)), x) + lambda_perceptual·P(G(E(x,m)), x) + lambda_latent·‖E(x,m) − w‖²``
    with D the ``pixel_loss`` (L1 by default, "mse" in the authors' recipe) and masks of
    ``mask_kind`` (:func:`random_masks` rectangles, or the authors' :func:`blob_masks`)
    (means over pixels / latent entries, then over the batch). The image terms cover the whole
    image: G(w) is known everywhere, and the encoder learns to fill in what the mask hides.
    ``perceptual`` is any ``P(x, y, mask) -> [N]`` (e.g. ``ganviews.inversion.perceptual.load_perceptual``)
    or None for L1 only.

    A fresh encoder comes from ``encoder`` or ``config`` (num_ws/w_dim/img_channels are taken
    from G) or defaults. With ``checkpoint``, model + optimiser + step + RNG state are saved
    every ``checkpoint_every`` steps and at the end; with ``resume`` an existing checkpoint is
    continued up to ``steps`` total, giving bit-identical weights to an uninterrupted run (the
    batch of step k depends only on (seed, k)). G is frozen while training (its
    ``requires_grad`` flags are restored afterwards).
    """
    _check_train_args(
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        log_every=log_every,
        checkpoint_every=checkpoint_every,
    )
    for name, value, allowed in (("mask_kind", mask_kind, ("rects", "blobs")),
                                 ("pixel_loss", pixel_loss, ("l1", "mse"))):  # fmt: skip
        if value not in allowed:
            raise ValueError(f"{name}: got {value!r}, allowed: {list(allowed)}")
    device = resolve_device(device)
    G = G.to(device).eval()
    E = _initial_encoder(G, encoder, config, seed).to(device)
    if E.config.norm == "batch" and batch_size < 2:
        raise ValueError(
            f"batch_size={batch_size}: BatchNorm needs >= 2 samples per step (or use norm='group')"
        )
    optimizer = torch.optim.Adam(E.parameters(), lr=lr, betas=betas)
    hyper = {"batch_size": batch_size, "lr": lr, "betas": list(betas), "lambda_latent": lambda_latent,
             "lambda_l1": lambda_l1, "lambda_perceptual": lambda_perceptual if perceptual else 0.0,
             "perceptual": getattr(perceptual, "name", type(perceptual).__name__ if perceptual else "none"),
             "truncation_psi": truncation_psi, "style_mix_prob": style_mix_prob,
             "mask_full_prob": mask_full_prob, "mask_border_prob": mask_border_prob}  # fmt: skip
    if (mask_kind, pixel_loss) != ("rects", "l1"):  # only then: older checkpoints still resume
        hyper.update(mask_kind=mask_kind, pixel_loss=pixel_loss)
    start, history = 0, []
    ckpt_path = Path(checkpoint) if checkpoint is not None else None
    if ckpt_path is not None and resume and ckpt_path.is_file():
        start, history = _load_train_checkpoint(
            ckpt_path, E, optimizer, G=G, seed=seed, hyper=hyper
        )
    grad_flags = [p.requires_grad for p in G.parameters()]
    G.requires_grad_(False)
    began = time.perf_counter()
    window = _Window(device)
    try:
        E.train()
        for step in range(start, steps):
            ws, images, masks = sample_training_batch(
                G, batch_size, seed=seed, step=step, device=device, truncation_psi=truncation_psi,
                style_mix_prob=style_mix_prob, mask_full_prob=mask_full_prob, mask_border_prob=mask_border_prob,
                mask_kind=mask_kind,
            )  # fmt: skip
            pred = E(images, masks)  # [B, L, C]
            recon = G.synthesis(pred, noise_mode="const")  # [B, C, R, R]
            diff = recon - images  # [B, C, R, R]
            l1 = (diff.abs() if pixel_loss == "l1" else diff.square()).mean(dim=(1, 2, 3))  # [B]
            lat = (pred - ws).square().mean(dim=(1, 2))  # [B]
            perc = (
                perceptual(recon, images, None) if perceptual is not None else torch.zeros_like(l1)
            )  # [B]
            loss = (lambda_l1 * l1 + lambda_perceptual * perc + lambda_latent * lat).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            window.add(
                loss=loss, **{pixel_loss: l1.mean()}, perceptual=perc.mean(), latent=lat.mean()
            )
            done = step + 1
            if done % log_every == 0 or done == steps:
                history.append(window.flush(done))
                log.info("encoder step %d/%d: %s", done, steps, _fmt(history[-1]))
            if ckpt_path is not None and (done % checkpoint_every == 0 or done == steps):
                _save_train_checkpoint(
                    ckpt_path, E, optimizer, step=done, seed=seed, G=G, hyper=hyper, history=history
                )
    finally:
        for param, flag in zip(G.parameters(), grad_flags, strict=True):
            param.requires_grad_(flag)
    E.eval().requires_grad_(False)
    return EncoderTrainResult(
        encoder=E, steps=max(start, steps), history=history, seconds=time.perf_counter() - began
    )


class _Window:
    """Running sums of the loss terms on the device; synchronised only when flushed."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.sums, self.count = device, {}, 0

    def add(self, **terms: torch.Tensor) -> None:
        for key, value in terms.items():
            self.sums[key] = self.sums.get(key, 0.0) + value.detach()
        self.count += 1

    def flush(self, step: int) -> dict[str, float]:
        out = {"step": step, **{k: float(v) / max(self.count, 1) for k, v in self.sums.items()}}
        self.sums, self.count = {}, 0
        return out


def _fmt(entry: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in entry.items() if k != "step")


def _check_train_args(**values: float) -> None:
    for name, value in values.items():
        if not (isinstance(value, (int, float)) and value > 0) or (
            name != "lr" and not isinstance(value, int)
        ):
            raise ValueError(
                f"{name}={value!r}: expected a positive {'number' if name == 'lr' else 'integer'}"
            )


def _initial_encoder(
    G: nn.Module, encoder: Encoder | None, config: EncoderConfig | None, seed: int
) -> Encoder:
    if encoder is not None:
        E = encoder
    elif config is not None:
        overrides = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
        for key in ("num_ws", "w_dim", "img_channels"):
            overrides.pop(key)
        E = Encoder.for_generator(G, seed=seed, **overrides)
    else:
        E = Encoder.for_generator(G, seed=seed)
    layout = (E.config.num_ws, E.config.w_dim, E.config.img_channels)
    if layout != (G.num_ws, G.w_dim, G.img_channels):
        raise ConfigError(
            f"encoder layout (num_ws, w_dim, img_channels) = {layout} does not match the generator's "
            f"{(G.num_ws, G.w_dim, G.img_channels)}"
        )
    E.generator_sha256 = E.generator_sha256 or str(G.sha256)
    return E


def _save_train_checkpoint(
    path: Path, E: Encoder, optimizer, *, step: int, seed: int, G, hyper, history
) -> None:
    payload = {
        "format": TRAIN_FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "step": step,
        "seed": seed,
        "config": json.dumps(to_dict(E.config), sort_keys=True),
        "generator_sha256": str(G.sha256),
        "hyper": json.dumps(hyper, sort_keys=True),
        "history": json.dumps(history),
        "model": {k: v.detach().to("cpu") for k, v in E.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        **rng_states(),
    }
    save_training_state(payload, path)
    log.info("encoder training checkpoint: step %d → %s", step, path)


def _load_train_checkpoint(
    path: Path, E: Encoder, optimizer, *, G, seed: int, hyper
) -> tuple[int, list]:
    payload = load_training_state(path, format_name=TRAIN_FORMAT_NAME, what="encoder training")
    mine = json.dumps(to_dict(E.config), sort_keys=True)
    if payload["config"] != mine:
        raise CheckpointError(
            f"{path}: checkpoint encoder config {payload['config']} differs from this run's {mine}"
        )
    if payload["generator_sha256"] != str(G.sha256):
        raise CheckpointError(
            f"{path}: checkpoint was trained against generator {payload['generator_sha256'][:12]}…, "
            f"this run uses {str(G.sha256)[:12]}…; delete the checkpoint or pass the same generator"
        )
    if payload["seed"] != seed:
        raise CheckpointError(f"{path}: checkpoint seed {payload['seed']} differs from seed={seed}")
    old = json.loads(payload["hyper"])
    changed = {k: (old.get(k), v) for k, v in hyper.items() if old.get(k) != v}
    if changed:
        log.warning("%s: resuming with changed settings (old, new): %s", path, changed)
    E.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    restore_rng_states(payload)
    log.info("resuming encoder training from %s at step %d", path, payload["step"])
    return int(payload["step"]), json.loads(payload["history"])
