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
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ganviews.core.errors import ConfigError
from ganviews.ensemble.accounting import (
    EXCLUSION_COLUMNS,
    GROUP_COLUMNS,
    NOT_IN_BOTH,
    PREDICTION_COLUMNS,
    exclusion_counts,
    exclusion_frame,
)
from ganviews.ensemble.alpha_cv import (
    CURVE_COLUMNS,
    RESULT_COLUMNS,
    DenseSplit,
    best_settings,
    ensemble_correct,
    evaluate_split_pair,
    plain_meta,
    plain_split,
    select_alpha,
)
from ganviews.ensemble.bootstrap import (
    blas_threads,
    mcnemar_p,
)
from ganviews.ensemble.config import (
    SPLITS,
    EnsembleConfig,
    EnsembleInputError,
    alpha_grid,
    parse_combination,
)
from ganviews.ensemble.groups import LogitGroup, SplitArrays, build_groups, make_group
from ganviews.ensemble.paper import BASELINE_COLUMNS, PAPER_COLUMNS, paper_tables
from ganviews.ensemble.scores import linear_scores, probabilities
from ganviews.ensemble.size_curves import (
    SIZE_COLUMNS,
    size_curve_accuracy,
    size_curves,
    summarize_size_curves,
)

log = logging.getLogger(__name__)

# The module is the package's front door: the names below stay importable from here (tests,
# docs, notebooks), though they live in config, groups, alpha_cv, size_curves, bootstrap, scores.
__all__ = [
    "CURVE_COLUMNS", "GROUP_COLUMNS", "RESULT_COLUMNS", "SIZE_COLUMNS", "EnsembleConfig",
    "EnsembleInputError", "EnsembleResults", "LogitGroup", "SplitArrays", "alpha_grid",
    "best_settings", "build_groups", "concat_results", "ensemble_correct", "evaluate",
    "evaluate_groups", "make_group", "mcnemar_p", "parse_combination", "probabilities",
    "select_alpha", "size_curve_accuracy", "size_curves", "summarize_size_curves",
]  # fmt: skip


# ----------------------------------------------------------------------------- evaluation


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
        (g.key, g.kind, plain_split(g.val, g.kind), plain_split(g.test, g.kind), plain_meta(g))
        for g in groups
    ]
    jobs += list(_combination_jobs(groups, config))
    for key, kind, val, test, meta in jobs:
        meta = dict(meta)
        out = meta.pop("excluded")
        row, curve, prediction = evaluate_split_pair(
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
        splits.append(DenseSplit(a.labels[ia], common, fallback, sa[:, 0], sa, sb[:, 1:], sb[:, 1]))
    if dropped:
        log.warning("combination %s: %d images not in both groups are left out", name, dropped)
    setting = gg.setting if not ig.setting else f"{ig.setting}+{gg.setting}"
    key = (ig.task, ig.classifier, f"{ig.method}+{gg.method}", setting)
    meta = {"num_classes": gg.num_classes, "num_logits": gg.num_logits, "n_dropped": dropped,
            "image_method": ig.method, "image_setting": ig.setting,
            "gan_method": gg.method, "gan_setting": gg.setting,
            "excluded": tuple(sorted(excluded.values()))}  # fmt: skip
    return key, "combined", splits[0], splits[1], meta


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
