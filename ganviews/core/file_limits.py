"""Caps on what a weights file may expand to, checked before anything large is allocated.

A hostile checkpoint does not need to run code to hurt: an 11-byte pickle whose memo index
is 2**31 makes the C unpickler allocate a 16 GiB memo table, a small zip can declare a
3 GB deflated record, a JSON config nested 100 000 deep overflows the parser's stack, and a
zero-stride tensor of 2**37 elements costs nothing until something reads it. These checks
bound each of those by the file's own size, so a file can cost at most a small multiple of
the bytes it holds, and every refusal is a :class:`CheckpointError` naming the file:

* :func:`check_pickle_stream` walks the opcodes with :mod:`pickletools` (nothing is built or
  called): memo indices stay below the number of opcodes read so far, GETs name a stored
  index, and no declared length (``FRAME``, ``BINBYTES8``, ``LONG4`` …) exceeds what is left
  of the file.
* :func:`check_zip_records` reads a torch zip's directory: every record is stored (torch
  never compresses) and no record, nor all of them together, is larger than the archive.
* :func:`parse_json_config` caps a metadata config's length and nesting before ``json.loads``.
* :func:`check_tensor_extents` refuses a tensor that addresses more elements than its storage
  holds (zero or overlapping strides) and storages that together outgrow the file.
* :func:`check_declared_bytes` refuses a config (generator, encoder) whose network would need
  far more weight bytes than the file holds, before the network is built.
"""

from __future__ import annotations

import io
import json
import os
import pickletools
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from ganviews.core.errors import CheckpointError

MAX_JSON_CHARS = 1 << 20  # a generator/encoder/classifier config is a few hundred bytes
MAX_JSON_DEPTH = 16  # the deepest real config (layer_groups) nests 3 levels
ZIP_SLACK_BYTES = 1 << 16  # headers and alignment padding a stored record may add
DECLARED_BYTES_PER_FILE_BYTE = 8  # float32 weights of a float16 file, with the bounds' slack
DECLARED_BYTES_SLACK = 64 << 20  # small files may declare this much regardless
_MEMO_PUTS = {"PUT", "BINPUT", "LONG_BINPUT"}
_MEMO_GETS = {"GET", "BINGET", "LONG_BINGET"}


class _BoundedReader(io.RawIOBase):
    """A read-only view of a file that refuses any single read longer than what is left.

    ``pickletools.genops`` reads an opcode's declared length in one call; this turns a
    length larger than the file into an error instead of a huge allocation.
    """

    def __init__(self, fh: io.BufferedReader, size: int) -> None:
        super().__init__()
        self._fh, self._size = fh, size

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        left = self._size - self._fh.tell()
        if n is not None and n > left:
            raise CheckpointError(f"an opcode declares {n} bytes but only {left} remain")
        return self._fh.read(n)

    def readline(self, limit: int = -1) -> bytes:
        return self._fh.readline(limit)

    def tell(self) -> int:
        return self._fh.tell()


def check_pickle_stream(path: str | os.PathLike) -> None:
    """Walk the pickle at ``path`` opcode by opcode and refuse memory bombs (see module doc)."""
    path = Path(path)
    size = path.stat().st_size
    memo: set[int] = set()
    try:
        with open(path, "rb") as fh:
            for count, (op, arg, pos) in enumerate(pickletools.genops(_BoundedReader(fh, size))):
                if op.name == "FRAME" and arg > size - (pos or 0):
                    raise CheckpointError(f"a FRAME declares {arg} bytes, the file has {size}")
                if op.name == "MEMOIZE":
                    memo.add(len(memo))
                elif op.name in _MEMO_PUTS:
                    if not 0 <= int(arg) <= count:
                        raise CheckpointError(
                            f"memo index {arg} at byte {pos} exceeds the {count} opcodes before it"
                        )
                    memo.add(int(arg))
                elif op.name in _MEMO_GETS and int(arg) not in memo:
                    raise CheckpointError(f"memo index {arg} at byte {pos} was never stored")
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: refused to load: {exc}") from None
    except Exception as exc:  # malformed opcodes, truncation, bad arguments
        raise CheckpointError(
            f"{path}: not a readable pickle ({type(exc).__name__}: {exc})"
        ) from exc


def check_zip_records(path: str | os.PathLike) -> None:
    """Refuse a torch zip whose records are compressed or larger than the archive itself."""
    path = Path(path)
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable zip archive ({exc})") from exc
    total = 0
    for rec in records:
        if rec.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(
                f"{path}: refused to load: record '{rec.filename}' is compressed "
                f"({rec.compress_size} → {rec.file_size} bytes); torch.save stores records as-is"
            )
        total += rec.file_size
    if total > size + ZIP_SLACK_BYTES:
        raise CheckpointError(
            f"{path}: refused to load: its records declare {total} bytes, more than the "
            f"{size}-byte archive holds"
        )


def _json_depth(text: str) -> int:
    """Deepest bracket nesting of a JSON text, brackets inside strings not counted."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def parse_json_config(text: Any, *, path: str | os.PathLike, what: str) -> dict[str, Any]:
    """``json.loads`` of a config stored in a file's metadata, with length and depth caps.

    Raises CheckpointError naming ``path`` and ``what`` when the text is not a string, too
    long, nested deeper than :data:`MAX_JSON_DEPTH`, not JSON or not an object.
    """
    if not isinstance(text, str):
        raise CheckpointError(f"{path}: the {what} in the metadata is missing or not text")
    if len(text) > MAX_JSON_CHARS:
        raise CheckpointError(
            f"{path}: the {what} in the metadata is {len(text)} characters "
            f"(at most {MAX_JSON_CHARS})"
        )
    depth = _json_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise CheckpointError(
            f"{path}: the {what} in the metadata nests {depth} levels deep "
            f"(at most {MAX_JSON_DEPTH})"
        )
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise CheckpointError(
            f"{path}: the {what} in the metadata is not valid JSON: {exc}"
        ) from exc
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: the {what} in the metadata is not a JSON object")
    return value


def check_tensor_extents(
    tensors: Iterable[tuple[str, torch.Tensor]], *, path: str | os.PathLike, budget: int
) -> None:
    """Refuse tensors that address more elements than their storage holds (zero, negative or
    overlapping strides), and distinct storages that together exceed ``budget`` bytes.

    Runs before any value is read, so a zero-stride "512 GB" tensor costs nothing.
    """
    seen: dict[int, int] = {}
    for name, t in tensors:
        storage = t.untyped_storage()
        need = t.numel() * t.element_size()
        start = t.storage_offset() * t.element_size()
        if any(s < 0 for s in t.stride()) or start + need > storage.nbytes():
            raise CheckpointError(
                f"{path}: refused to load: tensor '{name}' of shape {list(t.shape)} and stride "
                f"{list(t.stride())} addresses {start + need} bytes of a {storage.nbytes()}-byte "
                "storage (zero, negative or overlapping strides)"
            )
        seen[storage.data_ptr() if storage.nbytes() else id(storage)] = storage.nbytes()
    total = sum(seen.values())
    if total > budget:
        raise CheckpointError(
            f"{path}: refused to load: its tensors hold {total} bytes, more than the "
            f"{budget} bytes the file can carry"
        )


def check_declared_bytes(declared: int, *, path: str | os.PathLike, what: str) -> None:
    """CheckpointError naming ``path`` when a config declares a network of ``declared`` weight
    bytes (an upper bound computed from the config alone) that the file cannot hold."""
    size = os.path.getsize(path)
    if declared > DECLARED_BYTES_PER_FILE_BYTE * size + DECLARED_BYTES_SLACK:
        raise CheckpointError(
            f"{path}: refused to load: its config declares {what} of up to "
            f"{declared / 2**20:.1f} MiB of weights, the {size}-byte file cannot hold them"
        )
