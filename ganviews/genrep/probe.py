"""Linear probe of a frozen encoder on real labelled data (Jahanian et al., ICLR 2022, Sec. 4).

The paper judges a representation by linear transfer: a linear classifier trained on the
frozen encoder's features of a real labelled train split, accuracy on its test split. Here:

1. features = the backbone's globally pooled activations (before the projection head), in
   eval mode, without augmentation (:func:`extract_features`);
2. standardised with the train split's mean and standard deviation;
3. an L2-regularised multinomial logistic regression (scikit-learn, L-BFGS) for each
   inverse strength ``C`` of ``c_grid``; the ``C`` with the best *val* accuracy is kept (the
   first of ``c_grid`` on ties), so the test split is never used for a choice. The fits run
   from the strongest regularisation to the weakest, each L-BFGS starting at the previous
   solution (``warm_start``): every fit is convex, so it reaches the same optimum (to ``tol``)
   as a cold start, in fewer iterations;
4. test accuracy of that classifier, with its binomial standard error √(p(1−p)/n).

Departure: the paper trains the linear layer with SGD (60–100 epochs, cosine decay); a convex
solver reaches the same optimum of the same model without a learning-rate schedule to tune.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from ganviews.core.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbeConfig:
    """The linear-probe protocol."""

    c_grid: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)  # inverse L2 strengths tried on val
    max_iter: int = 2000  # L-BFGS iterations per fit
    tol: float = 1e-4  # L-BFGS stopping tolerance (scikit-learn's default)
    batch_size: int = 1024  # images per feature-extraction batch (no gradients kept)

    def __post_init__(self) -> None:
        if not self.c_grid or min(self.c_grid) <= 0:
            raise ConfigError(f"c_grid: expected positive values, got {list(self.c_grid)}")
        if self.tol <= 0:
            raise ConfigError(f"tol: expected > 0, got {self.tol!r}")


@dataclass(frozen=True)
class ProbeResult:
    accuracy: float  # test accuracy of the chosen classifier
    stderr: float  # its binomial standard error √(p(1−p)/n_test)
    c: float  # the C chosen on val
    val_accuracy: float  # val accuracy at that C
    n_train: int
    n_test: int


@torch.inference_mode()
def extract_features(
    model, images: np.ndarray, *, device: torch.device | str = "cpu", batch_size: int = 1024
) -> np.ndarray:
    """Pooled backbone features [N, d] float32 of uint8 images [N, C, H, W] (eval mode)."""
    from ganviews.genrep.contrastive import to_input

    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = to_input(torch.from_numpy(images[start : start + batch_size]).to(device))
        out.append(model.backbone(x).float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def linear_probe(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    *,
    cfg: ProbeConfig | None = None,
) -> ProbeResult:
    """Fit on ``train`` (features, labels), choose C on ``val``, report ``test`` (module doc)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    cfg = cfg or ProbeConfig()
    scaler = StandardScaler().fit(train[0])
    xs = [scaler.transform(part[0]) for part in (train, val, test)]
    clf = LogisticRegression(max_iter=cfg.max_iter, tol=cfg.tol, warm_start=True)
    fits = {}  # grid index → (val accuracy, test predictions)
    for i in sorted(range(len(cfg.c_grid)), key=lambda k: cfg.c_grid[k]):  # strongest L2 first
        clf.set_params(C=float(cfg.c_grid[i])).fit(xs[0], train[1])  # starts at the last optimum
        fits[i] = (float((clf.predict(xs[1]) == val[1]).mean()), clf.predict(xs[2]))
        log.debug("probe C=%g: val accuracy %.4f", cfg.c_grid[i], fits[i][0])
    best = max(fits, key=lambda k: (fits[k][0], -k))  # the first of c_grid on ties
    val_acc, c = fits[best][0], float(cfg.c_grid[best])
    acc = float((fits[best][1] == test[1]).mean())
    n = len(test[1])
    return ProbeResult(
        accuracy=acc,
        stderr=math.sqrt(acc * (1 - acc) / n),
        c=c,
        val_accuracy=val_acc,
        n_train=len(train[1]),
        n_test=n,
    )
