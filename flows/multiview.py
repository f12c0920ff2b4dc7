"""The GenRep stage as Prefect flows (Jahanian et al., ICLR 2022): sample → train → probe.

``multiview-sample`` creates or reopens every multiview store the variants need and runs the
shards that still have pending anchors through the shard registry's ``multiview`` stage
(:data:`tasks.stages.SHARD_STAGES`, :func:`flows.shards.run_shards`): embedded, one shard per
device of ``orchestration.devices``, or — with ``orchestration.mode: distributed`` — as runs of
the ``ganviews-shard`` deployment taken by its workers. A rerun after a crash or a kill writes
only the pending shards (the store's status is the source of truth). ``worker="i/n"`` takes
every n-th pending shard, so n processes can also share a job by hand without ever writing the
same chunk. ``multiview-train`` trains each variant (resumable from its checkpoint, skipped
when its encoder exists); ``multiview-probe`` probes them and writes the report;
``multiview`` runs the three in order. Every flow takes a YAML path or :func:`plain` data.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from prefect import flow

from flows.shards import run_shards
from ganviews.core.errors import ConfigError
from ganviews.genrep.experiment import all_variants
from tasks.multiview import (
    multiview_pipeline,
    plain,
    probe_task,
    train_variant_task,
)
from tasks.pipeline_config import job_name
from tasks.stages import SHARD_STAGES

Config = str | dict[str, Any]


def worker_slice(worker: str | None) -> tuple[int, int]:
    """``"i/n"`` → (i, n) with 0 ≤ i < n; None → (0, 1)."""
    if worker is None:
        return 0, 1
    try:
        i, n = (int(p) for p in str(worker).split("/"))
    except ValueError:
        i, n = -1, 0
    if not 0 <= i < n:
        raise ConfigError(f"worker: expected 'i/n' with 0 ≤ i < n, got {worker!r}")
    return i, n


@flow(name="multiview-sample")
def multiview_sample(config: Config, worker: str | None = None) -> dict[str, Any]:
    """Write every pending shard of every store the variants need (this worker's share)."""
    cfg = multiview_pipeline(config)
    stage = SHARD_STAGES["multiview"]
    jobs = stage.build(cfg)
    i, n = worker_slice(worker)
    todo = [(k, shard) for k, job in enumerate(jobs) for shard in stage.plan(job)][i::n]
    for k, job in enumerate(jobs):  # ShardsFailed if a shard did not complete
        # one job name per store: its shards' idempotency keys and artifacts stay apart
        orch = dataclasses.replace(cfg.orchestration, job=f"{job_name(cfg)}-{job.store}")
        shards = [shard for kk, shard in todo if kk == k]
        run_shards(dataclasses.replace(cfg, orchestration=orch), "multiview", job, shards)
    return {
        "stage": "multiview-sample",
        "shards_run": len(todo),
        "anchors": sum(b - a for _, (a, b) in todo),
    }


@flow(name="multiview-train")
def multiview_train(config: Config) -> dict[str, Any]:
    """Train every variant's encoder (skips finished ones, resumes interrupted ones)."""
    pipe = multiview_pipeline(config)
    params = plain(pipe)
    runs = [
        train_variant_task(params, {k: v for k, v in vars(v).items()})
        for v in all_variants(pipe.multiview)
    ]
    return {"stage": "multiview-train", "variants": runs}


@flow(name="multiview-probe")
def multiview_probe(config: Config) -> dict[str, Any]:
    """Linear probe of every trained encoder on the real splits; the report."""
    return {"stage": "multiview-probe", **probe_task(plain(multiview_pipeline(config)))}


@flow(name="multiview")
def multiview(config: Config) -> dict[str, Any]:
    """Sample, train and probe in one run; each step skips what is complete."""
    params = plain(multiview_pipeline(config))
    return {
        "sample": multiview_sample(params),
        "train": multiview_train(params),
        "probe": multiview_probe(params),
    }
