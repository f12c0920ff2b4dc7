"""Logit tables: a hive-partitioned Parquet dataset, one row per (image, classifier, method, setting, view).

Paper: Chai et al., CVPR 2021, §3.3 — the ensemble combines the classifier's output on the
original image with its outputs on N generated views; the logits of every view are kept
so α and the ensemble size can be chosen afterwards (§4, α cross-validation on val).

Layout: ``ROOT/task=<task>/classifier=<classifier>/method=<method>/shard-<key>.parquet``
(condition ``clean``) and ``shard-<key>--<condition>.parquet`` (a corrupted or attacked
input condition, Sec. 4.1 / Fig. 7: see :mod:`ganviews.corruptions.conditions`; files
written before the ``condition`` column existed read as ``clean``).
A writer owns the files named after its shard key. Re-running a shard replaces that
shard's rows of the same (task, classifier, method, setting, condition) and keeps its rows
of other settings, so a writer may store a shard's settings in one call or one setting per call,
and a rerun never duplicates rows. Every file is written under a hidden temporary name,
fsynced and renamed into place, so readers never see a half-written file.

Views: 0 = the original image, 1 = the reconstruction G(w*), 2… = perturbed views. Every
(task, classifier, method, setting) group carries its own views 0 and 1, so it can be
evaluated on its own. Probabilities are computed at analysis time, never stored.

Readable by the ecosystem: the partition columns live only in the folder names (hive
style), so ``pd.read_parquet(ROOT)``, ``pyarrow.dataset.dataset(ROOT, partitioning="hive")``
and DuckDB's ``read_parquet(..., hive_partitioning=true)`` read the folder as it is; each
file's key-value metadata still names its (task, classifier, method), so a file copied
elsewhere says what it holds. Readers here accept files written by other tools with
compatible Arrow types (string/large_string, any integer width, list/large_list of floats;
partition columns in the file or only in the path) and cast them to LOGITS_SCHEMA.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from storage.atomic import atomic_write_bytes, atomic_write_parquet, remove_stale_partials
from storage.errors import StoreError
from storage.lease import file_lock

PARTITION_COLUMNS = ("task", "classifier", "method")

LOGITS_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),  # train / val / test
        pa.field("task", pa.string(), nullable=False),  # e.g. "Smiling", "car_type"
        pa.field("classifier", pa.string(), nullable=False),  # classifier name
        pa.field(
            "method", pa.string(), nullable=False
        ),  # e.g. "isotropic_fine", "stylemix_coarse", "crop"
        pa.field("setting", pa.string(), nullable=False),  # e.g. "0.3"; "" when the method has none
        pa.field("view", pa.int32(), nullable=False),  # 0 original, 1 reconstruction, ≥2 views
        pa.field("logits", pa.list_(pa.float32()), nullable=False),  # raw classifier outputs
        pa.field("label", pa.int64(), nullable=False),  # ground-truth class index
        pa.field("seed", pa.int64(), nullable=True),  # the view's own seed; null for views 0/1
        pa.field("condition", pa.string(), nullable=False),  # input condition: "clean", "pgd-8_255"
    ]
)
FILE_SCHEMA = pa.schema([f for f in LOGITS_SCHEMA if f.name not in PARTITION_COLUMNS])
KEY_COLUMNS = ("image_id", "task", "classifier", "method", "setting", "view", "condition")
CLEAN = "clean"  # the condition of untouched inputs; files written before the column read as it
OPTIONAL_COLUMNS = {"condition": CLEAN}  # columns older files may lack → the value they read as
SPLITS = ("train", "val", "test")
METADATA_KEY = b"ganviews"
# what the dataset was made from; a leading "_" keeps it out of every Parquet reader's way
IDENTITY_FILE = "_ganviews_identity.json"

_SAFE_KEY = re.compile(r"^[A-Za-z0-9_.\-]+$")
_STRING_COLUMNS = {f.name for f in LOGITS_SCHEMA if pa.types.is_string(f.type)}


def _check_partition_value(column: str, value: str) -> None:
    if not value or not _SAFE_KEY.match(value):
        raise StoreError(
            f"logits column {column!r}: value {value!r} cannot name a partition "
            "(letters, digits, '_', '.', '-' only)"
        )


def to_table(frame: pd.DataFrame) -> pa.Table:
    """Validate a DataFrame of logit rows against LOGITS_SCHEMA and convert it.

    A frame without a ``condition`` column holds clean rows (every writer before Fig. 7)."""
    missing_optional = [c for c in OPTIONAL_COLUMNS if c not in frame.columns]
    if missing_optional:
        frame = frame.assign(**{c: OPTIONAL_COLUMNS[c] for c in missing_optional})
    missing = [name for name in LOGITS_SCHEMA.names if name not in frame.columns]
    if missing:
        raise StoreError(f"logit rows lack columns {missing}; schema: {LOGITS_SCHEMA.names}")
    extra = [name for name in frame.columns if name not in LOGITS_SCHEMA.names]
    if extra:
        raise StoreError(f"logit rows have unknown columns {extra}; schema: {LOGITS_SCHEMA.names}")
    try:
        table = pa.Table.from_pandas(
            frame[LOGITS_SCHEMA.names], schema=LOGITS_SCHEMA, preserve_index=False
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
        raise StoreError(f"logit rows do not fit the schema: {exc}") from exc
    _validate(table)
    return table


def _validate(table: pa.Table) -> None:
    """Row-level rules the Arrow schema cannot express (nulls, lengths, duplicates, splits)."""
    for field in LOGITS_SCHEMA:
        if not field.nullable and table[field.name].null_count:
            raise StoreError(
                f"logits column {field.name!r} has {table[field.name].null_count} null(s)"
            )
    values = pc.list_flatten(table["logits"])
    if values.null_count:
        raise StoreError("logits column 'logits' holds missing (null/NaN) values inside the lists")
    if len(values) and not np.isfinite(values.to_numpy(zero_copy_only=False)).all():
        raise StoreError("logits column 'logits' holds NaN or infinite values")
    bad_split = set(pc.unique(table["split"]).to_pylist()) - set(SPLITS)
    if bad_split:
        raise StoreError(f"logits column 'split': values {sorted(bad_split)} not in {list(SPLITS)}")
    if table.num_rows and pc.min(table["view"]).as_py() < 0:
        raise StoreError(
            "logits column 'view' must be ≥ 0 (0 original, 1 reconstruction, ≥2 views)"
        )
    lengths = pc.list_value_length(table["logits"])
    if table.num_rows and pc.min(lengths).as_py() == 0:
        raise StoreError("logits column 'logits' holds an empty list")
    per = pa.table({"task": table["task"], "classifier": table["classifier"], "n": lengths})
    spread = per.group_by(["task", "classifier"]).aggregate([("n", "min"), ("n", "max")])
    for row in spread.to_pylist():
        if row["n_min"] != row["n_max"]:
            raise StoreError(
                f"logits of task {row['task']!r}, classifier {row['classifier']!r} "
                f"have lengths {row['n_min']}…{row['n_max']}; one length per classifier"
            )
    keys = (
        table.select(list(KEY_COLUMNS)).group_by(list(KEY_COLUMNS)).aggregate([([], "count_all")])
    )
    dupes = keys.filter(pc.greater(keys["count_all"], 1))
    if dupes.num_rows:
        first = {k: v for k, v in dupes.slice(0, 1).to_pylist()[0].items() if k != "count_all"}
        raise StoreError(
            f"{dupes.num_rows} duplicate logit row key(s) {list(KEY_COLUMNS)}, e.g. {first}"
        )


def _num_classes(table: pa.Table) -> dict[str, int]:
    lengths = pc.list_value_length(table["logits"])
    per = pa.table({"task": table["task"], "classifier": table["classifier"], "n": lengths})
    rows = per.group_by(["task", "classifier"]).aggregate([("n", "max")]).to_pylist()
    return {f"{r['task']}/{r['classifier']}": r["n_max"] for r in rows}


def _file_meta(path: Path) -> dict:
    meta = pq.read_schema(path).metadata or {}
    try:
        return json.loads(meta.get(METADATA_KEY, b"{}"))
    except json.JSONDecodeError:
        return {}


def _check_class_count(folder: Path, task: str, classifier: str, n: int) -> None:
    """A classifier's logit length must agree with files already written for it (any method)."""
    for other in sorted(folder.parent.glob("method=*/shard-*.parquet"))[:1]:
        stored = _file_meta(other).get("num_classes", {}).get(f"{task}/{classifier}")
        if stored is not None and stored != n:
            raise StoreError(
                f"logits of task {task!r}, classifier {classifier!r} have length {n}, "
                f"but {other} holds length {stored}"
            )


def write_logits(
    root: str | Path,
    rows: pd.DataFrame | pa.Table,
    *,
    shard: str,
    metadata: Mapping[str, object] | None = None,
    identity: Mapping[str, object] | None = None,
) -> list[Path]:
    """Write one shard's rows: one file per partition, replacing that shard's rows of the same
    (task, classifier, method, setting); returns the files written.

    ``shard`` names the writer's unit of work (e.g. ``"000000-000064"``); ``metadata`` (config,
    code version, model hashes) is stored as JSON in each file's key-value metadata.
    ``identity`` (flat key → JSON value) is checked against the dataset's recorded identity
    before anything is written (:func:`check_identity`) and merged into it afterwards.
    """
    if identity is not None:
        check_identity(root, identity)
    if not isinstance(shard, str) or not _SAFE_KEY.match(shard):
        raise StoreError(f"shard key {shard!r} must use letters, digits, '_', '.', '-' only")
    if isinstance(rows, pa.Table):
        if rows.schema.remove_metadata() == LOGITS_SCHEMA:
            table = rows
            _validate(table)
        else:
            table = to_table(rows.to_pandas())
    elif isinstance(rows, pd.DataFrame):
        table = to_table(rows)
    else:
        raise StoreError(
            f"rows must be a pandas DataFrame or a pyarrow Table, got {type(rows).__name__}"
        )
    try:
        user_meta = json.loads(json.dumps(dict(metadata or {}), default=str, sort_keys=True))
    except (TypeError, ValueError) as exc:
        raise StoreError(f"metadata is not JSON-serialisable: {exc}") from exc
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise StoreError(f"logits root {root} exists and is not a directory")
    groups = (
        table.group_by(list(PARTITION_COLUMNS)).aggregate([]).to_pylist() if table.num_rows else []
    )
    groups = [
        {**g, "condition": c}
        for g in groups
        for c in pc.unique(table.filter(_partition_mask(table, g))["condition"]).to_pylist()
    ]
    for group in groups:  # check every partition before writing any file
        for column in (*PARTITION_COLUMNS, "condition"):
            _check_partition_value(column, group[column])
    classes = _num_classes(table)
    written: list[Path] = []
    for group in groups:
        mask = pc.and_(
            _partition_mask(table, group), pc.equal(table["condition"], group["condition"])
        )
        part = table.filter(mask)
        folder = root.joinpath(*(f"{c}={group[c]}" for c in PARTITION_COLUMNS))
        key = f"{group['task']}/{group['classifier']}"
        _check_class_count(folder, group["task"], group["classifier"], classes[key])
        final = folder / shard_file_name(shard, group["condition"])
        settings = sorted(set(part["setting"].to_pylist()))
        per_setting = {setting: user_meta for setting in settings}
        folder.mkdir(parents=True, exist_ok=True)
        # read-merge-write under the file's lock: a concurrent render of this shard (another
        # setting) would otherwise replace the file with a merge that lacks its rows
        with file_lock(folder / f".{final.name}.lock"):
            if final.is_file():  # keep this shard's rows of other settings, replace the rest
                old = _read_file(final, group)
                keep = pc.invert(
                    pc.is_in(old["setting"], value_set=pa.array(settings, pa.string()))
                )
                part = pa.concat_tables([old.filter(keep), part])
                kept = set(old.filter(keep)["setting"].to_pylist())
                old_meta = _file_meta(final).get("metadata", {})
                per_setting.update({k: v for k, v in old_meta.items() if k in kept})
            part = part.sort_by(
                [("setting", "ascending"), ("image_id", "ascending"), ("view", "ascending")]
            )
            file_meta = {
                "metadata": per_setting,
                "num_classes": {key: classes[key]},
                "partition": {c: group[c] for c in PARTITION_COLUMNS},
                "shard": shard,
            }
            part = part.select(FILE_SCHEMA.names).replace_schema_metadata(
                {METADATA_KEY: json.dumps(file_meta, sort_keys=True).encode()}
            )
            atomic_write_parquet(part, final)
        remove_stale_partials(folder)
        written.append(final)
    if identity is not None:
        record_identity(root, identity)
    return written


def read_identity(root: str | Path) -> dict[str, object]:
    """What the dataset was made from (key → value): ``{}`` for a dataset without a record."""
    path = Path(root) / IDENTITY_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise StoreError(f"{path}: unreadable identity record ({exc})") from exc


def check_identity(root: str | Path, identity: Mapping[str, object]) -> None:
    """StoreError naming every key whose recorded value differs from ``identity``'s.

    Keys the record lacks are new (a classifier or a view group added) and allowed; a key with
    another value (another generator, store, seed, or a group rendered with other settings)
    would mix two experiments in one folder.
    """
    given = json.loads(json.dumps(dict(identity), default=str, sort_keys=True))
    stored = read_identity(root)
    differ = sorted(k for k in given if k in stored and stored[k] != given[k])
    if differ:
        shown = "; ".join(f"{k}: stored {stored[k]!r}, given {given[k]!r}" for k in differ[:5])
        more = f" (and {len(differ) - 5} more)" if len(differ) > 5 else ""
        raise StoreError(
            f"logits dataset {root} was made with other settings: {shown}{more}; write to a new "
            "logits folder (or delete this one) instead of mixing the two"
        )


def record_identity(root: str | Path, identity: Mapping[str, object]) -> None:
    """Merge ``identity`` into the dataset's record (``ROOT/_ganviews_identity.json``), under
    its lock (concurrent renders adding keys keep each other's)."""
    Path(root).mkdir(parents=True, exist_ok=True)
    with file_lock(Path(root) / f".{IDENTITY_FILE}.lock"):
        merged = {**read_identity(root), **json.loads(json.dumps(dict(identity), default=str))}
        data = json.dumps(merged, indent=1, sort_keys=True).encode()
        atomic_write_bytes(Path(root) / IDENTITY_FILE, data)


def _partition_mask(table: pa.Table, group: Mapping[str, str]) -> pa.ChunkedArray:
    mask = pc.equal(table[PARTITION_COLUMNS[0]], group[PARTITION_COLUMNS[0]])
    for column in PARTITION_COLUMNS[1:]:
        mask = pc.and_(mask, pc.equal(table[column], group[column]))
    return mask


def shard_file_name(shard: str, condition: str = CLEAN) -> str:
    """``shard-<key>.parquet`` for clean rows, ``shard-<key>--<condition>.parquet`` otherwise."""
    return f"shard-{shard}.parquet" if condition == CLEAN else f"shard-{shard}--{condition}.parquet"


def _read_file(path: Path, partition: Mapping[str, str]) -> pa.Table:
    """One file as a LOGITS_SCHEMA table; partition columns absent from the file come from
    ``partition`` (its folder names), optional columns it predates from OPTIONAL_COLUMNS."""
    table = pq.read_table(path)
    _check_schema(path, table.schema, provided=partition)
    for column, value in [*partition.items(), *OPTIONAL_COLUMNS.items()]:
        if column in LOGITS_SCHEMA.names and column not in table.column_names:
            table = table.append_column(column, pa.array([value] * table.num_rows, pa.string()))
    try:
        return table.select(LOGITS_SCHEMA.names).cast(LOGITS_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise StoreError(f"{path}: values do not fit the logits schema ({exc})") from exc


def _compatible(name: str, expected: pa.DataType, got: pa.DataType) -> bool:
    """Whether column ``name`` of type ``got`` casts to ``expected`` without changing its meaning
    (seeds may be floats, as pandas writes an integer column with missing values; the cast
    refuses non-integral values)."""
    if got == expected:
        return True
    if pa.types.is_dictionary(got):
        got = got.value_type
    if pa.types.is_string(expected):
        return pa.types.is_string(got) or pa.types.is_large_string(got) or got == pa.string_view()
    if pa.types.is_integer(expected):
        floating_seed = name == "seed" and pa.types.is_floating(got)
        return pa.types.is_integer(got) or pa.types.is_null(got) or floating_seed
    if pa.types.is_list(expected):
        is_list = pa.types.is_list(got) or pa.types.is_large_list(got)
        is_list = is_list or pa.types.is_fixed_size_list(got)
        return is_list and pa.types.is_floating(got.value_type)
    return False


def _check_schema(path: Path, schema: pa.Schema, *, provided: Mapping[str, str]) -> None:
    """Every LOGITS_SCHEMA column is in the file (or, for partition columns, in ``provided``)
    with a type that casts to the schema's."""
    got = {f.name: f.type for f in schema}
    problems = []
    for f in LOGITS_SCHEMA:
        if f.name not in got:
            if f.name not in provided and f.name not in OPTIONAL_COLUMNS:
                problems.append(f"{f.name} missing")
        elif not _compatible(f.name, f.type, got[f.name]):
            problems.append(f"{f.name} is {got[f.name]}, expected {f.type} or a compatible type")
    if problems:
        raise StoreError(f"{path}: not a ganviews logits file ({'; '.join(problems)})")


def _path_partition(root: Path, path: Path) -> dict[str, str]:
    return dict(p.split("=", 1) for p in path.relative_to(root).parts[:-1] if "=" in p)


def logits_files(root: str | Path, filters: Mapping[str, object] | None = None) -> list[Path]:
    """The dataset's files (schema-checked), pruned by partition-column filters."""
    root = Path(root)
    if not root.is_dir():
        raise StoreError(f"logits dataset not found: {root} is not a directory")
    wanted = {c: _filter_values(c, v) for c, v in (filters or {}).items() if c in PARTITION_COLUMNS}
    files = []
    for path in sorted(root.rglob("*.parquet")):
        if path.name.startswith((".", "_")):
            continue
        parts = _path_partition(root, path)
        if all(parts.get(c) in values for c, values in wanted.items() if c in parts):
            files.append(path)
    for path in files:
        try:
            schema = pq.read_schema(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise StoreError(f"{path}: not a readable Parquet file ({exc})") from exc
        _check_schema(path, schema, provided=_path_partition(root, path))
    return files


def logits_dataset(root: str | Path, filters: Mapping[str, object] | None = None) -> ds.Dataset:
    """A pyarrow dataset over the (schema-checked) files, for DuckDB or streaming readers.

    Partition columns come from the folder names; compatible column types are cast to
    LOGITS_SCHEMA as the dataset is scanned.
    """
    partitioning = ds.partitioning(
        pa.schema([LOGITS_SCHEMA.field(c) for c in PARTITION_COLUMNS]), flavor="hive"
    )
    return ds.dataset(
        [str(p) for p in logits_files(root, filters)],
        schema=LOGITS_SCHEMA,
        format="parquet",
        partitioning=partitioning,
        partition_base_dir=str(root),
    )


def _filter_values(column: str, value: object) -> list:
    if column not in LOGITS_SCHEMA.names:
        raise StoreError(f"filter on unknown column {column!r}; columns: {LOGITS_SCHEMA.names}")
    values = list(value) if isinstance(value, (list, tuple, set, frozenset)) else [value]
    if column in _STRING_COLUMNS:
        bad = [v for v in values if not isinstance(v, str)]
        if bad:
            raise StoreError(
                f"filter on {column!r}: {bad[0]!r} is not text (the column holds "
                "strings, e.g. setting '0.3')"
            )
    return values


def read_logits(
    root: str | Path,
    filters: Mapping[str, object] | None = None,
    *,
    columns: Sequence[str] | None = None,
    arrow_logits: bool = False,
) -> pd.DataFrame:
    """All logit rows under ``root`` as a DataFrame; ``filters`` maps column → value or list of values.

    ``logits`` comes back as one numpy float32 array per row; stack a group with
    ``np.stack(frame["logits"])``. ``arrow_logits=True`` keeps it an Arrow list column
    (``pd.ArrowDtype``) instead: no Python object per row, which is what bulk readers (the
    ensemble evaluation) want at millions of rows.
    """
    expr = None
    for column, value in (filters or {}).items():
        values = _filter_values(column, value)
        term = ds.field(column).isin(values)
        if OPTIONAL_COLUMNS.get(column) in values:  # files older than the column hold that value
            term = term | ds.field(column).is_null()
        expr = term if expr is None else expr & term
    if columns is not None:
        unknown = [c for c in columns if c not in LOGITS_SCHEMA.names]
        if unknown:
            raise StoreError(f"unknown column(s) {unknown}; columns: {LOGITS_SCHEMA.names}")
    try:
        table = logits_dataset(root, filters).to_table(
            filter=expr, columns=list(columns) if columns else None
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise StoreError(f"{root}: values do not fit the logits schema ({exc})") from exc
    return table_to_frame(table, arrow_logits=arrow_logits)


def table_to_frame(table: pa.Table, *, arrow_logits: bool = False) -> pd.DataFrame:
    """Logit rows as :func:`read_logits` returns them (e.g. rows made in memory with
    :func:`to_table`, to be evaluated together with rows read from a dataset)."""
    if arrow_logits and "logits" in table.column_names:
        position = table.column_names.index("logits")
        frame = table.drop_columns(["logits"]).to_pandas()
        frame.insert(
            position,
            "logits",
            pd.Series(pd.arrays.ArrowExtensionArray(table.column("logits")), index=frame.index),
        )
    else:
        frame = table.to_pandas()
    for name, value in OPTIONAL_COLUMNS.items():
        if name in frame.columns:
            frame[name] = frame[name].fillna(value)
    if "seed" in frame.columns:  # nullable (views 0/1 have none); exact for all 63-bit seeds
        frame["seed"] = table.column("seed").to_pandas(
            types_mapper={pa.int64(): pd.Int64Dtype()}.get
        )
    return frame


def read_logits_metadata(root: str | Path) -> pd.DataFrame:
    """One row per (file, setting): path, task, classifier, method, shard, setting,
    num_classes, metadata (the dict given to :func:`write_logits` for that setting)."""
    rows = []
    root = Path(root)
    for path in logits_files(root):
        meta = _file_meta(path)
        parts = _path_partition(root, path)
        for setting, user_meta in sorted(meta.get("metadata", {}).items()):
            rows.append(
                {
                    "path": str(path),
                    **{c: parts.get(c) for c in PARTITION_COLUMNS},
                    "shard": meta.get("shard"),
                    "setting": setting,
                    "num_classes": next(iter(meta.get("num_classes", {}).values()), None),
                    "metadata": user_meta,
                }
            )
    columns = ["path", *PARTITION_COLUMNS, "shard", "setting", "num_classes", "metadata"]
    return pd.DataFrame(rows, columns=columns)
