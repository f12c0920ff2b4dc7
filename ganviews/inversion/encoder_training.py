"""Training the RGBM encoder on (w, G(w)) pairs with random masks (Chai et al. 2021, Eq. 2–3):
masks, sampled batches, the resumable training loop and its checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ganviews.core.config import to_dict
from ganviews.core.errors import CheckpointError, ConfigError
from ganviews.core.runtime import (
    item_generator,
    resolve_device,
)
from ganviews.core.weights_io import (
    load_training_state,
    restore_rng_states,
    rng_states,
    save_training_state,
)
from ganviews.inversion.encoder import FORMAT_VERSION, Encoder, EncoderConfig

log = logging.getLogger(__name__)

TRAIN_FORMAT_NAME = "ganviews.encoder-train"  # training checkpoint (model + optimiser + step + RNG)


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
    identity: Callable[..., torch.Tensor] | None = None,
    lambda_id: float = 1.0,
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
    or None for L1 only. ``identity``: a face identity loss ``I(recon, x) -> [N]`` added with
    weight ``lambda_id`` (the authors' FFHQ encoder: ``ganviews.inversion.identity``, weight 1);
    None: none.

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
    if identity is not None:
        hyper.update(lambda_id=lambda_id, identity=getattr(identity, "name", "identity"))
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
            loss = lambda_l1 * l1 + lambda_perceptual * perc + lambda_latent * lat  # [B]
            terms = {}
            if identity is not None:
                ident = identity(recon, images)  # [B]
                loss = loss + lambda_id * ident
                terms["identity"] = ident.mean()
            loss = loss.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            window.add(
                loss=loss,
                **{pixel_loss: l1.mean()},
                perceptual=perc.mean(),
                latent=lat.mean(),
                **terms,
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
