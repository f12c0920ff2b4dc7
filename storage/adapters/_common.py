"""What every dataset adapter shares: its error type, file look-ups, the seeded split, the final check.

The manifest contract (DESIGN.md, "Dataset manifest"): one row per image with

- ``image_id`` (str, unique), ``path`` (str, absolute: adapters resolve the dataset root),
- ``split`` in ``{"train", "val", "test"}``,
- label column(s) (int64; their names are listed in ``df.attrs["label_columns"]``),
- optionally ``bbox`` = ``[x0, y0, x1, y1]`` float64 pixels and ``landmarks`` = flat list of floats.

Bounding-box convention: continuous pixel coordinates with the origin at the top-left corner of
the top-left pixel; ``x1``/``y1`` are exclusive, so a box covering a whole ``W x H`` image is
``[0, 0, W, H]``. The source annotations (Stanford Cars devkit, Pascal VOC XML) count pixels from 1
with inclusive ends, so adapters subtract 1 from the minimum corner and keep the maximum corner.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from storage.errors import StoreError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
ON_MISSING = ("error", "drop")


class AdapterError(StoreError, ValueError):
    """A dataset's annotation files are missing, malformed or inconsistent; the message says where."""


class AnnotationFileMissing(AdapterError, FileNotFoundError):
    """A file the adapter needs is not where it looked; the message names it and where it comes from."""


def find_file(root: Path, candidates: Sequence[str], *, what: str, source: str) -> Path:
    """The first of ``root / c`` that exists; otherwise an error naming every place looked at."""
    for rel in candidates:
        path = root / rel
        if path.is_file():
            return path
    looked = ", ".join(str(root / rel) for rel in candidates)
    raise AnnotationFileMissing(f"{what} not found (looked for {looked}); {source}")


def check_root(root: str | Path, dataset: str) -> Path:
    """The dataset root as an absolute path; an error when it is not a directory."""
    path = Path(root).expanduser().resolve()
    if not path.is_dir():
        raise AnnotationFileMissing(f"{dataset} root {str(root)!r} is not a directory")
    return path


def check_fraction(name: str, value: float, *, allow_zero: bool = True) -> float:
    """A fraction in [0, 1) (or (0, 1) when zero is not allowed)."""
    value = float(value)
    low_ok = value >= 0.0 if allow_zero else value > 0.0
    if not (low_ok and value < 1.0):
        allowed = "[0, 1)" if allow_zero else "(0, 1)"
        raise AdapterError(f"{name}={value!r} is not a fraction in {allowed}")
    return value


def check_choice(name: str, value: str, allowed: Iterable[str]) -> str:
    allowed = tuple(allowed)
    if value not in allowed:
        raise AdapterError(f"{name}={value!r} is not one of {list(allowed)}")
    return value


def _hash_key(seed: int, image_id: str) -> str:
    return hashlib.sha256(f"{seed}/{image_id}".encode()).hexdigest()


def _round_half_up(x: float) -> int:
    return int(x + 0.5)


def seeded_split(
    image_ids: Sequence[str],
    *,
    fractions: dict[str, float],
    seed: int,
    strata: Sequence[object] | None = None,
    rest: str = "train",
) -> list[str]:
    """Assign each id a split, deterministically and independently of the input order.

    Within each stratum (e.g. each class) the ids are ordered by ``sha256(f"{seed}/{image_id}")``;
    the splits named in ``fractions`` take, in the order given, ``round(n * fraction)`` ids each
    (half rounds up), and the remaining ids go to ``rest``. Adding or removing one image moves at
    most the images at a boundary; reordering the input changes nothing.
    """
    if strata is None:
        strata = [None] * len(image_ids)
    if len(strata) != len(image_ids):
        raise AdapterError(f"strata has {len(strata)} entries for {len(image_ids)} image ids")
    if sum(fractions.values()) >= 1.0 and rest not in fractions:
        raise AdapterError(f"split fractions {fractions} leave nothing for {rest!r}")
    groups: dict[object, list[int]] = {}
    for index, stratum in enumerate(strata):
        groups.setdefault(stratum, []).append(index)
    out = [rest] * len(image_ids)
    for members in groups.values():
        ordered = sorted(members, key=lambda i: _hash_key(seed, str(image_ids[i])))
        start = 0
        for split, fraction in fractions.items():
            count = _round_half_up(len(ordered) * fraction)
            for i in ordered[start : start + count]:
                out[i] = split
            start += count
    return out


def paper_split(n: int) -> list[str]:
    """The official code's per-class split of ``n`` images in a fixed order (cars, cats).

    It slices ``v[:n//2]``, ``v[n//2:-n//4]``, ``v[-n//4:]``; Python's ``-n//4`` is ``-ceil(n/4)``,
    so: the first ``n // 2`` are train, the last ``ceil(n / 4)`` test, the rest val.
    """
    n_train = n // 2
    n_test = math.ceil(n / 4)
    return ["train"] * n_train + ["val"] * (n - n_train - n_test) + ["test"] * n_test


def paper_split_per_class(
    df: pd.DataFrame, class_column: str, *, order_column: str | None = None
) -> pd.Series:
    """:func:`paper_split` within each class of ``df``: rows in frame order, or sorted by ``order_column``."""
    split = pd.Series("", index=df.index)
    for _, index in df.groupby(class_column, sort=False).groups.items():
        ordered = (
            list(index)
            if order_column is None
            else sorted(index, key=lambda i: df.at[i, order_column])
        )
        split.loc[ordered] = paper_split(len(ordered))
    return split


def handle_missing_images(df: pd.DataFrame, *, on_missing: str, dataset: str) -> pd.DataFrame:
    """Check that every ``path`` exists; raise (naming a few) or drop those rows with a warning."""
    check_choice("on_missing_image", on_missing, ON_MISSING)
    exists = df["path"].map(os.path.isfile)
    missing = df.loc[~exists, "path"].tolist()
    if not missing:
        return df
    shown = ", ".join(missing[:3]) + (" …" if len(missing) > 3 else "")
    if on_missing == "error":
        raise AnnotationFileMissing(
            f"{dataset}: {len(missing)} of {len(df)} annotated images are missing on disk ({shown}); "
            "put the images where the annotations point, or pass on_missing_image='drop' "
            "(CLI: --on-missing-image drop) to leave them out"
        )
    log.warning(
        "%s: dropping %d of %d annotated images missing on disk (%s)",
        dataset,
        len(missing),
        len(df),
        shown,
    )
    return df.loc[exists].reset_index(drop=True)


def voc_box_to_pixels(
    xmin: float, ymin: float, xmax: float, ymax: float, *, where: str
) -> list[float]:
    """A 1-based inclusive box (MATLAB devkit / Pascal VOC) as ``[x0, y0, x1, y1]`` (see module doc)."""
    box = [float(xmin) - 1.0, float(ymin) - 1.0, float(xmax), float(ymax)]
    if not (box[0] < box[2] and box[1] < box[3]) or box[0] < 0 or box[1] < 0:
        raise AdapterError(
            f"{where}: bounding box (xmin={xmin}, ymin={ymin}, xmax={xmax}, ymax={ymax}) is empty, "
            "inverted or negative (expected 1 <= xmin <= xmax and 1 <= ymin <= ymax)"
        )
    return box


def finalize(
    df: pd.DataFrame,
    *,
    dataset: str,
    label_columns: Sequence[str],
    root: Path,
    options: dict[str, object],
) -> pd.DataFrame:
    """Order the columns, fix dtypes, check the contract, and attach ``attrs`` describing the manifest."""
    required = ["image_id", "path", "split", *label_columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise AdapterError(f"{dataset}: manifest lacks columns {missing}")
    if df.empty:
        raise AdapterError(f"{dataset}: no images left in the manifest (root {root})")
    extra = [c for c in df.columns if c not in required]
    df = df[required + extra].reset_index(drop=True)
    df["image_id"] = df["image_id"].astype(str)
    df["path"] = df["path"].astype(str)
    df["split"] = df["split"].astype(str)
    duplicated = df.loc[df["image_id"].duplicated(), "image_id"].tolist()
    if duplicated:
        raise AdapterError(f"{dataset}: image_id values are not unique, e.g. {duplicated[:3]}")
    bad = sorted(set(df["split"]) - set(SPLITS))
    if bad:
        raise AdapterError(f"{dataset}: split values {bad} are not in {list(SPLITS)}")
    for column in label_columns:
        if df[column].isna().any():
            raise AdapterError(f"{dataset}: label column {column!r} has missing values")
        if pd.api.types.is_bool_dtype(df[column]) or pd.api.types.is_integer_dtype(df[column]):
            df[column] = df[column].astype("int64")
    df.attrs = {
        "dataset": dataset,
        "label_columns": list(label_columns),
        "root": str(root),
        "path_convention": "absolute",
        "bbox_convention": "x0,y0,x1,y1 pixels; origin at the top-left image corner; x1,y1 exclusive",
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in options.items()},
    }
    return df
