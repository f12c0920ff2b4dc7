"""StyleGAN2 residual discriminator in pure PyTorch (for training small-domain generators).

Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN", Sec. 4.1 and
Fig. 7c (residual discriminator: two 3×3 convs per resolution, the second down-sampling, plus a
1×1 down-sampling skip, summed and scaled by 1/√2), Appendix B (equalised learning rate, FIR
low-pass filter [1, 3, 3, 1] before every down-sampling). The epilogue at 4×4 appends the
minibatch standard deviation feature of Karras et al. 2018 (ProGAN, Sec. 3), then a 3×3 conv,
a fully connected layer and the scalar output.

    D = Discriminator(DiscriminatorConfig(img_resolution=32, channels=(64, 128, 128, 128)))
    logits = D(images)   # images [N, 3, 32, 32] in [-1, 1] → [N] real/fake logits
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ganviews.core.errors import ConfigError
from ganviews.stylegan.networks import EqualizedLinear, fir_filter, lrelu_agc, make_resample_filter

SKIP_GAIN = math.sqrt(0.5)  # residual sum scaled by 1/√2 (StyleGAN2 Fig. 7c)
DOWN_FILTER_PAD_CONV = 2  # FIR padding before a 3×3 stride-2 conv: H → H+1 → H/2
DOWN_FILTER_PAD_SKIP = 1  # FIR padding before a 1×1 stride-2 conv: H → H−1 → H/2


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Architecture of a StyleGAN2 residual discriminator."""

    img_resolution: int = 32  # input side length: a power of two ≥ 8
    img_channels: int = 3  # input image channels
    channels: tuple[int, ...] | None = None  # width per resolution, highest first (R, R/2, …, 4)
    channel_base: int = 16384  # otherwise width at r = min(channel_base // r, channel_max)
    channel_max: int = 512  # … capped here
    mbstd_group_size: int = 4  # samples per minibatch-stddev group (≤ batch; must divide it)
    mbstd_channels: int = 1  # feature channels of the minibatch-stddev statistic

    def __post_init__(self) -> None:
        res = self.img_resolution
        if not isinstance(res, int) or res < 8 or res & (res - 1):
            raise ConfigError(f"img_resolution: expected a power of two ≥ 8, got {res!r}")
        if self.img_channels < 1:
            raise ConfigError(
                f"img_channels: expected a positive integer, got {self.img_channels!r}"
            )
        if self.mbstd_group_size < 1 or self.mbstd_channels < 1:
            raise ConfigError(
                f"mbstd_group_size / mbstd_channels: expected ≥ 1, got {self.mbstd_group_size} / {self.mbstd_channels}"
            )
        want = len(self.resolutions())
        if self.channels is not None:
            object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
            if len(self.channels) != want or min(self.channels) < 1:
                raise ConfigError(
                    f"channels: expected {want} positive widths (for {self.resolutions()} px), got {list(self.channels)}"
                )
        elif min(self.block_channels()) < 1:
            raise ConfigError(
                f"channel_base: {self.channel_base} gives width 0 at {res} px; raise it or pass channels"
            )
        if self.block_channels()[-1] % self.mbstd_channels:
            raise ConfigError(
                f"mbstd_channels: {self.mbstd_channels} must divide the 4 px width {self.block_channels()[-1]}"
            )

    def resolutions(self) -> list[int]:
        """R, R/2, …, 4."""
        return [2**i for i in range(int(math.log2(self.img_resolution)), 1, -1)]

    def block_channels(self) -> list[int]:
        if self.channels is not None:
            return list(self.channels)
        return [min(self.channel_base // r, self.channel_max) for r in self.resolutions()]


class EqualizedConv2d(nn.Module):
    """k×k convolution with equalised learning rate (weight × 1/√fan_in at run time).

    ``down=True`` low-pass filters with the FIR kernel and then convolves with stride 2.
    ``activation`` applies leaky ReLU × √2; ``gain`` scales the output (the residual 1/√2).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        bias: bool = True,
        activation: bool = True,
        down: bool = False,
        gain: float = 1.0,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(
            torch.randn([out_channels, in_channels, kernel_size, kernel_size])
        )
        self.bias = nn.Parameter(torch.zeros([out_channels])) if bias else None
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.activation, self.down, self.gain = activation, down, gain
        self.padding = kernel_size // 2
        self.kernel_size = kernel_size

    def forward(self, x: torch.Tensor, resample_filter: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain  # [O, I, k, k]
        b = None if self.bias is None else self.bias.to(x.dtype)
        if self.down:
            pad = DOWN_FILTER_PAD_CONV if self.kernel_size == 3 else DOWN_FILTER_PAD_SKIP
            x = fir_filter(x, resample_filter, pad=pad)  # [N, I, H+1 | H−1, …]
            x = F.conv2d(x, w, b, stride=2)  # [N, O, H/2, W/2]
        else:
            x = F.conv2d(x, w, b, padding=self.padding)  # [N, O, H, W]
        if self.activation:
            x = lrelu_agc(x)
        return x * self.gain if self.gain != 1.0 else x

    def extra_repr(self) -> str:
        return (
            f"{self.weight.shape[1]}→{self.weight.shape[0]}, k={self.kernel_size}, down={self.down}"
        )


class DiscriminatorBlock(nn.Module):
    """One resolution: (FromRGB at the top) → conv 3×3 → conv 3×3 ↓2, plus a 1×1 ↓2 skip."""

    def __init__(
        self, in_channels: int, out_channels: int, *, img_channels: int, from_rgb: bool
    ) -> None:
        super().__init__()
        self.fromrgb = EqualizedConv2d(img_channels, in_channels, 1) if from_rgb else None
        self.conv0 = EqualizedConv2d(in_channels, in_channels, 3)
        self.conv1 = EqualizedConv2d(in_channels, out_channels, 3, down=True, gain=SKIP_GAIN)
        self.skip = EqualizedConv2d(
            in_channels, out_channels, 1, bias=False, activation=False, down=True, gain=SKIP_GAIN
        )

    def forward(self, x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        if self.fromrgb is not None:
            x = self.fromrgb(x, f)  # [N, C, R, R]
        y = self.skip(x, f)  # [N, O, R/2, R/2]
        x = self.conv1(self.conv0(x, f), f)  # [N, O, R/2, R/2]
        return x + y


def minibatch_stddev(x: torch.Tensor, group_size: int, num_channels: int) -> torch.Tensor:
    """Append the per-group standard deviation across samples (ProGAN Sec. 3) as extra channels.

    Samples n and n + k·(N/G) form a group (official grouping); the statistic is averaged over
    the channels of each of ``num_channels`` slices and over space, then broadcast.
    """
    n, c, h, w = x.shape
    g = min(group_size, n)
    if n % g:
        raise ValueError(f"minibatch_stddev: batch size {n} is not divisible by the group size {g}")
    y = x.reshape(g, n // g, num_channels, c // num_channels, h, w)  # [G, M, F, c, H, W]
    y = (y - y.mean(dim=0)).square().mean(dim=0)  # [M, F, c, H, W]
    y = (y + 1e-8).sqrt().mean(dim=[2, 3, 4])  # [M, F]
    y = y.reshape(n // g, num_channels, 1, 1).repeat(g, 1, h, w)  # [N, F, H, W]
    return torch.cat([x, y], dim=1)  # [N, C + F, H, W]


class Discriminator(nn.Module):
    """StyleGAN2 residual discriminator: image [N, C, R, R] → logits [N] (higher = real)."""

    def __init__(self, config: DiscriminatorConfig | None = None) -> None:
        super().__init__()
        config = DiscriminatorConfig() if config is None else config
        if not isinstance(config, DiscriminatorConfig):
            raise TypeError(f"config: expected a DiscriminatorConfig, got {type(config).__name__}")
        self.config = config
        self.img_resolution, self.img_channels = config.img_resolution, config.img_channels
        widths = config.block_channels()  # [R, R/2, …, 4]
        self.register_buffer("resample_filter", make_resample_filter(), persistent=False)
        for i, res in enumerate(config.resolutions()[:-1]):
            block = DiscriminatorBlock(
                widths[i], widths[i + 1], img_channels=config.img_channels, from_rgb=i == 0
            )
            setattr(self, f"b{res}", block)
        c4 = widths[-1]
        self.epilogue_conv = EqualizedConv2d(c4 + config.mbstd_channels, c4, 3)
        self.epilogue_fc = EqualizedLinear(c4 * 16, c4, activation=True)
        self.out = EqualizedLinear(c4, 1)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        expected = (cfg.img_channels, cfg.img_resolution, cfg.img_resolution)
        if img.ndim != 4 or tuple(img.shape[1:]) != expected:
            raise ValueError(
                f"img: expected shape [N, {', '.join(map(str, expected))}], got {list(img.shape)}"
            )
        f = self.resample_filter.to(img.dtype)
        x = img
        for res in cfg.resolutions()[:-1]:
            x = getattr(self, f"b{res}")(x, f)  # [N, C, r/2, r/2]
        x = minibatch_stddev(x, cfg.mbstd_group_size, cfg.mbstd_channels)  # [N, C+F, 4, 4]
        x = self.epilogue_conv(x, f)  # [N, C, 4, 4]
        x = self.epilogue_fc(x.flatten(1))  # [N, C]
        return self.out(x).squeeze(1)  # [N]
