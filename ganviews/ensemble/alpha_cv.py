"""α cross-validation of one group (Eq. 7): every α of the grid at once, α* chosen on val by exact
counts with the stated tie rule, reported on test with the baselines and standard errors;
:func:`best_settings` picks a method's setting by mean val accuracy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ganviews.core.errors import ConfigError
from ganviews.ensemble.accounting import (
    GROUP_COLUMNS,
    prediction_frame,
)
from ganviews.ensemble.bootstrap import (
    binomial_se,
    bootstrap_correct,
    mcnemar_p,
    stream_rng,
)
from ganviews.ensemble.config import SPLITS, EnsembleConfig
from ganviews.ensemble.groups import LogitGroup, SplitArrays
from ganviews.ensemble.scores import linear_scores, predict


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


@dataclass(frozen=True)
class DenseSplit:
    """What an ensemble weighs on one split, as linear scores."""

    labels: np.ndarray  # [N]
    image_ids: np.ndarray  # [N]
    fallback: np.ndarray | None  # [N] bool: predicted from view 0 alone; None: no fallback
    single: np.ndarray  # [N, K'] the original image (view 0)
    image_views: np.ndarray  # [N, Vi, K'] weighted 1 − α (view 0; + augmentations if combined)
    gan_views: np.ndarray  # [N, Vg, K'] weighted α
    recon: np.ndarray | None  # [N, K'] the reconstruction; None for image augmentations


def plain_meta(g: LogitGroup) -> dict:
    image_side = (g.method, g.setting) if g.kind == "image" else ("", "")
    gan_side = (g.method, g.setting) if g.kind == "gan" else ("", "")
    return {"num_classes": g.num_classes, "num_logits": g.num_logits, "n_dropped": g.n_dropped,
            "image_method": image_side[0], "image_setting": image_side[1],
            "gan_method": gan_side[0], "gan_setting": gan_side[1], "excluded": g.excluded}  # fmt: skip


def plain_split(arrays: SplitArrays, kind: str) -> DenseSplit:
    s = linear_scores(arrays.probs)  # [N, V, K']
    recon = s[:, 1] if kind == "gan" else None
    return DenseSplit(
        arrays.labels, arrays.image_ids, arrays.fallback, s[:, 0], s[:, :1], s[:, 1:], recon
    )


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


def evaluate_split_pair(key, kind, val: DenseSplit, test: DenseSplit, meta, config: EnsembleConfig):
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
