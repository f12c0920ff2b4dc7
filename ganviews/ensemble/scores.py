"""Class probabilities, linear class scores and predictions for logit ensembles.

Chai et al., "Ensembling with Deep Generative Views" (CVPR 2021), Sec. 3.4, Eq. 7 averages
class probabilities C(·) over an image and its views. Every such ensemble is linear in the
probabilities, so predictions are made from *linear class scores*: the probabilities
themselves for K ≥ 3, and the margin p₁ − p₀ for K = 2 (class 1 iff the margin is > 0).

Tie rule: a tie between classes predicts the lowest class index (argmax's first index; for
binary, a margin of exactly 0 predicts class 0).
"""

from __future__ import annotations

import numpy as np


def probabilities(logits: np.ndarray) -> np.ndarray:
    """Raw logits ``[..., L]`` → class probabilities ``[..., K]``, K = max(L, 2).

    L = 1: a binary classifier with a sigmoid output, returned as [1 − p, p]; L ≥ 2: softmax
    (so a two-logit binary classifier is treated as multi-class).
    """
    x = np.asarray(logits, dtype=np.float64)
    if x.ndim == 0 or x.shape[-1] == 0:
        raise ValueError(f"logits: need a last axis of length ≥ 1, got shape {list(x.shape)}")
    if x.shape[-1] == 1:
        p1 = np.exp(-np.logaddexp(0.0, -x))  # [..., 1] stable sigmoid
        return np.concatenate([1.0 - p1, p1], axis=-1)  # [..., 2]
    z = np.exp(x - x.max(axis=-1, keepdims=True))  # [..., K]
    return z / z.sum(axis=-1, keepdims=True)


def linear_scores(probs: np.ndarray) -> np.ndarray:
    """``[..., K]`` probabilities → ``[..., K']`` scores that ensembles average linearly.

    K = 2 → the margin p₁ − p₀ (K' = 1); K ≥ 3 → the probabilities. :func:`predict` turns either
    into class indices with the same result (and tie rule) as argmax over the probabilities.
    """
    if probs.shape[-1] == 2:
        return probs[..., 1:] - probs[..., :1]
    return probs


def predict(scores: np.ndarray) -> np.ndarray:
    """``[..., K']`` linear scores → ``[...]`` class indices; ties go to the lowest class index."""
    if scores.shape[-1] == 1:
        return (scores[..., 0] > 0).astype(np.int64)
    return scores.argmax(axis=-1)
