"""What ran where: the run-state files of a job under ``<state_dir>`` (the latent store stays the
source of truth for what is *done*; these files only record progress and input keys).

- ``shards/<stage>/<start>-<stop>.json`` — per-shard progress (pid, host, device, status,
  summary), rewritten atomically when a shard starts and ends (:class:`ShardProgress`);
- ``render/<start>-<stop>.json`` — the key a shard's logits were rendered with (tasks/render.py);
- ``evaluate.json`` — the key of the last report (tasks/evaluate.py).

Every file is written through :func:`storage.atomic.atomic_write_bytes`.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from storage.atomic import atomic_write_bytes


def shard_name(shard: Sequence[int]) -> str:
    """``(64, 128)`` → ``00000064-00000128`` (file names, logits shard keys, run names)."""
    return f"{int(shard[0]):08d}-{int(shard[1]):08d}"


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    """``payload`` as indented, key-sorted JSON, written atomically."""
    atomic_write_bytes(
        path, (json.dumps(payload, indent=2, default=str, sort_keys=True) + "\n").encode()
    )


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object at ``path``; {} when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def digest(payload: Any) -> str:
    """sha256 of ``payload`` as key-sorted JSON: the input keys of the markers."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


class ShardProgress:
    """``<state>/shards/<stage>/<start>-<stop>.json``: who runs the shard, and how it ended."""

    def __init__(self, state_dir: Path, stage: str, shard: Sequence[int], device: str):
        self.path = Path(state_dir) / "shards" / stage / f"{shard_name(shard)}.json"
        self.record: dict[str, Any] = {
            "stage": stage,
            "shard": shard_name(shard),
            "device": device,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "flow_run_id": os.environ.get("PREFECT__FLOW_RUN_ID"),
            "status": "running",
            "started": time.time(),
        }

    def __enter__(self) -> ShardProgress:
        write_json(self.path, self.record)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.record.update(
            finished=time.time(), status="failed" if exc is not None else "completed"
        )
        if exc is not None:
            self.record["error"] = f"{type(exc).__name__}: {exc}"
        write_json(self.path, self.record)


def interrupted_shards(state_dir: Path) -> list[dict]:
    """Shard progress records still marked running (their process ended without finishing)."""
    out = []
    for path in sorted((Path(state_dir) / "shards").glob("*/*.json")):
        record = read_json(path)
        if record.get("status") == "running":
            out.append(record)
    return out
