"""The results table of an ensemble report: ``results.csv`` and ``results.parquet`` (one row per
task, classifier, method and setting; columns of ``ganviews.ensemble.evaluate``).

Written here, atomically, so the catalog owns every table a job leaves behind; the report's
other files (curve tables, plots, report.md) are the library's (ganviews/report).
"""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from storage.atomic import atomic_write_bytes

RESULTS_CSV = "results.csv"
RESULTS_PARQUET = "results.parquet"


def write_results(table: pd.DataFrame, out_dir: str | Path) -> tuple[Path, Path]:
    """``table`` as ``out_dir/results.csv`` and ``out_dir/results.parquet`` → their paths."""
    out_dir = Path(out_dir)
    csv, parquet = out_dir / RESULTS_CSV, out_dir / RESULTS_PARQUET
    atomic_write_bytes(csv, table.to_csv(index=False).encode())
    sink = io.BytesIO()
    table.to_parquet(sink, index=False)
    atomic_write_bytes(parquet, sink.getvalue())
    return csv, parquet


def read_results(out_dir: str | Path) -> pd.DataFrame:
    """The results table of a report folder."""
    return pd.read_parquet(Path(out_dir) / RESULTS_PARQUET)
