"""The registry of the pipeline's sharded stages: ``{stage: ShardStage}``.

Each entry names the stage's typed job (built once from the pipeline config, and rebuilt from
plain data where a shard crosses into a deployment run), its typed Prefect task
``(job, shard, device) → summary`` and its planner (which shards still need work). The flows
schedule shards through this table only (flows/shards.py); the one-shot stages (encoder,
PCA, classifier, report) are plain tasks called by their flows (flows/stages.py). ``multiview``
is GenRep's sampling (flows/multiview.py); its training and probe are one-shot tasks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tasks.corrupt import CorruptJob, condition_jobs, corrupt_shard_task, plan_corrupt
from tasks.invert import invert_shard_task, plan_invert
from tasks.jobs import InvertJob, RenderJob, invert_job, render_job
from tasks.multiview import MultiviewJob, multiview_jobs, multiview_shard_task, plan_multiview
from tasks.pipeline_config import PipelineConfig
from tasks.render import render_shard_task
from tasks.render_plan import plan_render


@dataclass(frozen=True)
class ShardStage:
    """A sharded stage: how its job is built, which task runs a shard, which shards are left."""

    job_type: type
    build: Callable[[PipelineConfig], Any]  # PipelineConfig → job
    task: Any  # prefect Task (job, shard, device) → summary
    plan: Callable[[Any], list[tuple[int, int]]]  # job → shards with work left


SHARD_STAGES: dict[str, ShardStage] = {
    "invert": ShardStage(InvertJob, invert_job, invert_shard_task, plan_invert),
    "render": ShardStage(RenderJob, render_job, render_shard_task, plan_render),
    # one job per condition (corruptions.conditions): build gives the list
    "corrupt": ShardStage(
        CorruptJob,
        lambda cfg: [c.corrupt for c in condition_jobs(cfg)],
        corrupt_shard_task,
        plan_corrupt,
    ),
    # GenRep sampling (docs/genrep.md): one job per multiview store the variants need
    "multiview": ShardStage(MultiviewJob, multiview_jobs, multiview_shard_task, plan_multiview),
}
