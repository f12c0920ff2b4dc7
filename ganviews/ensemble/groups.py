"""Dense groups: the logits table of one (task, classifier, method, setting) turned once into
``probs [N, V, K]`` per split (:func:`build_groups`), with the ragged-input rules of
:mod:`ganviews.ensemble.evaluate`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from ganviews.ensemble.accounting import (
    GROUP_COLUMNS,
    MISSING_VIEWS,
    Exclusion,
    absent,
    expected_ids,
)
from ganviews.ensemble.config import REQUIRED_COLUMNS, SPLITS, EnsembleConfig, EnsembleInputError
from ganviews.ensemble.scores import probabilities

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitArrays:
    """One split of one group as dense arrays; images sorted by id."""

    image_ids: np.ndarray  # [N] image ids (str)
    labels: np.ndarray  # [N] int64 class index
    probs: np.ndarray  # [N, V, K] float64 class probabilities, views 0…V−1
    fallback: np.ndarray | None = None  # [N] bool: views filled from view 0 ("single")

    @property
    def n(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class LogitGroup:
    """One (task, classifier, method, setting) group: val and test arrays and its kind."""

    task: str
    classifier: str
    method: str
    setting: str
    kind: Literal["gan", "image"]  # gan: view 1 = reconstruction; image: views ≥ 1 = augmentations
    num_logits: int  # logits per row: 1 (sigmoid) or K (softmax)
    val: SplitArrays
    test: SplitArrays
    n_dropped: int = 0  # images dropped for missing views (on_missing_views="drop")
    excluded: tuple[Exclusion, ...] = ()  # (split, image_id, reason, detail) left out

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.task, self.classifier, self.method, self.setting)

    @property
    def num_views(self) -> int:
        return int(self.test.probs.shape[1])

    @property
    def num_classes(self) -> int:
        return int(self.test.probs.shape[2])


def make_group(
    task: str,
    classifier: str,
    method: str,
    setting: str,
    *,
    val_logits: np.ndarray,
    val_labels: np.ndarray,
    test_logits: np.ndarray,
    test_labels: np.ndarray,
    kind: Literal["gan", "image"] = "gan",
    val_ids: Sequence[str] | None = None,
    test_ids: Sequence[str] | None = None,
) -> LogitGroup:
    """A group from dense logits ``[N, V, L]`` and labels ``[N]`` per split (benchmarks, notebooks)."""
    name = f"({task}, {classifier}, {method}, {setting!r})"
    splits = []
    for split, logits, labels, ids in (
        ("val", val_logits, val_labels, val_ids),
        ("test", test_logits, test_labels, test_ids),
    ):
        logits = np.asarray(logits)
        labels = np.asarray(labels, dtype=np.int64)
        if logits.ndim != 3 or labels.shape != logits.shape[:1]:
            raise EnsembleInputError(
                f"group {name} {split}: need logits [N, V, L] and labels [N], got "
                f"{list(logits.shape)} and {list(labels.shape)}"
            )
        ids = np.asarray(
            [f"{i:08d}" for i in range(len(labels))] if ids is None else list(ids), dtype=object
        )
        _check_labels(name, split, labels, max(2, logits.shape[2]))
        splits.append(SplitArrays(ids, labels, probabilities(logits)))
    group = LogitGroup(
        task, classifier, method, setting, kind, int(np.asarray(val_logits).shape[2]), *splits
    )
    _check_group_views(group)
    return group


def build_groups(
    frame: pd.DataFrame,
    config: EnsembleConfig | None = None,
    *,
    expected: pd.DataFrame | None = None,
) -> list[LogitGroup]:
    """Dense val/test arrays for every (task, classifier, method, setting) group of a logits table.

    ``frame`` has the logits-table columns (``storage.logits.LOGITS_SCHEMA``); rows of splits
    other than val/test are ignored. Groups come back sorted by key. ``expected`` (columns
    image_id, split, optional detail: e.g. the manifest with each image's failure reason)
    names the images every group should hold; those without rows become exclusions.
    """
    config = config or EnsembleConfig()
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise EnsembleInputError(
            f"logits table lacks columns {missing}; need {list(REQUIRED_COLUMNS)}"
        )
    frame = frame[frame["split"].isin(SPLITS)]
    if frame.empty:
        return []
    groups = []
    index = frame.groupby(list(GROUP_COLUMNS), sort=True, observed=True).indices
    split_col = frame["split"].to_numpy()
    cols = _columns(frame)
    for key, rows in index.items():
        key = tuple(str(k) for k in key)
        name = "(" + ", ".join(key[:3]) + f", {key[3]!r})"
        parts, dropped, lengths, excluded = {}, 0, set(), []
        for split in SPLITS:
            pos = rows[split_col[rows] == split]
            if pos.size == 0:
                other = "test" if split == "val" else "val"
                raise EnsembleInputError(
                    f"group {name} has {other} rows but no {split} rows: α is chosen on val and reported on test"
                )
            parts[split], out, length = _dense_split(
                cols, pos, name, split, config.on_missing_views
            )
            dropped += len(out)
            excluded += absent(split, expected_ids(expected, split), parts[split].image_ids) + out
            lengths.add(length)
        if len(lengths) > 1:
            raise EnsembleInputError(
                f"group {name}: logits lengths differ between val and test: {sorted(lengths)}"
            )
        kind = "image" if key[2] in config.image_aug_methods else "gan"
        group = LogitGroup(
            *key,
            kind=kind,
            num_logits=lengths.pop(),
            val=parts["val"],
            test=parts["test"],
            n_dropped=dropped,
            excluded=tuple(excluded),
        )
        _check_group_views(group)
        groups.append(group)
    return groups


@dataclass(frozen=True)
class _Columns:
    """The table's columns as numpy arrays, converted once (pandas' Arrow strings are slow to index)."""

    id_codes: np.ndarray  # [R] int64 index into id_names
    id_names: np.ndarray  # [U] image ids (str), sorted
    views: np.ndarray  # [R] int64
    labels: np.ndarray  # [R] int64
    flat: np.ndarray  # [Σ lengths] every row's logits, concatenated
    offsets: np.ndarray  # [R] int64 start of each row's logits in flat
    lengths: np.ndarray  # [R] int64 length of each row's logits


def _columns(frame: pd.DataFrame) -> _Columns:
    codes, names = pd.factorize(frame["image_id"], sort=True)
    flat, lengths = _flat_logits(frame["logits"])
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return _Columns(
        id_codes=np.asarray(codes, dtype=np.int64),
        id_names=np.asarray(names, dtype=object),
        views=frame["view"].to_numpy().astype(np.int64),
        labels=frame["label"].to_numpy().astype(np.int64),
        flat=flat,
        offsets=offsets,
        lengths=lengths,
    )


def _flat_logits(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """The logits column as (all values concatenated, per-row lengths), one pass over the rows."""
    if isinstance(series.dtype, pd.ArrowDtype):  # Arrow list column: flatten without Python objects
        if series.isna().any():
            raise EnsembleInputError("logits column: null values (every row needs its logits)")
        values = series.list.flatten()
        flat = values.to_numpy(dtype=values.dtype.numpy_dtype, na_value=np.nan)  # [Σ lengths]
        return flat, series.list.len().to_numpy(dtype=np.int64)
    values = series.to_numpy()
    try:
        lengths = np.fromiter((len(x) for x in values), dtype=np.int64, count=len(values))
    except TypeError as exc:
        raise EnsembleInputError(
            f"logits column: every value must be a list of numbers ({exc})"
        ) from exc
    flat = np.concatenate(values) if len(values) else np.zeros(0)  # [Σ lengths]
    return flat, lengths


def _dense_split(cols: _Columns, pos: np.ndarray, name: str, split: str, on_missing: str):
    views, labels, lengths = cols.views[pos], cols.labels[pos], cols.lengths[pos]
    where = f"group {name} {split}"
    if views.min() < 0:
        raise EnsembleInputError(
            f"{where}: negative view index {int(views.min())} (views are 0, 1, 2, …)"
        )
    if (lengths != lengths[0]).any() or lengths[0] == 0:
        raise EnsembleInputError(
            f"{where}: logits lengths differ within the group: {sorted(set(lengths.tolist()))} "
            "(one classifier has one output size)"
        )
    present_ids, codes = np.unique(cols.id_codes[pos], return_inverse=True)  # sorted by id
    uniques = cols.id_names[present_ids]
    n, v, length = len(uniques), int(views.max()) + 1, int(lengths[0])
    flat = codes * v + views
    counts = np.bincount(flat, minlength=n * v).reshape(n, v)  # [N, V]
    if (counts > 1).any():
        i, j = np.argwhere(counts > 1)[0]
        raise EnsembleInputError(
            f"{where}: image {uniques[i]!r} has {counts[i, j]} rows for view {j} (expected one)"
        )
    dense = np.zeros((n * v, length), dtype=np.float64)  # [N·V, L]
    dense[flat] = cols.flat[cols.offsets[pos][:, None] + np.arange(length)]  # [rows, L]
    if not np.isfinite(dense[flat]).all():
        bad = flat[~np.isfinite(dense[flat]).all(axis=1)][0]
        raise EnsembleInputError(
            f"{where}: non-finite logits for image {uniques[bad // v]!r} view {bad % v}"
        )
    lab = np.full(n * v, -1, dtype=np.int64)
    lab[flat] = labels
    lab = lab.reshape(n, v)  # [N, V]
    present = counts == 1  # [N, V]
    first = lab[np.arange(n), present.argmax(axis=1)]  # [N]
    conflict = present & (lab != first[:, None])
    if conflict.any():
        i = int(np.argwhere(conflict)[0, 0])
        raise EnsembleInputError(
            f"{where}: image {uniques[i]!r} has different labels across views: {sorted(set(lab[i][present[i]].tolist()))}"
        )
    complete = present.all(axis=1)  # [N]
    fallback = None
    if on_missing == "single":  # predict from view 0 alone: every view gets view 0's logits
        fallback = ~complete & present[:, 0]  # [N]
        dense3 = dense.reshape(n, v, length)
        dense3[fallback] = dense3[fallback, :1]
        complete = complete | fallback
    dropped = int((~complete).sum())
    if dropped:
        i = int(np.flatnonzero(~complete)[0])
        lacking = np.flatnonzero(~present[i]).tolist()
        if on_missing == "error":
            raise EnsembleInputError(
                f"{where}: {dropped} of {n} images lack some of views 0…{v - 1}, e.g. image "
                f"{uniques[i]!r} lacks views {lacking} (set ensemble.on_missing_views: drop to "
                "skip such images, or single to predict them from view 0 alone)"
            )
        log.warning(
            "%s: dropping %d of %d images that lack some views (e.g. %r lacks %s)",
            where,
            dropped,
            n,
            uniques[i],
            lacking,
        )
    if not complete.any():
        raise EnsembleInputError(f"{where}: no image has all views 0…{v - 1}")
    logits3 = dense.reshape(n, v, length)[complete]  # [N, V, L]
    first = first[complete]
    _check_labels(name, split, first, max(2, length))
    ids_out = uniques[complete]
    out = [
        (
            split,
            str(uniques[i]),
            MISSING_VIEWS,
            f"lacks views {np.flatnonzero(~present[i]).tolist()}",
        )
        for i in np.flatnonzero(~complete)
    ]
    if fallback is not None:
        fallback = fallback[complete]
    return SplitArrays(ids_out, first, probabilities(logits3), fallback), out, length


def _check_labels(name: str, split: str, labels: np.ndarray, num_classes: int) -> None:
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        raise EnsembleInputError(
            f"group {name} {split}: label {int(labels[bad][0])} outside 0…{num_classes - 1} "
            f"(the classifier has {num_classes} classes)"
        )


def _check_group_views(group: LogitGroup) -> None:
    name = f"({group.task}, {group.classifier}, {group.method}, {group.setting!r})"
    vv, vt = group.val.probs.shape[1], group.test.probs.shape[1]
    if vv != vt:
        raise EnsembleInputError(
            f"group {name}: val has {vv} views but test has {vt}; both need the same views"
        )
    if vv < 2:
        raise EnsembleInputError(f"group {name}: only view 0 present; an ensemble needs views ≥ 1")
