"""The dataset manifest: one Parquet row per image, the contract between adapters and the pipeline.

Columns (DESIGN.md, "Data contracts"):

=============  ==================  =====================================================
column         type                meaning
=============  ==================  =====================================================
image_id       string, unique      stable identifier; keys latents, views and logits
path           string              image file (absolute, or relative to the manifest)
split          string              ``train`` / ``val`` / ``test`` (the paper's α-CV uses val)
<label>        int64 (≥1 column)   class index or binary attribute; bool is stored as 0/1
bbox           list<float64>[4]    optional: x0, y0, x1, y1 in pixels (null = none)
landmarks      list<float64>       optional: x1, y1, x2, y2, … in pixels (null = none)
<extra>        string/float/int    optional: anything else (class names, sizes)
=============  ==================  =====================================================

Label columns are listed in the file's key-value metadata (``ganviews.label_columns``);
when a writer does not name them, every integer or boolean column other than the fixed
ones is a label. Row order is meaningful: store index ``i`` is manifest row ``i``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from storage.atomic import atomic_write_parquet
from storage.errors import StoreError

REQUIRED_COLUMNS = ("image_id", "path", "split")
OPTIONAL_COLUMNS = ("bbox", "landmarks")
SPLITS = ("train", "val", "test")
_META_KEY = b"ganviews.label_columns"
_ATTRS_KEY = b"ganviews.attrs"  # the DataFrame's other ``attrs`` (dataset, root, options …)


def _is_int_or_bool(series: pd.Series) -> bool:
    return pd.api.types.is_integer_dtype(series) or pd.api.types.is_bool_dtype(series)


def _check_points(frame: pd.DataFrame, column: str, width: int | None) -> pa.Array:
    values = []
    for row, item in enumerate(frame[column].tolist()):
        if item is None or (isinstance(item, float) and np.isnan(item)):
            values.append(None)
            continue
        try:
            vec = np.asarray(item, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise StoreError(
                f"manifest column {column!r}, row {row} (image_id {frame['image_id'].iloc[row]!r}): "
                f"{item!r} is not a list of numbers"
            ) from exc
        if width is not None and vec.size != width:
            raise StoreError(
                f"manifest column {column!r}, row {row} (image_id {frame['image_id'].iloc[row]!r}): "
                f"{vec.size} values, expected {width} (x0, y0, x1, y1)"
            )
        if width is None and vec.size % 2:
            raise StoreError(
                f"manifest column {column!r}, row {row}: {vec.size} values, expected x, y pairs"
            )
        if not np.isfinite(vec).all():
            raise StoreError(f"manifest column {column!r}, row {row}: non-finite value in {item!r}")
        values.append(vec.tolist())
    kind = pa.list_(pa.float64(), width) if width is not None else pa.list_(pa.float64())
    return pa.array(values, type=kind)


def validate_manifest(
    frame: pd.DataFrame, *, label_columns: Sequence[str] | None = None
) -> tuple[pa.Table, list[str]]:
    """Check a manifest DataFrame; return it as an Arrow table and its label columns.

    ``label_columns`` default to ``frame.attrs["label_columns"]`` (what the adapters set), else
    to every integer or boolean column outside the fixed ones. Raises StoreError naming the
    first offending column (and row where it helps).
    """
    if not isinstance(frame, pd.DataFrame):
        raise StoreError(f"manifest must be a pandas DataFrame, got {type(frame).__name__}")
    if label_columns is None:
        label_columns = frame.attrs.get("label_columns")
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise StoreError(f"manifest lacks required column(s) {missing}; has {list(frame.columns)}")
    attrs = dict(frame.attrs)
    frame = frame.reset_index(drop=True)
    frame.attrs = attrs
    for column in ("image_id", "path"):
        series = frame[column]
        bad = [i for i, v in enumerate(series.tolist()) if not isinstance(v, str) or not v]
        if bad:
            raise StoreError(
                f"manifest column {column!r}: row {bad[0]} holds {series.iloc[bad[0]]!r}, "
                "expected a non-empty string"
            )
    dupes = frame["image_id"][frame["image_id"].duplicated()].unique().tolist()
    if dupes:
        raise StoreError(
            f"manifest column 'image_id': duplicate ids {dupes[:5]} ({len(dupes)} in all)"
        )
    bad_split = sorted(set(frame["split"].tolist()) - set(SPLITS), key=str)
    if bad_split:
        raise StoreError(f"manifest column 'split': values {bad_split} not in {list(SPLITS)}")

    fixed = set(REQUIRED_COLUMNS) | set(OPTIONAL_COLUMNS)
    if label_columns is None:
        labels = [c for c in frame.columns if c not in fixed and _is_int_or_bool(frame[c])]
    else:
        labels = list(label_columns)
        for column in labels:
            if column not in frame.columns:
                raise StoreError(
                    f"manifest label column {column!r} not found; columns: {list(frame.columns)}"
                )
            if column in fixed:
                raise StoreError(f"manifest column {column!r} is reserved and cannot be a label")
    if not labels:
        raise StoreError(
            "manifest has no label column: add at least one integer or boolean column "
            f"(columns: {list(frame.columns)})"
        )
    arrays: dict[str, pa.Array] = {
        "image_id": pa.array(frame["image_id"].tolist(), pa.string()),
        "path": pa.array(frame["path"].tolist(), pa.string()),
        "split": pa.array(frame["split"].tolist(), pa.string()),
    }
    for column in labels:
        series = frame[column]
        if not _is_int_or_bool(series):
            raise StoreError(
                f"manifest label column {column!r}: dtype {series.dtype}, expected integer or bool"
            )
        arrays[column] = pa.array(series.astype(np.int64).to_numpy(), pa.int64())
    if "bbox" in frame.columns:
        arrays["bbox"] = _check_points(frame, "bbox", 4)
    if "landmarks" in frame.columns:
        arrays["landmarks"] = _check_points(frame, "landmarks", None)
    for column in frame.columns:
        if column in arrays:
            continue
        series = frame[column]
        if not isinstance(column, str):
            raise StoreError(f"manifest column name {column!r} must be a string")
        if pd.api.types.is_bool_dtype(series):
            arrays[column] = pa.array(series.to_numpy(), pa.bool_())
        elif pd.api.types.is_integer_dtype(series):
            arrays[column] = pa.array(series.astype(np.int64).to_numpy(), pa.int64())
        elif pd.api.types.is_float_dtype(series):
            arrays[column] = pa.array(series.astype(np.float64).to_numpy(), pa.float64())
        elif pd.api.types.is_object_dtype(series) or pd.api.types.is_string_dtype(series):
            values = series.tolist()
            bad = [i for i, v in enumerate(values) if v is not None and not isinstance(v, str)]
            if bad:
                raise StoreError(
                    f"manifest column {column!r}: row {bad[0]} holds {values[bad[0]]!r}; extra "
                    "columns must be numbers or strings"
                )
            arrays[column] = pa.array(values, pa.string())
        else:
            raise StoreError(f"manifest column {column!r}: dtype {series.dtype} is not supported")
    table = pa.table(arrays)
    meta = {_META_KEY: json.dumps(labels).encode()}
    extra_attrs = {k: v for k, v in frame.attrs.items() if k != "label_columns"}
    if extra_attrs:
        meta[_ATTRS_KEY] = json.dumps(extra_attrs, default=str, sort_keys=True).encode()
    return table.replace_schema_metadata(meta), labels


def _table_to_frame(table: pa.Table) -> pd.DataFrame:
    frame = table.to_pandas()
    for column in OPTIONAL_COLUMNS:
        if column in frame.columns:
            frame[column] = [None if v is None else list(v) for v in frame[column].tolist()]
    return frame


def write_manifest(
    frame: pd.DataFrame, path: str | Path, *, label_columns: Sequence[str] | None = None
) -> Path:
    """Validate and write a manifest atomically; returns the path."""
    table, _ = validate_manifest(frame, label_columns=label_columns)
    return atomic_write_parquet(table, path)


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read and validate a manifest; ``frame.attrs["label_columns"]`` lists its labels."""
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"manifest not found: {path}")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise StoreError(f"manifest {path} is not a readable Parquet file: {exc}") from exc
    meta = table.schema.metadata or {}
    labels = json.loads(meta[_META_KEY]) if _META_KEY in meta else None
    frame = _table_to_frame(table)
    try:
        _, labels = validate_manifest(frame, label_columns=labels)
    except StoreError as exc:
        raise StoreError(f"manifest {path}: {exc}") from exc
    frame.attrs = json.loads(meta[_ATTRS_KEY]) if _ATTRS_KEY in meta else {}
    frame.attrs["label_columns"] = labels
    return frame


def manifest_sha256(manifest: pd.DataFrame | str | Path) -> str:
    """Content hash of a manifest: row order, column names, types and values, not file bytes.

    Two Parquet files with the same rows hash alike even when written by different pyarrow
    versions or compression settings. The ``path`` column is left out on purpose: moving a
    dataset to another disk does not change which images a store describes.
    """
    frame = read_manifest(manifest) if isinstance(manifest, (str, Path)) else manifest
    table, labels = validate_manifest(frame)
    digest = hashlib.sha256()
    digest.update(json.dumps({"label_columns": labels}).encode())
    for name in sorted(table.column_names):
        if name == "path":
            continue
        column = table[name]
        digest.update(json.dumps([name, str(column.type)]).encode())
        digest.update(json.dumps(column.to_pylist(), separators=(",", ":")).encode())
    return digest.hexdigest()
