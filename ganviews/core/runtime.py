"""Device, numerics, per-item seeds, hashes and shape checks: resolved once, at the edge.

Nothing in the library reads a hidden global device or seed: callers pass ``device`` and
``seed``; per-item randomness comes from :func:`item_generator`, so a result never depends
on batch size, worker count or a retry (STYLE.md habit 4).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

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
    """The one place that decides precision knobs, with the reason for each."""
    if device.type == "cuda":
        # Rendering and classification of views tolerate TF32 matmuls/convs (≈1e-3 relative).
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        # Input sizes are fixed within a job, so cuDNN autotuning pays off after the first batch.
        torch.backends.cudnn.benchmark = True


@contextlib.contextmanager
def exact_fp32(device: torch.device) -> Iterator[None]:
    """L-BFGS curvature pairs are sensitive to TF32 rounding: run the optimiser in full fp32."""
    if device.type != "cuda":
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


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
