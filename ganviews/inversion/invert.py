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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ganviews.core.errors import ConfigError
from ganviews.core.runtime import PRECISIONS, NumericsPolicy, assert_shape
from ganviews.inversion.batching import ChunkedEvaluation, auto_batch_size
from ganviews.inversion.lbfgs import (
    AdamConfig,
    LBFGSConfig,
    MinimizeResult,
    Status,
    adam_minimize,
    lbfgs_minimize,
)
from ganviews.inversion.perceptual import TargetFeatures
from ganviews.stylegan.fused import KERNELS, MEMORY_FORMATS, SynthesisOptions

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
    batch_size: int | Literal["auto"] = 16  # slots optimised together; "auto": fit free memory
    precision: Literal["exact", "tf32", "bf16"] = "exact"  # networks' numerics (NumericsPolicy)
    progress_tol: float = 0.0  # opt-in early stop: relative loss gain per window ≤ this (0: off)
    progress_window: int = 50  # L-BFGS steps per progress check
    synthesis_kernels: Literal["fused", "reference"] = "fused"  # G's ops (SynthesisOptions)
    memory_format: Literal["contiguous", "channels_last"] = "contiguous"  # G's activations
    compile: bool = False  # torch.compile the objective's networks and the L-BFGS bookkeeping

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
                self.batch_size == "auto"
                or (isinstance(self.batch_size, int) and self.batch_size >= 1),
                "an integer ≥ 1 or 'auto'",
            ),
            (
                "lpips_resolution",
                self.lpips_resolution is None or self.lpips_resolution >= 16,
                "None or ≥ 16",
            ),
            ("adam_lr", self.adam_lr > 0, "> 0"),
            ("precision", self.precision in PRECISIONS, " or ".join(map(repr, PRECISIONS))),
            (
                "synthesis_kernels",
                self.synthesis_kernels in KERNELS,
                " or ".join(map(repr, KERNELS)),
            ),
            (
                "memory_format",
                self.memory_format in MEMORY_FORMATS,
                " or ".join(map(repr, MEMORY_FORMATS)),
            ),
            ("compile", isinstance(self.compile, bool), "true or false"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise ConfigError(f"invert.{name}: got {getattr(self, name)!r}, expected {allowed}")
        self.lbfgs_config()  # validates the L-BFGS fields, naming them

    def synthesis_options(self) -> SynthesisOptions:
        """How G computes during the inversion (compiled as part of the objective)."""
        return SynthesisOptions(kernels=self.synthesis_kernels, memory_format=self.memory_format)

    def lbfgs_config(self) -> LBFGSConfig:
        return LBFGSConfig(
            history_size=self.lbfgs_history,
            max_evals=self.lbfgs_max_evals,
            tolerance_grad=self.tolerance_grad,
            tolerance_change=self.tolerance_change,
            progress_tol=self.progress_tol,
            progress_window=self.progress_window,
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
    """The per-image inversion loss for a fixed set of targets (rows selected by index).

    What does not change between evaluations is computed once, when the objective is built:
    the encoder's E(x, m) and LPIPS's target features (:meth:`MaskedLPIPS.target`).
    ``cfg.compile``: the networks' part of an evaluation (G, LPIPS, encoder) runs through
    ``torch.compile``; its backward pass is compiled with it.
    """

    def __init__(
        self, G, images, masks, *, perceptual, encoder, latent_mode, w_init, cfg, policy, chunk
    ):
        self.G, self.images, self.masks = G, images, masks
        self.perceptual, self.encoder = perceptual, encoder
        self.latent_mode = latent_mode  # "encoder_consistency" | "l2" | None (no latent term)
        self.cfg, self.policy = cfg, policy
        self.shape = (G.num_ws, G.w_dim)
        self.synthesis_options = cfg.synthesis_options()
        self.networks = torch.compile(self._networks) if cfg.compile else self._networks
        self.use_lpips = perceptual is not None and cfg.lambda_lpips > 0
        N, device, dtype = images.shape[0], images.device, images.dtype
        self.enc_ref = None
        self.lpips_target = None
        with torch.no_grad(), policy.networks(device):
            if encoder is not None:
                enc = [
                    encoder(images[i : i + chunk], masks[i : i + chunk]) for i in range(0, N, chunk)
                ]
                self.enc_ref = torch.cat(enc).to(dtype)  # [N, L, C] E(x, m): start and target
                assert_shape(self.enc_ref, [N, G.num_ws, G.w_dim], "encoder output")
            if perceptual is not None:
                self.lpips_target = TargetFeatures.cat(
                    [
                        perceptual.target(images[i : i + chunk], masks[i : i + chunk])
                        for i in range(0, N, chunk)
                    ]
                )
        if w_init is None:
            w_init = self.enc_ref if self.enc_ref is not None else G.mean_w.expand(N, *self.shape)
        self.w_init = w_init.detach().clone()  # [N, L, C]
        use_enc = latent_mode == "l2" and self.enc_ref is not None
        self.w_ref = self.enc_ref if use_enc else self.w_init  # [N, L, C] target of the ℓ2 term

    def terms(
        self, ws: torch.Tensor, index: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Weighted loss terms ([M] each) and the rendered images for ``ws`` [M, L, C].

        Networks run under the numerics policy; their outputs are cast back to the
        generator's dtype before any loss reduction.
        """
        cfg, x, m = self.cfg, self.images[index], self.masks[index]
        with self.policy.networks(ws.device):
            img, lp, enc = self.networks(ws, index)
        out = {"l1": (1.0 - cfg.lambda_lpips) * masked_l1(img, x, m)}
        zero = out["l1"].new_zeros(out["l1"].shape)
        out["lpips"] = cfg.lambda_lpips * lp.to(x.dtype) if lp is not None else zero
        if enc is not None:
            diff = self.enc_ref[index] - enc.to(x.dtype)  # [M, L, C]
            out["latent"] = cfg.latent_weight * diff.square().mean(dim=(1, 2))
        elif self.latent_mode == "l2":
            out["latent"] = cfg.latent_weight * (ws - self.w_ref[index]).square().mean(dim=(1, 2))
        else:
            out["latent"] = zero
        return out, img

    def _networks(self, ws: torch.Tensor, index: torch.Tensor):
        """G(ws) [M, C, H, W] in the targets' dtype, its LPIPS distance [M] (or None) and its
        encoding [M, L, C] (or None)."""
        x, m = self.images[index], self.masks[index]
        img = self.G.synthesis(ws, noise_mode=self.cfg.noise_mode, options=self.synthesis_options)
        img = img.to(x.dtype)  # [M, C, H, W]
        lp = self.perceptual.distance(img, self.lpips_target, index) if self.use_lpips else None
        enc = self.encoder(img, m) if self.latent_mode == "encoder_consistency" else None
        return img, lp, enc

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
    on_finished: Callable[[torch.Tensor, InversionResult], None] | None = None,
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
    device and dtype (float32 or float64) hold the optimiser state and every loss
    reduction; ``precision`` decides how the networks compute
    (:class:`ganviews.core.runtime.NumericsPolicy`: "exact", "tf32", "bf16"). All images
    go through ``batch_size`` slots by continuous batching: a finished image's slot takes
    the next image, each with its own optimiser state. ``on_finished(rows, result)``: called
    as soon as images stop (L-BFGS; Adam: once, at the end) with their row numbers [K] and
    their :class:`InversionResult`, so a caller can store finished images while the others
    run on (the returned result holds every image either way).
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
    return _invert_all(
        G,
        images,
        masks,
        w_init,
        encoder=encoder,
        perceptual=perceptual,
        latent_mode=latent_mode,
        cfg=cfg,
        on_finished=on_finished,
    )


@torch.no_grad()
def _measure(
    objective: _Objective, opt: MinimizeResult, rows: torch.Tensor, *, chunk: int
) -> InversionResult:
    """The report of problems ``rows`` [K] (final rows of ``opt``): the loss terms at w* and
    at w_init, G(w*), PSNR and LPIPS — in exact fp32 and eager whatever the policy, so runs
    under different policies compare on the same scale."""
    G, images, masks = objective.G, objective.images, objective.masks
    saved = objective.policy, objective.networks
    objective.policy = exact = NumericsPolicy("exact")
    objective.networks = objective._networks  # eager: no compile for other shapes / no grad
    w = opt.x[rows].view(len(rows), G.num_ws, G.w_dim)
    w_init = objective.w_init[rows]
    init_parts, final, recon, lpips = [], [], [], []
    try:
        for i in range(0, len(rows), chunk):
            idx = rows[i : i + chunk]
            init_parts.append(objective.terms(w_init[i : i + chunk], idx)[0])
            parts, img = objective.terms(w[i : i + chunk], idx)
            final.append(parts)
            recon.append(img)
            if objective.perceptual is not None:
                with exact.networks(img.device):
                    distance = objective.perceptual.distance(img, objective.lpips_target, idx)
                    lpips.append(distance.to(img.dtype))
    finally:
        objective.policy, objective.networks = saved
    init = {k: torch.cat([p[k] for p in init_parts]) for k in init_parts[0]}
    end = {k: torch.cat([p[k] for p in final]) for k in final[0]}
    recon = torch.cat(recon)
    loss = end["l1"] + end["lpips"] + end["latent"]
    return InversionResult(
        w=w,
        w_init=w_init,
        loss=loss,
        loss_l1=end["l1"],
        loss_lpips=end["lpips"],
        loss_latent=end["latent"],
        loss_init=init["l1"] + init["lpips"] + init["latent"],
        psnr=masked_psnr(recon, images[rows], masks[rows]),
        lpips=torch.cat(lpips) if lpips else torch.full_like(loss, math.nan),
        iterations=opt.iterations[rows],
        evaluations=opt.evaluations[rows],
        status=opt.status[rows],
        recon=recon,
    )


def _assemble(parts: list[tuple[torch.Tensor, InversionResult]], n: int) -> InversionResult:
    """One result in problem order from reports of disjoint row sets covering 0…n−1."""
    if len(parts) == 1:
        return parts[0][1]
    order = torch.cat([rows for rows, _ in parts])
    assert len(order) == n, (len(order), n)
    back = torch.argsort(order)
    return InversionResult(
        **{
            f.name: torch.cat([getattr(part, f.name) for _, part in parts])[back]
            for f in dataclasses.fields(InversionResult)
        }
    )


@torch.no_grad()
def _invert_all(
    G, images, masks, w_init, *, encoder, perceptual, latent_mode, cfg, on_finished
) -> InversionResult:
    device = images.device
    N = images.shape[0]
    t0 = time.perf_counter()
    policy = NumericsPolicy(cfg.precision)
    limit = N if cfg.batch_size == "auto" else min(cfg.batch_size, N)
    objective = _Objective(
        G,
        images,
        masks,
        perceptual=perceptual,
        encoder=encoder,
        latent_mode=latent_mode,
        w_init=w_init,
        cfg=cfg,
        policy=policy,
        chunk=limit if cfg.batch_size != "auto" else min(N, 16),
    )
    w_init = objective.w_init
    x0 = w_init.reshape(N, -1)  # [N, L·C]
    rows = torch.arange(N, device=device)
    width = limit
    if cfg.batch_size == "auto":
        width = auto_batch_size(objective, x0, rows, limit=limit)
    evaluate = ChunkedEvaluation(objective, width)  # halves and retries on out-of-memory
    parts: list[tuple[torch.Tensor, InversionResult]] = []

    def finished(ids: list[int], opt: MinimizeResult) -> None:
        """Measure (and hand over) the images that have just stopped."""
        rows = torch.tensor(sorted(ids), device=device)
        part = _measure(objective, opt, rows, chunk=evaluate.chunk)
        parts.append((rows, part))
        on_finished(rows, part)

    if cfg.optimizer == "lbfgs":
        opt: MinimizeResult = lbfgs_minimize(
            evaluate,
            x0,
            steps=cfg.steps,
            config=cfg.lbfgs_config(),
            batch_size=width,
            compile=cfg.compile,
            on_finished=None if on_finished is None else finished,
        )
    else:
        opt = adam_minimize(evaluate, x0, steps=cfg.steps, config=AdamConfig(lr=cfg.adam_lr))
    if on_finished is None:  # one report of every image, in order
        parts.append((rows, _measure(objective, opt, rows, chunk=evaluate.chunk)))
    elif cfg.optimizer != "lbfgs":  # Adam runs every image to the end together
        finished(list(range(N)), opt)
    result = _assemble(parts, N)
    if device.type == "cuda":
        torch.cuda.empty_cache()  # give the shard's cached blocks back before the next one
    log.info(
        "inverted %d images (%s, %d steps, %s, %d slots): loss %.4f → %.4f (mean), "
        "PSNR %.2f dB, %d batched calls, %.1f s; stops: %s",
        N,
        cfg.optimizer,
        cfg.steps,
        cfg.precision,
        width,
        float(result.loss_init.mean()),
        float(result.loss.mean()),
        float(result.psnr.mean()),
        opt.batch_calls,
        time.perf_counter() - t0,
        {
            Status(int(k)).name: int(v)
            for k, v in zip(*torch.unique(opt.status, return_counts=True), strict=True)
        },
    )
    return result
