"""The shard runner: one shard of a sharded stage (invert, render), the same way for every stage.

:func:`run_shard` applies the job's CPU thread count, records the shard's progress under the
job's ``state_dir`` (:class:`tasks.run_state.ShardProgress`), calls the stage's body and
returns its summary with where and how long it ran. :data:`SHARD_TASK_OPTIONS` are the options of every
stage's typed Prefect task (no result cache: the store says what is done; transient errors
retried by :func:`is_transient`). The stages' tasks are collected in :mod:`tasks.stages`.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger

from ganviews.core.errors import ConfigError, GanviewsError
from ganviews.core.lifeline import exit_with_parent
from storage.errors import StoreError
from tasks.run_state import ShardProgress, shard_name

log = logging.getLogger(__name__)

LIBRARY_LOGGERS = ("ganviews", "tasks", "storage")
SUMMARY_KEYS = ("todo", "done", "failed", "images", "rows", "mean_psnr", "wall_seconds")

ShardBody = Callable[[Any, tuple[int, int], str], dict[str, Any]]  # (job, shard, device) → summary


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """Prefect's run logger inside a flow or task run, else this module's logger."""
    try:
        return get_run_logger()
    except MissingContextError:  # called as a plain function
        return log


def device_list(devices: str | Sequence[str]) -> list[str]:
    """``"auto"`` → every visible GPU (``cuda:i``), else ``["cpu"]``; a list is returned as is."""
    if isinstance(devices, str):
        devices = [devices]
    if list(devices) != ["auto"]:
        return list(devices)
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [f"cuda:{i}" for i in range(n)] or ["cpu"]


def is_permanent(exc: BaseException) -> bool:
    """Configuration, identity and input errors: a rerun repeats them."""
    return isinstance(exc, (ConfigError, GanviewsError, StoreError, TypeError, ValueError))


def is_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry condition: permanent errors (:func:`is_permanent`) fail at once; anything else
    (I/O, CUDA out of memory, a lost connection) is retried with back-off."""
    exc = state.data if isinstance(getattr(state, "data", None), BaseException) else None
    return not (exc is not None and is_permanent(exc))


def run_shard(
    stage: str, body: ShardBody, job: Any, shard: Sequence[int], device: str
) -> dict[str, Any]:
    """Run ``body(job, (start, stop), device)`` for one shard → its summary (+ stage, device, host, time).

    ``job.state_dir`` (None: no record) receives the shard's progress file; ``job.cpu_threads``
    (0: torch's default) sets torch's thread count for a CPU shard. Inside a Prefect run the
    library's loggers reach the run's logs and the summary is logged.
    """
    shard = (int(shard[0]), int(shard[1]))
    exit_with_parent()  # a process-pool worker must not outlive a killed `ganviews run`
    for name in LIBRARY_LOGGERS:  # per-batch progress reaches the run's logs
        if logging.getLogger(name).level == logging.NOTSET:
            logging.getLogger(name).setLevel(logging.INFO)
    if job.cpu_threads and device.startswith("cpu"):
        import torch

        torch.set_num_threads(job.cpu_threads)
    t0 = time.perf_counter()
    record = ShardProgress(job.state_dir, stage, shard, device) if job.state_dir else nullcontext()
    with record as progress:
        summary = body(job, shard, device)
        summary.update(
            stage=stage,
            device=device,
            pid=os.getpid(),
            host=socket.gethostname(),
            wall_seconds=round(time.perf_counter() - t0, 3),
        )
        if progress is not None:
            progress.record["summary"] = summary
    run_logger().info(
        "%s shard %s on %s (pid %d): %s",
        stage,
        summary.get("shard", shard_name(shard)),
        device,
        os.getpid(),
        {k: v for k, v in summary.items() if k in SUMMARY_KEYS},
    )
    return summary


# The options every shard task is declared with: no result cache (the store says what is done),
# transient errors retried (the flows set the count and back-off from the config).
SHARD_TASK_OPTIONS = {"cache_policy": NO_CACHE, "retry_condition_fn": is_transient}
