"""Fan a stage's shards out: in this process (embedded) or as runs of a deployment (distributed).

A stage's shards are scheduled through the registry :data:`tasks.stages.SHARD_STAGES`: its
typed task gets the stage's typed job (:mod:`tasks.jobs`) and one shard.

Embedded: one concurrent shard per device of ``orchestration.devices`` (every visible GPU, or
the CPU), each shard handed the device that just became free, on Prefect's thread or
process-pool task runner. Distributed: each shard becomes a run of the deployment
``ganviews-shard/<orchestration.deployment>`` on the work pool, created with an idempotency
key derived from (job, stage, shard, parent run, attempt), so a retry of the parent finds its
children instead of duplicating them; one worker per GPU (``CUDA_VISIBLE_DEVICES=i``,
``--limit 1``) takes one shard at a time. Either way progress goes to the run's logs and a
progress artifact, a table artifact lists every shard's summary at the end, and the latent
store stays the source of truth (docs/orchestration.md).
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from prefect import flow
from prefect.artifacts import (
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.context import FlowRunContext
from prefect.futures import as_completed
from prefect.logging import get_run_logger
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

from ganviews.core.errors import ConfigError, GanviewsError
from ganviews.core.stop import stop_requested
from tasks.jobs import from_plain, to_plain
from tasks.pipeline_config import PipelineConfig, job_name
from tasks.run_state import shard_name
from tasks.shard_runner import device_list, is_permanent
from tasks.stages import SHARD_STAGES

SHARD_FLOW = "ganviews-shard"


class ShardsFailed(GanviewsError):
    """Some shards of a stage did not complete; ``ganviews resume CONFIG`` picks them up again."""


class ShardsMisconfigured(ShardsFailed, ConfigError):
    """Shards failed on an error a rerun repeats (config, input): resuming would fail the same
    way, so the message says to fix the config instead (tasks.shard_runner.is_permanent)."""


@dataclass
class ShardReport:
    stage: str
    planned: int = 0
    summaries: list[dict[str, Any]] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)  # shard → reason
    config_failures: set[str] = field(default_factory=set)  # shards failed on permanent errors


def artifact_key(*parts: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", "-".join(parts).lower())).strip("-")


def retrying(task, retries: int, retry_delay_seconds: Sequence[float]):
    """``task`` retried ``retries`` times after a transient error, with this back-off."""
    return task.with_options(retries=retries, retry_delay_seconds=list(retry_delay_seconds))


class _Progress:
    """A progress artifact plus one log line per finished shard."""

    def __init__(self, cfg: PipelineConfig, stage: str, total: int):
        self.total, self.finished, self.stage, self.logger = total, 0, stage, get_run_logger()
        self.key = artifact_key(job_name(cfg), stage, "progress")
        self.id = create_progress_artifact(
            0.0, key=self.key, description=f"{stage}: shards finished of {total}"
        )

    def step(self, shard: Sequence[int], outcome: str) -> None:
        self.finished += 1
        update_progress_artifact(self.id, 100.0 * self.finished / self.total)
        self.logger.info(
            "%s: shard %s %s (%d/%d shards finished)",
            self.stage,
            shard_name(shard),
            outcome,
            self.finished,
            self.total,
        )


def run_shards(
    cfg: PipelineConfig,
    stage: str,
    job: Any,
    shards: Sequence[Sequence[int]],
    *,
    task: Any = None,
    deployment: str | None = None,
) -> ShardReport:
    """Run ``stage``'s task on ``job`` for every shard (embedded or distributed); ShardsFailed if
    any did not complete.

    ``task`` (embedded; default the registry's) and ``deployment`` (distributed; default
    ``ganviews-shard/<orchestration.deployment>``) let a caller run a stage of its own
    (the orchestration benchmark's no-op stage).
    """
    report = ShardReport(stage, planned=len(shards))
    if not shards:
        get_run_logger().info("%s: every shard is complete, nothing to run", stage)
        return report
    progress = _Progress(cfg, stage, len(shards))
    if cfg.orchestration.mode == "embedded":
        task = task if task is not None else SHARD_STAGES[stage].task
        _run_embedded(cfg, stage, task, job, shards, progress, report)
    else:
        name = deployment or f"{SHARD_FLOW}/{cfg.orchestration.deployment}"
        _run_distributed(cfg, stage, name, to_plain(job), shards, progress, report)
    rows = [
        {k: v for k, v in s.items() if not isinstance(v, (dict, list))} for s in report.summaries
    ]
    rows += [{"shard": k, "stage": stage, "error": v} for k, v in report.failures.items()]
    create_table_artifact(
        rows,
        key=artifact_key(job_name(cfg), stage, "shards"),
        description=f"{stage}: one row per shard of this run",
    )
    if report.config_failures:
        first = sorted(report.config_failures)[0]
        raise ShardsMisconfigured(
            f"{stage}: {len(report.config_failures)} of {len(shards)} shards failed on an error a "
            f"rerun repeats (first: {first}: {report.failures[first]}); fix the config or the input "
            "and run again (resuming as it is would fail the same way)"
        )
    if report.failures:
        first = next(iter(report.failures.items()))
        raise ShardsFailed(
            f"{stage}: {len(report.failures)} of {len(shards)} shards did not complete "
            f"(first: {first[0]}: {first[1]}); `ganviews resume CONFIG` runs them again"
        )
    return report


def _run_embedded(
    cfg: PipelineConfig, stage: str, task, job, shards, progress: _Progress, report: ShardReport
) -> None:
    orch = cfg.orchestration
    devices = device_list(orch.devices)
    runner_type = ThreadPoolTaskRunner if orch.task_runner == "thread" else ProcessPoolTaskRunner
    task = retrying(task, orch.retries, orch.retry_delay_seconds)
    queue, free, running = deque(shards), list(devices), {}
    get_run_logger().info(
        "%s: %d shards on %s (%s task runner)",
        stage,
        len(shards),
        ", ".join(devices),
        cfg.orchestration.task_runner,
    )
    with runner_type(max_workers=len(devices)) as runner:
        while running or (queue and not stop_requested()):
            while queue and free and not stop_requested():  # each free device takes the next shard
                device, shard = free.pop(0), queue.popleft()
                future = runner.submit(task, {"job": job, "shard": list(shard), "device": device})
                running[future] = (device, shard)
            future = next(as_completed(list(running)))
            device, shard = running.pop(future)
            free.append(device)
            try:
                report.summaries.append(future.result())
                progress.step(shard, f"completed on {device}")
            except Exception as exc:  # noqa: BLE001 - recorded and reported after the other shards
                report.failures[shard_name(shard)] = f"{type(exc).__name__}: {exc}"
                if is_permanent(exc):
                    report.config_failures.add(shard_name(shard))
                progress.step(shard, f"FAILED on {device}: {type(exc).__name__}: {exc}")


def idempotency_key(job: str, stage: str, shard: Sequence[int], parent: str, attempt: int) -> str:
    """Same (job, stage, shard, parent run, attempt) → the same child run, never a duplicate."""
    return f"ganviews/{job}/{stage}/{shard_name(shard)}/{parent}/{attempt}"


def _run_distributed(
    cfg: PipelineConfig,
    stage: str,
    name: str,
    job: dict[str, Any],
    shards,
    progress: _Progress,
    report: ShardReport,
) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.deployments import run_deployment

    orch, run_job = cfg.orchestration, job_name(cfg)
    params = {"stage": stage, "job": job, "retries": orch.retries,
              "retry_delay_seconds": list(orch.retry_delay_seconds)}  # fmt: skip
    ctx = FlowRunContext.get()
    parent = str(ctx.flow_run.id) if ctx and ctx.flow_run else "no-parent"
    logger = get_run_logger()

    def submit(shard: Sequence[int], attempt: int):
        return run_deployment(
            name, parameters={**params, "shard": list(shard)}, timeout=0,
            idempotency_key=idempotency_key(run_job, stage, shard, parent, attempt),
            tags=["ganviews", run_job, stage],
            flow_run_name=f"{run_job}-{stage}-{shard_name(shard)}" + (f"-a{attempt}" if attempt else ""),
        )  # fmt: skip

    runs = {}  # flow run id → (shard, attempt)
    for shard in shards:
        run = submit(shard, 0)
        runs[run.id] = (tuple(shard), 0)
    logger.info("%s: %d shard runs of %s on work pool %s", stage, len(shards), name, orch.work_pool)
    with get_client(sync_client=True) as client:
        while runs:
            time.sleep(orch.poll_seconds)
            found = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(runs)))
            )
            for run in found:
                if run.state is None or not run.state.is_final():
                    continue
                shard, attempt = runs.pop(run.id)
                worker = (run.labels or {}).get("prefect.worker.name", "?")
                if run.state.is_completed():
                    report.summaries.append(
                        {
                            "shard": shard_name(shard),
                            "stage": stage,
                            "flow_run": run.name,
                            "worker": worker,
                            "state": run.state.name,
                        }
                    )
                    progress.step(shard, f"completed by worker {worker}")
                elif attempt + 1 < orch.shard_attempts:
                    logger.warning(
                        "%s: shard %s run %s ended %s; attempt %d",
                        stage,
                        shard_name(shard),
                        run.name,
                        run.state.name,
                        attempt + 2,
                    )
                    again = submit(shard, attempt + 1)
                    runs[again.id] = (shard, attempt + 1)
                else:
                    report.failures[shard_name(shard)] = (
                        f"{run.state.name}: {run.state.message or ''}".strip()
                    )
                    progress.step(
                        shard, f"{run.state.name.upper()} (run {run.name}, worker {worker})"
                    )


@flow(name=SHARD_FLOW)
def shard_flow(
    stage: str,
    job: dict[str, Any],
    shard: list[int],
    device: str = "auto",
    retries: int = 0,
    retry_delay_seconds: list[float] | None = None,
) -> dict:
    """One shard as its own flow run (the deployment the workers run): the registry's task for
    ``stage`` on the job rebuilt from its plain data; transient errors retried."""
    spec = SHARD_STAGES[stage]
    task = retrying(spec.task, retries, retry_delay_seconds or [0.0])
    return task(from_plain(spec.job_type, job), shard, device)
