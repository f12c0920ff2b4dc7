"""The project's own weight files: safetensors tensors + JSON config in the header metadata.

:func:`container_format` names a weights file's container from its first bytes (never its
suffix), for every reader that accepts more than one format. One writer and one reader shared by the generator (:mod:`ganviews.stylegan.generator`), the encoder
(:mod:`ganviews.inversion.encoder`) and the classifiers (:mod:`ganviews.classifiers.model`), plus the content
hash of unsaved weights; and the resumable training checkpoints of the encoder and classifier
trainers (atomic ``torch.save``, ``weights_only`` load, RNG states). Safetensors is data only (no pickled code), and the metadata holds
``format``, ``format_version`` and ``config`` (the component's frozen config as JSON), so a
file describes the network it holds.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ganviews.core.atomic import write_atomically
from ganviews.core.errors import CheckpointError

_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # first pickle of a non-zip torch.save file
_PICKLE_FIRST_OPCODES = {bytes([b]) for b in b"\x80c(}])NIFLSV"}  # PROTO, or protocol-0/1 starts


def container_format(path: str | os.PathLike, *, expected: str) -> str:
    """Name the container from the first bytes: 'torch-zip', 'torch-legacy', 'pickle' or
    'safetensors'; CheckpointError naming the file and ``expected`` (what the caller reads)
    for anything else."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the file: {exc}") from exc
    if not head:
        raise CheckpointError(f"{path}: the file is empty")
    if head.startswith(b"PK\x03\x04"):
        return "torch-zip"
    legacy = b"\x80\x02\x8a\x0a" + _TORCH_LEGACY_MAGIC.to_bytes(10, "little")
    if head.startswith(legacy):
        return "torch-legacy"
    # safetensors first: its 8-byte header length may begin with a byte that is also a
    # pickle opcode (0x80 = PROTO, '(' = MARK, …), while a pickle never has a small length
    # followed by '{' at byte 8.
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (1 << 28):
        return "safetensors"
    if head[:1] in _PICKLE_FIRST_OPCODES:
        return "pickle"
    raise CheckpointError(
        f"{path}: unknown file format (first bytes {head[:8]!r}); expected {expected}"
    )


def weights_sha256(module: nn.Module) -> str:
    """Content hash of a module's state dict (names, dtypes, shapes and bytes, in key order)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        digest.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def write_safetensors(
    state: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, str]
) -> Path:
    """Write ``state`` (moved to CPU) with string ``metadata``; atomic: a temp file, then a rename.

    The parent folder is created; a reader never sees a half-written file.
    """
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    return write_atomically(path, lambda tmp: save_file(tensors, str(tmp), metadata=dict(metadata)))


def read_safetensors(
    path: str | os.PathLike, *, tensors: bool = True
) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(metadata, CPU tensors) of a safetensors file; ``tensors=False`` reads the header only.

    Raises CheckpointError "not a readable safetensors file" for anything else.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            meta = dict(fh.metadata() or {})
            state = {k: fh.get_tensor(k) for k in fh.keys()} if tensors else {}  # noqa: SIM118
    except Exception as exc:  # any unreadable file becomes one clear error
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc})"
        ) from exc
    return meta, state


# --------------------------------------------------------------------------- training state


def state_mismatch(
    expected: Mapping[str, torch.Tensor | Sequence[int]],
    state: Mapping[str, torch.Tensor | Sequence[int]],
) -> tuple[list[str], list[str], list[str]]:
    """Keys of ``state`` that do not fit ``expected`` (a module's state dict, or key → shape):
    missing, unexpected and wrong-shaped, each sorted (missing, unexpected) or in
    ``expected``'s order. Values are tensors (any device, meta included) or shape tuples."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and _shape(state[k]) != _shape(expected[k])]
    return missing, unexpected, wrong


def _shape(value: torch.Tensor | Sequence[int]) -> tuple[int, ...]:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else tuple(value)


def rng_states() -> dict[str, Any]:
    """The torch CPU and CUDA generator states, for a resumable training checkpoint."""
    return {
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_states(state: Mapping[str, Any]) -> None:
    """Set the generators saved by :func:`rng_states` (CUDA only where both runs have it)."""
    torch.set_rng_state(state["rng_cpu"])
    if state["rng_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng_cuda"])


def save_training_state(state: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """``torch.save`` a training checkpoint atomically (temp file, then rename)."""
    return write_atomically(path, lambda tmp: torch.save(dict(state), tmp))


def load_training_state(path: str | os.PathLike, *, format_name: str, what: str) -> dict[str, Any]:
    """A training checkpoint written by :func:`save_training_state` (tensors and plain data only).

    Raises CheckpointError naming ``what`` when the file is unreadable or its ``format`` is
    not ``format_name``.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file becomes one clear error
        raise CheckpointError(f"{path}: not a readable {what} checkpoint ({exc})") from exc
    if not isinstance(state, dict) or state.get("format") != format_name:
        raise CheckpointError(f"{path}: not a ganviews {what} checkpoint")
    return state
