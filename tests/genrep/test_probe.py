"""The linear-probe protocol: frozen features, C chosen on val only, test accuracy ± binomial s.e."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from ganviews.core.errors import ConfigError
from ganviews.genrep.contrastive import ContrastiveModel, EncoderConfig
from ganviews.genrep.probe import ProbeConfig, extract_features, linear_probe


def _blobs(n: int, seed: int, shift: float = 0.5, noise_dims: int = 4):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, 1 + noise_dims))
    x[:, 0] += np.where(y == 1, shift, -shift)
    return x.astype(np.float32), y


def test_probe_reaches_the_bayes_accuracy_with_binomial_stderr() -> None:
    """Two unit Gaussians ±0.5 apart on one of five features: Bayes accuracy Φ(0.5) = 0.691."""
    test = _blobs(2000, 2)
    result = linear_probe(_blobs(600, 0), _blobs(600, 1), test)
    assert abs(norm.cdf(0.5) - 0.6915) < 1e-4
    bayes_here = float(((test[0][:, 0] > 0) == test[1]).mean())  # the Bayes rule on this test set
    assert abs(bayes_here - norm.cdf(0.5)) < 0.03
    assert abs(result.accuracy - bayes_here) < 0.012
    assert result.stderr == pytest.approx(math.sqrt(result.accuracy * (1 - result.accuracy) / 2000))
    assert (result.n_train, result.n_test) == (600, 2000) and result.c in ProbeConfig().c_grid
    one_c = ProbeConfig(c_grid=(0.1,))  # separable data: a large C only slows L-BFGS down
    separable = linear_probe(
        _blobs(100, 3, 5.0), _blobs(100, 4, 5.0), _blobs(100, 5, 5.0), cfg=one_c
    )
    assert separable.accuracy == 1.0 and separable.stderr == 0.0


def test_c_is_chosen_on_val_never_on_test() -> None:
    """Scrambling the test labels changes the accuracy, never the chosen C or the val accuracy."""
    train, val, test = _blobs(300, 0, 0.3, 40), _blobs(300, 1, 0.3, 40), _blobs(500, 2, 0.3, 40)
    cfg = ProbeConfig(c_grid=(0.001, 0.01, 1.0, 100.0))
    a = linear_probe(train, val, test, cfg=cfg)
    scrambled = (test[0], np.random.default_rng(0).permutation(test[1]))
    b = linear_probe(train, val, scrambled, cfg=cfg)
    assert (a.c, a.val_accuracy) == (b.c, b.val_accuracy) and a.accuracy != b.accuracy
    with pytest.raises(ConfigError, match=r"c_grid: expected positive values, got \[0\.0\]"):
        ProbeConfig(c_grid=(0.0,))


def test_features_are_frozen_pooled_backbone_activations() -> None:
    torch.manual_seed(0)
    model = ContrastiveModel(EncoderConfig(arch="resnet18", small_input=False, input_size=16))
    model.train()
    images = np.random.default_rng(0).integers(0, 256, (5, 3, 32, 32), dtype=np.uint8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    f1 = extract_features(model, images, batch_size=2)
    f2 = extract_features(model, images[3:], batch_size=4)
    assert f1.shape == (5, 512) and f1.dtype == np.float32
    np.testing.assert_allclose(f1[3:], f2, rtol=1e-5, atol=1e-6)  # eval mode: batch-independent
    assert model.training  # the caller's mode is restored
    assert all(
        torch.equal(before[k], v) for k, v in model.state_dict().items()
    )  # BN stats untouched


def test_warm_started_c_search_equals_separate_cold_fits() -> None:
    """Fitting from the strongest L2 to the weakest, each from the last optimum, picks the C and
    gives the accuracies that separate cold fits (the protocol before warm starts) give."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    train, val, test = _blobs(300, 0, 0.3, 40), _blobs(300, 1, 0.3, 40), _blobs(500, 2, 0.3, 40)
    cfg = ProbeConfig(c_grid=(1.0, 0.001, 100.0, 0.01))  # unsorted on purpose
    scaler = StandardScaler().fit(train[0])
    cold = {}
    for c in cfg.c_grid:
        clf = LogisticRegression(C=c, max_iter=2000).fit(scaler.transform(train[0]), train[1])
        cold[c] = (
            float((clf.predict(scaler.transform(val[0])) == val[1]).mean()),
            float((clf.predict(scaler.transform(test[0])) == test[1]).mean()),
        )
    best = max(cfg.c_grid, key=lambda c: (cold[c][0], -cfg.c_grid.index(c)))
    warm = linear_probe(train, val, test, cfg=cfg)
    assert warm.c == best == 0.01
    assert (warm.val_accuracy, warm.accuracy) == pytest.approx(cold[best], abs=1e-12)
    assert (warm.val_accuracy, warm.accuracy) == pytest.approx(
        (0.5333333333333333, 0.56), abs=1e-12
    )
    for grid in ((100.0, 1000.0), (1000.0, 100.0)):  # both reach val accuracy 0.5167
        tie = linear_probe(train, val, test, cfg=ProbeConfig(c_grid=grid))
        assert tie.c == grid[0] and tie.val_accuracy == pytest.approx(
            31 / 60
        )  # the first of c_grid
