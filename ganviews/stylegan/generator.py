"""The StyleGAN2 generator the rest of ganviews uses: config, module, load and save.

Karras et al. 2020 (StyleGAN2), config-f skip generator; w+ layer groups after Karras et
al. 2019 (StyleGAN, Sec. 3.1 "coarse / middle / fine styles") with the 4 / 10 index
boundaries of the official 256-1024 px networks, as used by Chai et al. 2021 (Sec. 3.2)
for coarse vs fine perturbations.

    G = load_generator("network-snapshot.pkl", device="cpu")   # eval, no grad
    ws = G.mapping(z, c, truncation_psi=0.7)                    # [N, num_ws, w_dim]
    img = G.synthesis(ws, noise_mode="const")                   # [N, 3, R, R], ≈[-1, 1]
    save_generator(G, "g.safetensors")                          # own format, data only
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ganviews.core.config import from_dict, to_dict
from ganviews.core.errors import CheckpointError, ConfigError
from ganviews.core.file_limits import check_declared_bytes
from ganviews.core.runtime import file_sha256, resolve_device
from ganviews.core.weights_io import state_mismatch, weights_sha256, write_safetensors
from ganviews.stylegan import checkpoints
from ganviews.stylegan.networks import (
    MappingNetwork,
    SynthesisNetwork,
    block_resolutions,
    num_ws_for,
)

log = logging.getLogger(__name__)

LAYER_GROUP_NAMES = ("coarse", "middle", "fine")
PAPER_MIDDLE_START, PAPER_FINE_START = 4, 10  # w+ boundaries of the paper's 18-layer split
W_AVG_SAMPLES = 4096  # z samples used to estimate w_avg when a file lacks it
W_AVG_SEED = 0  # seed of those samples (deterministic estimate)


@dataclass(frozen=True)
class GeneratorConfig:
    """Architecture of a config-f StyleGAN2 generator (skip ToRGB outputs, no residual G)."""

    z_dim: int = 512  # size of the input latent z
    w_dim: int = 512  # size of the intermediate latent w (and each w+ entry)
    c_dim: int = 0  # number of classes of the label input; 0 = unconditional
    img_resolution: int = 1024  # output side length in pixels: a power of two ≥ 4
    img_channels: int = 3  # output image channels
    mapping_layers: int = 8  # fully connected layers of the mapping network
    mapping_lr_multiplier: float = 0.01  # equalised-LR multiplier of the mapping layers
    embed_features: int | None = None  # width of the label embedding; None = w_dim
    layer_features: int | None = None  # width of the hidden mapping layers; None = w_dim
    w_avg_beta: float | None = 0.995  # EMA decay of the tracked mean w in training; None = off
    channel_base: int = 32768  # width at resolution r is min(channel_base // r, channel_max) …
    channel_max: int = 512  # … unless `channels` is given
    channels: tuple[int, ...] | None = None  # explicit width per block 4, 8, …, img_resolution
    conv_clamp: float | None = None  # clamp of conv / ToRGB outputs (NVIDIA train.py: 256)
    layer_groups: dict[str, tuple[int, ...]] | None = (
        None  # w+ indices per group; None = default rule
    )

    def __post_init__(self) -> None:
        res = self.img_resolution
        if not isinstance(res, int) or res < 4 or res & (res - 1):
            raise ConfigError(f"img_resolution: expected a power of two ≥ 4, got {res!r}")
        for name in ("z_dim", "w_dim", "img_channels", "mapping_layers"):
            if getattr(self, name) < 1:
                raise ConfigError(
                    f"{name}: expected a positive integer, got {getattr(self, name)!r}"
                )
        if self.c_dim < 0:
            raise ConfigError(f"c_dim: expected ≥ 0, got {self.c_dim!r}")
        if self.channels is not None:
            object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
            want = len(block_resolutions(res))
            if len(self.channels) != want or min(self.channels) < 1:
                raise ConfigError(
                    f"channels: expected {want} positive widths (for {block_resolutions(res)} px), "
                    f"got {list(self.channels)}"
                )
        elif min(self.block_channels()) < 1:
            raise ConfigError(
                f"channel_base: {self.channel_base} gives width 0 at {res} px "
                f"(width = min(channel_base // r, channel_max)); raise it to ≥ {res} or pass channels"
            )
        if self.layer_groups is not None:
            groups = validate_layer_groups(self.layer_groups, num_ws_for(res))
            object.__setattr__(self, "layer_groups", {k: tuple(v) for k, v in groups.items()})

    @property
    def num_ws(self) -> int:
        return num_ws_for(self.img_resolution)

    def block_channels(self) -> list[int]:
        """Width of each synthesis block, from `channels` or the base/max formula."""
        if self.channels is not None:
            return list(self.channels)
        return [
            min(self.channel_base // r, self.channel_max)
            for r in block_resolutions(self.img_resolution)
        ]


def weight_bytes_bound(config: GeneratorConfig) -> int:
    """An upper bound of the bytes of a float32 ``Generator(config)``'s tensors, computed
    from the config alone (nothing is built); a few times the true size at most (tested)."""
    w, chans = config.w_dim, config.block_channels()
    widest = max(chans)
    embed = (config.embed_features or w) if config.c_dim else 0
    hidden, layers = max(config.layer_features or w, w), config.mapping_layers
    mapping = (config.z_dim + embed + layers * (hidden + 1)) * hidden + config.c_dim * embed + 2 * w
    synthesis = sum(
        9 * c * (widest + c) + 4 * w * widest + 2 * r * r + (config.img_channels + 24) * c
        for c, r in zip(chans, block_resolutions(config.img_resolution), strict=True)
    )
    return 4 * (mapping + synthesis)


def default_layer_groups(num_ws: int) -> dict[str, list[int]]:
    """w+ indices of the coarse / middle / fine styles.

    num_ws ≥ 11 (256 px and up): the paper's boundaries, coarse = 0–3, middle = 4–9,
    fine = 10…num_ws−1 (18 layers at 1024 px; the official 256/512 px nets use the same).
    Smaller generators: k = ceil(num_ws / 3); coarse = the first k, fine = the last k,
    middle = the rest (possibly empty): 8 px → 2/0/2, 16 px → 2/2/2, 32 px → 3/2/3,
    64 px → 4/2/4.
    """
    if num_ws >= PAPER_FINE_START + 1:
        bounds = (PAPER_MIDDLE_START, PAPER_FINE_START)
    else:
        k = math.ceil(num_ws / 3)
        bounds = (k, num_ws - k)
    return {
        "coarse": list(range(0, bounds[0])),
        "middle": list(range(bounds[0], bounds[1])),
        "fine": list(range(bounds[1], num_ws)),
    }


def validate_layer_groups(groups: Mapping[str, Sequence[int]], num_ws: int) -> dict[str, list[int]]:
    """Check a layer-group override: exactly coarse/middle/fine, indices in range, disjoint."""
    if not isinstance(groups, Mapping) or set(groups) != set(LAYER_GROUP_NAMES):
        got = sorted(groups) if isinstance(groups, Mapping) else type(groups).__name__
        raise ConfigError(f"layer_groups: expected keys {list(LAYER_GROUP_NAMES)}, got {got}")
    out, seen = {}, set()
    for name in LAYER_GROUP_NAMES:
        idx = [int(i) for i in groups[name]]
        bad = [i for i in idx if not 0 <= i < num_ws]
        if bad:
            raise ConfigError(f"layer_groups.{name}: indices {bad} outside 0…{num_ws - 1}")
        dup = seen.intersection(idx)
        if dup or len(set(idx)) != len(idx):
            raise ConfigError(f"layer_groups.{name}: index used twice ({sorted(dup) or idx})")
        seen.update(idx)
        out[name] = idx
    if not out["coarse"] or not out["fine"]:
        raise ConfigError("layer_groups: coarse and fine must not be empty")
    return out


class Generator(nn.Module):
    """StyleGAN2 generator: ``mapping`` (z, c → ws) and ``synthesis`` (ws → image).

    A fresh ``Generator(GeneratorConfig(...))`` is trainable (official init: N(0,1) weights
    with run-time equalised-LR gains, zero biases, affine biases 1). Checkpoints come from
    :func:`load_generator`, which returns it in eval mode without gradients.
    """

    def __init__(self, config: GeneratorConfig | None = None) -> None:
        super().__init__()
        config = GeneratorConfig() if config is None else config
        if not isinstance(config, GeneratorConfig):
            raise TypeError(f"config: expected a GeneratorConfig, got {type(config).__name__}")
        self.config = config
        self.z_dim, self.w_dim, self.c_dim = config.z_dim, config.w_dim, config.c_dim
        self.resolution = self.img_resolution = config.img_resolution
        self.img_channels = config.img_channels
        self.num_ws = config.num_ws
        self.synthesis = SynthesisNetwork(
            w_dim=config.w_dim,
            img_resolution=config.img_resolution,
            img_channels=config.img_channels,
            channels=config.block_channels(),
            conv_clamp=config.conv_clamp,
        )
        self.mapping = MappingNetwork(
            z_dim=config.z_dim,
            c_dim=config.c_dim,
            w_dim=config.w_dim,
            num_ws=self.num_ws,
            num_layers=config.mapping_layers,
            embed_features=config.embed_features,
            layer_features=config.layer_features,
            lr_multiplier=config.mapping_lr_multiplier,
            w_avg_beta=config.w_avg_beta,
        )
        groups = config.layer_groups or default_layer_groups(self.num_ws)
        self.layer_groups = {k: list(v) for k, v in groups.items()}
        self.source_format = "fresh"  # or the format load_generator read
        self.source_path: str | None = None
        self._file_sha256: str | None = None

    @property
    def mean_w(self) -> torch.Tensor:
        """The stored average w ([w_dim]), centre of the truncation trick."""
        return self.mapping.w_avg

    @property
    def sha256(self) -> str:
        """sha256 of the file this generator was loaded from, else of its weights."""
        return self._file_sha256 or weights_sha256(self)

    def forward(
        self,
        z: torch.Tensor,
        c: torch.Tensor | None = None,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        noise_mode: str = "const",
        **synthesis_kwargs,
    ) -> torch.Tensor:
        """z [N, z_dim] (+ c) → image [N, C, R, R]."""
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, noise_mode=noise_mode, **synthesis_kwargs)

    def extra_repr(self) -> str:
        return f"source={self.source_format}, groups={self.layer_groups}"


def load_generator(
    path: str | Path,
    device: str | torch.device = "cpu",
    layer_groups: Mapping[str, Sequence[int]] | None = None,
) -> Generator:
    """Load an NVIDIA stylegan2-ada pickle, a rosinality .pt or our own .safetensors file.

    The format is detected from the file content; architecture comes from the file
    (tensor shapes + recorded kwargs). Nothing stored in the file is executed. Returns the
    generator on ``device`` ("auto" = CUDA when present) in eval mode with ``requires_grad`` off; ``layer_groups``
    overrides the coarse/middle/fine w+ indices. Raises CheckpointError on any problem.
    """
    path = Path(path)
    device = resolve_device(device)
    raw = checkpoints.read_checkpoint(path)
    config_data = dict(raw.config)
    if layer_groups is not None:
        config_data["layer_groups"] = {k: list(v) for k, v in layer_groups.items()}
    try:
        config = from_dict(GeneratorConfig, config_data)
    except ConfigError as exc:
        if layer_groups is not None and "layer_groups" in str(exc):
            raise
        raise CheckpointError(f"{path}: inferred generator config is invalid: {exc}") from exc
    state = dict(raw.state)
    if raw.needs_w_avg:
        state["mapping.w_avg"] = torch.zeros([config.w_dim])
    check_declared_bytes(weight_bytes_bound(config), path=path, what="a generator")
    G = Generator(config)  # at most a small multiple of the file's size
    check_state_fits(G.state_dict(), state, path)
    G.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)
    if raw.needs_w_avg:
        G.mapping.w_avg.copy_(estimate_w_avg(G))
    G._file_sha256 = file_sha256(path)
    G.source_format, G.source_path = raw.format, str(path)
    log.info("loaded %s generator %s (%d px, num_ws=%d)", raw.format, path, G.resolution, G.num_ws)
    return G.to(device).eval().requires_grad_(False)


def check_state_fits(
    expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], path: Path | str
) -> None:
    """Names and shapes of ``state`` equal ``expected``'s, values float and finite, or a
    CheckpointError listing the mismatches. ``expected`` may live on the meta device."""
    missing, unexpected, wrong_keys = state_mismatch(expected, state)
    wrong = [
        f"{k}: file {list(state[k].shape)} vs model {list(expected[k].shape)}" for k in wrong_keys
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {missing[:6]}{' …' if len(missing) > 6 else ''}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:6]}{' …' if len(unexpected) > 6 else ''}")
    if wrong:
        problems.append(f"shape mismatches {wrong[:6]}{' …' if len(wrong) > 6 else ''}")
    if problems:
        raise CheckpointError(
            f"{path}: weights do not fit the inferred architecture: " + "; ".join(problems)
        )
    bad = [k for k, v in state.items() if not v.is_floating_point() or not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{path}: non-float or non-finite values in {bad[:6]}")


@torch.no_grad()
def estimate_w_avg(
    G: Generator, *, num_samples: int = W_AVG_SAMPLES, seed: int = W_AVG_SEED
) -> torch.Tensor:
    """Mean of mapping(z) over seeded z ~ N(0, I) (what rosinality's mean_latent does)."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn([num_samples, G.z_dim], generator=gen)  # [S, z_dim]
    c = None
    if G.c_dim > 0:
        c = torch.randint(0, G.c_dim, [num_samples], generator=gen)  # [S]
    return G.mapping(z, c)[:, 0].mean(dim=0)  # [w_dim]


def save_generator(G: Generator, path: str | Path) -> Path:
    """Write ``G`` as one .safetensors file: tensors + GeneratorConfig JSON in the metadata."""
    metadata = {
        "format": checkpoints.OWN_FORMAT_NAME,
        "format_version": checkpoints.OWN_FORMAT_VERSION,
        "config": json.dumps(to_dict(G.config), sort_keys=True),
        "source_sha256": G.sha256,
        "source_format": G.source_format,
    }
    return write_safetensors(G.state_dict(), path, metadata)
