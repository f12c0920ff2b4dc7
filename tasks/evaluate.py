"""Prefect task: α cross-validation and the ensemble report (Chai et al. 2021, Sec. 3.4, Eq. 7).

:func:`run_evaluate` is the stage's one body (``ganviews report`` and the pipeline): it reads
the Parquet logit tables (one task at a time, so tables far larger than memory as a DataFrame
still work), cross-validates α per (task, classifier, method, setting) and writes
results.csv / results.parquet, plots and report.md. :data:`evaluate_ensembles_task` also — inside
a Prefect run — publishes the results table, the per-method summary, the report (images
inlined) and the summary plots as artifacts. :func:`evaluate_done` / :func:`record_evaluation`
keep the pipeline's ``<state>/evaluate.json`` marker (the logits a report was built from).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import task
from prefect.artifacts import create_image_artifact, create_markdown_artifact, create_table_artifact
from prefect.context import FlowRunContext, TaskRunContext

from ganviews.core.config import to_dict
from ganviews.core.errors import ConfigError
from ganviews.report.tables import ReportConfig, ReportOutputs, data_uri, write_report
from storage.arrays import ALIGNED, INVERSION_ARRAYS, MASK, RECON, VIEWS_PREFIX, view_array
from storage.latents import DONE, FAILED, LatentStore
from storage.logits import CLEAN, read_logits
from storage.results import write_results
from tasks.pipeline_config import PipelineConfig
from tasks.run_state import digest, read_json, write_json
from tasks.shard_runner import run_logger

log = logging.getLogger(__name__)

TABLE_COLUMNS = [
    "task", "classifier", "method", "setting", "kind", "alpha_star", "val_acc", "test_acc", "test_acc_se",
    "test_acc_single", "test_acc_recon", "test_acc_gan_only", "test_acc_oracle", "alpha_oracle",
    "gain", "gain_se", "test_acc_views_se", "n_val", "n_test",
]  # fmt: skip
# One artifact's data, at most: the server announces each artifact in an event that carries its
# data, and refuses events over PREFECT_SERVER_EVENTS_MAXIMUM_SIZE_BYTES (1.5 MB by default).
# Images that would not fit are linked by file URI instead of inlined.
ARTIFACT_BYTES = 1_000_000
SUMMARY_PLOTS = ("gain_bars__", "ensemble_size__", "alpha_mean__", "gallery")


@task(name="evaluate-ensembles")
def evaluate_ensembles_task(
    logits_dir: str | Path,
    out_dir: str | Path,
    store: str | Path | None = None,
    config: ReportConfig = ReportConfig(),  # noqa: B008 - frozen
    *,
    artifact_prefix: str = "ensemble",
    robustness: Any = None,
    fallback: Any = None,
    device: str = "auto",
) -> dict[str, str]:
    """Prefect task: :func:`run_evaluate` → the paths written.

    Artifacts (keys start with ``artifact_prefix``) are published only when running inside a
    Prefect flow or task run.
    """
    logger = run_logger()
    outputs = run_evaluate(
        logits_dir, out_dir, store=store, config=config, robustness=robustness,
        fallback=fallback, device=device,
    )  # fmt: skip
    table = outputs.results.table
    logger.info(
        "ensemble report: %s (%d rows, %d plots)", outputs.report_md, len(table), len(outputs.plots)
    )
    if FlowRunContext.get() is not None or TaskRunContext.get() is not None:
        keys = publish_artifacts(outputs, prefix=artifact_prefix)
        logger.info("published %d artifacts: %s", len(keys), ", ".join(keys))
    return {
        "report_md": str(outputs.report_md),
        "report_html": str(outputs.report_html) if outputs.report_html else "",
        "results_csv": str(outputs.results_csv),
        "results_parquet": str(outputs.results_parquet),
    }


def logit_tasks(root: str | Path) -> list[str]:
    """Task values of a logits dataset from its ``task=<task>`` partition folders (storage/logits.py layout)."""
    return sorted(p.name.split("=", 1)[1] for p in Path(root).glob("task=*") if p.is_dir())


def evaluate_logits(
    root: str | Path,
    config=None,
    *,
    expected=None,
    filters: Mapping[str, Any] | None = None,
    extra: pd.DataFrame | None = None,
):
    """α-CV over a whole logits dataset, one task at a time; size curves for settings chosen over
    all tasks. ``expected`` (image_id, split, detail) names the images every result should hold.

    Only the clean condition's rows are read unless ``filters`` (read_logits filters, e.g.
    ``{"condition": "pgd-8_255", "method": [...]}``) says otherwise. ``extra``: rows evaluated
    with the dataset's (the single-image fallback's view-0 rows, :mod:`tasks.fallback`)."""
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

    config = config or EnsembleConfig()
    filters = {"condition": CLEAN, **(filters or {})}
    tasks = logit_tasks(root)
    if len(tasks) <= 1:  # one chunk (or a layout without task folders): a single pass
        results = evaluate(_read(root, filters, extra), config, expected=expected)
    else:
        first = dataclasses.replace(config, size_curve="none")
        results = concat_results(
            [
                evaluate(_read(root, {**filters, "task": t}, extra), first, expected=expected)
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
                frame = _read(
                    root, {**filters, "task": t, "method": sorted({k[2] for k in mine})}, extra
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


def _read(root, filters: Mapping[str, Any], extra: pd.DataFrame | None) -> pd.DataFrame:
    """The dataset's rows matching ``filters``, with the matching ``extra`` rows appended."""
    frame = read_logits(root, filters, arrow_logits=True)
    if extra is None or extra.empty:
        return frame
    keep = np.ones(len(extra), dtype=bool)
    for column, value in filters.items():
        values = value if isinstance(value, (list, tuple, set)) else [value]
        keep &= extra[column].isin(list(values)).to_numpy()
    return pd.concat([frame, extra[keep]], ignore_index=True) if keep.any() else frame


def expected_images(store_path: str | Path):
    """The store manifest's val/test images (image_id, split) with why an image may lack logits:
    ``detail`` is "inversion failed: <reason>", "not inverted (pending)" or ""."""
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

    from ganviews.ensemble.evaluate import best_settings
    from ganviews.report.tables import GalleryArrays

    store = LatentStore.open(store_path, mode="r")
    names = set(store.array_names())
    missing = [n for n in INVERSION_ARRAYS if n not in names]
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
            views = sorted(n for n in names if n.startswith(VIEWS_PREFIX))
            raise ConfigError(
                f"report.gallery_arrays: {absent} not in the store (its views: {views})"
            )
    else:
        gan = table[table["kind"] == "gan"]
        best = best_settings(gan) if not gan.empty else gan
        wanted = [view_array(r.method, r.setting) for r in best.itertuples()]
        wanted = [n for n in dict.fromkeys(wanted) if n in names] or sorted(
            n for n in names if n.startswith(VIEWS_PREFIX)
        )[:4]
    # the store keeps views by number (0 = the input, 1 = G(w*) for GAN methods), and the
    # gallery shows the input and the reconstruction in their own columns: start after them
    image_methods = set(config.ensemble.image_aug_methods)
    first = {
        n.removeprefix(VIEWS_PREFIX): 1 if n.split("/")[1] in image_methods else 2 for n in wanted
    }
    views = {name: store.read_array(VIEWS_PREFIX + name, idx)[:, k:] for name, k in first.items()}
    gallery = GalleryArrays(
        inputs=store.read_array(ALIGNED, idx),
        masks=store.read_array(MASK, idx),
        reconstructions=store.read_array(RECON, idx),
        views=views,
        image_ids=[str(i) for i in store.image_ids[idx]],
        first_view=first,
    )
    return gallery, []


def run_evaluate(
    logits_dir: str | Path,
    out_dir: str | Path,
    *,
    store: str | Path | None = None,
    config: ReportConfig = ReportConfig(),  # noqa: B008 - frozen
    robustness: Any = None,
    fallback: Any = None,
    device: str = "auto",
) -> ReportOutputs:
    """Evaluate the logits under ``logits_dir`` and write the report into ``out_dir`` → ReportOutputs.

    Writes results.csv / results.parquet (:func:`storage.results.write_results`), the curve
    tables, PNG plots and report.md (+ report.html); with ``store`` also a reconstruction
    gallery read from the latent store; with ``robustness`` (a
    :class:`tasks.corrupt.RobustnessJob`) the Fig. 7 section over the input conditions. With
    ``fallback`` (the store's :class:`~tasks.jobs.RenderJob`) and ``on_missing_views: single``,
    failed images are classified from their original on ``device`` (:mod:`tasks.fallback`).
    """
    expected = expected_images(store) if store is not None else None
    added, notes = _fallback(fallback, expected, config, device)
    results = evaluate_logits(logits_dir, config.ensemble, expected=expected, extra=added)
    gallery = None
    if expected is None:
        notes.append(
            "images with no logit row at all (e.g. failed inversions) are not counted as "
            "excluded: the report knows the expected images only from a latent store (--store)"
        )
    if store is not None and config.gallery_images > 0:
        gallery, more = load_gallery(store, results.table, config)
        notes += more
    extra = []
    if robustness is not None:
        from tasks.corrupt import run_robustness

        extra = run_robustness(robustness, logits_dir, out_dir, config.ensemble)
    files = write_results(results.table, out_dir)
    return write_report(
        results, out_dir, results_files=files, config=config, gallery=gallery,
        source=str(logits_dir), notes=notes, extra=extra,
    )  # fmt: skip


def _fallback(job, expected, config: ReportConfig, device: str):
    """(view-0 rows of failed images or None, report notes); unusable originals get their reason
    appended to ``expected``'s detail (in place)."""
    if job is None or expected is None or config.ensemble.on_missing_views != "single":
        return None, []
    from tasks.fallback import fallback_rows

    out = fallback_rows(job, device=device)
    ids = expected["image_id"].astype(str)
    expected["detail"] = [
        detail + _unusable(detail, out.unusable[i]) if i in out.unusable else detail
        for i, detail in zip(ids, expected["detail"], strict=True)
    ]
    notes = []
    made = out.rows["image_id"].nunique() if not out.rows.empty else 0
    if made:
        notes.append(
            f"{made} val/test image(s) whose inversion failed are predicted from their original "
            "image alone (on_missing_views: single; test images are counted in n_test_fallback)."
        )
    if out.unusable:
        notes.append(
            f"{len(out.unusable)} val/test image(s) whose inversion failed cannot be read or "
            "aligned, so their original cannot be classified either: they stay excluded."
        )
    return out.rows, notes


def _unusable(detail: str, reason: str) -> str:
    """Why a failed image's original could not be classified, unless the detail says it already."""
    if reason in detail:
        return "; the original cannot be read or aligned either"
    return f"; original not classifiable either: {reason}"


def evaluate_key(cfg: PipelineConfig) -> str:
    """What the report depends on: every logits file (size, mtime), the report config, the
    store's failed and pending images (the exclusions' reasons) and, under
    ``on_missing_views: single``, the files of the failed images (:mod:`tasks.fallback`)."""
    root = Path(cfg.paths.logits)
    files = (
        sorted(
            (str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*.parquet")
            if not p.name.startswith((".", "_"))
        )
        if root.is_dir()
        else []
    )
    return digest(
        {
            "files": files,
            "report": to_dict(cfg.report),
            "store": str(cfg.paths.store),
            "corruptions": to_dict(cfg.corruptions),
            **_store_inputs(cfg),
        }
    )


def _store_inputs(cfg: PipelineConfig) -> dict[str, Any]:
    if not (Path(cfg.paths.store) / "zarr.json").is_file():
        return {}
    store = LatentStore.open(cfg.paths.store, mode="r")
    out: dict[str, Any] = {"failed": store.failed().tolist(), "pending": store.pending().tolist()}
    if cfg.report.ensemble.on_missing_views == "single":
        from tasks.fallback import fallback_inputs
        from tasks.jobs import render_job

        out["fallback"] = fallback_inputs(render_job(cfg))
    return out


def evaluate_done(cfg: PipelineConfig) -> bool:
    """The report exists and was built from the current logits and report config."""
    results = Path(cfg.paths.report) / "results.csv"
    marker = read_json(cfg.state_dir / "evaluate.json")
    return results.is_file() and marker.get("key") == evaluate_key(cfg)


def record_evaluation(cfg: PipelineConfig, outputs: Mapping[str, str]) -> None:
    """Remember which logits the report was built from (the pipeline skips an unchanged report)."""
    write_json(cfg.state_dir / "evaluate.json", {"key": evaluate_key(cfg), **outputs})


def publish_artifacts(outputs: ReportOutputs, *, prefix: str = "ensemble") -> list[str]:
    """Results table, per-method summary, Markdown report and summary plots as Prefect artifacts."""
    prefix = _key(prefix)
    results = outputs.results.table
    keys = [f"{prefix}-results", f"{prefix}-summary", f"{prefix}-report"]
    create_table_artifact(
        _records(results[TABLE_COLUMNS]),
        key=keys[0],
        description="Ensemble results per (task, classifier, method, setting); accuracies as fractions",
    )
    create_table_artifact(
        _records(outputs.summary),
        key=keys[1],
        description="Averages over tasks per (classifier, method, setting)",
    )
    text_bytes = len(outputs.render_markdown(_file_uri).encode())
    create_markdown_artifact(
        outputs.render_markdown(_inline_images(ARTIFACT_BYTES - text_bytes)),
        key=keys[2],
        description=str(outputs.report_md),
    )
    for caption, path in outputs.plots:
        if path.name.startswith(SUMMARY_PLOTS):
            key = f"{prefix}-{_key(path.stem)}"
            image = data_uri(path) if _data_uri_bytes(path) <= ARTIFACT_BYTES else _file_uri(path)
            create_image_artifact(image, key=key, description=caption)
            keys.append(key)
    return keys


def _file_uri(path: Path) -> str:
    return path.resolve().as_uri()


def _data_uri_bytes(path: Path) -> int:
    return len("data:image/png;base64,") + 4 * -(-path.stat().st_size // 3)


def _inline_images(budget: int):
    """Image reference for Markdown whose file-URI rendering is already counted: a data URI
    while the extra bytes fit in ``budget``, a file URI after that."""
    left = [budget]

    def ref(path: Path) -> str:
        extra = _data_uri_bytes(path) - len(_file_uri(path))
        if extra <= left[0]:
            left[0] -= extra
            return data_uri(path)
        return _file_uri(path)

    return ref


def _records(frame) -> list[dict[str, Any]]:
    rows = frame.to_dict("records")
    return [
        {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
        for r in rows
    ]


def _key(text: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text.lower())).strip("-") or "x"
