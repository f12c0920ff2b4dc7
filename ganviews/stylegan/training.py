"""Training a StyleGAN2 generator on a small image domain (the demo's digits), pure PyTorch.

Karras et al. 2020 (StyleGAN2), Sec. 2–4 and Appendix B; the training objective of Karras et
al. 2019 (StyleGAN), Sec. 4 / Appendix C, as implemented in stylegan2-ada (Karras et al. 2020b):

- non-saturating logistic loss (Goodfellow et al. 2014): G minimises softplus(−D(G(z))),
  D minimises softplus(D(G(z))) + softplus(−D(x));
- R1 penalty on reals (Mescheder et al. 2018), γ/2 · E‖∇ₓD(x)‖², applied lazily every
  ``r1_interval`` D steps with the loss scaled by the interval and Adam's lr / betas corrected
  by interval / (interval + 1) (StyleGAN2 Sec. 3.1, "lazy regularization");
- style-mixing regularisation (StyleGAN Sec. 3.1): with probability ``style_mixing_prob`` the
  w+ entries from a random cutoff on come from a second z;
- an exponential moving average of G's weights (``G_ema``, half-life ``ema_kimg`` thousand
  images, ramped up over the first ``ema_rampup`` fraction of training; ProGAN Sec. 5 /
  Yazıcı et al. 2019), which is the generator we export;
- Adam with β = (0, 0.99), ε = 1e-8; per-layer equalised learning rates live in the networks.
  Path-length regularisation (StyleGAN2 Sec. 3.2) is left out: it targets the smoothness of
  large generators and costs a second generator pass; ``docs/demo.md`` says so.

Every random draw (z, mixing cutoffs, synthesis noise) comes from one ``torch.Generator`` whose
state is checkpointed, and batch k of the data depends only on (seed, k): resuming from a
checkpoint continues bit-for-bit like an uninterrupted run on the same device.

    cfg = TrainGANConfig(resolution=32, total_kimg=200)
    data = ShuffledImages(images_uint8, batch_size=cfg.batch_size, seed=cfg.seed)   # [N, 3, R, R]
    train_gan(cfg, data, out_dir="runs/digits", device="cpu")
    G = load_generator("runs/digits/generator.safetensors")
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ganviews.core.atomic import write_atomically
from ganviews.core.config import from_dict, to_dict
from ganviews.core.errors import CheckpointError, ConfigError
from ganviews.core.images import uint8_to_signed
from ganviews.stylegan.discriminator import Discriminator, DiscriminatorConfig
from ganviews.stylegan.generator import Generator, GeneratorConfig, save_generator

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"  # full training state (G, D, G_ema, optimisers, step, RNG)
GENERATOR_NAME = "generator.safetensors"  # G_ema in the project's own format (load_generator)
CHECKPOINT_VERSION = 1
ADAM_EPS = 1e-8


@dataclass(frozen=True)
class TrainGANConfig:
    """Hyperparameters of a StyleGAN2 training run (defaults: the demo's 32 px digits)."""

    resolution: int = 32  # image side length (power of two ≥ 8)
    img_channels: int = 3  # image channels
    z_dim: int = 64  # input latent size
    w_dim: int = 64  # intermediate latent size
    mapping_layers: int = 2  # FC layers of the mapping network (stylegan2-ada "cifar": 2)
    g_channels: tuple[int, ...] | None = (128, 128, 64, 64)  # G width per block 4, 8, …, R
    d_channels: tuple[int, ...] | None = (64, 64, 128, 128)  # D width per resolution R, …, 4
    batch_size: int = 32  # images per step (per G and per D update)
    mbstd_group_size: int = 4  # minibatch-stddev group (must divide batch_size)
    total_kimg: float = 100.0  # length of training in thousands of real images shown to D
    g_lr: float = 0.0025  # Adam learning rate of G
    d_lr: float = 0.0025  # Adam learning rate of D (before the lazy-R1 correction)
    beta1: float = 0.0  # Adam β1
    beta2: float = 0.99  # Adam β2
    r1_gamma: float = 0.01  # R1 weight γ (stylegan2-ada "cifar": 0.01)
    r1_interval: int = 16  # apply R1 every this many D steps (lazy regularisation)
    style_mixing_prob: float = 0.9  # probability of mixing two z's w+ in a G batch
    ema_kimg: float = 10.0  # half-life of the G_ema weights, thousands of images
    ema_rampup: float | None = 0.05  # EMA half-life ≤ this fraction of images seen; None = off
    mapping_lr_multiplier: float = 0.01  # equalised-LR multiplier of the mapping network
    seed: int = 0  # seeds the networks' init, every random draw and the data order
    checkpoint_every: int = 200  # steps between checkpoints (and generator exports)

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.batch_size % min(self.mbstd_group_size, self.batch_size):
            raise ConfigError(
                f"batch_size: expected a positive multiple of mbstd_group_size={self.mbstd_group_size}, got {self.batch_size}"
            )
        if self.total_kimg <= 0:
            raise ConfigError(f"total_kimg: expected > 0, got {self.total_kimg!r}")
        if self.r1_interval < 1 or self.checkpoint_every < 1:
            raise ConfigError(
                f"r1_interval / checkpoint_every: expected ≥ 1, got {self.r1_interval} / {self.checkpoint_every}"
            )
        if not 0.0 <= self.style_mixing_prob <= 1.0:
            raise ConfigError(
                f"style_mixing_prob: expected a probability in [0, 1], got {self.style_mixing_prob!r}"
            )
        for name in ("g_lr", "d_lr", "ema_kimg"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}: expected > 0, got {getattr(self, name)!r}")
        if self.r1_gamma < 0:
            raise ConfigError(f"r1_gamma: expected ≥ 0, got {self.r1_gamma!r}")
        for name in ("g_channels", "d_channels"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, tuple(int(c) for c in getattr(self, name)))
        self.generator_config()  # validates resolution and widths
        self.discriminator_config()

    @property
    def total_steps(self) -> int:
        return math.ceil(self.total_kimg * 1000 / self.batch_size)

    def generator_config(self) -> GeneratorConfig:
        return GeneratorConfig(
            z_dim=self.z_dim,
            w_dim=self.w_dim,
            img_resolution=self.resolution,
            img_channels=self.img_channels,
            mapping_layers=self.mapping_layers,
            mapping_lr_multiplier=self.mapping_lr_multiplier,
            channels=self.g_channels,
            channel_base=16384,
            channel_max=256,
        )

    def discriminator_config(self) -> DiscriminatorConfig:
        return DiscriminatorConfig(
            img_resolution=self.resolution,
            img_channels=self.img_channels,
            channels=self.d_channels,
            channel_base=16384,
            channel_max=256,
            mbstd_group_size=self.mbstd_group_size,
        )


class ShuffledImages:
    """Deterministic minibatches of a uint8 image tensor [N, C, R, R]: batch k depends only on (seed, k).

    Epoch e is a permutation drawn from ``torch.Generator().manual_seed(seed · 1_000_003 + e)``;
    batches run through the concatenated epochs, so resuming at step k needs no iterator state.
    Returns float images in [-1, 1] on ``device``.
    """

    def __init__(
        self,
        images: torch.Tensor,
        *,
        batch_size: int,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ):
        if images.ndim != 4 or images.dtype != torch.uint8:
            raise ValueError(
                f"images: expected a uint8 tensor [N, C, H, W], got {images.dtype} {list(images.shape)}"
            )
        if images.shape[0] < 1:
            raise ValueError("images: the data set is empty")
        self.images, self.batch_size, self.seed = images, int(batch_size), int(seed)
        self.device = torch.device(device)
        self._perm_cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return self.images.shape[0]

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perm_cache:
            self._perm_cache = {
                epoch: torch.randperm(
                    len(self),
                    generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch),
                )
            }
        return self._perm_cache[epoch]

    def batch(self, step: int) -> torch.Tensor:
        n = len(self)
        index = []
        for pos in range(step * self.batch_size, (step + 1) * self.batch_size):
            index.append(int(self._permutation(pos // n)[pos % n]))
        x = self.images[index].to(self.device)  # [B, C, R, R] uint8
        return uint8_to_signed(x)  # [B, C, R, R] in [-1, 1]


@dataclass
class TrainState:
    """Everything a step changes; what a checkpoint holds."""

    G: Generator
    D: Discriminator
    G_ema: Generator
    opt_G: torch.optim.Optimizer
    opt_D: torch.optim.Optimizer
    rng: torch.Generator
    step: int = 0


def build_state(config: TrainGANConfig, *, device: str | torch.device = "cpu") -> TrainState:
    """Fresh networks (seeded by ``config.seed``) and their optimisers."""
    device = torch.device(device)
    torch.manual_seed(config.seed)  # network initialisation draws from the global generator
    G = Generator(config.generator_config()).to(device).train().requires_grad_(True)
    D = Discriminator(config.discriminator_config()).to(device).train().requires_grad_(True)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    betas = (config.beta1, config.beta2)
    opt_G = torch.optim.Adam(G.parameters(), lr=config.g_lr, betas=betas, eps=ADAM_EPS)
    ratio = config.r1_interval / (config.r1_interval + 1)  # lazy-regularisation correction
    opt_D = torch.optim.Adam(
        D.parameters(),
        lr=config.d_lr * ratio,
        betas=(config.beta1**ratio, config.beta2**ratio),
        eps=ADAM_EPS,
    )
    rng = torch.Generator(device=device).manual_seed(config.seed)
    return TrainState(G=G, D=D, G_ema=G_ema, opt_G=opt_G, opt_D=opt_D, rng=rng)


def sample_ws(
    G: Generator,
    batch_size: int,
    rng: torch.Generator,
    *,
    mixing_prob: float,
    update_emas: bool = False,
) -> torch.Tensor:
    """z ~ N(0, I) → w+, with style mixing (one cutoff per batch, official) → [B, num_ws, w_dim]."""
    device = G.mapping.w_avg.device
    z = torch.randn([batch_size, G.z_dim], generator=rng, device=device)  # [B, z_dim]
    ws = G.mapping(z, update_emas=update_emas)  # [B, L, C]
    draw = torch.rand([2], generator=rng, device=device)  # mixing decision, cutoff
    if mixing_prob > 0 and float(draw[0]) < mixing_prob:
        cutoff = 1 + int(float(draw[1]) * (G.num_ws - 1))  # uniform in 1 … num_ws − 1
        z2 = torch.randn([batch_size, G.z_dim], generator=rng, device=device)  # [B, z_dim]
        ws2 = G.mapping(z2, update_emas=False)  # [B, L, C]
        ws = torch.cat([ws[:, :cutoff], ws2[:, cutoff:]], dim=1)  # [B, L, C]
    return ws


def generate(G: Generator, ws: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """Synthesis with random noise drawn from ``rng`` (training mode)."""
    return G.synthesis(ws, noise_mode="random", noise_generator=rng)  # [B, C, R, R]


def r1_penalty(D: Discriminator, real: torch.Tensor) -> torch.Tensor:
    """‖∇ₓ D(x)‖² per real image → [B] (Mescheder et al. 2018, Eq. 9)."""
    real = real.detach().requires_grad_(True)
    logits = D(real)  # [B]
    (grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True)  # [B, C, R, R]
    return grad.square().sum(dim=[1, 2, 3])  # [B]


@torch.no_grad()
def update_ema(
    G_ema: Generator, G: Generator, *, config: TrainGANConfig, images_seen: int
) -> float:
    """G_ema ← β·G_ema + (1−β)·G with β = 0.5^(batch / half-life); buffers copied. Returns β."""
    ema_nimg = config.ema_kimg * 1000
    if config.ema_rampup is not None:
        ema_nimg = min(ema_nimg, images_seen * config.ema_rampup)
    beta = 0.5 ** (config.batch_size / max(ema_nimg, 1e-8))
    for p_ema, p in zip(G_ema.parameters(), G.parameters(), strict=True):
        p_ema.copy_(p.detach().lerp(p_ema, beta))
    for b_ema, b in zip(G_ema.buffers(), G.buffers(), strict=True):
        b_ema.copy_(b)
    return beta


def train_step(state: TrainState, reals: torch.Tensor, config: TrainGANConfig) -> dict[str, float]:
    """One G step, one D step, and every ``r1_interval``-th step the lazy R1 step."""
    G, D, rng, batch = state.G, state.D, state.rng, config.batch_size
    if reals.shape[0] != batch:
        raise ValueError(f"reals: expected a batch of {batch}, got {list(reals.shape)}")
    # G: non-saturating loss softplus(−D(G(z))).
    D.requires_grad_(False)
    ws = sample_ws(
        G, batch, rng, mixing_prob=config.style_mixing_prob, update_emas=True
    )  # [B, L, C]
    loss_G = F.softplus(-D(generate(G, ws, rng))).mean()
    state.opt_G.zero_grad(set_to_none=True)
    loss_G.backward()
    state.opt_G.step()
    # D: softplus(D(G(z))) + softplus(−D(x)).
    D.requires_grad_(True)
    with torch.no_grad():
        ws = sample_ws(G, batch, rng, mixing_prob=config.style_mixing_prob)  # [B, L, C]
        fakes = generate(G, ws, rng)  # [B, C, R, R]
    logits_fake, logits_real = D(fakes), D(reals)  # [B], [B]
    loss_D = F.softplus(logits_fake).mean() + F.softplus(-logits_real).mean()
    state.opt_D.zero_grad(set_to_none=True)
    loss_D.backward()
    state.opt_D.step()
    out = {
        "loss_G": float(loss_G.detach()),
        "loss_D": float(loss_D.detach()),
        "D_real": float(logits_real.detach().mean()),
        "D_fake": float(logits_fake.detach().mean()),
    }
    # Lazy R1 on reals, scaled by the interval.
    if config.r1_gamma > 0 and state.step % config.r1_interval == 0:
        penalty = r1_penalty(D, reals)  # [B]
        loss_r1 = penalty.mean() * (config.r1_gamma / 2) * config.r1_interval
        state.opt_D.zero_grad(set_to_none=True)
        loss_r1.backward()
        state.opt_D.step()
        out["r1"] = float(penalty.detach().mean())
    state.step += 1
    update_ema(state.G_ema, G, config=config, images_seen=state.step * batch)
    return out


def save_checkpoint(state: TrainState, config: TrainGANConfig, path: str | Path) -> Path:
    """Write the full training state atomically (tmp file + rename)."""
    path = Path(path)
    payload = {
        "version": CHECKPOINT_VERSION,
        "config": to_dict(config),
        "step": state.step,
        "G": state.G.state_dict(),
        "D": state.D.state_dict(),
        "G_ema": state.G_ema.state_dict(),
        "opt_G": state.opt_G.state_dict(),
        "opt_D": state.opt_D.state_dict(),
        "rng": state.rng.get_state(),
    }
    return write_atomically(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(
    path: str | Path, config: TrainGANConfig, *, device: str | torch.device = "cpu"
) -> TrainState:
    """Rebuild a :class:`TrainState` from :func:`save_checkpoint`'s file; the config must match."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"resume: no training checkpoint at {path}")
    try:
        payload = torch.load(path, map_location=torch.device(device), weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling problem becomes one clear error
        raise CheckpointError(f"{path}: not a readable train-gan checkpoint ({exc})") from exc
    if not isinstance(payload, dict) or payload.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: not a train-gan checkpoint of version {CHECKPOINT_VERSION}")
    saved = from_dict(TrainGANConfig, payload["config"])
    changed = {
        k: (getattr(saved, k), getattr(config, k))
        for k in to_dict(config)
        if k not in ("total_kimg", "checkpoint_every") and getattr(saved, k) != getattr(config, k)
    }
    if changed:
        detail = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in changed.items())
        raise CheckpointError(
            f"{path}: the checkpoint was trained with a different config ({detail})"
        )
    state = build_state(config, device=device)
    state.G.load_state_dict(payload["G"])
    state.D.load_state_dict(payload["D"])
    state.G_ema.load_state_dict(payload["G_ema"])
    state.opt_G.load_state_dict(payload["opt_G"])
    state.opt_D.load_state_dict(payload["opt_D"])
    state.rng.set_state(
        payload["rng"].to("cpu") if payload["rng"].device.type != "cpu" else payload["rng"]
    )
    state.step = int(payload["step"])
    return state


def export_generator(state: TrainState, path: str | Path) -> Path:
    """Save G_ema in the project's own .safetensors format (read by ``load_generator``)."""
    return save_generator(state.G_ema, path)


def train_gan(
    config: TrainGANConfig,
    data: ShuffledImages,
    *,
    out_dir: str | Path,
    device: str | torch.device = "cpu",
    resume: bool = False,
    log_every: int = 50,
    on_checkpoint: Callable[[TrainState], None] | None = None,
) -> TrainState:
    """Train until ``config.total_steps``; checkpoint + export G_ema every ``checkpoint_every`` steps.

    ``data.batch(k)`` supplies the reals of step k ([B, C, R, R] in [-1, 1]). With ``resume``,
    training continues from ``out_dir/checkpoint.pt``. Writes ``config.json`` and, at every
    checkpoint, ``checkpoint.pt``, ``generator.safetensors`` and a line in ``log.jsonl``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = out_dir / CHECKPOINT_NAME
    if resume:
        state = load_checkpoint(ckpt, config, device=device)
        log.info("resumed from %s at step %d", ckpt, state.step)
    else:
        if ckpt.exists():
            raise CheckpointError(
                f"{ckpt} exists: pass resume (CLI: --resume) or choose another out_dir"
            )
        state = build_state(config, device=device)
    config_json = json.dumps(to_dict(config), indent=2, sort_keys=True)
    write_atomically(out_dir / "config.json", lambda tmp: tmp.write_text(config_json))
    total = config.total_steps
    start, t0 = state.step, time.perf_counter()
    stats: dict[str, float] = {}
    while state.step < total:
        stats = train_step(state, data.batch(state.step), config)
        done = state.step
        if done % log_every == 0 or done == total:
            rate = (done - start) / max(time.perf_counter() - t0, 1e-9)
            log.info(
                "step %d/%d kimg %.1f  G %.3f  D %.3f  D(x) %.2f  D(G(z)) %.2f  %.2f steps/s",
                done,
                total,
                done * config.batch_size / 1000,
                stats["loss_G"],
                stats["loss_D"],
                stats["D_real"],
                stats["D_fake"],
                rate,
            )
        if done % config.checkpoint_every == 0 or done == total:
            save_checkpoint(state, config, ckpt)
            export_generator(state, out_dir / GENERATOR_NAME)
            record = {
                "step": done,
                "kimg": done * config.batch_size / 1000,
                "seconds": time.perf_counter() - t0,
                **stats,
            }
            with open(out_dir / "log.jsonl", "a") as fh:
                fh.write(json.dumps(record) + "\n")
            if on_checkpoint is not None:
                on_checkpoint(state)
    return state
