"""``ganviews report --logits DIR --out OUTDIR [--store STORE] [--config YAML]``.

Reads the Parquet logit tables (one task at a time, so tables far larger than memory as a
DataFrame still work), cross-validates α per (task, classifier, method, setting), and writes
results.csv / results.parquet, the curve tables, PNG plots and report.md (+ report.html);
with ``--store`` also a reconstruction gallery read from the latent store. Prints the path
of report.md. :func:`run_report` is the same as a function (the Prefect task calls it).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

GALLERY_ARRAYS = ("images/aligned", "images/mask", "images/recon")


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
        "--config",
        metavar="YAML",
        help="report options (keys of ReportConfig; 'ensemble:' for α-CV)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    outputs = run_report(args.logits, args.out, store=args.store, config=args.config)
    print(outputs.report_md)
    return 0


def load_config(config: Any = None):
    """``None`` / a ReportConfig / a mapping / a YAML path → ReportConfig (ConfigError names bad keys)."""
    from ganviews.core.config import from_dict, load_yaml
    from ganviews.core.errors import ConfigError
    from ganviews.report.tables import ReportConfig

    if config is None:
        return ReportConfig()
    if isinstance(config, ReportConfig):
        return config
    if isinstance(config, (str, Path)):
        config = load_yaml(config)
    if not isinstance(config, Mapping):
        raise ConfigError(
            f"config: expected a ReportConfig, a mapping or a YAML path, got {type(config).__name__}"
        )
    return from_dict(ReportConfig, config)


def logit_tasks(root: str | Path) -> list[str]:
    """Task values of a logits dataset from its ``task=<task>`` partition folders (storage/logits.py layout)."""
    return sorted(p.name.split("=", 1)[1] for p in Path(root).glob("task=*") if p.is_dir())


def evaluate_logits(root: str | Path, config=None, *, expected=None):
    """α-CV over a whole logits dataset, one task at a time; size curves for settings chosen over
    all tasks. ``expected`` (image_id, split, detail) names the images every result should hold."""
    from ganviews.ensemble.evaluate import (
        GROUP_COLUMNS,
        EnsembleConfig,
        EnsembleInputError,
        EnsembleResults,
        best_settings,
        build_groups,
        concat_results,
        evaluate,
        size_curves,
    )
    from storage.logits import read_logits

    config = config or EnsembleConfig()
    tasks = logit_tasks(root)
    if len(tasks) <= 1:  # one chunk (or a layout without task folders): a single pass
        results = evaluate(read_logits(root, arrow_logits=True), config, expected=expected)
    else:
        first = dataclasses.replace(config, size_curve="none")
        results = concat_results(
            [
                evaluate(
                    read_logits(root, {"task": t}, arrow_logits=True), first, expected=expected
                )
                for t in tasks
            ],
            config,
        )
        if config.size_curve != "none" and not results.table.empty:
            plain = results.table[results.table["kind"] != "combined"]
            if config.size_curve == "best_setting":
                plain = plain.merge(
                    best_settings(plain)[["classifier", "method", "setting"]], how="inner"
                )
            keys = set(map(tuple, plain[list(GROUP_COLUMNS)].to_numpy().tolist()))
            sizes = []
            for t in tasks:
                mine = {k for k in keys if k[0] == t}
                if not mine:
                    continue
                frame = read_logits(
                    root, {"task": t, "method": sorted({k[2] for k in mine})}, arrow_logits=True
                )
                groups = [g for g in build_groups(frame, config) if g.key in mine]
                sizes.append(
                    size_curves(
                        groups, results.table[results.table["task"] == t], config, keys=mine
                    )
                )
            parts = [
                EnsembleResults(results.table.iloc[:0], results.curves.iloc[:0], s, config)
                for s in sizes
            ]
            results = dataclasses.replace(
                results, size_curves=concat_results(parts, config).size_curves
            )
    if results.table.empty:
        raise EnsembleInputError(
            f"{root}: no val/test logit rows to evaluate (α is chosen on val, reported on test)"
        )
    return results


def expected_images(store_path: str | Path):
    """The store manifest's val/test images (image_id, split) with why an image may lack logits:
    ``detail`` is "inversion failed: <reason>", "not inverted (pending)" or ""."""
    import numpy as np

    from storage import LatentStore
    from storage.latents import DONE, FAILED

    store = LatentStore.open(store_path, mode="r")
    manifest = store.manifest()
    if manifest is None:
        return None
    status = store.read(np.arange(store.n_images), fields=["status", "reason"])
    detail = np.where(
        status["status"] == FAILED,
        np.char.add("inversion failed: ", status["reason"].astype(str)),
        np.where(status["status"] == DONE, "", "not inverted (pending)"),
    )
    frame = manifest[["image_id", "split"]].assign(detail=detail)
    return frame[frame["split"].isin(["val", "test"])].reset_index(drop=True)


def load_gallery(store_path: str | Path, table, config):
    """Gallery arrays read from a latent store → (GalleryArrays or None, notes for the report)."""
    import numpy as np

    from ganviews.ensemble.evaluate import best_settings
    from ganviews.report.tables import GalleryArrays
    from storage import LatentStore

    store = LatentStore.open(store_path, mode="r")
    names = set(store.array_names())
    missing = [n for n in GALLERY_ARRAYS if n not in names]
    if missing:
        note = f"no reconstruction gallery: the store {store_path} lacks {missing}"
        log.warning(note)
        return None, [note]
    done = store.done()
    idx = (done if len(done) else np.arange(store.n_images))[: config.gallery_images]
    if config.gallery_arrays is not None:
        wanted = list(config.gallery_arrays)
        absent = [n for n in wanted if n not in names]
        if absent:
            from ganviews.core.errors import ConfigError

            raise ConfigError(
                f"report.gallery_arrays: {absent} not in the store (its views: {sorted(n for n in names if n.startswith('views/'))})"
            )
    else:
        gan = table[table["kind"] == "gan"]
        best = best_settings(gan) if not gan.empty else gan
        wanted = [
            f"views/{r.method}/{r.setting}" if r.setting else f"views/{r.method}"
            for r in best.itertuples()
        ]
        wanted = [n for n in dict.fromkeys(wanted) if n in names] or sorted(
            n for n in names if n.startswith("views/")
        )[:4]
    # the store keeps views by number (0 = the input, 1 = G(w*) for GAN methods), and the
    # gallery shows the input and the reconstruction in their own columns: start after them
    image_methods = set(config.ensemble.image_aug_methods)
    first = {n.removeprefix("views/"): 1 if n.split("/")[1] in image_methods else 2 for n in wanted}
    views = {name: store.read_array(f"views/{name}", idx)[:, k:] for name, k in first.items()}
    gallery = GalleryArrays(
        inputs=store.read_array("images/aligned", idx),
        masks=store.read_array("images/mask", idx),
        reconstructions=store.read_array("images/recon", idx),
        views=views,
        image_ids=[str(i) for i in store.image_ids[idx]],
        first_view=first,
    )
    return gallery, []


def run_report(
    logits_dir: str | Path,
    out_dir: str | Path,
    *,
    store: str | Path | None = None,
    config: Any = None,
):
    """Evaluate the logits under ``logits_dir`` and write the report into ``out_dir`` → ReportOutputs."""
    from ganviews.report.tables import write_report

    config = load_config(config)
    expected = expected_images(store) if store is not None else None
    results = evaluate_logits(logits_dir, config.ensemble, expected=expected)
    gallery, notes = (None, [])
    if expected is None:
        notes.append(
            "images with no logit row at all (e.g. failed inversions) are not counted as "
            "excluded: the report knows the expected images only from a latent store (--store)"
        )
    if store is not None and config.gallery_images > 0:
        gallery, more = load_gallery(store, results.table, config)
        notes += more
    return write_report(
        results, out_dir, config=config, gallery=gallery, source=str(logits_dir), notes=notes
    )
