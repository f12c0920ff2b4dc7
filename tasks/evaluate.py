"""Prefect task: α cross-validation and the ensemble report (Chai et al. 2021, Sec. 3.4, Eq. 7).

Reads the logit tables, writes results.csv / results.parquet, plots and report.md through
:func:`ganviews.cli.report.run_report`, and — inside a Prefect run — publishes the results
table, the per-method summary, the report (images inlined) and the summary plots as artifacts.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_image_artifact, create_markdown_artifact, create_table_artifact
from prefect.context import FlowRunContext, TaskRunContext
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger

from ganviews.cli.report import run_report
from ganviews.report.tables import ReportOutputs, data_uri

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
    config: Any = None,
    *,
    artifact_prefix: str = "ensemble",
) -> dict[str, str]:
    """Evaluate the ensembles under ``logits_dir``, write the report to ``out_dir`` → paths written.

    ``config``: None, a ReportConfig, a mapping or a YAML path. Artifacts (keys start with
    ``artifact_prefix``) are published only when running inside a Prefect flow or task run.
    """
    logger = _logger()
    outputs = run_report(logits_dir, out_dir, store=store, config=config)
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


def _logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except MissingContextError:  # called as .fn outside any run
        return logging.getLogger(__name__)
