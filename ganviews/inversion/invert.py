"""GAN inversion: batched, per-image independent optimisation of w+ (paper Sec. 3.2).

For each image x with known-pixel mask m the paper minimises over w ∈ W+

    L(w) = (1 − λ)·L1_m(G(w), x) + λ·LPIPS_m(G(w), x) + λ_lat · latent(w)

initialised from the encoder, w₀ = E(x, m). Masked L1 is the mean |G(w) − x| over known
pixels and channels; masked LPIPS is the mask-weighted mean of the spatial LPIPS map
(:mod:`ganviews.inversion.perceptual`). The latent term is either the official code's *encoder
consistency* ``mean((E(x, m) − E(G(w), m))²)`` — the encoder is re-run on G(w) at every
evaluation — or the paper's ℓ2 ``mean((w − E(x, m))²)``; both are means over the
num_ws·w_dim entries, as the official ``mse_loss``. Defaults as the official code:
λ = 0.5, λ_lat = 0.25, 500 L-BFGS steps with a weak-Wolfe line search (history 10, ≤ 10
evaluations per line search), LPIPS-AlexNet at full resolution, noise "const".

Many images are optimised at once by :func:`ganviews.inversion.lbfgs.lbfgs_minimize`, each with its
own history, step lengths, line search and termination, so ``invert`` gives an image the
same w* alone or inside any batch (up to the generator's own batch-size rounding).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ganviews.core.errors import ConfigError
from ganviews.core.runtime import assert_shape, exact_fp32
from ganviews.inversion.lbfgs import (
    AdamConfig,
    LBFGSConfig,
    MinimizeResult,
    Status,
    adam_minimize,
    lbfgs_minimize,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InversionConfig:
    """Objective and optimiser of the inversion; defaults follow the official implementation."""

    steps: int = 500  # optimiser steps per image (L-BFGS iterations or Adam updates)
    optimizer: Literal["lbfgs", "adam"] = "lbfgs"  # per-image L-BFGS (official) or Adam
    lambda_lpips: float = 0.5  # λ: loss = (1−λ)·masked L1 + λ·masked LPIPS + latent term
    latent_weight: float = 0.25  # λ_lat, weight of the latent term (official lambda_f)
    latent_term: Literal["encoder_consistency", "l2"] = "encoder_consistency"  # official | paper
    lbfgs_history: int = 10  # curvature pairs kept per image
    lbfgs_max_evals: int = 10  # objective evaluations per line search at most
    tolerance_grad: float = 1e-7  # an image stops when max |∂L/∂w| ≤ this
    tolerance_change: float = 1e-9  # … or when a step changes L or w by ≤ this
    adam_lr: float = 0.01  # step size of the Adam option
    lpips_net: Literal["lpips-alex", "lpips-vgg", "lpips-random"] = "lpips-alex"  # perceptual net
    lpips_resolution: int | None = None  # area-downsample to this size before LPIPS (None: full)
    noise_mode: Literal["const", "none"] = "const"  # synthesis noise (deterministic objective)
    batch_size: int = 16  # images optimised together

    def __post_init__(self) -> None:
        checks = [
            ("steps", isinstance(self.steps, int) and self.steps >= 0, "an integer ≥ 0"),
            ("optimizer", self.optimizer in ("lbfgs", "adam"), "'lbfgs' or 'adam'"),
            ("lambda_lpips", 0.0 <= self.lambda_lpips <= 1.0, "in [0, 1]"),
            ("latent_weight", self.latent_weight >= 0.0, "≥ 0"),
            (
                "latent_term",
                self.latent_term in ("encoder_consistency", "l2"),
                "'encoder_consistency' or 'l2'",
            ),
            (
                "noise_mode",
                self.noise_mode in ("const", "none"),
                "'const' or 'none' (random noise would make the objective stochastic)",
            ),
            (
                "batch_size",
                isinstance(self.batch_size, int) and self.batch_size >= 1,
                "an integer ≥ 1",
            ),
            (
                "lpips_resolution",
                self.lpips_resolution is None or self.lpips_resolution >= 16,
                "None or ≥ 16",
            ),
            ("adam_lr", self.adam_lr > 0, "> 0"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise ConfigError(f"invert.{name}: got {getattr(self, name)!r}, expected {allowed}")
        self.lbfgs_config()  # validates the L-BFGS fields, naming them

    def lbfgs_config(self) -> LBFGSConfig:
        return LBFGSConfig(
            history_size=self.lbfgs_history,
            max_evals=self.lbfgs_max_evals,
            tolerance_grad=self.tolerance_grad,
            tolerance_change=self.tolerance_change,
        )


@dataclass
class InversionResult:
    """Per-image outcome of :func:`invert` (tensors on the generator's device)."""

    w: torch.Tensor  # [N, num_ws, w_dim] optimised w*
    w_init: torch.Tensor  # [N, num_ws, w_dim] starting point
    loss: torch.Tensor  # [N] final total loss = loss_l1 + loss_lpips + loss_latent
    loss_l1: torch.Tensor  # [N] (1−λ)·masked L1 at w*
    loss_lpips: torch.Tensor  # [N] λ·masked LPIPS at w* (0 without a perceptual net)
    loss_latent: torch.Tensor  # [N] λ_lat·latent term at w*
    loss_init: torch.Tensor  # [N] total loss at w_init
    psnr: torch.Tensor  # [N] masked PSNR (dB) of clamp(G(w*)) vs clamp(x), [-1,1] → [0,1], peak 1
    lpips: torch.Tensor  # [N] masked LPIPS distance of G(w*) vs x (NaN without a perceptual net)
    iterations: torch.Tensor  # [N] int64 optimiser steps taken
    evaluations: torch.Tensor  # [N] int64 objective evaluations (forward + backward passes)
    status: torch.Tensor  # [N] int64 ganviews.inversion.lbfgs.Status codes (why each image stopped)
    recon: torch.Tensor  # [N, C, H, W] G(w*), raw (not clamped)


def masked_l1(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean |x − y| over known pixels and all channels → [N]."""
    num = ((x - y).abs() * mask).sum(dim=(1, 2, 3))  # [N]
    return num / (mask.sum(dim=(1, 2, 3)) * x.shape[1])


def masked_psnr(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """PSNR (dB, peak 1) over known pixels of images in [-1, 1] mapped to [0, 1]; inputs clamped."""
    diff = (x.clamp(-1, 1) - y.clamp(-1, 1)) / 2  # [N, C, H, W] on the [0, 1] scale
    mse = (diff.square() * mask).sum(dim=(1, 2, 3)) / (mask.sum(dim=(1, 2, 3)) * x.shape[1])
    return -10.0 * torch.log10(mse.clamp_min(1e-20))  # [N]; 200 dB for an exact match


class _Objective:
    """The per-image inversion loss for a fixed batch of targets (rows selected by index)."""

    def __init__(self, G, images, masks, *, perceptual, encoder, latent_mode, w_ref, enc_ref, cfg):
        self.G, self.images, self.masks = G, images, masks
        self.perceptual, self.encoder = perceptual, encoder
        self.latent_mode = latent_mode  # "encoder_consistency" | "l2" | None (no latent term)
        self.w_ref, self.enc_ref = w_ref, enc_ref  # [N, L, C] targets of the latent term
        self.cfg = cfg
        self.shape = (G.num_ws, G.w_dim)

    def terms(
        self, ws: torch.Tensor, index: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Weighted loss terms ([M] each) and the rendered images for ``ws`` [M, L, C]."""
        cfg, x, m = self.cfg, self.images[index], self.masks[index]
        img = self.G.synthesis(ws, noise_mode=cfg.noise_mode)  # [M, C, H, W]
        out = {"l1": (1.0 - cfg.lambda_lpips) * masked_l1(img, x, m)}
        zero = out["l1"].new_zeros(out["l1"].shape)
        use_lpips = self.perceptual is not None and cfg.lambda_lpips > 0
        out["lpips"] = cfg.lambda_lpips * self.perceptual(img, x, m) if use_lpips else zero
        if self.latent_mode == "encoder_consistency":
            diff = self.enc_ref[index] - self.encoder(img, m)  # [M, L, C]
            out["latent"] = cfg.latent_weight * diff.square().mean(dim=(1, 2))
        elif self.latent_mode == "l2":
            out["latent"] = cfg.latent_weight * (ws - self.w_ref[index]).square().mean(dim=(1, 2))
        else:
            out["latent"] = zero
        return out, img

    def __call__(self, x: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.enable_grad():
            ws = x.detach().view(-1, *self.shape).requires_grad_(True)  # [M, L, C]
            parts, _ = self.terms(ws, index)
            loss = parts["l1"] + parts["lpips"] + parts["latent"]  # [M]
            # Images are independent, so ∂(Σ loss)/∂ws[i] = ∂loss[i]/∂ws[i].
            (grad,) = torch.autograd.grad(loss.sum(), ws)
        return loss.detach(), grad.reshape(x.shape)


def _module_dtype(module: nn.Module) -> torch.dtype | None:
    for tensor in module.parameters():
        return tensor.dtype
    for tensor in module.buffers():
        if tensor.is_floating_point():
            return tensor.dtype
    return None


def _prepare(G, images, masks, w_init, encoder, perceptual):
    device, dtype = G.mean_w.device, G.mean_w.dtype
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(
            f"images: expected a [N, C, H, W] tensor, got {getattr(images, 'shape', type(images))}"
        )
    N = images.shape[0]
    R = G.resolution
    assert_shape(images, [N, G.img_channels, R, R], "images (at the generator's resolution)")
    images = images.detach().to(device=device, dtype=dtype)
    if masks is None:
        masks = images.new_ones(N, 1, R, R)
    assert_shape(masks, [N, 1, R, R], "masks")
    masks = masks.detach().to(device=device, dtype=dtype)
    if bool(((masks < 0) | (masks > 1)).any()):
        raise ValueError("masks: values must lie in [0, 1] (1 = known pixel, 0 = unknown)")
    empty = torch.nonzero(masks.sum(dim=(1, 2, 3)) <= 0).flatten().tolist()
    if empty:
        raise ValueError(f"masks: images {empty[:10]} have no known pixel (all-zero mask)")
    if w_init is not None:
        assert_shape(w_init, [N, G.num_ws, G.w_dim], "w_init")
        w_init = w_init.detach().to(device=device, dtype=dtype)
    for name, module in (("encoder", encoder), ("perceptual", perceptual)):
        if module is not None and any(m.training for m in module.modules()):
            raise ValueError(
                f"{name}: is in training mode; call {name}.eval() first (batch statistics or "
                "dropout would couple images and make the objective random)"
            )
        mod_dtype = None if module is None else _module_dtype(module)
        if mod_dtype is not None and mod_dtype != dtype:
            raise ValueError(
                f"{name}: its weights are {mod_dtype} but the generator is {dtype}; "
                f"convert it (e.g. {name}.to({dtype}))"
            )
    return images, masks, w_init


def invert(
    G: nn.Module,
    images: torch.Tensor,
    masks: torch.Tensor | None = None,
    encoder: nn.Module | None = None,
    w_init: torch.Tensor | None = None,
    steps: int = 500,
    optimizer: str = "lbfgs",
    perceptual: nn.Module | None = None,
    **options,
) -> InversionResult:
    """Invert ``images`` [N, C, R, R] (in [-1, 1], R = G.resolution) into G's w+ space.

    ``masks`` [N, 1, R, R] (1 known, 0 unknown; default all ones): unknown pixels influence
    nothing. ``encoder``: gives w_init = E(x, m) (unless ``w_init`` is passed) and the target
    of the latent term. Without an encoder, w_init defaults to ``G.mean_w`` on every layer
    and the latent term is ℓ2 to w_init (the official code's behaviour without an encoder).
    ``perceptual`` (:func:`ganviews.inversion.perceptual.load_perceptual`): None = no LPIPS term.
    ``options``: any other :class:`InversionConfig` field, keyword only (e.g.
    ``lambda_lpips=0.5, latent_weight=0.25, latent_term="l2", batch_size=16``), so
    ``invert(G, x, **dataclasses.asdict(cfg))`` runs a stored config. The generator's
    device and dtype (float32 or float64) are used throughout; on CUDA the optimisation
    runs with TF32 off (:func:`ganviews.core.runtime.exact_fp32`).
    """
    unknown = sorted(set(options) - {f.name for f in dataclasses.fields(InversionConfig)})
    if unknown:
        allowed = sorted(f.name for f in dataclasses.fields(InversionConfig))
        raise ConfigError(f"invert: unknown option(s) {unknown}; allowed: {allowed}")
    cfg = InversionConfig(steps=steps, optimizer=optimizer, **options)
    images, masks, w_init = _prepare(G, images, masks, w_init, encoder, perceptual)
    latent_mode = None
    if cfg.latent_weight > 0:
        latent_mode = cfg.latent_term if encoder is not None else "l2"
        if encoder is None and cfg.latent_term == "encoder_consistency":
            log.info("no encoder: the latent term is ℓ2 to w_init (as the official code)")
    if perceptual is None and cfg.lambda_lpips > 0:
        log.info(
            "no perceptual net: loss = %.2f·L1 + latent term (LPIPS term off)", 1 - cfg.lambda_lpips
        )
    parts = []
    for start in range(0, images.shape[0], cfg.batch_size):
        sl = slice(start, start + cfg.batch_size)
        parts.append(
            _invert_batch(
                G,
                images[sl],
                masks[sl],
                None if w_init is None else w_init[sl],
                encoder=encoder,
                perceptual=perceptual,
                latent_mode=latent_mode,
                cfg=cfg,
            )
        )
    return InversionResult(
        **{
            f.name: torch.cat([getattr(p, f.name) for p in parts])
            for f in dataclasses.fields(InversionResult)
        }
    )


@torch.no_grad()
def _invert_batch(
    G, images, masks, w_init, *, encoder, perceptual, latent_mode, cfg
) -> InversionResult:
    device = images.device
    N = images.shape[0]
    t0 = time.perf_counter()
    with exact_fp32(device):
        enc_ref = None
        if encoder is not None:
            enc_ref = encoder(images, masks)  # [N, L, C] E(x, m): start and latent target
            assert_shape(enc_ref, [N, G.num_ws, G.w_dim], "encoder output")
        if w_init is None:
            w_init = enc_ref if enc_ref is not None else G.mean_w.expand(N, G.num_ws, G.w_dim)
        w_init = w_init.detach().clone()  # [N, L, C]
        w_ref = enc_ref if (latent_mode == "l2" and enc_ref is not None) else w_init
        objective = _Objective(
            G,
            images,
            masks,
            perceptual=perceptual,
            encoder=encoder,
            latent_mode=latent_mode,
            w_ref=w_ref,
            enc_ref=enc_ref,
            cfg=cfg,
        )
        x0 = w_init.reshape(N, -1)  # [N, L·C]
        if cfg.optimizer == "lbfgs":
            opt: MinimizeResult = lbfgs_minimize(
                objective, x0, steps=cfg.steps, config=cfg.lbfgs_config()
            )
        else:
            opt = adam_minimize(objective, x0, steps=cfg.steps, config=AdamConfig(lr=cfg.adam_lr))
        w = opt.x.view(N, G.num_ws, G.w_dim)
        rows = torch.arange(N, device=device)
        init_parts, _ = objective.terms(w_init, rows)
        final, recon = objective.terms(w, rows)
        lpips = perceptual(recon, images, masks) if perceptual is not None else None  # [N]
    loss = final["l1"] + final["lpips"] + final["latent"]
    result = InversionResult(
        w=w,
        w_init=w_init,
        loss=loss,
        loss_l1=final["l1"],
        loss_lpips=final["lpips"],
        loss_latent=final["latent"],
        loss_init=init_parts["l1"] + init_parts["lpips"] + init_parts["latent"],
        psnr=masked_psnr(recon, images, masks),
        lpips=lpips if lpips is not None else torch.full_like(loss, math.nan),
        iterations=opt.iterations,
        evaluations=opt.evaluations,
        status=opt.status,
        recon=recon,
    )
    log.info(
        "inverted %d images (%s, %d steps): loss %.4f → %.4f (mean), PSNR %.2f dB, %d batched calls, "
        "%.1f s; stops: %s",
        N,
        cfg.optimizer,
        cfg.steps,
        float(result.loss_init.mean()),
        float(loss.mean()),
        float(result.psnr.mean()),
        opt.batch_calls,
        time.perf_counter() - t0,
        {
            Status(int(k)).name: int(v)
            for k, v in zip(*torch.unique(opt.status, return_counts=True), strict=True)
        },
    )
    return result
