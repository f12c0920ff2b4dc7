"""Multiview sampling from a generator (Jahanian et al., ICLR 2022, Sec. 3.2.2, 3.3.1, App. C).

Anchors are latents drawn from ``p_z``; the *views* of an anchor are nearby latents
(Eq. 9–10): ``T_z(z) = z + w_Gauss`` with ``w_Gauss ~ N^t(0, σ, t)``, a Gaussian of standard
deviation σ truncated at ±t·σ. The paper's truncations (Sec. 4.1, App. C.2.1):

- BigBiGAN / BigGAN: anchors ``z ~ N^t(0, 1, 2)``, offsets ``N^t(0, 0.2, 2)`` (1.0 for the
  class-conditional BigGAN) — ``z_truncation=2, view_truncation=2, sigma=0.2`` (the default);
- StyleGAN2 LSUN CAR ("N(0, 1, 0.9)", σ = 0.25): plain normal z and offsets with StyleGAN's
  truncation trick ψ = 0.9 on w — ``z_truncation=None, view_truncation=None,
  truncation_psi=0.9, sigma=0.25``.

``t_z`` picks the latent transformation: ``"gauss"`` (Eq. 10, in ``space`` z or w),
``"independent"`` (App. C.1.2: a fresh draw from p_z with the anchor's class, for
class-conditional generators) or ``"none"`` (every view is the anchor; pixel augmentations
alone make the pairs, the paper's ``T_z = -`` rows). A class-conditional generator draws one
class per anchor (``y ~ Cat(M)``, App. C.1), shared by its views.

Seeds (STYLE.md habit 4): anchor i's latent and class come from
``item_generator(seed, "anchor", i)``, view v's offset from ``item_generator(seed, "view", i, v)``,
always drawn on the CPU; so any sample re-renders exactly, whatever the batch, shard or device.
View 0 is the anchor itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ganviews.core.errors import ConfigError
from ganviews.core.images import signed_to_uint8
from ganviews.core.runtime import item_generator

log = logging.getLogger(__name__)

T_Z = ("gauss", "independent", "none")
SPACES = ("z", "w")


@dataclass(frozen=True)
class SamplingConfig:
    """How anchors and their latent views are drawn (paper Sec. 3.3.1, 4.1)."""

    n_anchors: int = 1024  # number of anchors (the paper: 130K / 1.3M)
    n_views: int = 2  # latents per anchor, the anchor (view 0) included; ≥ 2 for t_z ≠ none
    t_z: Literal["gauss", "independent", "none"] = "gauss"  # latent transformation T_z
    space: Literal["z", "w"] = "z"  # where the Gaussian offset is added (the paper: z)
    sigma: float = (
        0.2  # standard deviation σ of the offset (paper: 0.2 unconditional, 1.0 conditional)
    )
    z_truncation: float | None = 2.0  # anchors z ~ N(0, 1) truncated at ±t (None: not truncated)
    view_truncation: float | None = 2.0  # offsets truncated at ±t·σ (None: not truncated)
    truncation_psi: float = 1.0  # StyleGAN truncation trick on w (the paper's LSUN CAR: 0.9)
    seed: int = 0  # base seed of every anchor and view
    batch_size: int = 64  # anchors rendered per batch (no effect on the samples)

    def __post_init__(self) -> None:
        if self.t_z not in T_Z:
            raise ConfigError(f"t_z: {self.t_z!r} is not one of {list(T_Z)}")
        if self.space not in SPACES:
            raise ConfigError(f"space: {self.space!r} is not one of {list(SPACES)}")
        for name in ("n_anchors", "n_views", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name}: expected ≥ 1, got {getattr(self, name)!r}")
        if self.t_z != "none" and self.n_views < 2:
            raise ConfigError(f"n_views: t_z={self.t_z!r} needs ≥ 2 views, got {self.n_views}")
        if not self.sigma >= 0:
            raise ConfigError(f"sigma: expected ≥ 0, got {self.sigma!r}")
        for name in ("z_truncation", "view_truncation"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{name}: expected > 0 or null, got {value!r}")


def truncated_normal(
    shape: tuple[int, ...], *, truncation: float | None, generator: torch.Generator
) -> torch.Tensor:
    """N(0, 1) samples, truncated at ±``truncation`` (None: not truncated), float32 on the CPU.

    Uses ``torch.nn.init.trunc_normal_`` (inverse-CDF sampling, one draw per value), so the
    values are a deterministic function of the generator's state.
    """
    out = torch.empty(shape, dtype=torch.float32)
    if truncation is None:
        return out.normal_(generator=generator)
    t = float(truncation)
    return torch.nn.init.trunc_normal_(out, 0.0, 1.0, -t, t, generator=generator)


def anchor_latent(
    cfg: SamplingConfig, index: int, *, z_dim: int, c_dim: int
) -> tuple[torch.Tensor, int]:
    """Anchor ``index``: its z [z_dim] and class (-1 for an unconditional generator)."""
    gen = item_generator(cfg.seed, "anchor", int(index))
    z = truncated_normal((z_dim,), truncation=cfg.z_truncation, generator=gen)  # [z_dim]
    label = int(torch.randint(0, c_dim, (1,), generator=gen)) if c_dim > 0 else -1
    return z, label


def view_noise(cfg: SamplingConfig, index: int, view: int, *, dim: int) -> torch.Tensor:
    """The standard-normal draw [dim] of view ``view`` ≥ 1 of anchor ``index`` (truncated)."""
    gen = item_generator(cfg.seed, "view", int(index), int(view))
    truncation = cfg.z_truncation if cfg.t_z == "independent" else cfg.view_truncation
    return truncated_normal((dim,), truncation=truncation, generator=gen)


@torch.no_grad()
def sample_latents(G, cfg: SamplingConfig, indices) -> tuple[torch.Tensor, np.ndarray]:
    """Latents of anchors ``indices`` and their views: [n, n_views, D] float32 (CPU), labels [n].

    D is ``G.z_dim`` when views live in z (t_z "none" and "independent" too), ``G.w_dim`` for
    ``space="w"`` (there the anchor's w = mapping(z, c) with ψ, and views add σ·noise to it).
    """
    indices = [int(i) for i in indices]
    anchors = [anchor_latent(cfg, i, z_dim=G.z_dim, c_dim=G.c_dim) for i in indices]
    z = torch.stack([a[0] for a in anchors]) if anchors else torch.empty(0, G.z_dim)  # [n, z_dim]
    labels = np.asarray([a[1] for a in anchors], dtype=np.int64)  # [n]
    base = z
    if cfg.space == "w" and cfg.t_z == "gauss":
        device = G.mean_w.device
        c = torch.as_tensor(labels, device=device) if G.c_dim > 0 else None
        base = G.mapping(z.to(device), c, truncation_psi=cfg.truncation_psi)[:, 0].float().cpu()
    views = [base]  # view 0 = the anchor
    for v in range(1, cfg.n_views):
        if cfg.t_z == "none":
            views.append(base)
            continue
        noise = torch.stack([view_noise(cfg, i, v, dim=base.shape[1]) for i in indices])
        if noise.numel() == 0:
            noise = torch.empty_like(base)
        views.append(noise if cfg.t_z == "independent" else base + cfg.sigma * noise)
    return torch.stack(views, dim=1), labels  # [n, V, D], [n]


@torch.no_grad()
def render_latents(
    G, latents: torch.Tensor, labels: np.ndarray, cfg: SamplingConfig, *, batch_size: int = 64
) -> np.ndarray:
    """Images of ``latents`` [n, V, D] from :func:`sample_latents`: uint8 [n, V, C, R, R].

    Constant noise (``noise_mode="const"``), so a latent always gives the same image.
    """
    n, num_views, dim = latents.shape
    device = G.mean_w.device
    flat = latents.reshape(n * num_views, dim)  # [n·V, D]
    flat_labels = np.repeat(labels, num_views)  # [n·V]
    in_w = cfg.space == "w" and cfg.t_z == "gauss"
    out = np.empty((n * num_views, G.img_channels, G.resolution, G.resolution), dtype=np.uint8)
    for start in range(0, n * num_views, batch_size):
        chunk = flat[start : start + batch_size].to(device)  # [B, D]
        if in_w:
            ws = chunk.unsqueeze(1).repeat(1, G.num_ws, 1)  # [B, L, w_dim]
        else:
            c = None
            if G.c_dim > 0:
                c = torch.as_tensor(flat_labels[start : start + batch_size], device=device)
            ws = G.mapping(chunk, c, truncation_psi=cfg.truncation_psi)  # [B, L, w_dim]
        img = G.synthesis(ws, noise_mode="const").float()  # [B, C, R, R]
        out[start : start + len(chunk)] = signed_to_uint8(img).cpu().numpy()
    return out.reshape(n, num_views, *out.shape[1:])


def sample_multiview(G, cfg: SamplingConfig, indices) -> dict[str, np.ndarray]:
    """Anchors ``indices`` end to end: ``images`` uint8 [n, V, C, R, R], ``latents`` float32
    [n, V, D], ``labels`` int64 [n] (-1: unconditional)."""
    latents, labels = sample_latents(G, cfg, indices)
    images = render_latents(G, latents, labels, cfg, batch_size=cfg.batch_size * cfg.n_views)
    log.debug("sampled %d anchors × %d views", len(labels), cfg.n_views)
    return {"images": images, "latents": latents.numpy(), "labels": labels}
