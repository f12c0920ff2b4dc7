"""Linear probe of a frozen encoder on real labelled data (Jahanian et al., ICLR 2022, Sec. 4).

The paper judges a representation by linear transfer: a linear classifier trained on the
frozen encoder's features of a real labelled train split, accuracy on its test split. Here:

1. features = the backbone's globally pooled activations (before the projection head), in
   eval mode, without augmentation (:func:`extract_features`);
2. standardised with the train split's mean and standard deviation;
3. an L2-regularised multinomial logistic regression (scikit-learn, L-BFGS) for each
   inverse strength ``C`` of ``c_grid``; the ``C`` with the best *val* accuracy is kept (the
   first on ties), so the test split is never used for a choice;
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
    batch_size: int = 256  # images per feature-extraction batch

    def __post_init__(self) -> None:
        if not self.c_grid or min(self.c_grid) <= 0:
            raise ConfigError(f"c_grid: expected positive values, got {list(self.c_grid)}")


@dataclass(frozen=True)
class ProbeResult:
    accuracy: float  # test accuracy of the chosen classifier
    stderr: float  # its binomial standard error √(p(1−p)/n_test)
    c: float  # the C chosen on val
    val_accuracy: float  # val accuracy at that C
    n_train: int
    n_test: int


@torch.no_grad()
def extract_features(
    model, images: np.ndarray, *, device: torch.device | str = "cpu", batch_size: int = 256
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
    best = None
    for c in cfg.c_grid:
        clf = LogisticRegression(C=float(c), max_iter=cfg.max_iter).fit(xs[0], train[1])
        acc = float((clf.predict(xs[1]) == val[1]).mean())
        log.debug("probe C=%g: val accuracy %.4f", c, acc)
        if best is None or acc > best[0]:
            best = (acc, float(c), clf)
    val_acc, c, clf = best
    acc = float((clf.predict(xs[2]) == test[1]).mean())
    n = len(test[1])
    return ProbeResult(
        accuracy=acc,
        stderr=math.sqrt(acc * (1 - acc) / n),
        c=c,
        val_accuracy=val_acc,
        n_train=len(train[1]),
        n_test=n,
    )
