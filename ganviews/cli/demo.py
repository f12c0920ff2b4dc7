"""``ganviews demo``: the whole pipeline on a bundled real domain, offline, on CPU (docs/demo.md).

    ganviews demo [--out ./demo-out] [--fresh] [--config configs/demo.yaml] [--data-only]

Chai et al. 2021 end to end on scikit-learn's handwritten digits (32 px RGB), with the
project's own StyleGAN2 (``ganviews/assets/demo/generator.safetensors``, trained by
``ganviews train-gan``) and a small CNN trained on the real train split:

1. data — render the digits into ``OUT/data`` and write ``OUT/data/manifest.parquet``
   (:mod:`storage.adapters.digits`);
2. the ``ganviews-pipeline`` Prefect flow (:mod:`flows.pipeline`, embedded mode, no server)
   with ``configs/demo.yaml``, its data and output paths pointed into OUT: align (mode none) →
   invert val and test into ``OUT/store`` → PCA statistics → views (isotropic, PCA, style-mix;
   coarse and fine; color, crop) + logits into ``OUT/logits`` → α cross-validation and the
   report in ``OUT/report``.

A second run resumes: each stage skips what is complete (store status, render markers, the
evaluate marker), so nothing finished is recomputed. ``--fresh`` deletes OUT's demo folders
first. Stage timings go to ``OUT/timings.json``; ``OUT/pipeline.yaml`` is the resolved config
(``ganviews run OUT/pipeline.yaml`` / ``ganviews resume`` work on it too).
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO_ROOT / "configs" / "demo.yaml"
OWNED_DIRS = (
    "data",
    "store",
    "store-conditions",
    "logits",
    "report",
    "state",
)  # what --fresh removes under OUT
OWNED_FILES = ("pipeline.yaml", "timings.json")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the whole pipeline on the bundled digits domain (offline, CPU)",
        description="Digits → align → invert (val, test) → store → views → logits → α-CV → report, as one "
        "Prefect flow run. A rerun resumes and skips finished work.",
    )
    p.add_argument(
        "--out", type=Path, default=Path("demo-out"), help="output folder (default: %(default)s)"
    )
    p.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        help="pipeline YAML (default: configs/demo.yaml)",
    )
    p.add_argument("--fresh", action="store_true", help="delete OUT's demo folders and start over")
    p.add_argument(
        "--data-only", action="store_true", help="only render the digits and write the manifest"
    )
    p.add_argument(
        "--limit",
        type=int,
        metavar="N",
        help="smoke run: only the first N images of each evaluated split",
    )
    p.add_argument(
        "--check-generator",
        action="store_true",
        help="only write OUT/generator_samples.png and OUT/generator_check.json (how the "
        "real-data classifier labels 2000 samples of the demo generator)",
    )
    p.set_defaults(func=run)


def prepare_data(out: Path, *, limit: int | None = None, splits=("val", "test")) -> Path:
    """Render the digits into OUT/data and write the manifest (unchanged files are not rewritten)."""
    from storage.adapters.digits import build_digits
    from storage.manifest import read_manifest, write_manifest

    root = out / "data"
    frame = build_digits(root)
    if limit is not None:  # the first `limit` images of each evaluated split, plus the train split
        attrs = dict(frame.attrs)
        keep = (
            frame[frame["split"].isin(list(splits))].groupby("split", sort=False).head(int(limit))
        )
        frame = frame[
            (~frame["split"].isin(list(splits))) | frame.index.isin(keep.index)
        ].reset_index(drop=True)
        frame.attrs = attrs
    path = root / "manifest.parquet"
    if not path.is_file() or not read_manifest(path)[list(frame.columns)].equals(frame):
        write_manifest(frame, path)
    return path


def load_demo_config(path: Path):
    """configs/demo.yaml (a pipeline config) as a validated PipelineConfig."""
    from ganviews.core.errors import ConfigError
    from tasks.pipeline_config import load_pipeline_config

    if not Path(path).is_file():
        raise ConfigError(f"--config: {path} not found")
    return load_pipeline_config(path)


def demo_config(config_path: Path, out: Path, manifest: Path):
    """The demo's PipelineConfig with data.manifest and paths.* pointed into OUT."""
    import dataclasses

    from tasks.pipeline_config import check_pipeline_config

    cfg = load_demo_config(config_path)
    cfg = dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, manifest=manifest, image_root=None),
        paths=dataclasses.replace(
            cfg.paths,
            store=out / "store",
            logits=out / "logits",
            report=out / "report",
            state=out / "state",
        ),
    )
    check_pipeline_config(cfg)
    return cfg


def missing_models(cfg) -> list[str]:
    """Model files the config names that are absent (classifiers the pipeline will not train)."""
    need = [("models.generator", cfg.models.generator)]
    if cfg.models.encoder is not None and not cfg.encoder_training.enabled:
        need.append(("models.encoder", cfg.models.encoder))
    for name, ref in cfg.models.classifiers.items():
        if not (cfg.classifier_training.enabled and cfg.classifier_training.name == name):
            need.append((f"models.classifiers.{name}.path", ref.path))
    return [f"{key}: {path} not found" for key, path in need if not Path(path).is_file()]


def generator_check(
    G, C, *, n: int = 2000, seed: int = 0, batch: int = 250, truncation_psi: float = 1.0
) -> dict:
    """How the real-data classifier labels ``n`` samples of G: confidence and class balance."""
    import numpy as np
    import torch

    gen = torch.Generator().manual_seed(seed)
    probs = []
    with torch.no_grad():
        for start in range(0, n, batch):
            z = torch.randn([min(batch, n - start), G.z_dim], generator=gen)  # [B, z_dim]
            img = G(
                z.to(G.mean_w.device), truncation_psi=truncation_psi, noise_mode="const"
            )  # [B, 3, R, R]
            probs.append(torch.softmax(C(img.clamp(-1, 1)), dim=1).cpu())  # [B, K]
    p = torch.cat(probs).numpy()  # [n, K]
    counts = np.bincount(p.argmax(1), minlength=p.shape[1])
    return {
        "samples": n,
        "truncation_psi": truncation_psi,
        "mean_max_confidence": float(p.max(1).mean()),
        "share_confidence_above_0.9": float((p.max(1) > 0.9).mean()),
        "class_counts": counts.tolist(),
        "class_share_min_max": [float(counts.min() / n), float(counts.max() / n)],
        "entropy_of_class_balance_bits": float(
            -(counts / n * np.log2(np.maximum(counts / n, 1e-12))).sum()
        ),
    }


def sample_grid(
    G, path: Path, *, rows: int = 8, cols: int = 16, seed: int = 0, truncation_psi: float = 1.0
) -> Path:
    """An 8×16 grid of G's samples (constant noise) as a PNG."""
    import torch
    from torchvision.utils import save_image

    from ganviews.core.atomic import write_atomically

    gen = torch.Generator().manual_seed(seed)
    z = torch.randn([rows * cols, G.z_dim], generator=gen)  # [n, z_dim]
    with torch.no_grad():
        img = G(
            z.to(G.mean_w.device), truncation_psi=truncation_psi, noise_mode="const"
        )  # [n, 3, R, R]
    grid = (img.clamp(-1, 1) + 1) / 2
    return write_atomically(
        path, lambda tmp: save_image(grid, tmp, format="png", nrow=cols, padding=2, pad_value=0.5)
    )


@contextlib.contextmanager
def environ_defaults(**values: str) -> Iterator[None]:
    """Set the environment variables that are unset, for the duration of the block only: an
    in-process caller (a notebook, a test) keeps its own environment afterwards."""
    added = [k for k in values if k not in os.environ]
    os.environ.update({k: values[k] for k in added})
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


DEMO_ENVIRON = {
    "PREFECT_LOGGING_LEVEL": "WARNING",  # the demo prints its own progress
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # offline: no telemetry attempts
    "DO_NOT_TRACK": "1",
}


def run(args: argparse.Namespace) -> int:
    with environ_defaults(**DEMO_ENVIRON):
        return _run(args)


def resume_command(args: argparse.Namespace) -> str:
    """The ``ganviews demo`` command line that continues this demo (a rerun resumes)."""
    import shlex

    parts = ["ganviews", "demo", "--out", str(args.out), "--config", str(args.config)]
    if args.limit is not None:
        parts += ["--limit", str(args.limit)]
    return shlex.join(parts)


def _run(args: argparse.Namespace) -> int:
    import json
    import shutil
    import time

    import yaml

    from ganviews.core.errors import ConfigError
    from storage.atomic import atomic_write_bytes, atomic_write_json

    out = args.out.resolve()
    if not args.config.is_file():
        raise ConfigError(f"--config: {args.config} not found")
    if args.fresh:
        for name in OWNED_DIRS:
            shutil.rmtree(out / name, ignore_errors=True)
        for name in OWNED_FILES:
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    t0 = t = time.perf_counter()
    manifest = prepare_data(out, limit=args.limit)
    times["data"] = round(time.perf_counter() - t, 2)
    print(f"data: {manifest} ({times['data']:.1f} s)", flush=True)
    if args.data_only:
        return 0
    cfg = demo_config(args.config, out, manifest)
    problems = missing_models(cfg)
    if problems:
        raise ConfigError(
            "; ".join(problems) + " (the demo models ship in ganviews/assets/demo/; docs/demo.md "
            "has the commands that rebuild them)"
        )
    if args.check_generator:
        from ganviews.classifiers.checkpoints import load_classifier
        from ganviews.stylegan.generator import load_generator

        G = load_generator(cfg.models.generator)
        C = load_classifier(next(iter(cfg.models.classifiers.values())).path)
        grid = sample_grid(G, out / "generator_samples.png")
        stats = generator_check(G, C)
        atomic_write_json(out / "generator_check.json", stats)
        print(f"samples: {grid}\n{json.dumps(stats, indent=2)}")
        return 0

    from ganviews.cli.run import prepare_environment
    from tasks.pipeline_config import STAGES, pipeline_config_dict

    plain = pipeline_config_dict(cfg)
    text = yaml.safe_dump(json.loads(json.dumps(plain, default=str)), sort_keys=False)
    atomic_write_bytes(out / "pipeline.yaml", text.encode("utf-8"))
    prepare_environment(cfg)
    from flows.pipeline import pipeline
    from ganviews.cli._interrupt import report_interrupted, run_interruptible
    from ganviews.cli.server import embedded_api, stop_server
    from tasks.preflight import preflight

    preflight(cfg, STAGES)

    print(
        f"pipeline: Prefect flow 'ganviews-pipeline' (embedded, {cfg.orchestration.devices}) → {out}",
        flush=True,
    )

    def stages() -> None:
        outcome = {}
        for stage in STAGES:  # one flow run per stage, so each stage's wall time is measured
            t = time.perf_counter()
            outcome.update(pipeline(plain, stages=[stage]))
            times[stage] = round(time.perf_counter() - t, 2)
            result = outcome[stage]
            what = (
                f"skipped ({result['skipped']})"
                if "skipped" in result
                else ", ".join(
                    f"{k}={v}"
                    for k, v in result.items()
                    if k != "stage" and not isinstance(v, (dict, list))
                )
            )
            print(f"  {stage:17s} {times[stage]:6.1f} s  {what}", flush=True)

    resume = resume_command(args)
    with embedded_api() as server:
        interrupted, _ = run_interruptible(
            stages,
            command="ganviews demo",
            resume=resume,
            on_exit_now=lambda: stop_server(server, wait=2.0),
        )
    if interrupted:
        return report_interrupted("ganviews demo", resume)
    times["total"] = round(time.perf_counter() - t0, 2)
    atomic_write_json(out / "timings.json", times)
    report = cfg.paths.report / "report.md"
    print(f"done in {times['total']:.0f} s; report: {report}", flush=True)
    return 0
