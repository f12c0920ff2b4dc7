"""A no-op sharded stage for the orchestration benchmark (bench_orchestration.py).

Each shard opens the latent store and counts the shard's pending items, through the same shard
runner as the real stages (:func:`tasks.shard_runner.run_shard`: progress record, summary),
so its wall time is the per-shard overhead of the orchestration. Not part of the pipeline:
it is scheduled with ``run_shards(..., task=noop_shard_task)`` (embedded) or as runs of its
own deployment ``bench-noop-shard/<name>`` (distributed; workers need this folder on
``PYTHONPATH``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, task

from storage.latents import LatentStore
from tasks.jobs import from_plain
from tasks.pipeline_config import PipelineConfig
from tasks.run_state import shard_name
from tasks.shard_runner import SHARD_TASK_OPTIONS, run_shard

NOOP_SHARD_FLOW = "bench-noop-shard"


@dataclass(frozen=True)
class NoopJob:
    store: Path
    state_dir: Path | None = None
    cpu_threads: int = 0


def noop_job(cfg: PipelineConfig) -> NoopJob:
    return NoopJob(cfg.paths.store, cfg.state_dir, cfg.orchestration.cpu_threads)


def _noop(job: NoopJob, shard: tuple[int, int], device: str) -> dict[str, Any]:
    store = LatentStore.open(job.store, mode="r")
    return {"shard": shard_name(shard), "todo": int(len(store.todo(shard=shard)))}


def run_noop(job: NoopJob, shard: Sequence[int], device: str = "cpu") -> dict[str, Any]:
    """One no-op shard called directly (the benchmark's baseline)."""
    return run_shard("noop", _noop, job, shard, device)


@task(name="noop-shard", task_run_name="noop-{shard[0]}-{shard[1]}", **SHARD_TASK_OPTIONS)
def noop_shard_task(job: NoopJob, shard: Sequence[int], device: str = "auto") -> dict[str, Any]:
    return run_noop(job, shard, device)


@flow(name=NOOP_SHARD_FLOW)
def noop_shard_flow(
    stage: str,
    job: dict[str, Any],
    shard: list[int],
    device: str = "auto",
    retries: int = 0,
    retry_delay_seconds: list[float] | None = None,
) -> dict:
    """The no-op shard as its own flow run (same parameters as flows.shards.shard_flow)."""
    return noop_shard_task(from_plain(NoopJob, job), shard, device)
