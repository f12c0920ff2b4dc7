"""``ganviews report --logits DIR --out OUTDIR [--store STORE] [--config YAML]``.

Reads the Parquet logit tables (one task at a time, so tables far larger than memory as a
DataFrame still work), cross-validates α per (task, classifier, method, setting), and writes
results.csv / results.parquet, the curve tables, PNG plots and report.md (+ report.html);
with ``--store`` also a reconstruction gallery read from the latent store; with
``--condition LABEL=STORE`` (repeatable) the Fig. 7 robustness section over those corrupted
conditions (docs/corruptions.md). Prints the path
of report.md. The body is :func:`tasks.evaluate.run_evaluate` (the pipeline's evaluate stage).
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="α cross-validation, results table, plots and report.md from logit tables",
        description="Evaluate ensembles of generative views from the Parquet logit tables: choose α "
        "on val per (task, classifier, method, setting), report test accuracy (single image, "
        "views only, reconstruction, test oracle), image-augmentation combinations and "
        "ensemble-size curves. Writes OUTDIR/results.csv, results.parquet, plots/ and report.md.",
    )
    parser.add_argument(
        "--logits", required=True, metavar="DIR", help="root of the logits Parquet dataset"
    )
    parser.add_argument(
        "--out", required=True, metavar="OUTDIR", help="folder for tables, plots and the report"
    )
    parser.add_argument(
        "--store", metavar="STORE", help="latent store (Zarr) to draw a reconstruction gallery from"
    )
    parser.add_argument(
        "--condition", action="append", default=[], metavar="LABEL=STORE",
        help="a corrupted condition's label and latent store (repeat): adds the robustness table",
    )  # fmt: skip
    parser.add_argument(
        "--gan-method", default="stylemix_fine", help="robustness: the GAN ensemble's view group"
    )
    parser.add_argument(
        "--image-method", default="crop", help="robustness: the combined ensemble's image views"
    )
    parser.add_argument(
        "--config",
        metavar="YAML",
        help="report options (keys of ReportConfig; 'ensemble:' for α-CV)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ganviews.core.config import config_from
    from ganviews.core.errors import ConfigError
    from ganviews.report.tables import ReportConfig
    from tasks.corrupt import RobustnessJob
    from tasks.evaluate import run_evaluate

    config = config_from(ReportConfig, args.config, key="")
    stores = {}
    for spec in args.condition:
        label, sep, path = spec.partition("=")
        if not (sep and label and path):
            raise ConfigError(f"--condition: expected LABEL=STORE, got {spec!r}")
        stores[label] = Path(path)
    robustness = (
        RobustnessJob(stores, gan_method=args.gan_method, image_method=args.image_method)
        if stores
        else None
    )
    outputs = run_evaluate(
        args.logits, args.out, store=args.store, config=config, robustness=robustness
    )
    print(outputs.report_md)
    return 0
