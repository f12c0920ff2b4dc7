"""Logit tables: a hive-partitioned Parquet dataset, one row per (image, classifier, method, setting, view).

Layout: ``ROOT/task=<task>/classifier=<classifier>/method=<method>/shard-<key>.parquet``.
A writer owns the files named after its shard key: re-running a shard replaces exactly
those files (never duplicating rows), and every file is written under a hidden temporary
name and renamed into place, so readers never see a half-written file.

Views: 0 = the original image, 1 = the reconstruction G(w*), 2… = perturbed views. Every
(task, classifier, method, setting) group carries its own views 0 and 1, so it can be
evaluated on its own. Probabilities are computed at analysis time, never stored.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from storage.errors import StoreError

PARTITION_COLUMNS = ("task", "classifier", "method")

LOGITS_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),  # train / val / test
        pa.field("task", pa.string(), nullable=False),  # e.g. "Smiling", "car_type"
        pa.field("classifier", pa.string(), nullable=False),  # classifier name
        pa.field("method", pa.string(), nullable=False),  # e.g. "isotropic_fine", "stylemix_coarse", "crop"
        pa.field("setting", pa.string(), nullable=False),  # e.g. "0.3"; "" when the method has none
        pa.field("view", pa.int32(), nullable=False),  # 0 original, 1 reconstruction, ≥2 views
        pa.field("logits", pa.list_(pa.float32()), nullable=False),  # raw classifier outputs
        pa.field("label", pa.int64(), nullable=False),  # ground-truth class index
        pa.field("seed", pa.int64(), nullable=True),  # the view's own seed; null for views 0/1
    ]
)

_SAFE_KEY = re.compile(r"^[A-Za-z0-9_.\-]+$")


def _check_partition_value(column: str, value: str) -> None:
    if not value or not _SAFE_KEY.match(value):
        raise StoreError(
            f"logits column {column!r}: value {value!r} cannot name a partition "
            "(letters, digits, '_', '.', '-' only)"
        )


def to_table(frame: pd.DataFrame) -> pa.Table:
    """Validate a DataFrame of logit rows against LOGITS_SCHEMA and convert it."""
    missing = [name for name in LOGITS_SCHEMA.names if name not in frame.columns]
    if missing:
        raise StoreError(f"logit rows lack columns {missing}; schema: {LOGITS_SCHEMA.names}")
    extra = [name for name in frame.columns if name not in LOGITS_SCHEMA.names]
    if extra:
        raise StoreError(f"logit rows have unknown columns {extra}; schema: {LOGITS_SCHEMA.names}")
    try:
        return pa.Table.from_pandas(frame[LOGITS_SCHEMA.names], schema=LOGITS_SCHEMA, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
        raise StoreError(f"logit rows do not fit the schema: {exc}") from exc


def write_logits(
    root: str | Path,
    rows: pd.DataFrame | pa.Table,
    *,
    shard: str,
    metadata: Mapping[str, object] | None = None,
) -> list[Path]:
    """Write one shard's rows: one file per partition, replacing that shard's earlier files.

    ``shard`` names the writer's unit of work (e.g. ``"000000-000064"``); ``metadata`` (config,
    code version, model hashes) is stored as JSON in each file's key-value metadata.
    """
    if not _SAFE_KEY.match(shard):
        raise StoreError(f"shard key {shard!r} must use letters, digits, '_', '.', '-' only")
    table = rows if isinstance(rows, pa.Table) else to_table(rows)
    if table.schema.remove_metadata() != LOGITS_SCHEMA:
        table = to_table(table.to_pandas())
    kv = {b"ganviews": json.dumps(dict(metadata or {}), default=str, sort_keys=True).encode()}
    table = table.replace_schema_metadata(kv)
    root = Path(root)
    groups = table.group_by(list(PARTITION_COLUMNS)).aggregate([]).to_pylist() if table.num_rows else []
    written: list[Path] = []
    for group in groups:
        for column in PARTITION_COLUMNS:
            _check_partition_value(column, group[column])
        mask = None
        for column in PARTITION_COLUMNS:
            eq = pa.compute.equal(table[column], group[column])
            mask = eq if mask is None else pa.compute.and_(mask, eq)
        part = table.filter(mask)
        folder = root.joinpath(*(f"{c}={group[c]}" for c in PARTITION_COLUMNS))
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / f"shard-{shard}.parquet"
        tmp = folder / f".tmp-{uuid.uuid4().hex}.parquet"
        pq.write_table(part, tmp, compression="zstd")
        os.replace(tmp, final)
        written.append(final)
    return written


def read_logits(root: str | Path, filters: Mapping[str, object] | None = None) -> pd.DataFrame:
    """All logit rows under ``root`` as a DataFrame; ``filters`` maps column → value or list of values."""
    root = Path(root)
    if not root.is_dir():
        raise StoreError(f"logits dataset not found: {root} is not a directory")
    dataset = _dataset(root)
    expr = None
    for column, value in (filters or {}).items():
        if column not in LOGITS_SCHEMA.names:
            raise StoreError(f"filter on unknown column {column!r}; columns: {LOGITS_SCHEMA.names}")
        values = list(value) if isinstance(value, (list, tuple, set)) else [value]
        term = ds.field(column).isin(values)
        expr = term if expr is None else expr & term
    table = dataset.to_table(filter=expr)
    return table.to_pandas()


def _dataset(root: Path) -> ds.Dataset:
    files = sorted(p for p in root.rglob("*.parquet") if not p.name.startswith((".", "_")))
    for path in files:
        schema = pq.read_schema(path).remove_metadata()
        own = {(f.name, f.type) for f in LOGITS_SCHEMA if f.name not in PARTITION_COLUMNS}
        got = {(f.name, f.type) for f in schema if f.name not in PARTITION_COLUMNS}
        if not own <= got:
            raise StoreError(f"{path}: not a ganviews logits file (schema {schema.names})")
    return ds.dataset(
        [str(p) for p in files],
        schema=LOGITS_SCHEMA,
        format="parquet",
    )
