"""Honest evaluation: which images each result leaves out and why, and per-image predictions.

Chai et al. (CVPR 2021), Sec. 3.4 report accuracy over the whole test split. A pipeline
run can lose images on the way — an inversion that failed leaves an image without views,
an interrupted render leaves some views missing — and an accuracy over the rest is biased
without a trace. Every result therefore carries, per split, the images it leaves out and
the reason:

- ``no logits``: the image is expected (its manifest split is val/test) but the group has
  no row of it; ``detail`` says why when the caller knows (e.g. ``inversion failed: …``);
- ``missing views``: the image lacks some of the group's views (``on_missing_views: drop``),
  or lacks view 0 itself (no fallback is possible then);
- ``not in both groups``: an image-augmentation × GAN combination needs the image in both.

With ``on_missing_views: single`` an image that has view 0 but lacks views is kept and
predicted from view 0 alone at every α (``fallback``), so accuracy covers it.

Predictions at α*: ``(1 − α*) · mean(image side) + α* · mean(GAN side)`` in probabilities,
whose argmax equals the prediction made from linear scores (:mod:`ganviews.ensemble.scores`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

GROUP_COLUMNS = ("task", "classifier", "method", "setting")
EXCLUSION_COLUMNS = [*GROUP_COLUMNS, "split", "image_id", "reason", "detail"]
PREDICTION_COLUMNS = [
    *GROUP_COLUMNS, "split", "image_id", "label", "prediction", "correct", "prediction_single",
    "alpha", "probabilities", "fallback",
]  # fmt: skip
NO_LOGITS = "no logits"
MISSING_VIEWS = "missing views"
NOT_IN_BOTH = "not in both groups"

# (split, image_id, reason, detail): one image left out of one result
Exclusion = tuple[str, str, str, str]


def expected_ids(expected: pd.DataFrame | None, split: str) -> dict[str, str]:
    """``expected``'s images of ``split`` → their detail text ('' when none is given)."""
    if expected is None:
        return {}
    rows = expected[expected["split"] == split]
    details = rows["detail"] if "detail" in rows.columns else pd.Series("", index=rows.index)
    return dict(zip(rows["image_id"].astype(str), details.fillna("").astype(str), strict=True))


def absent(split: str, expected: dict[str, str], present: Iterable[str]) -> list[Exclusion]:
    """The expected images of ``split`` that have no row at all, sorted by id."""
    missing = sorted(set(expected) - {str(i) for i in present})
    return [(split, i, NO_LOGITS, expected[i]) for i in missing]


def exclusion_counts(excluded: Sequence[Exclusion]) -> dict[str, object]:
    """Result-table columns: excluded images per split and a one-line tally of the reasons."""
    per_split = Counter(e[0] for e in excluded)
    tally = Counter((e[0], e[2]) for e in excluded)
    text = "; ".join(f"{split}: {n} {reason}" for (split, reason), n in sorted(tally.items()))
    return {
        "n_val_excluded": per_split.get("val", 0),
        "n_test_excluded": per_split.get("test", 0),
        "excluded_reasons": text,
    }


def exclusion_frame(key: Sequence[str], excluded: Sequence[Exclusion]) -> pd.DataFrame:
    """One row per excluded image of one result."""
    if not excluded:
        return pd.DataFrame(columns=EXCLUSION_COLUMNS)
    frame = pd.DataFrame(list(excluded), columns=["split", "image_id", "reason", "detail"])
    for column, value in zip(GROUP_COLUMNS, key, strict=True):
        frame.insert(GROUP_COLUMNS.index(column), column, value)
    return frame[EXCLUSION_COLUMNS]


def scores_to_probabilities(scores: np.ndarray, num_classes: int) -> np.ndarray:
    """Linear scores ``[..., K']`` back to probabilities ``[..., K]`` (inverse of linear_scores)."""
    if num_classes == 2:
        p1 = (1.0 + scores[..., 0]) / 2.0
        return np.stack([1.0 - p1, p1], axis=-1)
    return scores


def prediction_frame(
    key: Sequence[str],
    split: str,
    *,
    image_ids: np.ndarray,
    labels: np.ndarray,
    ensemble_scores: np.ndarray,
    single_scores: np.ndarray,
    alpha: float,
    num_classes: int,
    fallback: np.ndarray | None,
) -> pd.DataFrame:
    """One row per image of one split at ``alpha``: label, prediction, ensemble probabilities."""
    from ganviews.ensemble.scores import predict

    prediction = predict(ensemble_scores)  # [N]
    probs = scores_to_probabilities(ensemble_scores, num_classes)  # [N, K]
    n = len(labels)
    return pd.DataFrame(
        {
            **{c: [k] * n for c, k in zip(GROUP_COLUMNS, key, strict=True)},
            "split": split,
            "image_id": np.asarray(image_ids).astype(str),
            "label": labels.astype(np.int64),
            "prediction": prediction.astype(np.int64),
            "correct": prediction == labels,
            "prediction_single": predict(single_scores).astype(np.int64),
            "alpha": float(alpha),
            "probabilities": list(np.clip(probs, 0.0, 1.0)),
            "fallback": np.zeros(n, dtype=bool) if fallback is None else fallback,
        },
        columns=PREDICTION_COLUMNS,
    )
