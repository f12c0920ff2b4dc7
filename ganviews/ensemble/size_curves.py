"""Ensemble-size curves (Fig. 3–6, 8): test accuracy at α* against the number of views, with
bootstrap errors over view draws, and their summary over tasks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np
import pandas as pd

from ganviews.ensemble.accounting import (
    GROUP_COLUMNS,
)
from ganviews.ensemble.alpha_cv import best_settings, plain_split
from ganviews.ensemble.bootstrap import (
    blas_threads,
    size_curve_correct,
    stream_rng,
    view_draws,
)
from ganviews.ensemble.config import EnsembleConfig
from ganviews.ensemble.groups import LogitGroup, SplitArrays
from ganviews.ensemble.scores import predict

SIZE_COLUMNS = [*GROUP_COLUMNS, "alpha", "num_views", "acc", "acc_se", "n_test"]


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
    s = plain_split(arrays, kind)
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
        s = plain_split(g.test, g.kind)
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
