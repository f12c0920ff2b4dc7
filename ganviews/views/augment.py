"""Image-space views: colour jitter, spatial jitter and jitter on top of GAN renders.

Chai et al., "Ensembling with Deep Generative Views" (CVPR 2021), Sec. 3.3 / 4 (the image
augmentation baselines "color" and "crop", and the "combined" GAN + image views).

Every function works on a whole batch on the device, but each sample's random parameters
come from its own seed: one ``torch.Generator`` per sample draws a fixed block of
``_NUM_UNIFORMS`` uniforms on the CPU (identical on every device), so an augmented image
never depends on its batch-mates, the batch order or the device.

Uniform slots (always all drawn, so enabling one option never shifts another's value):
0 flip, 1 brightness, 2 contrast, 3 saturation, 4 hue, 5 crop row, 6 crop column.

Crops (``crop_mode``): faces zoom (up-scale by ``crop_scale`` = 1056/1024, crop back), as
the official ``data/data_celebahq.py``; cats and cars take a window at a random whole-pixel
offset with no rescaling, as the official ``RandomCrop`` (``data/data_cats.py``: 224 from 256,
offsets 0–32 on both axes; ``data/data_cars.py``: 256 from 342×256, horizontal only). Since
the classifier applies its own centre crop, "window" shifts the content so that the centred
window the classifier crops shows the random window.

Differences from torchvision's ``ColorJitter`` (used by the official code): the four colour
operations run in the fixed order brightness → contrast → saturation → hue instead of a
random permutation, and all run on tensors in the batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ganviews.core.runtime import item_seed
from ganviews.views.perturb import SEED_BITS

log = logging.getLogger(__name__)

_NUM_UNIFORMS = 7
_FLIP, _BRIGHT, _CONTRAST, _SAT, _HUE, _ROW, _COL = range(_NUM_UNIFORMS)
# the slots by name, for other image views drawn from the same rows (ganviews.views.photo)
UNIFORM_SLOTS = {"flip": _FLIP, "row": _ROW, "col": _COL}
_LUMA = (0.2989, 0.587, 0.114)  # ITU-R 601 luma weights as torchvision's rgb_to_grayscale


@dataclass(frozen=True)
class JitterConfig:
    """Strength of the image-space jitter (official face values by default)."""

    crop_mode: Literal["zoom", "window"] = (
        "zoom"  # "zoom": up-scale by crop_scale, crop back (faces); "window": move the classifier's crop window, no rescaling (cats, cars)
    )
    crop_scale: float = 1.03125  # "zoom": up-scale, then crop back (1056/1024)
    crop_window: tuple[float, float] = (
        1.0,
        1.0,
    )  # "window": the classifier's centre-crop window as a fraction of the input's (height, width)
    brightness: float = 0.05  # brightness factor ~ U[1-b, 1+b]
    contrast: float = 0.05  # contrast factor ~ U[1-c, 1+c]
    saturation: float = 0.05  # saturation factor ~ U[1-s, 1+s]
    hue: float = 0.05  # hue shift ~ U[-h, h] turns; "color" only (combined never shifts hue)
    flip: bool = True  # horizontal flip with probability 1/2
    combined_color: bool = True  # "combined": colour jitter (no hue) after crop + flip

    def __post_init__(self) -> None:
        if self.crop_mode not in ("zoom", "window"):
            raise ValueError(
                f"JitterConfig.crop_mode: got {self.crop_mode!r}, allowed: ['window', 'zoom']"
            )
        if not self.crop_scale >= 1.0:
            raise ValueError(f"JitterConfig.crop_scale: got {self.crop_scale}, must be ≥ 1")
        if len(self.crop_window) != 2 or not all(0.0 < f <= 1.0 for f in self.crop_window):
            raise ValueError(
                f"JitterConfig.crop_window: got {self.crop_window!r}, need (height, width) fractions in (0, 1]"
            )
        for name in ("brightness", "contrast", "saturation"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"JitterConfig.{name}: got {value}, must be in [0, 1)")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"JitterConfig.hue: got {self.hue}, must be in [0, 0.5]")


def jitter_seed(view_seed: int, jitter: int = 0) -> int:
    """The seed of image jitter ``jitter`` (0, 1, …) on top of the GAN view with ``view_seed``."""
    return item_seed(view_seed, "jitter") if jitter == 0 else item_seed(view_seed, "jitter", jitter)


def image_view_seed(seed: int, image_id: str, method: str, view: int) -> int:
    """Seed of image view ``view`` (≥ 1) of ``image_id`` for image method ``method`` (< 2**53)."""
    return item_seed(seed, "image-view", image_id, method, int(view)) & ((1 << SEED_BITS) - 1)


def draw_uniforms(seeds: Sequence[int] | torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """One row of ``_NUM_UNIFORMS`` U[0, 1) draws per seed, made on the CPU → [N, 7] on ``device``."""
    seeds = seeds.tolist() if isinstance(seeds, torch.Tensor) else list(seeds)
    rows = []
    gen = torch.Generator(device="cpu")
    for s in seeds:
        gen.manual_seed(int(s))
        rows.append(torch.rand(_NUM_UNIFORMS, generator=gen, dtype=torch.float64))
    if not rows:
        return torch.empty(0, _NUM_UNIFORMS, dtype=torch.float64, device=device)
    return torch.stack(rows).to(device)  # [N, 7]


def _check_images(images: torch.Tensor, seeds: Sequence[int] | torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images: expected shape [N, 3, H, W], got {list(images.shape)}")
    if len(seeds) != images.shape[0]:
        raise ValueError(
            f"seeds: expected one seed per image ({images.shape[0]}), got {len(seeds)}"
        )


def _factor(u: torch.Tensor, strength: float) -> torch.Tensor:
    """U[0,1) → U[1-strength, 1+strength], shaped [N, 1, 1, 1] for broadcasting."""
    return (1.0 + strength * (2.0 * u - 1.0)).view(-1, 1, 1, 1)


def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)  # [N, 1, H, W]


def _blend(a: torch.Tensor, b: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    return (ratio * a + (1.0 - ratio) * b).clamp(0.0, 1.0)


def _shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of RGB images in [0, 1] by ``shift`` turns ([N]) through HSV."""
    r, g, b = x.unbind(1)  # [N, H, W] each
    maxc, argmax = x.max(dim=1)
    minc = x.min(dim=1).values
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    sat = torch.where(
        maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc)
    )
    hue = torch.where(
        argmax == 0,
        torch.remainder((g - b) / safe, 6.0),
        torch.where(argmax == 1, (b - r) / safe + 2.0, (r - g) / safe + 4.0),
    )
    hue = torch.where(delta > 0, hue / 6.0, torch.zeros_like(hue))
    hue = torch.remainder(hue + shift.view(-1, 1, 1), 1.0)
    h6 = hue * 6.0
    sector = torch.floor(h6).long() % 6
    frac = h6 - torch.floor(h6)
    v = maxc
    p = v * (1.0 - sat)
    q = v * (1.0 - sat * frac)
    t = v * (1.0 - sat * (1.0 - frac))
    table = {  # sector → (r, g, b)
        0: (v, t, p),
        1: (q, v, p),
        2: (p, v, t),
        3: (p, q, v),
        4: (t, p, v),
        5: (v, p, q),
    }
    out = torch.zeros_like(x)
    for k, (rk, gk, bk) in table.items():
        sel = (sector == k).unsqueeze(1)  # [N, 1, H, W]
        out = torch.where(sel, torch.stack([rk, gk, bk], dim=1), out)
    return out


def _color(x: torch.Tensor, u: torch.Tensor, cfg: JitterConfig, *, hue: bool) -> torch.Tensor:
    """Colour jitter of images in [-1, 1] with per-sample uniforms ``u`` [N, 7]."""
    dtype = x.dtype
    y = ((x.float() + 1.0) / 2.0).clamp(0.0, 1.0)  # [N, 3, H, W] in [0, 1]
    uf = u.float()
    if cfg.brightness > 0:
        y = (y * _factor(uf[:, _BRIGHT], cfg.brightness)).clamp(0.0, 1.0)
    if cfg.contrast > 0:
        mean = _gray(y).mean(dim=(1, 2, 3), keepdim=True)  # [N, 1, 1, 1]
        y = _blend(y, mean, _factor(uf[:, _CONTRAST], cfg.contrast))
    if cfg.saturation > 0:
        y = _blend(y, _gray(y), _factor(uf[:, _SAT], cfg.saturation))
    if hue and cfg.hue > 0:
        y = _shift_hue(y, cfg.hue * (2.0 * uf[:, _HUE] - 1.0))
    return (y * 2.0 - 1.0).to(dtype)


def _flip(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    flip = (u[:, _FLIP] < 0.5).view(-1, 1, 1, 1)  # [N, 1, 1, 1]
    return torch.where(flip, x.flip(-1), x)


def _crop(x: torch.Tensor, u: torch.Tensor, scale: float) -> torch.Tensor:
    """Resize up by ``scale`` (bilinear) and crop back to the input size at per-sample offsets."""
    n, c, h, w = x.shape
    up_h, up_w = max(h, round(h * scale)), max(w, round(w * scale))
    if (up_h, up_w) == (h, w):
        return x
    big = F.interpolate(
        x, size=(up_h, up_w), mode="bilinear", align_corners=False
    )  # [N, C, h', w']
    top = torch.clamp((u[:, _ROW] * (up_h - h + 1)).long(), max=up_h - h)  # [N]
    left = torch.clamp((u[:, _COL] * (up_w - w + 1)).long(), max=up_w - w)  # [N]
    rows = top[:, None] + torch.arange(h, device=x.device)  # [N, H]
    cols = left[:, None] + torch.arange(w, device=x.device)  # [N, W]
    batch = torch.arange(n, device=x.device)[:, None, None]
    out = big.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # [N, H, W, C]
    return out.permute(0, 3, 1, 2).contiguous()


def _window(x: torch.Tensor, u: torch.Tensor, window: tuple[float, float]) -> torch.Tensor:
    """Move the content by whole pixels so that a centred window of ``window`` × (H, W) — the
    classifier's centre crop — shows a window at a uniform random offset: RandomCrop without
    rescaling. Offset o ∈ {0 … slack} (slack = H − window·H), shift o − slack // 2; the pixels
    that wrap around stay outside the centred window."""
    n, c, h, w = x.shape
    slack_h, slack_w = h - round(window[0] * h), w - round(window[1] * w)
    dy = torch.clamp((u[:, _ROW] * (slack_h + 1)).long(), max=slack_h) - slack_h // 2  # [N]
    dx = torch.clamp((u[:, _COL] * (slack_w + 1)).long(), max=slack_w) - slack_w // 2  # [N]
    rows = (torch.arange(h, device=x.device) + dy[:, None]) % h  # [N, H]
    cols = (torch.arange(w, device=x.device) + dx[:, None]) % w  # [N, W]
    x = x.gather(2, rows[:, None, :, None].expand(n, c, h, w))  # [N, C, H, W]
    return x.gather(3, cols[:, None, None, :].expand(n, c, h, w))  # [N, C, H, W]


def _spatial(x: torch.Tensor, u: torch.Tensor, cfg: JitterConfig) -> torch.Tensor:
    if cfg.crop_mode == "window":
        return _window(x, u, cfg.crop_window)
    return _crop(x, u, cfg.crop_scale)


def color_jitter(
    images: torch.Tensor,
    seeds: Sequence[int] | torch.Tensor,
    *,
    config: JitterConfig = JitterConfig(),
) -> torch.Tensor:
    """ "color": horizontal flip + brightness/contrast/saturation/hue jitter. [N,3,H,W] → same."""
    _check_images(images, seeds)
    u = draw_uniforms(seeds, images.device)
    x = _flip(images, u) if config.flip else images
    return _color(x, u, config, hue=True)


def spatial_jitter(
    images: torch.Tensor,
    seeds: Sequence[int] | torch.Tensor,
    *,
    config: JitterConfig = JitterConfig(),
) -> torch.Tensor:
    """ "crop": random crop (zoom: resize up by ``crop_scale`` and crop back; window: move the
    classifier's crop window), horizontal flip. [N,3,H,W] → same."""
    _check_images(images, seeds)
    u = draw_uniforms(seeds, images.device)
    x = _spatial(images, u, config)
    return _flip(x, u) if config.flip else x


def combined_jitter(
    images: torch.Tensor,
    seeds: Sequence[int] | torch.Tensor,
    *,
    config: JitterConfig = JitterConfig(),
) -> torch.Tensor:
    """Jitter on top of GAN renders: crop + flip, then colour jitter without hue (if enabled)."""
    _check_images(images, seeds)
    u = draw_uniforms(seeds, images.device)
    x = _spatial(images, u, config)
    x = _flip(x, u) if config.flip else x
    return _color(x, u, config, hue=False) if config.combined_color else x


IMAGE_AUGMENTATIONS: dict[str, Callable[..., torch.Tensor]] = {
    "color": color_jitter,
    "crop": spatial_jitter,
    "combined": combined_jitter,
}


def augment(
    images: torch.Tensor,
    seeds: Sequence[int] | torch.Tensor,
    method: str,
    *,
    config: JitterConfig = JitterConfig(),
) -> torch.Tensor:
    """Apply image method ``method`` (a key of IMAGE_AUGMENTATIONS), one seed per image."""
    if method not in IMAGE_AUGMENTATIONS:
        raise ValueError(f"method: got {method!r}, allowed: {sorted(IMAGE_AUGMENTATIONS)}")
    return IMAGE_AUGMENTATIONS[method](images, seeds, config=config)
