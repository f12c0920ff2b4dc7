"""StyleGAN2 generator networks (config-f, skip/ToRGB architecture) in pure PyTorch.

Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN" (CVPR):
Sec. 2.2 (modulation / weight demodulation, Eq. 1-3), Sec. 4.1 and Fig. 7b (skip
generator: every resolution adds an up-sampled RGB image), Appendix B (equalised learning
rate, mapping-network learning-rate multiplier 0.01). The mapping network, w+ and the
truncation trick follow Karras et al. 2019 (StyleGAN), Sec. 2 and Sec. 3.3 / Appendix B.

Numerics follow the official stylegan2-ada-pytorch networks exactly (gains applied at run
time, never folded into the stored tensors), so checkpoints of that code and of rosinality's
port load with only reshapes; see ``ganviews/stylegan/checkpoints.py`` and ``docs/generator.md``.

State-dict keys are the official NVIDIA ones (``synthesis.b8.conv0.affine.weight`` …),
except that the fixed FIR ``resample_filter`` buffers are not stored per layer: one
non-persistent buffer in :class:`SynthesisNetwork` serves every layer.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ganviews.stylegan.fused import LRELU_GAIN, LRELU_SLOPE, SynthesisOptions, bias_act, compiled

DEMOD_EPS = 1e-8  # epsilon inside the demodulation rsqrt (Eq. 3)
NORM_EPS = 1e-8  # epsilon of the z / label-embedding second-moment normalisation
RESAMPLE_TAPS = (1.0, 3.0, 3.0, 1.0)  # separable binomial FIR of up-sampling (config-f)
NOISE_MODES = ("const", "random", "none")

NoiseGenerator = torch.Generator | Sequence[torch.Generator] | None


def block_resolutions(img_resolution: int) -> list[int]:
    """Resolutions of the synthesis blocks: 4, 8, …, img_resolution."""
    return [2**i for i in range(2, int(math.log2(img_resolution)) + 1)]


def num_ws_for(img_resolution: int) -> int:
    """Number of w+ entries: one per 3x3 conv plus one for the last ToRGB (2·log2(res) − 2)."""
    return 2 * int(math.log2(img_resolution)) - 2


def make_resample_filter(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The 4x4 binomial FIR outer([1,3,3,1], [1,3,3,1]) / 64 (sums to 1)."""
    taps = torch.tensor(RESAMPLE_TAPS, dtype=torch.float64)
    f = torch.outer(taps, taps)  # [4, 4]
    return (f / f.sum()).to(dtype)


def normalize_2nd_moment(x: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    """x / sqrt(mean(x²) + eps) over the feature dim (pixel norm of z and label embeddings)."""
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()  # [N, C]


def lrelu_agc(x: torch.Tensor, clamp: float | None = None) -> torch.Tensor:
    """Leaky ReLU (0.2) times √2, then optional symmetric clamp (official ``bias_act``)."""
    x = F.leaky_relu(x, LRELU_SLOPE) * LRELU_GAIN
    return x if clamp is None else x.clamp(-clamp, clamp)


def fir_filter(
    x: torch.Tensor, f: torch.Tensor, pad: int, gain: float = 1.0, *, fold_pad: bool = False
) -> torch.Tensor:
    """Depthwise 2-D FIR convolution (true convolution: kernel flipped) after zero padding.

    ``fold_pad``: let the convolution pad (``padding=pad``, pad ≥ 0) instead of writing a
    padded copy with ``F.pad`` first (the reference op sequence; also handles pad < 0).
    """
    channels = x.shape[1]
    kernel = (f.flip([0, 1]) * gain).to(x.dtype)  # [kh, kw]
    kernel = kernel[None, None].expand(channels, 1, *f.shape)  # [C, 1, kh, kw]
    if fold_pad and pad >= 0:
        return F.conv2d(x, kernel, padding=pad, groups=channels)
    x = F.pad(x, [pad, pad, pad, pad])
    return F.conv2d(x, kernel, groups=channels)


def upsample2d(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """×2 up-sampling: zero insertion, pad (2, 1), FIR with gain 4 (skip-image path).

    Written as one depthwise transposed convolution with stride 2 and padding 1, which is
    the same sum for the symmetric 4x4 filter used here.
    """
    channels = x.shape[1]
    kernel = (f * 4.0).to(x.dtype)[None, None].expand(channels, 1, *f.shape)  # [C, 1, 4, 4]
    return F.conv_transpose2d(x, kernel, stride=2, padding=1, groups=channels)


@contextlib.contextmanager
def _no_autocast(device_type: str):
    """Demodulation sums of squares overflow fp16: keep them out of autocast."""
    if torch.is_autocast_enabled(device_type):
        with torch.autocast(device_type=device_type, enabled=False):
            yield
    else:
        yield


def demodulation_coefficients(weight: torch.Tensor, styles: torch.Tensor) -> torch.Tensor:
    """1 / sqrt(Σ_{i,kh,kw} (W[o,i]·s[n,i])² + eps) per sample and output channel (Eq. 3)."""
    work = torch.promote_types(styles.dtype, torch.float32)
    with _no_autocast(styles.device.type):
        w2 = weight.to(work).square().sum(dim=[2, 3])  # [O, I]
        return (styles.to(work).square() @ w2.t() + DEMOD_EPS).rsqrt()  # [N, O]


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    *,
    demodulate: bool = True,
    up: bool = False,
    resample_filter: torch.Tensor | None = None,
    fused: bool = False,
    fold_pad: bool = False,
) -> torch.Tensor:
    """Modulated (and optionally demodulated) convolution, StyleGAN2 Sec. 2.2.

    x [N, I, H, W], weight [O, I, k, k], styles [N, I]. ``up`` makes it the up-sampling
    conv: a stride-2 transposed convolution (weight fed as-is, in/out axes swapped, no
    flip; size 2H+1) followed by the 4x4 FIR with gain 4 and padding 1 (size 2H).
    ``fused`` modulates the weights per sample and runs one grouped convolution (groups=N);
    otherwise the activations are scaled instead (same maths, batch-sized plain conv).
    ``fold_pad``: the FIR pads inside its convolution (:func:`fir_filter`).
    """
    n, in_ch, h, w_ = x.shape
    out_ch, _, kh, kw = weight.shape
    weight = weight.to(x.dtype)
    styles = styles.to(x.dtype)
    if fused:
        wm = weight[None] * styles[:, None, :, None, None]  # [N, O, I, k, k]
        if demodulate:
            wm = wm * demodulation_coefficients(weight, styles).to(x.dtype)[:, :, None, None, None]
        xg = x.reshape(1, n * in_ch, h, w_)  # [1, N·I, H, W]
        if up:
            wt = wm.transpose(1, 2).reshape(n * in_ch, out_ch, kh, kw)  # [N·I, O, k, k]
            y = F.conv_transpose2d(xg, wt, stride=2, groups=n)  # [1, N·O, 2H+1, 2W+1]
        else:
            y = F.conv2d(xg, wm.reshape(n * out_ch, in_ch, kh, kw), padding=kh // 2, groups=n)
        y = y.reshape(n, out_ch, *y.shape[2:])  # [N, O, H', W']
    else:
        y = x * styles[:, :, None, None]  # [N, I, H, W]
        if up:
            y = F.conv_transpose2d(y, weight.transpose(0, 1), stride=2)  # [N, O, 2H+1, 2W+1]
        else:
            y = F.conv2d(y, weight, padding=kh // 2)  # [N, O, H, W]
    if up:
        y = fir_filter(y, resample_filter, pad=1, gain=4.0, fold_pad=fold_pad)  # [N, O, 2H, 2W]
    if demodulate and not fused:
        y = y * demodulation_coefficients(weight, styles).to(y.dtype)[:, :, None, None]
    return y


class EqualizedLinear(nn.Module):
    """Fully connected layer with equalised learning rate (StyleGAN2 App. B).

    Stored weight ~ N(0, 1/lr²); at run time weight × lr/√in and bias × lr, so the
    effective layer starts at the usual He-scaled init while the optimiser sees unit scale.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        lr_multiplier: float = 1.0,
        bias_init: float = 0.0,
        activation: bool = False,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init)))
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain  # [O, I]
        b = self.bias.to(x.dtype) * self.bias_gain  # [O]
        if self.activation:
            return lrelu_agc(x.matmul(w.t()) + b)  # [N, O]
        return torch.addmm(b.unsqueeze(0), x, w.t())  # [N, O]

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, lrelu={self.activation}"


class MappingNetwork(nn.Module):
    """z (+ optional class label) → w, broadcast to w+ with optional truncation.

    StyleGAN Sec. 2 / App. C: normalise z (and the label embedding), concatenate, run
    ``num_layers`` equalised-LR FC layers with leaky ReLU (lr multiplier 0.01). ``w_avg``
    tracks the mean w in training (β = ``w_avg_beta``) and is the truncation centre.
    """

    def __init__(
        self,
        *,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        num_ws: int,
        num_layers: int = 8,
        embed_features: int | None = None,
        layer_features: int | None = None,
        lr_multiplier: float = 0.01,
        w_avg_beta: float | None = 0.995,
    ) -> None:
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = z_dim, c_dim, w_dim, num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta
        embed_features = w_dim if embed_features is None else embed_features
        layer_features = w_dim if layer_features is None else layer_features
        if c_dim == 0:
            embed_features = 0
        features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        if c_dim > 0:
            self.embed = EqualizedLinear(c_dim, embed_features)
        for i in range(num_layers):
            layer = EqualizedLinear(
                features[i], features[i + 1], lr_multiplier=lr_multiplier, activation=True
            )
            setattr(self, f"fc{i}", layer)
        self.register_buffer("w_avg", torch.zeros([w_dim]))

    def _labels(self, c: torch.Tensor | None, n: int, like: torch.Tensor) -> torch.Tensor:
        """Validate ``c``; integer class indices [N] become one-hot [N, c_dim]."""
        if c is None or c.numel() == 0:
            raise ValueError(
                f"c: this generator is class-conditional (c_dim={self.c_dim}); pass one-hot "
                f"labels [N, {self.c_dim}] or class indices [N], got {c if c is None else list(c.shape)}"
            )
        if c.ndim == 1 and not c.is_floating_point():
            if c.numel() and (int(c.min()) < 0 or int(c.max()) >= self.c_dim):
                raise ValueError(
                    f"c: class indices must lie in [0, {self.c_dim}), got {c.tolist()}"
                )
            c = F.one_hot(c.long(), self.c_dim)
        if tuple(c.shape) != (n, self.c_dim):
            raise ValueError(f"c: expected shape [{n}, {self.c_dim}], got {list(c.shape)}")
        return c.to(device=like.device, dtype=like.dtype)  # [N, c_dim]

    def forward(
        self,
        z: torch.Tensor,
        c: torch.Tensor | None = None,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        *,
        update_emas: bool = False,
    ) -> torch.Tensor:
        """z [N, z_dim], c [N, c_dim] one-hot or [N] indices → ws [N, num_ws, w_dim]."""
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z: expected shape [N, {self.z_dim}], got {list(z.shape)}")
        dtype = z.dtype if z.is_floating_point() else self.w_avg.dtype
        z = z.to(dtype)
        parts = [normalize_2nd_moment(z)] if self.z_dim > 0 else []
        if self.c_dim > 0:
            parts.append(normalize_2nd_moment(self.embed(self._labels(c, z.shape[0], z))))
        x = torch.cat(parts, dim=1)  # [N, z_dim + embed]
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)  # [N, F]
        if update_emas and self.w_avg_beta is not None:
            with torch.no_grad():
                self.w_avg.copy_(
                    x.detach().mean(dim=0).to(self.w_avg.dtype).lerp(self.w_avg, self.w_avg_beta)
                )
        ws = x.unsqueeze(1).repeat(1, self.num_ws, 1)  # [N, L, C]
        if truncation_psi != 1:
            cutoff = self.num_ws if truncation_cutoff is None else int(truncation_cutoff)
            w_avg = self.w_avg.to(ws.dtype)
            head = w_avg.lerp(ws[:, :cutoff], float(truncation_psi))  # [N, cutoff, C]
            ws = torch.cat([head, ws[:, cutoff:]], dim=1)  # [N, L, C]
        return ws

    def extra_repr(self) -> str:
        return f"z_dim={self.z_dim}, c_dim={self.c_dim}, w_dim={self.w_dim}, num_ws={self.num_ws}"


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (optionally ×2 up-sampling) + noise + bias + leaky ReLU (+ clamp)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        w_dim: int,
        resolution: int,
        up: bool = False,
        kernel_size: int = 3,
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.resolution, self.up, self.conv_clamp = resolution, up, conv_clamp
        self.affine = EqualizedLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(
            torch.randn([out_channels, in_channels, kernel_size, kernel_size])
        )
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.register_buffer("noise_const", torch.randn([resolution, resolution]))

    def _noise(
        self, x: torch.Tensor, noise_mode: str, noise_generator: NoiseGenerator
    ) -> torch.Tensor | None:
        if noise_mode == "none":
            return None
        strength = self.noise_strength.to(x.dtype)
        if noise_mode == "const":
            return self.noise_const.to(x.dtype) * strength  # [H, W]
        shape = [1, 1, self.resolution, self.resolution]
        if noise_generator is None or isinstance(noise_generator, torch.Generator):
            n = x.shape[0]
            noise = torch.randn(
                [n, *shape[1:]], generator=noise_generator, device=x.device, dtype=x.dtype
            )
        else:  # one generator per sample: the noise of a sample does not depend on its batch
            noise = torch.cat(
                [
                    torch.randn(shape, generator=g, device=x.device, dtype=x.dtype)
                    for g in noise_generator
                ]
            )
        return noise * strength  # [N, 1, H, W]

    def forward(
        self,
        x: torch.Tensor,
        w: torch.Tensor,
        resample_filter: torch.Tensor,
        *,
        noise_mode: str = "const",
        fused: bool = False,
        noise_generator: NoiseGenerator = None,
        fused_ops: bool = False,
    ) -> torch.Tensor:
        """``fused_ops``: padding folded into the FIR, and demodulation (unless ``fused``
        already folded it into the weights), noise, bias, activation, gain and clamp as one
        :func:`bias_act` epilogue; otherwise the reference op sequence."""
        styles = self.affine(w)  # [N, I]
        x = modulated_conv2d(
            x,
            self.weight,
            styles,
            demodulate=fused or not fused_ops,
            up=self.up,
            resample_filter=resample_filter,
            fused=fused,
            fold_pad=fused_ops,
        )  # [N, O, r, r]
        noise = self._noise(x, noise_mode, noise_generator)
        bias = self.bias.to(x.dtype)[:, None, None]  # [O, 1, 1]
        if fused_ops:
            scale = None
            if not fused:
                scale = demodulation_coefficients(self.weight, styles.to(x.dtype))
                scale = scale.to(x.dtype)[:, :, None, None]  # [N, O, 1, 1]
            bias = bias if noise is None else noise + bias  # [O, r, r] | [N, O, r, r]
            return bias_act(x, bias, scale=scale, clamp=self.conv_clamp)
        if noise is not None:
            x = x + noise
        return lrelu_agc(x + bias[None], self.conv_clamp)

    def extra_repr(self) -> str:
        return f"{self.in_channels}→{self.out_channels} @ {self.resolution}px, up={self.up}"


class ToRGBLayer(nn.Module):
    """Modulated 1x1 conv to RGB without demodulation; style scaled by 1/√C (skip path)."""

    def __init__(
        self, in_channels: int, img_channels: int, *, w_dim: int, conv_clamp: float | None = None
    ):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = EqualizedLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn([img_channels, in_channels, 1, 1]))
        self.bias = nn.Parameter(torch.zeros([img_channels]))
        self.weight_gain = 1.0 / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor, *, fused: bool = False) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain  # [N, I]
        y = modulated_conv2d(x, self.weight, styles, demodulate=False, fused=fused)  # [N, 3, r, r]
        y = y + self.bias.to(y.dtype)[None, :, None, None]
        return y if self.conv_clamp is None else y.clamp(-self.conv_clamp, self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution: (const | up-conv) → conv → ToRGB; the RGB skip image is up-sampled and added."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        w_dim: int,
        resolution: int,
        img_channels: int,
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        self.resolution = resolution
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
            self.num_conv = 1
        else:
            self.conv0 = SynthesisLayer(
                in_channels,
                out_channels,
                w_dim=w_dim,
                resolution=resolution,
                up=True,
                conv_clamp=conv_clamp,
            )
            self.num_conv = 2
        self.conv1 = SynthesisLayer(
            out_channels, out_channels, w_dim=w_dim, resolution=resolution, conv_clamp=conv_clamp
        )
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp)
        self.num_torgb = 1

    def forward(
        self,
        x: torch.Tensor | None,
        img: torch.Tensor | None,
        ws: torch.Tensor,
        resample_filter: torch.Tensor,
        memory_format: torch.memory_format = torch.contiguous_format,
        **layer_kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """ws [N, num_conv + 1, w_dim]; returns the features and the running RGB image
        (``memory_format`` of the first block's constant input: later ones inherit it)."""
        fused = layer_kwargs.get("fused", False)
        if x is None:
            x = self.const.to(ws.dtype).unsqueeze(0).expand(ws.shape[0], -1, -1, -1)  # [N, C, 4, 4]
            x = x.contiguous(memory_format=memory_format)
            x = self.conv1(x, ws[:, 0], resample_filter, **layer_kwargs)
        else:
            x = self.conv0(x, ws[:, 0], resample_filter, **layer_kwargs)  # [N, C, r, r]
            x = self.conv1(x, ws[:, 1], resample_filter, **layer_kwargs)  # [N, C, r, r]
        y = self.torgb(x, ws[:, self.num_conv], fused=fused)  # [N, 3, r, r]
        img = y if img is None else upsample2d(img, resample_filter) + y  # [N, 3, r, r]
        return x, img


class SynthesisNetwork(nn.Module):
    """w+ [N, num_ws, w_dim] → image [N, C, R, R] (config-f skip generator, StyleGAN2 Fig. 7b).

    w index use: b4.conv1 reads 0, b4.torgb 1; block r = 4·2^k reads 2k−1 (conv0), 2k
    (conv1), 2k+1 (torgb), so each ToRGB shares its w with the next block's up-sampling conv.
    """

    def __init__(
        self,
        *,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        channels: Sequence[int],
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.block_resolutions = block_resolutions(img_resolution)
        self.channels = dict(zip(self.block_resolutions, channels, strict=True))
        self.num_ws = num_ws_for(img_resolution)
        self.register_buffer("resample_filter", make_resample_filter(), persistent=False)
        in_channels = 0
        for res in self.block_resolutions:
            block = SynthesisBlock(
                in_channels,
                self.channels[res],
                w_dim=w_dim,
                resolution=res,
                img_channels=img_channels,
                conv_clamp=conv_clamp,
            )
            setattr(self, f"b{res}", block)
            in_channels = self.channels[res]
        self.options = SynthesisOptions()  # default for calls that pass no ``options``

    def forward(
        self,
        ws: torch.Tensor,
        noise_mode: str = "const",
        *,
        fused_modconv: bool | None = None,
        noise_generator: NoiseGenerator = None,
        intermediates: dict[str, torch.Tensor] | None = None,
        options: SynthesisOptions | None = None,
    ) -> torch.Tensor:
        """Render ws; ``fused_modconv=None`` picks the faster path for the batch size.

        ``options`` (:class:`ganviews.stylegan.fused.SynthesisOptions`; default
        ``self.options``): reference or fused kernels, memory format, ``torch.compile``.
        ``intermediates``, when a dict is given, receives ``b{r}_x`` (features) and
        ``b{r}_img`` (running RGB image) after every block, for debugging and tests (always
        computed eagerly).
        """
        if ws.ndim != 3 or ws.shape[1] != self.num_ws or ws.shape[2] != self.w_dim:
            raise ValueError(
                f"ws: expected shape [N, {self.num_ws}, {self.w_dim}], got {list(ws.shape)}"
            )
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode: {noise_mode!r} is not one of {list(NOISE_MODES)}")
        if not ws.is_floating_point():
            raise ValueError(f"ws: expected a floating-point tensor, got {ws.dtype}")
        if noise_generator is not None and not isinstance(noise_generator, torch.Generator):
            noise_generator = list(noise_generator)
            if len(noise_generator) != ws.shape[0]:
                raise ValueError(
                    f"noise_generator: got {len(noise_generator)} generators for a batch of {ws.shape[0]}"
                )
        fused = (
            choose_fused(ws.shape[0], ws.device) if fused_modconv is None else bool(fused_modconv)
        )
        options = self.options if options is None else options
        run = type(self)._synthesize
        if options.compile and intermediates is None:
            run = compiled(self, run)
        layer_kwargs = {
            "noise_mode": noise_mode,
            "fused": fused,
            "noise_generator": noise_generator,
        }
        return run(self, ws, options, layer_kwargs, intermediates)

    def _synthesize(
        self,
        ws: torch.Tensor,
        options: SynthesisOptions,
        layer_kwargs: dict,
        intermediates: dict[str, torch.Tensor] | None,
    ) -> torch.Tensor:
        f = self.resample_filter.to(ws.dtype)
        memory_format = options.torch_memory_format
        x = img = None
        w_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            block_ws = ws[:, w_idx : w_idx + block.num_conv + block.num_torgb]  # [N, k, C]
            x, img = block(
                x, img, block_ws, f, memory_format, fused_ops=options.fused, **layer_kwargs
            )
            w_idx += block.num_conv
            if intermediates is not None:
                intermediates[f"b{res}_x"], intermediates[f"b{res}_img"] = x, img
        return img.contiguous()

    def extra_repr(self) -> str:
        return f"resolution={self.img_resolution}, channels={self.channels}, num_ws={self.num_ws}"


def choose_fused(batch_size: int, device: torch.device) -> bool:
    """Which modulated-conv path ``fused_modconv=None`` uses.

    Measured on CPU (benchmarks/bench_generator.py, docs/generator.md): from batch 4 up the
    non-fused path (scale activations, one plain batched conv) is 1.2-2.9x faster, because
    the fused path modulates and reorders an [N, O, I, 3, 3] weight per call and runs a
    grouped conv; at batch 1-2 the two are within measurement noise. No GPU was measured;
    the non-fused path is used there too (plain cuDNN convolutions, no per-sample weight
    tensors). Pass ``fused_modconv=True`` to force the fused path; both agree to ~1e-6.
    """
    del batch_size, device  # same answer everywhere measured so far
    return False
