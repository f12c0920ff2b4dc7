"""Ensembles over an image and its generative views, with α cross-validated on the val split.

Chai et al., "Ensembling with Deep Generative Views" (CVPR 2021), Sec. 3.4, Eq. 7:

    y_ens(α) = (1 − α) · C(x) + α · mean_n C(G(w̃_n))

where C gives class probabilities, x is the original image (view 0) and the GAN views are
every view ≥ 1 of a (task, classifier, method, setting) group — the reconstruction G(w*)
(view 1) included. α is chosen on the validation split from a grid (0, 0.05, …, 1) and
reported on test, together with α = 0 (the single image), α = 1 (GAN views only), the
reconstruction alone, the test oracle α, image-augmentation ensembles (Sec. 4.2, cars),
their combination with GAN views, and ensemble-size curves with bootstrap errors over
views (Fig. 3–6 and 8).

Computation. Each group is turned once into dense arrays ``probs [N, V, K]`` per split
(K ≥ 2; :mod:`ganviews.ensemble.scores`: a single-logit binary classifier is a sigmoid, a two-logit one
a softmax). Predictions are made from linear class scores (probabilities for K ≥ 3, the margin
p₁ − p₀ for K = 2); all α are evaluated by one broadcast ``(1 − α) · s_image + α · s_gan`` over
``[A, N, K']``, chunked over images to bound memory. The view bootstrap, ensemble-size counts
and standard errors are in :mod:`ganviews.ensemble.bootstrap`.

Tie rules (stated once, used everywhere):
- classes: the lowest class index wins a tie (:func:`ganviews.ensemble.scores.predict`);
- α: accuracies are compared as exact integer counts of correct images; among the α that
  reach the best count, ``tie_break="smallest"`` (default) takes the smallest α — with no
  evidence for the views, prefer the single image — and ``"largest"`` the largest. The test
  oracle α uses the same rule on test counts.

Ragged input: within a group every image must carry every view 0…V−1 once, with one label
and one logit length. A duplicated (image, view) row, differing logit lengths, conflicting
labels, non-finite logits or differing view counts between val and test are errors naming
the group; an image missing some views is an error by default, is dropped (counted in
``n_dropped`` and logged) with ``on_missing_views="drop"``, or is predicted from view 0 alone
with ``on_missing_views="single"``. Every result says which images it leaves out and why
(:mod:`ganviews.ensemble.accounting`): pass ``expected`` (image_id, split, detail) to
:func:`build_groups` and images without any row are counted too. Different classifiers may have
different class counts. Rows of other splits (``train``) are ignored; a group with val rows
but no test rows (or the reverse) is an error. Image-augmentation × GAN combinations use the
images present in both groups (the others are counted in ``n_dropped``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from ganviews.core.errors import ConfigError, GanviewsError
from ganviews.ensemble.accounting import (
    EXCLUSION_COLUMNS,
    GROUP_COLUMNS,
    MISSING_VIEWS,
    NOT_IN_BOTH,
    PREDICTION_COLUMNS,
    Exclusion,
    absent,
    exclusion_counts,
    exclusion_frame,
    expected_ids,
    prediction_frame,
)
from ganviews.ensemble.bootstrap import (
    binomial_se,
    blas_threads,
    bootstrap_correct,
    mcnemar_p,
    size_curve_correct,
    stream_rng,
    view_draws,
)
from ganviews.ensemble.paper import BASELINE_COLUMNS, PAPER_COLUMNS, paper_tables
from ganviews.ensemble.scores import linear_scores, predict, probabilities

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("image_id", "split", *GROUP_COLUMNS, "view", "logits", "label")
SPLITS = ("val", "test")


class EnsembleInputError(GanviewsError, ValueError):
    """A logits table cannot be turned into dense per-group arrays; the message names the group."""


@dataclass(frozen=True)
class EnsembleConfig:
    """How ensembles are evaluated; every field has a default, YAML maps onto it (``ensemble:``)."""

    num_alphas: int = 21  # α grid: num_alphas evenly spaced values from 0 to 1 (21 → 0, 0.05, …, 1)
    # which α wins among equally accurate ones ("smallest": prefer the single image)
    tie_break: Literal["smallest", "largest"] = "smallest"
    # methods whose views ≥ 1 are augmented copies of the image (no reconstruction)
    image_aug_methods: tuple[str, ...] = ("color", "crop")
    # "image_method+gan_method", each side optionally "method@setting"; None: every pair; (): none
    combinations: tuple[str, ...] | None = None
    # an image lacking some views: fail, drop it (counted in n_dropped and the exclusions), or
    # "single": predict it from view 0 alone at every α (counted in n_test_fallback)
    on_missing_views: Literal["error", "drop", "single"] = "error"
    bootstrap_draws: int = 100  # view resamples for bootstrap errors and ensemble-size curves
    # groups that get an ensemble-size curve (best_setting: per classifier and method, on val)
    size_curve: Literal["best_setting", "all", "none"] = "best_setting"
    seed: int = 0  # base seed of the view bootstrap; each group derives its own stream
    chunk_elements: int = 1 << 22  # largest temporary array (elements); bounds memory
    # BLAS threads while evaluating: the products are small ([N, M] × [M, B]), and threads cost
    # more than they save (6× the CPU time on 2 cores); None leaves the BLAS setting alone
    blas_threads: int | None = 1
    # "paper": also the authors' resampled protocol (ganviews.ensemble.paper: 20 resamples of 31
    # views, α per resample, plain-mean colour/crop baselines) in results.paper / paper_baselines
    protocol: Literal["ganviews", "paper"] = "ganviews"

    def __post_init__(self) -> None:
        if self.num_alphas < 2:
            raise ConfigError(
                f"ensemble.num_alphas: {self.num_alphas} is too small (need ≥ 2: the grid holds 0 and 1)"
            )
        if self.tie_break not in ("smallest", "largest"):
            raise ConfigError(
                f"ensemble.tie_break: {self.tie_break!r} is not one of ['smallest', 'largest']"
            )
        if self.on_missing_views not in ("error", "drop", "single"):
            raise ConfigError(
                f"ensemble.on_missing_views: {self.on_missing_views!r} is not one of "
                "['error', 'drop', 'single']"
            )
        if self.size_curve not in ("best_setting", "all", "none"):
            raise ConfigError(
                f"ensemble.size_curve: {self.size_curve!r} is not one of ['best_setting', 'all', 'none']"
            )
        if self.bootstrap_draws < 2:
            raise ConfigError(
                f"ensemble.bootstrap_draws: {self.bootstrap_draws} is too small (need ≥ 2)"
            )
        if self.blas_threads is not None and self.blas_threads < 1:
            raise ConfigError(f"ensemble.blas_threads: {self.blas_threads} must be ≥ 1 (or null)")
        if self.chunk_elements < 1:
            raise ConfigError(f"ensemble.chunk_elements: {self.chunk_elements} must be ≥ 1")
        if self.protocol not in ("ganviews", "paper"):
            raise ConfigError(
                f"ensemble.protocol: {self.protocol!r} is not one of ['ganviews', 'paper']"
            )
        for text in self.combinations or ():
            parse_combination(text)

    @property
    def alphas(self) -> np.ndarray:
        return alpha_grid(self.num_alphas)


def alpha_grid(num_alphas: int) -> np.ndarray:
    """``num_alphas`` evenly spaced α from 0 to 1, rounded to 12 decimals (0.05 prints as 0.05)."""
    if num_alphas < 2:
        raise ConfigError(f"num_alphas: {num_alphas} is too small (need ≥ 2)")
    return np.round(np.linspace(0.0, 1.0, num_alphas), 12)  # [A]


def parse_combination(text: str) -> tuple[str, str | None, str, str | None]:
    """``"crop+isotropic_fine@0.3"`` → ("crop", None, "isotropic_fine", "0.3")."""
    parts = text.split("+")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(
            f"ensemble.combinations: {text!r} is not 'image_method+gan_method' "
            "(each side optionally 'method@setting')"
        )
    out: list[str | None] = []
    for part in parts:
        method, _, setting = part.partition("@")
        if not method:
            raise ConfigError(f"ensemble.combinations: {text!r} has an empty method name")
        out += [method, setting if "@" in part else None]
    return out[0], out[1], out[2], out[3]  # type: ignore[return-value]


# ----------------------------------------------------------------------------- α cross-validation


def ensemble_correct(
    image_scores: np.ndarray,
    gan_scores: np.ndarray,
    labels: np.ndarray,
    alphas: np.ndarray,
    *,
    chunk_elements: int = 1 << 22,
) -> np.ndarray:
    """Per α and image, whether ``(1 − α)·image + α·gan`` predicts the label → ``[A, N]`` bool.

    ``image_scores``/``gan_scores`` are ``[N, K']`` linear scores (means over each side's views).
    """
    n, k = image_scores.shape
    a = alphas.reshape(-1, 1, 1)  # [A, 1, 1]
    out = np.empty((len(alphas), n), dtype=bool)  # [A, N]
    step = max(1, chunk_elements // max(1, len(alphas) * k))
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        ens = (1.0 - a) * image_scores[None, lo:hi] + a * gan_scores[None, lo:hi]  # [A, n, K']
        out[:, lo:hi] = predict(ens) == labels[None, lo:hi]
    return out


def select_alpha(correct_counts: np.ndarray, *, tie_break: str = "smallest") -> int:
    """Index of the best α in an increasing grid, from integer counts of correct images.

    Among equal best counts: ``"smallest"`` → the smallest α, ``"largest"`` → the largest α.
    """
    counts = np.asarray(correct_counts)
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError(
            f"correct_counts: need a non-empty 1-d array, got shape {list(counts.shape)}"
        )
    if tie_break == "smallest":
        return int(np.argmax(counts))
    if tie_break == "largest":
        return int(counts.size - 1 - np.argmax(counts[::-1]))
    raise ConfigError(f"tie_break: {tie_break!r} is not one of ['smallest', 'largest']")


# ----------------------------------------------------------------------------- dense groups


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


# ----------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class _Split:
    """What an ensemble weighs on one split, as linear scores."""

    labels: np.ndarray  # [N]
    image_ids: np.ndarray  # [N]
    fallback: np.ndarray | None  # [N] bool: predicted from view 0 alone; None: no fallback
    single: np.ndarray  # [N, K'] the original image (view 0)
    image_views: np.ndarray  # [N, Vi, K'] weighted 1 − α (view 0; + augmentations if combined)
    gan_views: np.ndarray  # [N, Vg, K'] weighted α
    recon: np.ndarray | None  # [N, K'] the reconstruction; None for image augmentations


def _plain_meta(g: LogitGroup) -> dict:
    image_side = (g.method, g.setting) if g.kind == "image" else ("", "")
    gan_side = (g.method, g.setting) if g.kind == "gan" else ("", "")
    return {"num_classes": g.num_classes, "num_logits": g.num_logits, "n_dropped": g.n_dropped,
            "image_method": image_side[0], "image_setting": image_side[1],
            "gan_method": gan_side[0], "gan_setting": gan_side[1], "excluded": g.excluded}  # fmt: skip


def _plain_split(arrays: SplitArrays, kind: str) -> _Split:
    s = linear_scores(arrays.probs)  # [N, V, K']
    recon = s[:, 1] if kind == "gan" else None
    return _Split(
        arrays.labels, arrays.image_ids, arrays.fallback, s[:, 0], s[:, :1], s[:, 1:], recon
    )


@dataclass(frozen=True)
class EnsembleResults:
    """Tidy outputs: one row per group, α curves, ensemble-size curves (per group and over tasks)."""

    table: pd.DataFrame  # one row per (task, classifier, method, setting); see docs/report.md
    curves: pd.DataFrame  # task, classifier, method, setting, split, alpha, acc, correct, n
    size_curves: pd.DataFrame  # task, classifier, method, setting, alpha, num_views, acc, acc_se
    config: EnsembleConfig = field(default_factory=EnsembleConfig)
    # one row per image a result leaves out: group, split, image_id, reason, detail
    exclusions: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=EXCLUSION_COLUMNS)
    )
    # one row per (result, test image) at α*: label, prediction, probabilities, fallback
    predictions: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=PREDICTION_COLUMNS)
    )
    paper: pd.DataFrame | None = None  # protocol "paper": ganviews.ensemble.paper.PAPER_COLUMNS
    paper_baselines: pd.DataFrame | None = None  # protocol "paper": colour/crop, both ways

    def size_curve_summary(self) -> pd.DataFrame:
        return summarize_size_curves(self.size_curves)


def evaluate(
    frame: pd.DataFrame,
    config: EnsembleConfig | None = None,
    *,
    expected: pd.DataFrame | None = None,
) -> EnsembleResults:
    """Everything for one logits table: dense groups, α-CV, combinations, size curves,
    exclusions and per-image test predictions at α*; ``expected`` as in :func:`build_groups`."""
    config = config or EnsembleConfig()
    return evaluate_groups(build_groups(frame, config, expected=expected), config)


def evaluate_groups(
    groups: Sequence[LogitGroup],
    config: EnsembleConfig | None = None,
    *,
    size_curve_keys: Iterable[tuple[str, str, str, str]] | None = None,
) -> EnsembleResults:
    """α-CV rows and curves for ``groups`` and their image-aug × GAN combinations; size curves.

    ``size_curve_keys`` overrides ``config.size_curve`` with an explicit set of group keys
    (used when a large table is evaluated in chunks and the best settings are chosen over all).
    """
    config = config or EnsembleConfig()
    with blas_threads(config.blas_threads):
        return _evaluate_groups(groups, config, size_curve_keys)


def _evaluate_groups(groups, config: EnsembleConfig, size_curve_keys) -> EnsembleResults:
    start = time.perf_counter()
    rows, curves, excluded, predictions = [], [], [], []
    jobs = [
        (g.key, g.kind, _plain_split(g.val, g.kind), _plain_split(g.test, g.kind), _plain_meta(g))
        for g in groups
    ]
    jobs += list(_combination_jobs(groups, config))
    for key, kind, val, test, meta in jobs:
        meta = dict(meta)
        out = meta.pop("excluded")
        row, curve, prediction = _evaluate_split_pair(
            key, kind, val, test, {**meta, **exclusion_counts(out)}, config
        )
        rows.append(row)
        curves.append(curve)
        predictions.append(prediction)
        excluded.append(exclusion_frame(key, out))
    table = (
        pd.DataFrame(rows, columns=RESULT_COLUMNS) if rows else pd.DataFrame(columns=RESULT_COLUMNS)
    )
    curves_df = (
        pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(columns=CURVE_COLUMNS)
    )
    size = (
        size_curves(groups, table, config)
        if size_curve_keys is None
        else size_curves(groups, table, config, keys=size_curve_keys)
    )
    log.info(
        "evaluated %d groups (%d combinations) in %.2fs",
        len(jobs),
        len(jobs) - len(groups),
        time.perf_counter() - start,
    )
    results = EnsembleResults(
        table,
        curves_df,
        size,
        config,
        _concat(excluded, EXCLUSION_COLUMNS),
        _concat(predictions, PREDICTION_COLUMNS),
    )
    if config.protocol != "paper":
        return results
    paper, baselines = paper_tables(groups, combinations=list(_combination_pairs(groups, config)))
    ours = table[table["kind"] == "image"][["task", "classifier", "method", "test_acc"]]
    baselines = baselines.merge(
        ours.rename(columns={"test_acc": "acc_alpha_cv_ganviews"}).assign(split="test"),
        how="left",
        on=["task", "classifier", "method", "split"],
    )
    baselines["acc_alpha_cv_ganviews"] *= 100.0  # percent, like the authors' columns
    return dataclasses.replace(results, paper=paper, paper_baselines=baselines)


def _concat(frames: Sequence[pd.DataFrame], columns: Sequence[str]) -> pd.DataFrame:
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def _combination_jobs(groups: Sequence[LogitGroup], config: EnsembleConfig) -> Iterable:
    for ig, gg in _combination_pairs(groups, config):
        yield _combine(ig, gg)


def _combination_pairs(groups: Sequence[LogitGroup], config: EnsembleConfig) -> Iterable:
    """(image-augmentation group, GAN group) pairs that ``config.combinations`` asks for."""
    by_pair: dict[tuple[str, str], list[LogitGroup]] = {}
    for g in groups:
        by_pair.setdefault((g.task, g.classifier), []).append(g)
    specs = (
        [parse_combination(c) for c in config.combinations]
        if config.combinations is not None
        else None
    )
    for spec in specs or ():
        if spec[0] not in config.image_aug_methods:
            raise ConfigError(
                f"ensemble.combinations: {spec[0]!r} is not an image-augmentation method "
                f"(ensemble.image_aug_methods: {list(config.image_aug_methods)})"
            )
        if spec[2] in config.image_aug_methods:
            raise ConfigError(
                f"ensemble.combinations: {spec[2]!r} is an image-augmentation method, not a GAN method"
            )
    for _, members in sorted(by_pair.items()):
        images = [g for g in members if g.kind == "image"]
        gans = [g for g in members if g.kind == "gan"]
        for ig in images:
            for gg in gans:
                if specs is not None and not any(_matches(ig, gg, s) for s in specs):
                    continue
                yield ig, gg


def _matches(ig: LogitGroup, gg: LogitGroup, spec) -> bool:
    im, iset, gm, gset = spec
    return (
        ig.method == im
        and gg.method == gm
        and iset in (None, ig.setting)
        and gset in (None, gg.setting)
    )


def _combine(ig: LogitGroup, gg: LogitGroup):
    name = f"({ig.task}, {ig.classifier}, {ig.method}+{gg.method})"
    if ig.num_classes != gg.num_classes:
        raise EnsembleInputError(
            f"combination {name}: {ig.num_classes} vs {gg.num_classes} classes"
        )
    splits, dropped = [], ig.n_dropped + gg.n_dropped
    excluded = {(e[0], e[1]): e for e in (*ig.excluded, *gg.excluded)}
    for split in SPLITS:
        a, b = getattr(ig, split), getattr(gg, split)
        common, ia, ib = np.intersect1d(
            a.image_ids.astype(str), b.image_ids.astype(str), return_indices=True
        )
        if common.size == 0:
            raise EnsembleInputError(
                f"combination {name} {split}: the two groups share no image ids"
            )
        dropped += a.n + b.n - 2 * common.size
        for ids, other_method in ((a.image_ids, gg.method), (b.image_ids, ig.method)):
            for image_id in np.setdiff1d(ids.astype(str), common):
                detail = f"no row in {other_method}"
                excluded.setdefault((split, image_id), (split, image_id, NOT_IN_BOTH, detail))
        if (a.labels[ia] != b.labels[ib]).any():
            bad = str(common[np.flatnonzero(a.labels[ia] != b.labels[ib])[0]])
            raise EnsembleInputError(
                f"combination {name} {split}: image {bad!r} has different labels in the two groups"
            )
        sa, sb = linear_scores(a.probs[ia]), linear_scores(b.probs[ib])  # [N, Vi, K'], [N, Vg, K']
        fallback = None
        if a.fallback is not None or b.fallback is not None:
            fa = np.zeros(len(ia), bool) if a.fallback is None else a.fallback[ia]
            fb = np.zeros(len(ib), bool) if b.fallback is None else b.fallback[ib]
            fallback = fa | fb
        splits.append(_Split(a.labels[ia], common, fallback, sa[:, 0], sa, sb[:, 1:], sb[:, 1]))
    if dropped:
        log.warning("combination %s: %d images not in both groups are left out", name, dropped)
    setting = gg.setting if not ig.setting else f"{ig.setting}+{gg.setting}"
    key = (ig.task, ig.classifier, f"{ig.method}+{gg.method}", setting)
    meta = {"num_classes": gg.num_classes, "num_logits": gg.num_logits, "n_dropped": dropped,
            "image_method": ig.method, "image_setting": ig.setting,
            "gan_method": gg.method, "gan_setting": gg.setting,
            "excluded": tuple(sorted(excluded.values()))}  # fmt: skip
    return key, "combined", splits[0], splits[1], meta


RESULT_COLUMNS = [
    "task", "classifier", "method", "setting",
    "alpha_star", "val_acc", "test_acc", "test_acc_single", "test_acc_recon", "test_acc_gan_only",
    "test_acc_oracle", "alpha_oracle", "n_val", "n_test", "kind",
    "val_acc_single", "test_acc_alpha0", "test_acc_uniform",
    "test_acc_se", "test_acc_single_se", "test_acc_recon_se", "test_acc_gan_only_se", "test_acc_oracle_se",
    "test_acc_views_se", "test_acc_gan_only_views_se",
    "gain", "gain_se", "n_improved", "n_worsened", "mcnemar_p",
    "num_classes", "num_logits", "n_views", "n_image_views", "n_dropped",
    "image_method", "image_setting", "gan_method", "gan_setting",
    "n_val_excluded", "n_test_excluded", "n_test_fallback", "excluded_reasons",
]  # fmt: skip
CURVE_COLUMNS = [*GROUP_COLUMNS, "split", "alpha", "acc", "correct", "n"]
SIZE_COLUMNS = [*GROUP_COLUMNS, "alpha", "num_views", "acc", "acc_se", "n_test"]


def _evaluate_split_pair(key, kind, val: _Split, test: _Split, meta, config: EnsembleConfig):
    alphas = config.alphas  # [A]
    ce = config.chunk_elements
    correct = {}
    for split, s in (("val", val), ("test", test)):
        correct[split] = ensemble_correct(
            s.image_views.mean(axis=1),
            s.gan_views.mean(axis=1),
            s.labels,
            alphas,
            chunk_elements=ce,
        )  # [A, N]
    counts = {split: c.sum(axis=1) for split, c in correct.items()}  # [A]
    i_star = select_alpha(counts["val"], tie_break=config.tie_break)
    i_orc = select_alpha(counts["test"], tie_break=config.tie_break)
    n_val, n_test = len(val.labels), len(test.labels)
    ct = correct["test"]
    single = predict(test.single) == test.labels  # [N]
    acc = lambda c: float(np.mean(c))  # noqa: E731
    recon = None if test.recon is None else predict(test.recon) == test.labels
    uniform = (
        predict(np.concatenate([test.image_views, test.gan_views], axis=1).mean(axis=1))
        == test.labels
    )
    diff = ct[i_star].astype(np.int64) - single  # [N] −1 / 0 / +1
    improved, worsened = int((diff > 0).sum()), int((diff < 0).sum())
    boot = bootstrap_correct(
        test.image_views,
        test.gan_views,
        test.labels,
        np.array([alphas[i_star], 1.0]),
        stream_rng(config.seed, *key),
        draws=config.bootstrap_draws,
        chunk_elements=ce,
    )  # [B, 2]
    row = {
        "task": key[0], "classifier": key[1], "method": key[2], "setting": key[3], "kind": kind,
        "alpha_star": float(alphas[i_star]), "val_acc": counts["val"][i_star] / n_val,
        "test_acc": acc(ct[i_star]), "test_acc_single": acc(single),
        "test_acc_recon": np.nan if recon is None else acc(recon), "test_acc_gan_only": acc(ct[-1]),
        "test_acc_oracle": acc(ct[i_orc]), "alpha_oracle": float(alphas[i_orc]),
        "n_val": n_val, "n_test": n_test,
        "val_acc_single": float(np.mean(predict(val.single) == val.labels)),
        "test_acc_alpha0": acc(ct[0]), "test_acc_uniform": acc(uniform),
        "test_acc_se": binomial_se(acc(ct[i_star]), n_test),
        "test_acc_single_se": binomial_se(acc(single), n_test),
        "test_acc_recon_se": np.nan if recon is None else binomial_se(acc(recon), n_test),
        "test_acc_gan_only_se": binomial_se(acc(ct[-1]), n_test),
        "test_acc_oracle_se": binomial_se(acc(ct[i_orc]), n_test),
        "test_acc_views_se": float(boot[:, 0].std(ddof=1)) / n_test,
        "test_acc_gan_only_views_se": float(boot[:, 1].std(ddof=1)) / n_test,
        "gain": acc(ct[i_star]) - acc(single),
        "gain_se": float(diff.std(ddof=1) / math.sqrt(n_test)) if n_test > 1 else np.nan,
        "n_improved": improved, "n_worsened": worsened, "mcnemar_p": mcnemar_p(improved, worsened),
        "n_views": test.gan_views.shape[1], "n_image_views": test.image_views.shape[1],
        "n_test_fallback": 0 if test.fallback is None else int(test.fallback.sum()),
        **meta,
    }  # fmt: skip
    curve = pd.DataFrame({
        **{c: k for c, k in zip(GROUP_COLUMNS, key, strict=True)},
        "split": np.repeat(list(SPLITS), len(alphas)),
        "alpha": np.tile(alphas, 2),
        "acc": np.concatenate([counts["val"] / n_val, counts["test"] / n_test]),
        "correct": np.concatenate([counts["val"], counts["test"]]),
        "n": np.repeat([n_val, n_test], len(alphas)),
    })  # fmt: skip
    a_star = alphas[i_star]
    prediction = prediction_frame(
        key,
        "test",
        image_ids=test.image_ids,
        labels=test.labels,
        ensemble_scores=(1 - a_star) * test.image_views.mean(axis=1)
        + a_star * test.gan_views.mean(axis=1),
        single_scores=test.single,
        alpha=a_star,
        num_classes=meta["num_classes"],
        fallback=test.fallback,
    )
    return row, curve, prediction


def size_curve_accuracy(
    arrays: SplitArrays,
    alpha: float,
    draws: np.ndarray,
    *,
    kind: Literal["gan", "image"] = "gan",
    chunk_elements: int = 1 << 22,
) -> np.ndarray:
    """Accuracy at ``alpha`` of the ensembles of the first k drawn views, k = 1…K → ``[B, K]``.

    ``draws [B, K]`` index the views ≥ 1 (0 = view 1); each draw's sizes are nested prefixes:
    size k of draw b averages views ``draws[b, :k]`` (a view drawn twice counts twice).
    """
    draws = np.asarray(draws)
    m = arrays.probs.shape[1] - 1
    if draws.ndim != 2 or draws.size == 0 or draws.min() < 0 or draws.max() >= m:
        raise ValueError(
            f"draws: need a non-empty [B, K] array of indices in 0…{m - 1}, got {draws.shape}"
        )
    s = _plain_split(arrays, kind)
    correct = size_curve_correct(
        s.image_views, s.gan_views, s.labels, alpha, draws, chunk_elements=chunk_elements
    )  # [B, K]
    return correct / arrays.n


def size_curves(
    groups: Sequence[LogitGroup],
    table: pd.DataFrame,
    config: EnsembleConfig,
    *,
    keys: Iterable[tuple[str, str, str, str]] | None = None,
) -> pd.DataFrame:
    """Test accuracy vs the number of views (0…M) at each group's α*, bootstrap over views.

    Size k of draw b averages the first k of M view indices drawn with replacement (nested
    prefixes, so one cumulative sum serves every k); ``acc`` is the mean over the draws and
    ``acc_se`` their standard deviation (the bootstrap standard error). Size 0 is the image
    side alone. Groups: ``keys`` if given, else per ``config.size_curve``.
    """
    if (keys is None and config.size_curve == "none") or not groups or table.empty:
        return pd.DataFrame(columns=SIZE_COLUMNS)
    with blas_threads(config.blas_threads):
        return _size_curves(groups, table, config, keys)


def _size_curves(groups, table: pd.DataFrame, config: EnsembleConfig, keys) -> pd.DataFrame:
    plain = table[table["kind"] != "combined"]
    wanted = set(map(tuple, plain[list(GROUP_COLUMNS)].to_numpy().tolist()))
    if keys is not None:
        wanted &= {tuple(k) for k in keys}
    elif config.size_curve == "best_setting":
        best = best_settings(plain)
        keep = set(map(tuple, best[["classifier", "method", "setting"]].to_numpy().tolist()))
        wanted = {k for k in wanted if k[1:] in keep}
    alpha_of = {
        tuple(r[:4]): r[4] for r in plain[[*GROUP_COLUMNS, "alpha_star"]].itertuples(index=False)
    }
    frames = []
    for g in groups:
        if g.key not in wanted:
            continue
        s = _plain_split(g.test, g.kind)
        alpha = alpha_of[g.key]
        draws = view_draws(
            s.gan_views.shape[1], stream_rng(config.seed, *g.key), config.bootstrap_draws
        )  # [B, M]
        counts = size_curve_correct(
            s.image_views, s.gan_views, s.labels, alpha, draws, chunk_elements=config.chunk_elements
        )  # [B, M]
        n = s.labels.shape[0]
        base = float(np.mean(predict(s.image_views.mean(axis=1)) == s.labels))
        frames.append(pd.DataFrame({
            **{c: v for c, v in zip(GROUP_COLUMNS, g.key, strict=True)},
            "alpha": alpha,
            "num_views": np.arange(counts.shape[1] + 1),
            "acc": np.concatenate([[base], counts.mean(axis=0) / n]),
            "acc_se": np.concatenate([[0.0], counts.std(axis=0, ddof=1) / n]),
            "n_test": s.labels.shape[0],
        }))  # fmt: skip
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=SIZE_COLUMNS)


def summarize_size_curves(size: pd.DataFrame) -> pd.DataFrame:
    """Mean ± standard error over tasks of the size curves, absolute and as gain over 0 views."""
    cols = [
        "classifier",
        "method",
        "setting",
        "num_views",
        "n_tasks",
        "acc_mean",
        "acc_se",
        "gain_mean",
        "gain_se",
        "view_se_mean",
    ]
    if size.empty:
        return pd.DataFrame(columns=cols)
    size = size.copy()
    base = size[size["num_views"] == 0].set_index(list(GROUP_COLUMNS))["acc"]
    size["gain"] = (
        size["acc"].to_numpy()
        - base.reindex(pd.MultiIndex.from_frame(size[list(GROUP_COLUMNS)])).to_numpy()
    )
    grouped = size.groupby(["classifier", "method", "setting", "num_views"], sort=True)
    out = grouped.agg(
        n_tasks=("task", "nunique"),
        acc_mean=("acc", "mean"),
        acc_sd=("acc", "std"),
        gain_mean=("gain", "mean"),
        gain_sd=("gain", "std"),
        view_se_mean=("acc_se", "mean"),
    ).reset_index()
    root = np.sqrt(out["n_tasks"].to_numpy(dtype=np.float64))
    out["acc_se"] = np.where(out["n_tasks"] > 1, out["acc_sd"] / root, np.nan)
    out["gain_se"] = np.where(out["n_tasks"] > 1, out["gain_sd"] / root, np.nan)
    return out[cols]


def best_settings(table: pd.DataFrame) -> pd.DataFrame:
    """Per (classifier, method), the setting with the best mean validation accuracy over tasks.

    Chosen on val so that the summary plots do not peek at test; ties → the first setting in
    sorted order.
    """
    if table.empty:
        return pd.DataFrame(columns=["classifier", "method", "setting", "mean_val_acc", "n_tasks"])
    agg = (
        table.groupby(["classifier", "method", "setting"], sort=True)
        .agg(mean_val_acc=("val_acc", "mean"), n_tasks=("task", "nunique"))
        .reset_index()
    )
    idx = agg.groupby(["classifier", "method"], sort=True)["mean_val_acc"].idxmax()
    return agg.loc[idx.to_numpy()].reset_index(drop=True)


def concat_results(
    parts: Sequence[EnsembleResults], config: EnsembleConfig | None = None
) -> EnsembleResults:
    """Results of several chunks (e.g. one per task) as one."""
    config = config or (parts[0].config if parts else EnsembleConfig())

    def cat(frames, cols):
        frames = [f for f in frames if not f.empty]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)

    papers = [p.paper for p in parts if p.paper is not None]
    bases = [p.paper_baselines for p in parts if p.paper_baselines is not None]
    return EnsembleResults(
        cat([p.table for p in parts], RESULT_COLUMNS),
        cat([p.curves for p in parts], CURVE_COLUMNS),
        cat([p.size_curves for p in parts], SIZE_COLUMNS),
        config,
        cat([p.exclusions for p in parts], EXCLUSION_COLUMNS),
        cat([p.predictions for p in parts], PREDICTION_COLUMNS),
        cat(papers, PAPER_COLUMNS) if papers else None,
        cat(bases, [*BASELINE_COLUMNS, "acc_alpha_cv_ganviews"]) if bases else None,
    )
