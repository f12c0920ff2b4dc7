"""View bootstrap, ensemble-size counts and standard errors for generative-view ensembles.

Chai et al., "Ensembling with Deep Generative Views" (CVPR 2021), Sec. 4 and Fig. 3–6, 8:
accuracy as a function of the number of GAN views, with errors from resampling the views.
The ensemble of Eq. 7 is ``(1 − α) · image + α · mean over views``; here its GAN side is a
weighted sum ``counts @ views / k`` (``counts [B, M]``: how often each of the M views occurs
in draw b), so every bootstrap draw and every ensemble size is one BLAS product per chunk.

Everything is numpy on linear class scores (:mod:`ganviews.ensemble.scores`); ``ganviews.ensemble.evaluate``
turns logit tables into these arrays and these counts into result tables.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from dataclasses import dataclass

import numpy as np

from ganviews.ensemble.scores import predict


def binomial_se(p: float, n: int) -> float:
    """Standard error of an accuracy ``p`` measured on ``n`` independent images (NaN for n = 0)."""
    return float(math.sqrt(p * (1.0 - p) / n)) if n > 0 else np.nan


def mcnemar_p(improved: int, worsened: int) -> float:
    """Exact two-sided McNemar (sign) test p-value on the discordant images of two classifiers."""
    n = improved + worsened
    if n == 0:
        return 1.0
    k = min(improved, worsened)
    # P(X ≤ k) for X ~ Binomial(n, 1/2), summed in log space (n may be tens of thousands).
    logs = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2.0)
        for i in range(k + 1)
    ]
    top = max(logs)
    tail = math.exp(top) * sum(math.exp(x - top) for x in logs)
    return float(min(1.0, 2.0 * tail))


def stream_rng(seed: int, *keys: str) -> np.random.Generator:
    """A numpy stream from (seed, keys), e.g. a group key.

    Results never depend on which other groups are present or their order.
    (runtime.item_seed does the same for torch; this module stays torch-free.)
    """
    text = "\x1f".join([str(int(seed)), *map(str, keys)])
    return np.random.default_rng(
        int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
    )


def view_draws(num_views: int, rng: np.random.Generator, draws: int) -> np.ndarray:
    """``[B, M]`` view indices drawn with replacement; size k of draw b uses its first k entries."""
    return rng.integers(0, num_views, size=(draws, num_views))


def blas_threads(limit: int | None):
    """A context limiting BLAS threads to ``limit`` (None: leave the BLAS setting alone)."""
    if limit is None:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=limit, user_api="blas")


@dataclass(frozen=True)
class FlatViews:
    """A split's GAN views as one matrix for BLAS, and its image side, computed once."""

    views: np.ndarray  # [N·K', M]
    img: np.ndarray  # [N, K'] mean over the image views
    labels: np.ndarray  # [N]
    num_scores: int  # K'

    @classmethod
    def of(cls, image_views: np.ndarray, gan_views: np.ndarray, labels: np.ndarray) -> FlatViews:
        """From ``image_views [N, Vi, K']``, ``gan_views [N, M, K']`` and ``labels [N]``."""
        n, m, kk = gan_views.shape
        views = np.ascontiguousarray(gan_views.transpose(0, 2, 1)).reshape(n * kk, m)
        return cls(views, image_views.mean(axis=1), labels, kk)


def weighted_correct(
    s: FlatViews, counts: np.ndarray, k: float, alphas: np.ndarray, *, chunk_elements: int
) -> np.ndarray:
    """Correct images for ensembles whose GAN side is ``counts @ views / k`` (one per draw) → ``[B, A]``.

    Predictions use k·((1 − α)·image + α·mean) = (1 − α)·k·image + α·(counts @ views): the same
    class (k > 0) without a division; the weighted sums are one BLAS matrix product per chunk.
    """
    n, kk, img = len(s.labels), s.num_scores, s.img
    b = counts.shape[0]
    out = np.zeros((b, len(alphas)), dtype=np.int64)  # counts: exact spreads
    step = max(1, chunk_elements // max(1, b * kk))
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        g = (
            (s.views[lo * kk : hi * kk] @ counts.T).reshape(hi - lo, kk, b).transpose(0, 2, 1)
        )  # [n, B, K']
        for j, a in enumerate(alphas):
            if kk == 1:  # binary margin: a·g + c·img > 0 ⇔ a·g > −c·img (exact in floating point)
                pos = a * g[..., 0] > (-(1.0 - a) * k * img[lo:hi, 0])[:, None]  # [n, B]
                out[:, j] += np.count_nonzero(pos == (s.labels[lo:hi, None] == 1), axis=0)
            else:
                ens = a * g + ((1.0 - a) * k) * img[lo:hi, None, :]  # [n, B, K']
                out[:, j] += np.count_nonzero(predict(ens) == s.labels[lo:hi, None], axis=0)
    return out


def bootstrap_correct(
    image_views: np.ndarray,
    gan_views: np.ndarray,
    labels: np.ndarray,
    alphas: np.ndarray,
    rng: np.random.Generator,
    *,
    draws: int,
    chunk_elements: int,
) -> np.ndarray:
    """Correct images at each α when the M GAN views are resampled with replacement → ``[B, A]``.

    ``image_views [N, Vi, K']`` and ``gan_views [N, M, K']`` are linear scores; B = ``draws``.
    """
    m = gan_views.shape[1]
    picks = view_draws(m, rng, draws)  # [B, M]
    counts = np.zeros((draws, m))  # [B, M] how often each view occurs in each draw
    np.add.at(counts, (np.arange(draws)[:, None], picks), 1.0)
    flat = FlatViews.of(image_views, gan_views, labels)
    return weighted_correct(flat, counts, float(m), alphas, chunk_elements=chunk_elements)


def size_curve_correct(
    image_views: np.ndarray,
    gan_views: np.ndarray,
    labels: np.ndarray,
    alpha: float,
    draws: np.ndarray,
    *,
    chunk_elements: int = 1 << 22,
) -> np.ndarray:
    """Correct images at ``alpha`` of the ensembles of the first k drawn views, k = 1…K → ``[B, K]``.

    ``draws [B, K]`` index the GAN views; size k of draw b averages views ``draws[b, :k]``
    (nested prefixes: one running count per draw serves every k).
    """
    m = gan_views.shape[1]
    flat = FlatViews.of(image_views, gan_views, labels)
    out = np.zeros(draws.shape, dtype=np.int64)  # [B, K] correct counts
    counts = np.zeros((draws.shape[0], m))  # [B, M] views among the first k of each draw
    rows = np.arange(draws.shape[0])
    alphas = np.array([alpha])
    for k in range(1, draws.shape[1] + 1):
        np.add.at(counts, (rows, draws[:, k - 1]), 1.0)
        out[:, k - 1] = weighted_correct(
            flat, counts, float(k), alphas, chunk_elements=chunk_elements
        )[:, 0]
    return out
