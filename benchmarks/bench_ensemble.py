"""Benchmark: vectorised α cross-validation vs a per-image loop (paper Eq. 7 at dataset scale).

Default: 40 tasks × 6 method/settings × 21 α × (10k val + 10k test) images × 32 views, a
single-logit binary classifier (CelebA-HQ attributes). Times, per stage:
  build      logits [N, V, 1] → probabilities, per group (from dense arrays);
  table      one task's logits Parquet dataset → read → dense groups, extrapolated; logits read
             as numpy arrays per row and as an Arrow list column (what ``ganviews report`` uses);
  evaluate   α-CV for every group: 21 α on val and test, α*, oracle, single/recon/views-only,
             SEs, McNemar, bootstrap over views (B draws) — ``evaluate_groups``;
  size       ensemble-size curves (0…31 views, B draws) for the best setting per method;
  loop       a per-image, per-α numpy loop on a subset of one group, extrapolated to all.
Run: ``python benchmarks/bench_ensemble.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import platform
import tempfile
import time

import numpy as np
import pandas as pd
from _machine import cpu_name  # benchmarks/ is the script's folder

from ganviews.ensemble.evaluate import (
    EnsembleConfig,
    alpha_grid,
    build_groups,
    concat_results,
    evaluate_groups,
    make_group,
    probabilities,
    size_curves,
)
from storage.logits import read_logits, write_logits

METHODS = [("isotropic_fine", "0.1"), ("isotropic_fine", "0.2"), ("isotropic_coarse", "0.2"),
           ("pca_fine", "2"), ("pca_coarse", "2"), ("stylemix_fine", "")]  # fmt: skip


@contextlib.contextmanager
def timed(acc: np.ndarray):
    """Add the block's wall and CPU seconds to ``acc`` ([wall, cpu])."""
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    acc += [time.perf_counter() - wall, time.process_time() - cpu]


def synthetic(rng: np.random.Generator, n: int, views: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits [n, views, 1] of a decent binary classifier whose views are noisy copies of the image."""
    labels = rng.integers(0, 2, size=n)
    image = (2 * labels - 1) * 1.5 + rng.normal(scale=2.0, size=n)  # [n]
    logits = image[:, None] + rng.normal(scale=1.0, size=(n, views))  # [n, V]
    return logits[..., None].astype(np.float32), labels


def task_groups(rng, task: str, n_val: int, n_test: int, views: int):
    out, build = [], 0.0
    for method, setting in METHODS:
        vl, vy = synthetic(rng, n_val, views)
        tl, ty = synthetic(rng, n_test, views)
        start = time.perf_counter()
        out.append(
            make_group(
                task,
                "resnet50",
                method,
                setting,
                val_logits=vl,
                val_labels=vy,
                test_logits=tl,
                test_labels=ty,
            )
        )
        build += time.perf_counter() - start
    return out, build


def per_image_loop(probs: np.ndarray, labels: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    """The baseline: for each image, for each α, average with numpy and take the argmax."""
    correct = np.zeros(len(alphas), dtype=np.int64)
    for i in range(probs.shape[0]):
        p0, views = probs[i, 0], probs[i, 1:].mean(axis=0)  # [K], [K]
        for j, a in enumerate(alphas):
            correct[j] += int(np.argmax((1 - a) * p0 + a * views) == labels[i])
    return correct


def table_build(rng, n: int, views: int) -> tuple[dict[str, float], int]:
    """Seconds to turn one task's logits dataset (written with storage.logits) into dense groups:
    read + build_groups, with the logits read as numpy arrays per row and as an Arrow list column."""
    rows = []
    for method, setting in METHODS:
        for split in ("val", "test"):
            logits, labels = synthetic(rng, n, views)
            rows.append(pd.DataFrame({
                "image_id": np.repeat([f"{split}{i:06d}" for i in range(n)], views),
                "split": split, "task": "t0", "classifier": "resnet50", "method": method, "setting": setting,
                "view": np.tile(np.arange(views, dtype=np.int32), n),
                "logits": list(logits.reshape(-1, 1).astype(np.float32)), "label": np.repeat(labels, views),
                "seed": pd.array([None] * (n * views), dtype="Int64"),
            }))  # fmt: skip
    frame = pd.concat(rows, ignore_index=True)
    times = {}
    with tempfile.TemporaryDirectory() as root:
        write_logits(root, frame, shard="bench")
        for name, arrow in (("numpy", False), ("arrow", True)):
            start = time.perf_counter()
            groups = build_groups(read_logits(root, arrow_logits=arrow))
            times[name] = time.perf_counter() - start
            assert len(groups) == len(METHODS)
    return times, len(frame)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="4 tasks × 2k images: a smoke run")
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument(
        "--images", type=int, default=10_000, help="images per split (val and test each)"
    )
    parser.add_argument(
        "--views", type=int, default=32, help="views per image incl. view 0 and the reconstruction"
    )
    parser.add_argument("--draws", type=int, default=100, help="bootstrap draws over views")
    parser.add_argument(
        "--loop-images", type=int, default=300, help="images in the per-image loop subset"
    )
    parser.add_argument(
        "--table-images",
        type=int,
        default=10_000,
        help="images per split in the table→dense timing",
    )
    args = parser.parse_args()
    if args.quick:
        args.tasks, args.images, args.loop_images, args.table_images = 4, 2_000, 100, 1_000
    config = EnsembleConfig(bootstrap_draws=args.draws, size_curve="none")
    alphas = alpha_grid(config.num_alphas)
    threads = (
        os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS") or "default"
    )
    print(
        f"machine: {cpu_name()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, BLAS threads {threads}"
    )
    print(
        f"python {platform.python_version()}, numpy {np.__version__}, pandas {pd.__version__}; torch: not used; float64 on CPU"
    )
    n_groups = args.tasks * len(METHODS)
    print(f"settings: {args.tasks} tasks × {len(METHODS)} method/settings = {n_groups} groups, {len(alphas)} α, "
          f"{args.images} val + {args.images} test images × {args.views} views, binary (1 logit), "
          f"bootstrap {args.draws} draws")  # fmt: skip

    rng = np.random.default_rng(0)
    build = 0.0
    clock = {name: np.zeros(2) for name in ("alpha", "evaluate", "size")}  # [wall, cpu] seconds
    parts = []
    alpha_only = dataclasses.replace(config, bootstrap_draws=2)
    for t in range(args.tasks):
        groups, b = task_groups(rng, f"attr{t:02d}", args.images, args.images, args.views)
        build += b
        with timed(clock["alpha"]):
            evaluate_groups(groups, alpha_only)
        with timed(clock["evaluate"]):
            res = evaluate_groups(groups, config)
        keys = [
            g.key for g in groups if g.setting != "0.1"
        ]  # one setting per method, as best_setting picks
        with timed(clock["size"]):
            size_curves(groups, res.table, config, keys=keys)
        parts.append(res)
    table = concat_results(parts, config).table
    assert len(table) == n_groups
    size_groups = args.tasks * (len(METHODS) - 1)

    # baseline: the per-image loop on a subset of one group, val and test, checked against the library
    sub = args.loop_images
    vl, vy = synthetic(rng, sub, args.views)
    group = make_group(
        "t",
        "c",
        "isotropic_fine",
        "0.1",
        val_logits=vl,
        val_labels=vy,
        test_logits=vl,
        test_labels=vy,
    )
    probs = probabilities(vl)
    start = time.perf_counter()
    loop_counts = per_image_loop(probs, vy, alphas)
    loop_s = time.perf_counter() - start
    lib = evaluate_groups([group], dataclasses.replace(config, bootstrap_draws=2)).curves
    lib_counts = lib[lib["split"] == "val"]["correct"].to_numpy()
    assert np.array_equal(loop_counts, lib_counts), "per-image loop and library disagree"
    per_image_alpha = loop_s / (sub * len(alphas))
    loop_full = per_image_alpha * 2 * args.images * len(alphas) * n_groups

    table_times, table_rows = table_build(rng, args.table_images, args.views)
    scale = args.tasks * args.images / args.table_images

    print("stage          wall s    cpu s")
    print(f"build        {build:8.2f}           logits → probabilities, {n_groups} groups")
    for name, what in (("alpha", f"α-CV only (21 α, val+test, α*, oracle, single/recon/views-only), {n_groups} groups"),
                       ("evaluate", f"α-CV + SEs + McNemar + view bootstrap ({args.draws} draws), {n_groups} groups"),
                       ("size", f"ensemble-size curves 0…{args.views - 1} views × {args.draws} draws, {size_groups} groups")):  # fmt: skip
        wall, cpu = clock[name]
        print(f"{name:10s}   {wall:8.2f} {cpu:8.2f}   {what}")
    for name, what in (
        ("numpy", "logits as numpy arrays per row (read_logits default)"),
        (
            "arrow",
            "logits as an Arrow list column (arrow_logits=True, what `ganviews report` reads)",
        ),
    ):
        print(f"table-{name:5s}  {table_times[name]:8.2f}           Parquet ({table_rows:,} rows, one task) → dense "
              f"groups, {what}; ×{scale:.0f} ≈ {table_times[name] * scale:.0f} s for all tasks")  # fmt: skip
    print(
        f"             table read + build: arrow {table_times['numpy'] / table_times['arrow']:.2f}× the numpy path"
    )
    print(
        f"loop         {loop_s:8.2f}           per-image, per-α numpy loop on {sub} images ({per_image_alpha * 1e6:.1f} µs per image-α)"
    )
    print(
        f"             per-image loop extrapolated to all groups: {loop_full:,.0f} s ({loop_full / 3600:.2f} h)"
    )
    print(
        f"ratio        {loop_full / clock['alpha'][0]:,.0f}× per-image loop / vectorised α-CV (wall)"
    )


if __name__ == "__main__":
    main()
