"""Contrastive training on multiview data (Jahanian et al., ICLR 2022, Sec. 3.1–3.2, App. C.1.1).

Each step draws a batch of anchors; an anchor's positive pair is (view 0, a random other view)
of its latent views — ``x_a = T_x(G(z))``, ``x_p = T_x(G(T_z(z)))`` (Eq. 6–7) — or the anchor
twice when there is one view (real images, ``T_z = -``: SimCLR, Eq. 2–4). ``T_x`` is SimCLR's
pixel augmentation set (:func:`simclr_augment`, kornia.augmentation), applied to the whole
batch at once on the training device with its own random draw for every image. The rest of
the batch are the negatives.

Losses come from pytorch-metric-learning (docs/genrep.md says why): ``NTXentLoss`` (the
paper's InfoNCE, Eq. 1; positives = the two views of an anchor) and ``SupConLoss`` (Khosla et
al. 2020; positives = every image of the same class, for class-conditional generators and
labelled real data). The encoder is a torchvision ResNet (fc removed) with SimCLR's two-layer
projection head; the linear probe reads the backbone's pooled features.

Training is resumable: a checkpoint (model, optimiser, scheduler, step, RNG states) is written
every ``checkpoint_every`` steps with :func:`ganviews.core.weights_io.save_training_state`;
a rerun with the same config continues from it. On CUDA the forward pass runs under bf16
autocast (``amp``); the CPU path stays fp32.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torchvision
from torch import nn

from ganviews.core.config import from_dict, to_dict
from ganviews.core.errors import CheckpointError, ConfigError
from ganviews.core.images import uint8_to_signed
from ganviews.core.runtime import item_generator
from ganviews.core.weights_io import (
    load_training_state,
    read_safetensors,
    restore_rng_states,
    rng_states,
    save_training_state,
    write_safetensors,
)

log = logging.getLogger(__name__)

ARCHS = ("resnet18", "resnet34", "resnet50")
OBJECTIVES = ("simclr", "supcon")
CHECKPOINT_FORMAT = "ganviews.contrastive-train/1"
WEIGHTS_FORMAT = "ganviews.contrastive-encoder"


@dataclass(frozen=True)
class EncoderConfig:
    """The representation F: a torchvision ResNet backbone + SimCLR projection head."""

    arch: Literal["resnet18", "resnet34", "resnet50"] = "resnet18"  # torchvision constructor
    small_input: bool = True  # 3×3 stride-1 stem without max-pool (CIFAR-style, ≤ 64 px inputs)
    proj_dim: int = 128  # output width of the projection head (the loss's embedding)
    input_size: int | None = None  # resize inputs to this side first (None: as given)


@dataclass(frozen=True)
class ContrastiveConfig:
    """How the encoder is trained (paper Sec. 4: SGD, lr 0.03, batch 256)."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)  # the network
    steps: int = 1000  # optimiser steps (the same for every variant, as in paper Sec. 4.3)
    batch_size: int = 256  # anchors per step (2 images each)
    lr: float = 0.03  # SGD learning rate, cosine-decayed to 0 over `steps`
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 1e-4  # SGD weight decay
    temperature: float = 0.1  # softmax temperature of NT-Xent / SupCon
    crop_scale: tuple[float, float] = (0.2, 1.0)  # T_x: RandomResizedCrop area range
    jitter_strength: float = (
        0.5  # T_x: colour jitter s (brightness/contrast/saturation 0.8s, hue 0.2s)
    )
    jitter_prob: float = 0.8  # T_x: probability of the colour jitter
    grayscale_prob: float = 0.2  # T_x: probability of grey-scaling
    amp: bool = True  # bf16 autocast on CUDA (ignored on the CPU)
    checkpoint_every: int = 200  # steps between resumable checkpoints
    log_every: int = 50  # steps per logged loss average
    seed: int = 0  # batch order, augmentations and initialisation

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name}: expected ≥ 1, got {getattr(self, name)!r}")
        if self.batch_size < 2:
            raise ConfigError(f"batch_size: contrastive learning needs ≥ 2, got {self.batch_size}")
        if not (0 < self.crop_scale[0] <= self.crop_scale[1] <= 1):
            raise ConfigError(f"crop_scale: expected 0 < lo ≤ hi ≤ 1, got {self.crop_scale}")
        if self.temperature <= 0:
            raise ConfigError(f"temperature: expected > 0, got {self.temperature}")


class Resize(nn.Module):
    """Bilinear, antialiased resize to ``size`` × ``size`` (part of the encoder, so the probe
    sees what training saw)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = int(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.interpolate(
            x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False
        )


class ContrastiveModel(nn.Module):
    """``backbone`` (pooled features [N, d]) + ``head`` (projection [N, proj_dim])."""

    def __init__(self, config: EncoderConfig | None = None) -> None:
        super().__init__()
        self.config = config or EncoderConfig()
        if self.config.arch not in ARCHS:
            raise ConfigError(f"encoder.arch: {self.config.arch!r} is not one of {list(ARCHS)}")
        net = getattr(torchvision.models, self.config.arch)(weights=None)
        if self.config.small_input:
            net.conv1 = nn.Conv2d(3, net.conv1.out_channels, 3, 1, 1, bias=False)
            net.maxpool = nn.Identity()
        self.feature_dim = net.fc.in_features
        net.fc = nn.Identity()
        size = self.config.input_size
        self.backbone = nn.Sequential(nn.Identity() if size is None else Resize(size), net)
        d = self.feature_dim
        self.head = nn.Sequential(
            nn.Linear(d, d), nn.ReLU(inplace=True), nn.Linear(d, self.config.proj_dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, C, H, W] → float [-1, 1] on the same device (the network's input scale)."""
    return uint8_to_signed(images)


def simclr_augment(cfg: ContrastiveConfig, size: int) -> nn.Module:
    """SimCLR's T_x for small images (Chen et al. 2020, App. A; no blur below 64 px, as for
    CIFAR) on a batch: float [B, C, H, W] in [0, 1] → the same shape, every image with its own
    crop, flip, jitter and grey draws (kornia.augmentation, ``same_on_batch=False``; parameters
    drawn from torch's global generator, which checkpoints save). kornia's ``ColorJitter`` uses
    torchvision's formulas; its random order of the four adjustments is drawn per call."""
    import kornia.augmentation as K

    s = cfg.jitter_strength
    return nn.Sequential(
        K.RandomResizedCrop((size, size), scale=tuple(cfg.crop_scale)),  # ratio 3/4–4/3
        K.RandomHorizontalFlip(),
        K.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s, p=cfg.jitter_prob),
        K.RandomGrayscale(p=cfg.grayscale_prob),
    )


def positive_pairs(
    views: np.ndarray, index: np.ndarray, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(view 0, a random view ≥ 1) of anchors ``index`` of ``views`` [N, V, C, H, W] uint8;
    (view 0, view 0) when V = 1. Returns two uint8 tensors [B, C, H, W]."""
    a = torch.from_numpy(views[index, 0])
    if views.shape[1] == 1:
        return a, a.clone()
    other = torch.randint(1, views.shape[1], (len(index),), generator=gen).numpy()
    return a, torch.from_numpy(views[index, other])


def contrastive_loss(objective: str, temperature: float):
    """The pytorch-metric-learning loss of ``objective`` ("simclr" → NTXentLoss, "supcon")."""
    from pytorch_metric_learning import losses

    if objective == "simclr":
        return losses.NTXentLoss(temperature=temperature)
    if objective == "supcon":
        return losses.SupConLoss(temperature=temperature)
    raise ConfigError(f"objective: {objective!r} is not one of {list(OBJECTIVES)}")


def train_contrastive(
    views: np.ndarray,
    *,
    cfg: ContrastiveConfig,
    t_x: bool = True,
    objective: str = "simclr",
    labels: np.ndarray | None = None,
    device: torch.device | str = "cpu",
    checkpoint: str | Path | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> ContrastiveModel:
    """Train an encoder on ``views`` [N, V, C, H, W] uint8 (V = 1: pixel views only).

    ``objective="supcon"`` needs ``labels`` [N] (class of each anchor). With ``checkpoint``
    the state is saved every ``cfg.checkpoint_every`` steps and at the end, and a rerun with
    the same config, data size and variant resumes from it (a finished run returns at once).
    ``on_step(step, loss)`` is called after every step and after its checkpoint (progress).
    """
    if views.ndim != 5 or views.dtype != np.uint8:
        raise ValueError(f"views: expected uint8 [N, V, C, H, W], got {views.dtype} {views.shape}")
    if objective == "supcon" and (labels is None or (np.asarray(labels) < 0).any()):
        raise ConfigError("objective: supcon needs a class label ≥ 0 for every anchor")
    loss_fn = contrastive_loss(objective, cfg.temperature)
    device = torch.device(device)
    n = len(views)
    torch.manual_seed(cfg.seed)
    model = ContrastiveModel(cfg.encoder).to(device)
    opt = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps)
    identity = {
        "config": to_dict(cfg),
        "n": n,
        "views": views.shape[1],
        "t_x": t_x,
        "objective": objective,
    }
    step = _resume(checkpoint, identity, model, opt, sched)
    augment = simclr_augment(cfg, views.shape[-1]).to(device) if t_x else None
    amp = cfg.amp and device.type == "cuda"
    batch = min(cfg.batch_size, n) if views.shape[1] > 1 or n > 1 else 1
    running = []
    model.train()
    while step < cfg.steps:
        gen = item_generator(cfg.seed, "batch", step)
        index = torch.randperm(n, generator=gen)[:batch].numpy()
        xa, xp = positive_pairs(views, index, gen)
        x = torch.cat([xa, xp]).to(device)  # [2B, C, H, W] uint8
        if augment is None:
            x = to_input(x)
        else:  # independent T_x per image, one batched call (global RNG, saved in checkpoints)
            x = augment(x.float() / 255) * 2 - 1  # [-1, 1] as to_input
        if objective == "supcon":
            target = torch.as_tensor(np.asarray(labels)[index]).repeat(2)  # [2B]
        else:
            target = torch.arange(len(index)).repeat(2)  # [2B]: the pair shares a label
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            emb = model(x)  # [2B, proj_dim]
        loss = loss_fn(emb.float(), target.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        value = loss.item()
        running.append(value)
        if step % cfg.log_every == 0 or step == cfg.steps:
            log.info("contrastive step %d/%d: loss %.4f", step, cfg.steps, np.mean(running))
            running.clear()
        if checkpoint is not None and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
            _save(checkpoint, identity, step, model, opt, sched)
        if on_step is not None:
            on_step(step, value)
    return model.eval()


def _save(path, identity, step, model, opt, sched) -> None:
    save_training_state(
        {
            "format": CHECKPOINT_FORMAT,
            "identity": json.dumps(identity, sort_keys=True),
            "step": step,
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            **rng_states(),
        },
        path,
    )


def _resume(path, identity, model, opt, sched) -> int:
    """Load ``path`` into the training objects when it exists; the step to continue from."""
    if path is None or not Path(path).is_file():
        return 0
    state = load_training_state(path, format_name=CHECKPOINT_FORMAT, what="contrastive training")
    if state["identity"] != json.dumps(identity, sort_keys=True):
        raise CheckpointError(
            f"{path}: a checkpoint of another training run (config, data size or variant "
            "differ); delete it or use another output folder"
        )
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    restore_rng_states(state)
    log.info("resuming contrastive training from %s at step %d", path, state["step"])
    return int(state["step"])


def save_encoder(model: ContrastiveModel, path: str | Path) -> Path:
    """The trained encoder as safetensors with its EncoderConfig in the metadata."""
    meta = {"format": WEIGHTS_FORMAT, "config": json.dumps(to_dict(model.config))}
    return write_safetensors(model.state_dict(), path, meta)


def load_encoder(path: str | Path, *, device: torch.device | str = "cpu") -> ContrastiveModel:
    """An encoder written by :func:`save_encoder`, in eval mode without gradients."""
    meta, state = read_safetensors(path)
    if meta.get("format") != WEIGHTS_FORMAT:
        raise CheckpointError(
            f"{path}: not a ganviews contrastive encoder ({meta.get('format')!r})"
        )
    cfg = from_dict(EncoderConfig, json.loads(meta["config"]))
    model = ContrastiveModel(dataclasses.replace(cfg))
    model.load_state_dict(state)
    return model.to(device).eval().requires_grad_(False)
