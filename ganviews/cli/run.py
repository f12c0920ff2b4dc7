"""``ganviews run CONFIG``: the whole pipeline (or some stages) from one YAML (docs/orchestration.md).

    ganviews run configs/example.yaml [--stages invert,render] [--mode embedded|distributed]
        [--devices cuda:0,cuda:1] [--job NAME]

Stages run in order (train_encoder, invert, train_classifier, pca, render, corrupt, evaluate); each
skips what is complete, so a rerun does only pending and failed work. Embedded mode (the
default) runs on Prefect's local runtime, one concurrent shard per device; distributed mode
needs ``PREFECT_API_URL`` (a server with the deployments of ``ganviews deploy`` and workers).
The first Ctrl-C / SIGTERM stops after the current batch and prints the command that resumes
the job; a second exits at once (:mod:`ganviews.cli._interrupt`).
"""

from __future__ import annotations

import argparse

EXTRA_LOGGERS = "ganviews,tasks,storage,flows"  # library loggers forwarded to the Prefect run logs


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config", metavar="CONFIG", help="pipeline YAML (configs/example.yaml documents every key)"
    )
    parser.add_argument(
        "--stages",
        default="all",
        help="comma-separated subset of "
        "train_encoder,invert,train_classifier,pca,render,corrupt,evaluate (default all)",
    )
    parser.add_argument(
        "--mode", choices=("embedded", "distributed"), help="override orchestration.mode"
    )
    parser.add_argument(
        "--devices",
        metavar="D[,D]",
        help="override orchestration.devices, e.g. cuda:0,cuda:1 or cpu",
    )
    parser.add_argument(
        "--job", metavar="NAME", help="override orchestration.job (run names, idempotency keys)"
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run the pipeline (or some stages) from one YAML config",
        description="Encoder training, inversion, classifier training, PCA statistics, views + logits and the "
        "ensemble report, from one YAML. Complete outputs are skipped; shards run one per device (embedded) or "
        "as deployment runs on a work pool (distributed).",
    )
    add_job_arguments(parser)
    parser.set_defaults(func=run)


def load_job(args: argparse.Namespace):
    """The PipelineConfig of CONFIG with the command-line overrides applied."""
    import dataclasses

    from tasks.pipeline_config import check_pipeline_config, load_pipeline_config

    cfg = load_pipeline_config(args.config)
    changes = {}
    if args.mode:
        changes["mode"] = args.mode
    if args.devices:
        changes["devices"] = tuple(d.strip() for d in args.devices.split(",") if d.strip())
    if args.job:
        changes["job"] = args.job
    if changes:
        cfg = dataclasses.replace(
            cfg, orchestration=dataclasses.replace(cfg.orchestration, **changes)
        )
        check_pipeline_config(cfg)
    return cfg


def prepare_environment(cfg) -> None:
    """Library logs into the run logs; distributed mode needs a server that answers (one clear
    line when it is unset, unreachable or silent)."""
    import os

    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", EXTRA_LOGGERS)
    if cfg.orchestration.mode != "distributed":
        # Prefect's temporary in-process server (no PREFECT_API_URL): no telemetry from batch jobs,
        # which on an offline node logged an error on every run; an explicit setting wins.
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        return
    from ganviews.cli._api import check_api

    check_api()  # one line for an unset URL, a closed port or a server that never answers


_THROUGHPUT_KEYS = ("items", "item", "seconds")


def print_outcome(outcome: dict) -> None:
    for stage, result in outcome.items():
        if "skipped" in result:
            print(f"{stage:17s} skipped: {result['skipped']}")
        else:
            shown = {
                k: v
                for k, v in result.items()
                if k not in ("stage", *_THROUGHPUT_KEYS) and not isinstance(v, (dict, list))
            }
            print(f"{stage:17s} " + ", ".join(f"{k}={v}" for k, v in shown.items()))
    for line in throughput_lines(outcome):
        print(line)


def print_failed(outcome: dict, cfg, resume: str) -> None:
    """What to do about images whose inversion failed (they are left out of, or fall back to the
    original in, the report)."""
    invert = outcome.get("invert") or {}
    failed, given_up = int(invert.get("failed", 0)), int(invert.get("given_up", 0))
    if not failed:
        return
    rule = give_up_rule(cfg)
    if given_up == failed:
        then = f"they are given up on ({rule})"
    elif given_up:
        then = (
            f"{given_up} of them are given up on ({rule}); `{resume}` retries the other "
            f"{failed - given_up}"
        )
    else:
        then = f"`{resume}` retries them (orchestration.max_image_attempts: N gives up after N)"
    print(
        f"{failed} image(s) failed to invert: `ganviews status {cfg.paths.store}` lists why; {then}; "
        "the report counts them as excluded (or, with ensemble.on_missing_views: single, "
        "classifies their original)"
    )


def give_up_rule(cfg) -> str:
    """The setting that makes a run give up on failed images, as the user wrote it."""
    orch = cfg.orchestration
    if not orch.retry_failed_images:
        return "orchestration.retry_failed_images: false"
    return f"after {orch.max_image_attempts} failures, orchestration.max_image_attempts"


def throughput_lines(outcome: dict) -> list[str]:
    """The per-stage throughput table: stage, items (what they are), seconds, items/s."""
    lines = [f"{'stage':17s} {'items':>16s} {'seconds':>9s} {'items/s':>9s}"]
    for stage, result in outcome.items():
        if "seconds" not in result:
            continue
        seconds = float(result["seconds"])
        if "items" in result:
            items = f"{result['items']} {result.get('item', '')}".strip()
            rate = f"{result['items'] / seconds:9.2f}" if seconds > 0 else f"{'-':>9s}"
        else:
            items, rate = "-", f"{'-':>9s}"
        lines.append(f"{stage:17s} {items:>16s} {seconds:9.1f} {rate}")
    return lines if len(lines) > 1 else []


def resume_command(args: argparse.Namespace) -> str:
    """The exact ``ganviews resume`` command line that continues this job."""
    import shlex

    parts = ["ganviews", "resume", args.config]
    for flag in ("stages", "mode", "devices", "job"):
        value = getattr(args, flag, None)
        if value and not (flag == "stages" and value == "all"):
            parts += [f"--{flag}", value]
    return shlex.join(parts)


def run_pipeline(cfg, stages: list[str], *, command: str, resume: str):
    """The pipeline flow, stoppable by signal, with a private API server in embedded mode and
    a watch on the API in distributed mode → (interrupted, outcome)."""
    import contextlib

    from flows.pipeline import pipeline
    from ganviews.cli._interrupt import run_interruptible
    from ganviews.cli.server import embedded_api, stop_server
    from tasks.pipeline_config import pipeline_config_dict

    embedded = cfg.orchestration.mode == "embedded"
    with (
        embedded_api() if embedded else contextlib.nullcontext() as server,
        contextlib.nullcontext() if embedded else api_watch(resume) as watch,
    ):
        return run_interruptible(
            lambda: pipeline(pipeline_config_dict(cfg), stages=stages),
            command=command,
            resume=resume,
            on_exit_now=lambda: stop_server(server, wait=2.0),
            watch=watch,
        )


def api_watch(resume: str):
    """Distributed mode: the API watch of the run (one line when the server falls silent)."""
    from ganviews.cli._api import ApiWatch, api_url, read_seconds

    return ApiWatch(api_url(), read=read_seconds(), resume=resume)


def run(args: argparse.Namespace) -> int:
    cfg = load_job(args)
    prepare_environment(cfg)
    from flows.pipeline import select_stages
    from ganviews.cli._interrupt import report_interrupted
    from tasks.pipeline_config import check_files, job_name
    from tasks.preflight import preflight

    stages = select_stages(args.stages)
    check_files(cfg, stages)  # before any flow starts: a missing file is one line, at once
    preflight(cfg, stages)  # every other cheap check, one line per problem, before any work
    print(
        f"ganviews run: job {job_name(cfg)}, stages {', '.join(stages)}, {cfg.orchestration.mode} mode",
        flush=True,
    )
    resume = resume_command(args)
    interrupted, outcome = run_pipeline(cfg, stages, command="ganviews run", resume=resume)
    if interrupted:
        return report_interrupted("ganviews run", resume)
    print_outcome(outcome)
    print_failed(outcome, cfg, resume)
    print(f"store status: ganviews status {cfg.paths.store}")
    return 0
