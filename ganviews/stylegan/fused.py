"""How the synthesis network computes: reference kernels, fused kernels, memory format, compile.

The reference path is the official stylegan2-ada-pytorch arithmetic op for op (an ``F.pad``
copy before every FIR, then demodulation, noise, bias, leaky ReLU, gain and clamp as six
separate element-wise passes over the activations). The fused path computes the same
function with fewer passes over memory:

* the FIR's zero padding is the convolution's own ``padding`` (no padded copy);
* demodulation, noise, bias, leaky ReLU, gain and clamp of a synthesis layer are one
  ``addcmul`` + one ``leaky_relu`` (+ one ``clamp`` when the generator clamps), using
  lrelu(g·v) = g·lrelu(v) for the gain g > 0 (:func:`bias_act`); the constant noise and the
  bias are added as one [C, H, W] tensor that does not grow with the batch;
* optionally ``channels_last`` activations (NHWC convolutions: tensor cores on GPUs) and
  ``torch.compile`` of the whole synthesis (Inductor fuses the element-wise epilogues
  into single kernels and, on CUDA, the convolution prologues).

Every path gives the reference images within float32 rounding
(``tests/stylegan/test_fused.py`` states the tolerances); ``SynthesisOptions.reference()``
is one option away from the default.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ganviews.core.errors import ConfigError

LRELU_SLOPE = 0.2  # leaky-ReLU slope of every activated layer
LRELU_GAIN = math.sqrt(2.0)  # gain that keeps the activation variance (StyleGAN2 App. B)
KERNELS = ("reference", "fused")
MEMORY_FORMATS = ("contiguous", "channels_last")


@dataclass(frozen=True)
class SynthesisOptions:
    """How ``SynthesisNetwork`` computes; every choice gives the same images within rounding.

    kernels: "fused" (default: padding folded into the FIR convolution, one element-wise
    epilogue per layer) or "reference" (the official op sequence). memory_format:
    "contiguous" (NCHW, default) or "channels_last" (NHWC). compile: run the synthesis
    through ``torch.compile`` (first call per input shape compiles: seconds on a GPU, up to
    minutes on a loaded CPU).
    """

    kernels: Literal["reference", "fused"] = "fused"
    memory_format: Literal["contiguous", "channels_last"] = "contiguous"
    compile: bool = False

    def __post_init__(self) -> None:
        if self.kernels not in KERNELS:
            raise ConfigError(f"synthesis.kernels: got {self.kernels!r}, expected one of {KERNELS}")
        if self.memory_format not in MEMORY_FORMATS:
            raise ConfigError(
                f"synthesis.memory_format: got {self.memory_format!r}, "
                f"expected one of {MEMORY_FORMATS}"
            )
        if not isinstance(self.compile, bool):
            raise ConfigError(f"synthesis.compile: got {self.compile!r}, expected true or false")

    @classmethod
    def reference(cls) -> SynthesisOptions:
        """The official op sequence, NCHW, eager."""
        return cls(kernels="reference")

    @property
    def fused(self) -> bool:
        return self.kernels == "fused"

    @property
    def torch_memory_format(self) -> torch.memory_format:
        return (
            torch.channels_last
            if self.memory_format == "channels_last"
            else torch.contiguous_format
        )


def bias_act(
    x: torch.Tensor,
    bias: torch.Tensor,
    *,
    scale: torch.Tensor | None = None,
    clamp: float | None = None,
) -> torch.Tensor:
    """clamp(lrelu(x·scale + bias, 0.2)·√2) in two or three element-wise passes.

    x [N, C, H, W]; bias broadcastable to x ([C, 1, 1], [C, H, W] with constant noise
    folded in, or [N, C, H, W] with random noise); scale [N, C, 1, 1] (demodulation) or
    None. The gain is applied before the activation (exact for a positive gain up to
    rounding), so scale, bias and gain are one ``addcmul``. Plain tensor ops: under
    ``torch.compile`` they become one kernel.
    """
    g = LRELU_GAIN
    if scale is None:
        y = torch.add(bias * g, x, alpha=g)  # [N, C, H, W]
    else:
        y = torch.addcmul(bias * g, x, scale * g)  # [N, C, H, W]
    y = F.leaky_relu(y, LRELU_SLOPE)
    return y if clamp is None else y.clamp(-clamp, clamp)


_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def compiled(module: torch.nn.Module, method: Callable) -> Callable:
    """``torch.compile`` of ``method`` (an unbound method of ``module``'s class: call the
    result with the module as first argument), built once per module. Kept outside the
    module's ``__dict__`` so that copies, pickles and state dicts never see it, and holding
    no reference to the module, so the entry goes when the module does."""
    if module not in _COMPILED:
        _COMPILED[module] = torch.compile(method)
    return _COMPILED[module]
