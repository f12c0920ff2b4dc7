"""``ganviews deploy``: register the pipeline's deployments on a Prefect server, idempotently.

    PREFECT_API_URL=http://HOST:4200/api ganviews deploy [--work-pool ganviews] [--config CONFIG]

1. creates the process work pool (if missing) with two queues: ``shards`` (one worker per GPU,
   ``CUDA_VISIBLE_DEVICES=i``, ``--limit 1``) and ``control`` (stage / pipeline runs, a CPU worker);
2. registers the deployments — ``ganviews-shard/<name>`` on ``shards``; ``ganviews-pipeline/<name>``
   and one per stage flow on ``control`` — by module entrypoint (``flows.shards:shard_flow``), so
   any machine with ganviews installed can run them; every run gets
   ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` (client heartbeats);
3. creates (or updates) the automation that marks a flow run Crashed when its heartbeats stop
   (Prefect's documented zombie-run remedy: a killed worker otherwise leaves runs Running);
4. prints the commands that start the workers.
Running it again changes nothing but the deployments' versions.
"""

from __future__ import annotations

import argparse

ZOMBIE_AUTOMATION = "ganviews: crash zombie flow runs"
STAGE_ENTRYPOINTS = {
    "ganviews-pipeline": "flows.pipeline:pipeline",
    "invert-dataset": "flows.stages:invert_dataset",
    "train-encoder": "flows.stages:train_encoder",
    "compute-pca-stats": "flows.stages:compute_pca_stats",
    "render-and-classify": "flows.stages:render_and_classify",
    "corrupt-conditions": "flows.stages:corrupt_conditions",
    "train-classifier": "flows.stages:train_classifier",
    "evaluate-ensembles": "flows.stages:evaluate_ensembles",
    "multiview": "flows.multiview:multiview",  # GenRep (docs/genrep.md): its sampling fans out
    "multiview-sample": "flows.multiview:multiview_sample",  # through ganviews-shard like invert
    "multiview-train": "flows.multiview:multiview_train",
    "multiview-probe": "flows.multiview:multiview_probe",
}
SHARD_ENTRYPOINT = "flows.shards:shard_flow"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "deploy",
        help="register work pool, deployments and the zombie-run automation on a Prefect server",
        description="Create the process work pool and its queues, register the shard, stage and pipeline "
        "deployments, set up heartbeat-based zombie detection; idempotent. Needs PREFECT_API_URL.",
    )
    parser.add_argument(
        "--work-pool",
        help="work pool name (default: the config's orchestration.work_pool, else ganviews)",
    )
    parser.add_argument(
        "--config",
        metavar="CONFIG",
        help="pipeline YAML: default `config` parameter of the stage "
        "and pipeline deployments, and the source of pool / queue / deployment names",
    )
    parser.add_argument(
        "--name", help="deployment name (default: orchestration.deployment, else ganviews)"
    )
    parser.add_argument(
        "--heartbeat-seconds",
        type=int,
        default=60,
        help="flow-run heartbeat period (PREFECT_FLOWS_HEARTBEAT_FREQUENCY, ≥ 30; default 60)",
    )
    parser.add_argument(
        "--zombie-after",
        type=int,
        default=0,
        metavar="SECONDS",
        help="mark a run Crashed after this long without a heartbeat (default 3 × heartbeat)",
    )
    parser.set_defaults(func=run)


def names_from(args: argparse.Namespace):
    """(pool, shard queue, control queue, deployment name, config path or None)."""
    from tasks.pipeline_config import OrchestrationConfig, load_pipeline_config

    orch, config = OrchestrationConfig(), None
    if args.config:
        from pathlib import Path

        orch = load_pipeline_config(args.config).orchestration
        config = str(Path(args.config).resolve())
    return (
        args.work_pool or orch.work_pool,
        orch.shard_queue,
        orch.control_queue,
        args.name or orch.deployment,
        config,
    )


def ensure_work_pool(client, pool: str, queues: list[str]) -> list[str]:
    """Create the process pool and its queues when missing → what was created."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    created = []
    try:
        found = client.read_work_pool(pool)
        if found.type != "process":
            from ganviews.core.errors import ConfigError

            raise ConfigError(
                f"--work-pool: {pool!r} exists with type {found.type!r}; shard runs need a "
                "'process' pool (pick another name)"
            )
    except ObjectNotFound:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        created.append(f"work pool {pool} (process)")
    existing = {q.name for q in client.read_work_queues(work_pool_name=pool)}
    for queue in queues:
        if queue not in existing:
            try:
                client.create_work_queue(name=queue, work_pool_name=pool)
                created.append(f"queue {pool}/{queue}")
            except ObjectAlreadyExists:
                pass
    return created


def apply_deployments(
    pool: str, shard_queue: str, control_queue: str, name: str, config: str | None, heartbeat: int
) -> list[str]:
    """Register the shard deployment and the stage / pipeline deployments → their full names."""
    from prefect.deployments.runner import EntrypointType
    from prefect.flows import load_flow_from_entrypoint

    from ganviews import __version__
    from ganviews.cli.run import EXTRA_LOGGERS

    env = {
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(heartbeat),
        "PREFECT_LOGGING_EXTRA_LOGGERS": EXTRA_LOGGERS,
    }
    specs = [(SHARD_ENTRYPOINT, shard_queue, None)] + [
        (e, control_queue, config) for e in STAGE_ENTRYPOINTS.values()
    ]
    out = []
    for entrypoint, queue, default_config in specs:
        flow = load_flow_from_entrypoint(entrypoint)
        deployment = flow.to_deployment(
            name, work_pool_name=pool, work_queue_name=queue, job_variables={"env": env},
            entrypoint_type=EntrypointType.MODULE_PATH, tags=["ganviews"], version=__version__,
            parameters={"config": default_config} if default_config else None,
            description=f"ganviews {flow.name}: {(flow.description or '').splitlines()[0] if flow.description else ''}",
        )  # fmt: skip
        deployment.apply(work_pool_name=pool)
        out.append(f"{flow.name}/{name}")
    return out


def ensure_zombie_automation(heartbeat: int, after: int) -> str:
    """The documented remedy for runs left Running by a killed worker: Crashed after missed heartbeats."""
    from datetime import timedelta

    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    trigger = EventTrigger(
        after={"prefect.flow-run.heartbeat"},
        expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed", "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed"},
        match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
        for_each={"prefect.resource.id"}, posture=Posture.Proactive, threshold=1,
        within=timedelta(seconds=after),
    )  # fmt: skip
    actions = [
        ChangeFlowRunState(
            state=StateType.CRASHED,
            message=f"no heartbeat for {after} s (heartbeats every {heartbeat} s): "
            "the worker or its machine is gone; `ganviews resume CONFIG` reruns the shard",
        )
    ]
    try:
        existing = Automation.read(name=ZOMBIE_AUTOMATION)
    except ValueError:
        Automation(
            name=ZOMBIE_AUTOMATION,
            trigger=trigger,
            actions=actions,
            description="ganviews deploy: zombie flow-run detection",
        ).create()
        return "created"
    existing.trigger, existing.actions, existing.enabled = trigger, actions, True
    existing.update()
    return "updated"


def run(args: argparse.Namespace) -> int:
    from ganviews.cli._api import check_api
    from ganviews.core.errors import ConfigError

    check_api()  # one line for an unset URL, a closed port or a server that never answers
    if args.heartbeat_seconds < 30:
        raise ConfigError(f"--heartbeat-seconds: {args.heartbeat_seconds}; Prefect needs ≥ 30")
    after = args.zombie_after or 3 * args.heartbeat_seconds
    if after <= args.heartbeat_seconds:
        raise ConfigError(
            f"--zombie-after: {after} s must exceed the heartbeat period ({args.heartbeat_seconds} s)"
        )
    pool, shard_queue, control_queue, name, config = names_from(args)
    from prefect import get_client

    with get_client(sync_client=True) as client:
        client.hello()
        created = ensure_work_pool(client, pool, [shard_queue, control_queue])
    for line in created:
        print(f"created {line}")
    for full in apply_deployments(
        pool, shard_queue, control_queue, name, config, args.heartbeat_seconds
    ):
        print(f"deployment {full}")
    print(
        f"automation {ZOMBIE_AUTOMATION!r} {ensure_zombie_automation(args.heartbeat_seconds, after)} "
        f"(Crashed after {after} s without heartbeat)"
    )
    print(f"""
start one worker per GPU (each takes one shard at a time), and one control worker:
  for i in 0 1 2 3; do
    CUDA_VISIBLE_DEVICES=$i prefect worker start --pool {pool} --work-queue {shard_queue} --type process \\
        --limit 1 --name gpu$i-$(hostname) &
  done
  prefect worker start --pool {pool} --work-queue {control_queue} --type process --name control-$(hostname) &
then: ganviews run CONFIG --mode distributed   (or start ganviews-pipeline/{name} from the UI)""")
    return 0
