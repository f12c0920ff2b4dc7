"""Any image folder with a CSV or Parquet labels file (the generic door into the pipeline, DESIGN.md).

Layout: images anywhere under ``root`` and a labels file (default ``root/labels.csv`` or
``root/labels.parquet``) with

- an image column (``image_column``; by default the first of ``image``, ``file``, ``filename``,
  ``fname``, ``image_path``, ``path`` that exists): a path relative to ``root`` or absolute;
- optionally ``image_id`` (otherwise the image path relative to ``root`` without its extension);
- optionally a split column (``split_column``, default ``split`` when present) with values
  ``train`` / ``val`` / ``test`` (also accepted: ``training``, ``valid``, ``validation``,
  ``testing``; case and surrounding spaces ignored). Without one, a seeded split assigns
  ``fractions = (train, val, test)`` of the images (per value of ``stratify`` when given);
- label columns (``label_columns``; by default every other column). Integer (or whole-valued)
  columns are kept as int64; text columns become int64 codes in sorted order of their values,
  with the text kept in ``<column>_name``;
- optionally a box, either four columns ``bbox_x0, bbox_y0, bbox_x1, bbox_y1`` or a list column
  ``bbox``, already in the manifest convention (pixels, x1/y1 exclusive), and ``landmarks`` (a list
  column, or text of numbers separated by spaces or commas).
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import pandas as pd

from storage.adapters._common import (
    AdapterError,
    AnnotationFileMissing,
    check_fraction,
    check_root,
    finalize,
    handle_missing_images,
    seeded_split,
)

log = logging.getLogger(__name__)

IMAGE_COLUMNS = ("image", "file", "filename", "fname", "image_path", "path")
BOX_COLUMNS = ("bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1")
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
_NUMBERS = re.compile(r"[\s,;]+")


def read_labels_file(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path)
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise AdapterError(f"{path}: cannot read the labels file ({exc})") from exc
    raise AdapterError(
        f"labels file {path.name!r}: unknown format {suffix!r}; use .csv or .parquet"
    )


def _resolve_labels(root: Path, labels: str | Path | None) -> Path:
    if labels is None:
        for name in ("labels.csv", "labels.parquet"):
            if (root / name).is_file():
                return root / name
        raise AnnotationFileMissing(
            f"no labels file in {root} (looked for labels.csv, labels.parquet); pass labels= (CLI: --labels)"
        )
    path = Path(labels).expanduser()
    candidates = (
        [path] if path.is_absolute() else [root / path, Path.cwd() / path]
    )  # ROOT first, then cwd
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise AnnotationFileMissing(
        f"labels file {str(labels)!r} not found (looked for {', '.join(str(c) for c in candidates)})"
    )


def _split_column(table: pd.DataFrame, path: Path, column: str) -> list[str]:
    out = []
    for row, value in enumerate(table[column]):
        key = str(value).strip().lower() if not pd.isna(value) else ""
        if key not in SPLIT_ALIASES:
            raise AdapterError(
                f"{path}: row {row} has {column}={value!r}; allowed: train, val, test "
                f"(or {', '.join(k for k in SPLIT_ALIASES if k not in ('train', 'val', 'test'))})"
            )
        out.append(SPLIT_ALIASES[key])
    return out


def _encode_label(series: pd.Series, column: str, path: Path) -> tuple[pd.Series, pd.Series | None]:
    """An int64 label column, plus the text names when the labels were text."""
    if series.isna().any():
        row = int(series.isna().to_numpy().nonzero()[0][0])
        raise AdapterError(f"{path}: label column {column!r} is empty in row {row}")
    if pd.api.types.is_bool_dtype(series) or pd.api.types.is_integer_dtype(series):
        return series.astype("int64"), None
    if pd.api.types.is_float_dtype(series):
        if not all(float(v).is_integer() for v in series):
            raise AdapterError(
                f"{path}: label column {column!r} has non-integer values (e.g. "
                f"{next(v for v in series if not float(v).is_integer())!r}); labels must be class indices or text"
            )
        return series.astype("int64"), None
    text = series.astype(str)
    classes = sorted(set(text))
    codes = text.map({name: code for code, name in enumerate(classes)}).astype("int64")
    return codes, text


def _numbers(value: object, *, where: str) -> list[float] | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    items = (
        [v for v in _NUMBERS.split(value.strip()) if v] if isinstance(value, str) else list(value)
    )  # type: ignore[arg-type]
    try:
        return [float(v) for v in items]
    except (TypeError, ValueError):
        raise AdapterError(f"{where}: expected numbers, got {value!r}") from None


def build_folder(
    root: str | Path,
    *,
    labels: str | Path | None = None,
    image_column: str | None = None,
    split_column: str | None = None,
    label_columns: list[str] | tuple[str, ...] | None = None,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    stratify: str | None = None,
    on_missing_image: str = "error",
) -> pd.DataFrame:
    """A manifest for an image folder and its labels file (see the module doc for the columns)."""
    root = check_root(root, "folder")
    path = _resolve_labels(root, labels)
    table = read_labels_file(path)
    columns = list(table.columns)
    if table.empty:
        raise AdapterError(f"{path}: the labels file has no rows")

    if image_column is None:
        image_column = next((c for c in IMAGE_COLUMNS if c in columns), None)
        if image_column is None:
            raise AdapterError(
                f"{path}: no image column (looked for {list(IMAGE_COLUMNS)}; columns: {columns}); "
                "name it with image_column (CLI: --image-column)"
            )
    elif image_column not in columns:
        raise AdapterError(
            f"{path}: image_column {image_column!r} is not a column; columns: {columns}"
        )
    if split_column is not None and split_column not in columns:
        raise AdapterError(
            f"{path}: split_column {split_column!r} is not a column; columns: {columns}"
        )
    if split_column is None and "split" in columns:
        split_column = "split"

    reserved = {image_column, "image_id", *BOX_COLUMNS, "bbox", "landmarks"} | (
        {split_column} if split_column else set()
    )
    if label_columns is None:
        label_columns = [c for c in columns if c not in reserved]
    else:
        label_columns = list(label_columns)
        unknown = [c for c in label_columns if c not in columns]
        if unknown:
            raise AdapterError(
                f"{path}: label_columns {unknown} are not columns; columns: {columns}"
            )
        clash = [c for c in label_columns if c in reserved]
        if clash:
            raise AdapterError(
                f"{path}: label_columns {clash} are reserved (image, id, split, box columns)"
            )
    if not label_columns:
        raise AdapterError(
            f"{path}: no label columns (columns: {columns}); the manifest needs at least one"
        )

    images = table[image_column]
    if images.isna().any():
        raise AdapterError(
            f"{path}: image column {image_column!r} is empty in row {int(images.isna().to_numpy().nonzero()[0][0])}"
        )
    paths = [Path(str(v)).expanduser() for v in images]
    paths = [p if p.is_absolute() else root / p for p in paths]
    if "image_id" in columns:
        image_ids = table["image_id"].astype(str).tolist()
    else:
        image_ids = [_relative_id(p, root) for p in paths]

    df = pd.DataFrame({"image_id": image_ids, "path": [str(p) for p in paths]})
    if split_column:
        df["split"] = _split_column(table, path, split_column)
    else:
        train, val, test = (check_fraction(f"fractions[{i}]", f) for i, f in enumerate(fractions))
        if abs(train + val + test - 1.0) > 1e-6:
            raise AdapterError(f"fractions={tuple(fractions)!r} (train, val, test) must sum to 1")
        if stratify is not None and stratify not in label_columns:
            raise AdapterError(
                f"stratify={stratify!r} is not a label column; label columns: {label_columns}"
            )
        strata = table[stratify].astype(str).tolist() if stratify else None
        df["split"] = seeded_split(
            image_ids, fractions={"test": test, "val": val}, seed=seed, strata=strata
        )
    for column in label_columns:
        codes, names = _encode_label(table[column], column, path)
        df[column] = codes.to_numpy()
        if names is not None:
            df[f"{column}_name"] = names.to_numpy()
    _attach_geometry(df, table, path)
    df = handle_missing_images(df, on_missing=on_missing_image, dataset="folder")
    options = {
        "labels": str(path),
        "image_column": image_column,
        "split_column": split_column,
        "fractions": tuple(fractions) if not split_column else None,
        "seed": seed if not split_column else None,
        "stratify": stratify,
        "on_missing_image": on_missing_image,
    }
    return finalize(df, dataset="folder", label_columns=label_columns, root=root, options=options)


def _relative_id(path: Path, root: Path) -> str:
    try:
        rel = path.resolve().relative_to(root)
    except ValueError:
        rel = Path(path.name)
    return rel.with_suffix("").as_posix()


def _attach_geometry(df: pd.DataFrame, table: pd.DataFrame, path: Path) -> None:
    """Copy optional box / landmark columns into the manifest's ``bbox`` / ``landmarks``."""
    present = [c for c in BOX_COLUMNS if c in table.columns]
    if present and len(present) != len(BOX_COLUMNS):
        raise AdapterError(
            f"{path}: box columns need all of {list(BOX_COLUMNS)}, found only {present}"
        )
    if present:
        rows = table[list(BOX_COLUMNS)].to_numpy(dtype=float)
        df["bbox"] = [
            None if any(math.isnan(v) for v in r) else [float(v) for v in r] for r in rows
        ]
    elif "bbox" in table.columns:
        df["bbox"] = [
            _numbers(v, where=f"{path} row {i} bbox") for i, v in enumerate(table["bbox"])
        ]
    if "bbox" in df.columns:
        for i, box in enumerate(df["bbox"]):
            if box is not None and (len(box) != 4 or not (box[0] < box[2] and box[1] < box[3])):
                raise AdapterError(
                    f"{path}: row {i} has bbox {box}; expected [x0, y0, x1, y1] with x0 < x1, y0 < y1"
                )
    if "landmarks" in table.columns:
        df["landmarks"] = [
            _numbers(v, where=f"{path} row {i} landmarks") for i, v in enumerate(table["landmarks"])
        ]
