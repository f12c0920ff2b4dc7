"""``ganviews resume CONFIG``: finish an interrupted job — only pending and failed items run.

Reads the latent store (the source of truth), shows what is left and which shards were
cut off (their progress files still say ``running``: a killed worker or process), then
runs the pipeline again: done images are never recomputed, complete stages are skipped.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from ganviews.cli.run import add_job_arguments

    parser = subparsers.add_parser(
        "resume",
        help="resume an interrupted job: only pending and failed items",
        description="Show what an earlier run of CONFIG left undone (pending / failed images, interrupted shards) "
        "and run it; done images and complete stages are skipped.",
    )
    add_job_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ganviews.cli._interrupt import report_interrupted
    from ganviews.cli.run import (
        give_up_rule,
        load_job,
        prepare_environment,
        print_failed,
        print_outcome,
        resume_command,
        run_pipeline,
    )
    from ganviews.core.errors import ConfigError

    cfg = load_job(args)
    if not (cfg.paths.store / "zarr.json").is_file():
        raise ConfigError(
            f"paths.store: no latent store at {cfg.paths.store}; nothing to resume (use `ganviews run`)"
        )
    prepare_environment(cfg)
    from flows.pipeline import select_stages
    from storage import LatentStore
    from tasks.jobs import invert_job
    from tasks.pipeline_config import check_files, job_name
    from tasks.preflight import preflight
    from tasks.run_state import interrupted_shards

    store = LatentStore.open(cfg.paths.store, mode="r")
    table = store.status_table()
    print(
        f"ganviews resume: job {job_name(cfg)}: {int(table['done'].sum())} done, {int(table['pending'].sum())} "
        f"pending, {int(table['failed'].sum())} failed images in {store.path}",
        flush=True,
    )
    given_up = len(store.given_up(invert_job(cfg).attempt_limit))
    if given_up:
        print(
            f"  {given_up} failed images are given up on ({give_up_rule(cfg)}); "
            "`ganviews status` lists their reasons",
            flush=True,
        )
    for rec in interrupted_shards(cfg.state_dir):
        print(
            f"  interrupted: {rec.get('stage')} shard {rec.get('shard')} (pid {rec.get('pid')} on "
            f"{rec.get('host')}, device {rec.get('device')})",
            flush=True,
        )
    stages = select_stages(args.stages)
    check_files(cfg, stages)
    preflight(cfg, stages)
    resume = resume_command(args)
    interrupted, outcome = run_pipeline(cfg, stages, command="ganviews resume", resume=resume)
    if interrupted:
        return report_interrupted("ganviews resume", resume)
    print_outcome(outcome)
    print_failed(outcome, cfg, resume)
    return 0
