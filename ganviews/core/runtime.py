"""Device, numerics, per-item seeds, hashes and shape checks: resolved once, at the edge.

Nothing in the library reads a hidden global device or seed: callers pass ``device`` and
``seed``; per-item randomness comes from :func:`item_generator`, so a result never depends
on batch size, worker count or a retry (STYLE.md habit 4).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ganviews.core.errors import ConfigError

log = logging.getLogger(__name__)


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/None → the first CUDA device when present, else the CPU; otherwise as given."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} requested but CUDA is not available here")
    return device


def set_numerics_policy(device: torch.device) -> None:
    """Process-wide defaults for code that runs outside a :class:`NumericsPolicy` call.

    Calls that need a precision say so per call (``NumericsPolicy(...).networks(device)``),
    so two threads driving two GPUs cannot race on it; this only sets what everything else
    gets: TF32 on CUDA (rendering, classification and training tolerate ≈1e-3 relative
    rounding) and cuDNN autotuning (input sizes are fixed within a job, so it pays off after
    the first batch). The TF32 default is restored whenever the last policy call leaves.
    """
    if device.type == "cuda":
        _TF32_GATE.set_default(True)
        torch.backends.cudnn.benchmark = True


#: Allowed values of ``NumericsPolicy.precision`` (the YAML's ``invert.precision``).
PRECISIONS = ("exact", "tf32", "bf16")


@dataclass(frozen=True)
class NumericsPolicy:
    """How the networks (G, LPIPS, encoder, classifiers) compute; optimiser state stays fp32.

    ``exact``: IEEE fp32 everywhere (TF32 off on CUDA). ``tf32``: fp32 tensors, TF32 tensor
    cores for CUDA matmuls/convolutions (no effect on CPU). ``bf16``: bfloat16 autocast for
    the networks' forward and backward (CUDA and CPU) plus TF32 for what autocast leaves in
    fp32. In every mode, callers cast network outputs to fp32 before loss reductions, and
    L-BFGS state (iterates, gradients, curvature pairs) is fp32 (or the generator's dtype).
    """

    precision: str = "exact"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"precision={self.precision!r}: unknown; allowed: {', '.join(PRECISIONS)}"
            )

    @contextlib.contextmanager
    def networks(self, device: torch.device) -> Iterator[None]:
        """Context for network forward/backward passes on ``device`` under this policy."""
        with _TF32_GATE.hold(device, self.precision != "exact"):
            if self.precision == "bf16":
                # autocast state is thread-local: no other thread sees it.
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    yield
            else:
                with torch.autocast(device.type, enabled=False):
                    yield


class _TF32Gate:
    """Serialises the process-wide CUDA TF32 switches between threads.

    PyTorch's TF32 flags are global, not per thread or per device. Every holder declares the
    setting it needs; holders that agree run concurrently, a holder that disagrees waits until
    the others have left, so the flags never change under a running computation (the old
    save-and-restore context let two inversion threads flip them under each other).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._holders = 0
        self._tf32: bool | None = None
        self._default: bool | None = None  # the setting outside policy calls (None: as is)
        self._local = threading.local()

    def set_default(self, tf32: bool) -> None:
        """The setting for code outside policy calls; applied now if nobody holds the gate."""
        with self._cond:
            self._default = tf32
            if self._holders == 0:
                self._apply(tf32)

    def _apply(self, tf32: bool) -> None:
        mode = "tf32" if tf32 else "ieee"
        torch.backends.cuda.matmul.fp32_precision = mode
        torch.backends.cudnn.conv.fp32_precision = mode
        self._tf32 = tf32

    @contextlib.contextmanager
    def hold(self, device: torch.device, tf32: bool) -> Iterator[None]:
        if device.type != "cuda":  # CPU kernels have no TF32 mode: nothing to switch
            yield
            return
        held = getattr(self._local, "held", [])
        if held and held[-1] != tf32:
            raise RuntimeError(
                "numerics: a nested policy asks for a different TF32 setting than the "
                "enclosing one on this thread; use one policy per call"
            )
        with self._cond:
            while self._holders and self._tf32 != tf32:
                self._cond.wait()
            if self._holders == 0 and self._tf32 != tf32:
                self._apply(tf32)
            self._holders += 1
        self._local.held = [*held, tf32]
        try:
            yield
        finally:
            self._local.held = held
            with self._cond:
                self._holders -= 1
                if self._holders == 0 and self._default not in (None, self._tf32):
                    self._apply(self._default)
                self._cond.notify_all()


_TF32_GATE = _TF32Gate()


def item_seed(base_seed: int, *keys: object) -> int:
    """A 63-bit seed derived from a base seed and any printable keys (image id, method …)."""
    text = "\x1f".join([str(int(base_seed)), *map(str, keys)])
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def item_generator(
    base_seed: int, *keys: object, device: torch.device | str = "cpu"
) -> torch.Generator:
    """A ``torch.Generator`` seeded by :func:`item_seed`, for one item's randomness only."""
    gen = torch.Generator(device=device)
    gen.manual_seed(item_seed(base_seed, *keys))
    return gen


def file_sha256(path: str | Path, *, chunk_bytes: int = 1 << 20) -> str:
    """Content hash of a file (hex), used to name generators and encoders in store attributes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def assert_shape(tensor: torch.Tensor, shape: Sequence[int | None], name: str = "tensor") -> None:
    """Raise ValueError naming ``name`` when ``tensor`` does not match ``shape`` (None = any)."""
    if tensor.ndim != len(shape) or any(
        want is not None and got != want for got, want in zip(tensor.shape, shape, strict=True)
    ):
        want_txt = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{name}: expected shape {want_txt}, got {list(tensor.shape)}")
