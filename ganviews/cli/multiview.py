"""``ganviews multiview``: generative multiview data for representation learning (GenRep).

    ganviews multiview sample CONFIG [--worker i/n]   # multiview stores (resumable, sharded)
    ganviews multiview train CONFIG                   # one encoder per variant (resumable)
    ganviews multiview probe CONFIG                   # linear probe + report
    ganviews multiview run CONFIG                     # the three in order
    ganviews multiview demo [--out DIR] [--fresh]     # all of it on the bundled digits

CONFIG is a YAML with a ``multiview`` section (configs/example.yaml documents it; a pipeline
YAML works, its models.generator / data.manifest fill in what the section leaves out). Each
step runs as a Prefect flow in this process (flows/multiview.py) and skips finished work.
Jahanian et al., ICLR 2022; docs/genrep.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_CONFIG = REPO_ROOT / "configs" / "multiview-demo.yaml"
DEMO_OWNED = ("data", "multiview")  # what --fresh removes under OUT


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "multiview",
        help="GenRep: sample multiview data from a generator, train contrastive encoders, probe them",
        description="Generative multiview data for representation learning (Jahanian et al., "
        "ICLR 2022): sample anchors and latent views, train SimCLR/SupCon encoders, probe them "
        "linearly on real labelled data.",
    )
    sub = p.add_subparsers(dest="multiview_command", metavar="STEP", required=True)
    for name, text in (
        ("sample", "write the multiview stores the variants need (resumes; sharded)"),
        ("train", "train one encoder per variant (resumes from checkpoints)"),
        ("probe", "linear probe of every trained encoder on the real splits; the report"),
        ("run", "sample, train and probe in one run"),
    ):
        q = sub.add_parser(name, help=text, description=text)
        q.add_argument("config", type=Path, help="YAML with a multiview section")
        if name == "sample":
            q.add_argument("--worker", metavar="I/N", help="take every N-th pending shard from I")
        q.set_defaults(func=run_step, step=name)
    d = sub.add_parser(
        "demo",
        help="the whole study on the bundled digits generator (offline, CPU)",
        description="Digits generator → multiview stores → encoders → linear probe on the real "
        "digits split → OUT/multiview/report (results.csv, results.md, plots).",
    )
    d.add_argument(
        "--out", type=Path, default=Path("demo-out"), help="output folder (default: %(default)s)"
    )
    d.add_argument(
        "--config",
        type=Path,
        default=DEMO_CONFIG,
        help="demo YAML (default: configs/multiview-demo.yaml)",
    )
    d.add_argument("--fresh", action="store_true", help="delete OUT's multiview folders first")
    d.set_defaults(func=run_demo)


def _flows():
    """Quiet Prefect logs and a patient start of its temporary server (a loaded machine took
    more than Prefect's default 20 s); the user's own settings win."""
    from ganviews.cli.demo import DEMO_ENVIRON, environ_defaults

    return environ_defaults(**DEMO_ENVIRON, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180")


def run_step(args: argparse.Namespace) -> int:
    with _flows():  # before Prefect is imported: it reads its settings then
        return _run_step(args)


def _run_step(args: argparse.Namespace) -> int:
    from flows import multiview as F
    from tasks.multiview import multiview_pipeline, plain

    pipe = multiview_pipeline(args.config)  # the YAML's orchestration schedules the sampling
    cfg, params = pipe.multiview, plain(pipe)
    if args.step == "sample":
        out = F.multiview_sample(params, worker=args.worker)
    else:
        out = {"train": F.multiview_train, "probe": F.multiview_probe,
               "run": F.multiview}[args.step](params)  # fmt: skip
    print(json.dumps(out, indent=2, default=str))
    if args.step in ("probe", "run"):
        print((cfg.out / "report" / "results.md").read_text())
    return 0


def run_demo(args: argparse.Namespace) -> int:
    with _flows():  # before Prefect is imported: it reads its settings then
        return _run_demo(args)


def _run_demo(args: argparse.Namespace) -> int:
    import shutil

    from ganviews.cli.demo import prepare_data
    from ganviews.core.errors import ConfigError
    from storage.atomic import atomic_write_json
    from tasks.multiview import load_multiview_config, plain

    if not args.config.is_file():
        raise ConfigError(f"--config: {args.config} not found")
    out = args.out.resolve()
    if args.fresh:
        for name in DEMO_OWNED:
            shutil.rmtree(out / name, ignore_errors=True)
    t0 = time.perf_counter()
    manifest = prepare_data(out)
    cfg = load_multiview_config(args.config)
    cfg = dataclasses.replace(cfg, manifest=manifest, image_root=None, out=out / "multiview")
    params = plain(cfg)
    from flows import multiview as F
    from tasks.shard_runner import LIBRARY_LOGGERS

    for name in LIBRARY_LOGGERS:  # the demo prints its own progress (the shard runner would
        if logging.getLogger(name).level == logging.NOTSET:  # raise them to INFO)
            logging.getLogger(name).setLevel(logging.WARNING)
    times = {"data": round(time.perf_counter() - t0, 1)}
    print(f"data: {manifest} ({times['data']} s)", flush=True)
    for step, fn in (("sample", F.multiview_sample), ("train", F.multiview_train),
                     ("probe", F.multiview_probe)):  # fmt: skip
        t = time.perf_counter()
        fn(params)
        times[step] = round(time.perf_counter() - t, 1)
        print(f"  {step:7s} {times[step]:7.1f} s", flush=True)
    times["total"] = round(time.perf_counter() - t0, 1)
    atomic_write_json(cfg.out / "timings.json", times)
    print((cfg.out / "report" / "results.md").read_text())
    print(f"done in {times['total']:.0f} s; report: {cfg.out / 'report'}", flush=True)
    return 0
