"""protocol: paper — the authors' resampled evaluation (notebooks/plot_precomputed_evaluations.ipynb:
resample_wrapper, compute_best_weight, get_accuracy_from_npz, sample_ensemble,
get_accuracy_from_image_ensembles), pinned by its numbers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ganviews.core.errors import ConfigError
from ganviews.ensemble.evaluate import EnsembleConfig, evaluate_groups, make_group
from ganviews.ensemble.paper import (
    PaperProtocol,
    image_baseline,
    paper_alpha_index,
    resample_indices,
    resampled_alpha_cv,
)
from ganviews.report.tables import ReportConfig, write_report, write_tables
from storage.results import write_results


def test_resample_indices_are_the_authors_randomstate_draws():
    """sample_ensemble: RandomState(seed).choice(32, 31, replace=True), one fresh state per call."""
    np.testing.assert_array_equal(resample_indices(32, 31, 0)[:8], [12, 15, 21, 0, 3, 27, 3, 7])
    np.testing.assert_array_equal(resample_indices(32, 16, 19)[:6], [29, 14, 21, 2, 8, 19])
    assert len(resample_indices(32, 31, 5)) == 31


def test_alpha_tie_break_is_the_notebooks_argsort_last():
    """compute_best_weight: table.iloc[table['acc'].argsort().iloc[-1]] — numpy's default sort."""
    rng = np.random.default_rng(0)
    for _ in range(50):
        acc = rng.integers(90, 93, size=21).astype(float)  # many ties
        assert paper_alpha_index(acc) == int(pd.Series(acc).argsort().iloc[-1])
        assert acc[paper_alpha_index(acc)] == acc.max()


def _binary(n: int, v: int, seed: int):
    labels = np.random.default_rng(n).integers(0, 2, n)  # the same labels in every group
    rng = np.random.default_rng(seed)
    p1 = np.clip(0.5 + (labels[:, None] - 0.5) * 0.3 + rng.normal(0, 0.3, (n, v)), 0.01, 0.99)
    return np.stack([1 - p1, p1], axis=-1), labels  # [N, V, 2], [N]


def _reference(val, test, size):
    """The notebook's loop, written out plainly on P(class 1) arrays (binary)."""
    alphas = np.linspace(0, 1, 21)
    vals, tests = [], []
    for s in range(20):
        res = {}
        for name, (probs, labels) in (("val", val), ("test", test)):
            p1 = probs[..., 1]
            gan = p1[:, 1:][:, np.random.RandomState(s).choice(p1.shape[1] - 1, size, replace=True)]
            accs = [
                np.mean((((1 - a) * p1[:, 0] + a * gan.mean(1)) > 0.5) == labels) * 100
                for a in alphas
            ]
            res[name] = accs
        best = pd.Series(res["val"]).argsort().iloc[-1]
        vals.append(res["val"][best])
        tests.append(res["test"][best])
    return np.mean(vals), np.mean(tests), np.std(tests) / np.sqrt(20)


def test_resampled_alpha_cv_matches_the_notebook_procedure():
    val, test = _binary(40, 33, 1), _binary(50, 33, 2)
    got = resampled_alpha_cv((val[0], val[0][:, 1:], val[1]), (test[0], test[0][:, 1:], test[1]))
    want = _reference(val, test, 31)
    assert (got["val_acc"], got["test_acc"], got["test_stderr"]) == pytest.approx(want, abs=1e-9)
    assert len(got["alphas"]) == 20 and got["ensemble_size"] == 31
    # 20 resamples, 31 views each: the test mean is an average of 20 percentages of 50 images
    assert (got["test_acc"] * 20 / 2) == pytest.approx(round(got["test_acc"] * 20 / 2))


def test_image_baseline_is_the_plain_mean_without_alpha():
    """get_accuracy_from_image_ensembles: mean of original + augmentations; 3 images, 4 views."""
    p1 = np.array([[0.6, 0.6, 0.1, 0.1], [0.4, 0.9, 0.9, 0.9], [0.2, 0.3, 0.4, 0.2]])
    probs = np.stack([1 - p1, p1], axis=-1)
    labels = np.array([1, 1, 0])
    res = image_baseline(probs, labels, protocol=PaperProtocol())
    # means 0.35 (wrong), 0.775 (right), 0.275 (right) → 66.67 %; the original alone: 1/3 right
    assert res["acc_plain_mean"] == pytest.approx(200 / 3)
    assert res["acc_single"] == pytest.approx(200 / 3)
    rng = np.random.RandomState(0)  # one stream, 20 draws of 4 of the 4 views
    draws = [
        np.mean((p1[:, rng.choice(4, 4, replace=True)].mean(1) > 0.5) == labels) * 100
        for _ in range(20)
    ]
    assert res["acc_resampled"] == pytest.approx(np.mean(draws))


def _group(method: str, setting: str, seed: int, views: int = 33):
    (vp, vl), (tp, tl) = _binary(30, views, seed), _binary(30, views, seed + 100)
    logit = lambda p: np.log(p[..., 1:] / p[..., :1])  # noqa: E731  single-logit sigmoid form
    kind = "image" if method in ("color", "crop") else "gan"
    return make_group(
        "t", "c", method, setting, val_logits=logit(vp), val_labels=vl, test_logits=logit(tp),
        test_labels=tl, kind=kind,
    )  # fmt: skip


def test_evaluate_with_protocol_paper_reports_both_baselines(tmp_path):
    groups = [
        _group("isotropic_fine", "0.3", 1),
        _group("isotropic_fine", "0.5", 2),
        _group("crop", "", 3, views=32),
    ]
    config = EnsembleConfig(
        protocol="paper", size_curve="none", combinations=("crop+isotropic_fine",)
    )
    res = evaluate_groups(groups, config)
    paper = res.paper
    assert list(paper["kind"]) == ["gan", "gan", "combined", "combined"]
    assert list(paper["ensemble_size"]) == [31, 31, 16, 16]
    for _, part in paper.groupby("method"):
        assert part["best_setting"].sum() == 1
        assert part.loc[part["best_setting"], "val_acc"].iloc[0] == part["val_acc"].max()
    base = res.paper_baselines
    test = base[base["split"] == "test"].iloc[0]
    ours = res.table[res.table["method"] == "crop"].iloc[0]
    assert test["acc_alpha_cv_ganviews"] == pytest.approx(100 * ours["test_acc"])
    assert test["acc_plain_mean"] == pytest.approx(100 * ours["test_acc_uniform"])
    tables = write_tables(res, tmp_path)
    assert pd.read_csv(tables["paper_protocol"]).shape[0] == 4
    assert "acc_alpha_cv_ganviews" in pd.read_csv(tables["paper_baselines"]).columns
    files = write_results(res.table, tmp_path / "r")
    md = write_report(
        res, tmp_path / "r", results_files=files, config=ReportConfig(plots=False, ensemble=config)
    )
    assert "The authors' protocol (protocol: paper)" in md.report_md.read_text(encoding="utf-8")
    assert evaluate_groups(groups, EnsembleConfig(size_curve="none")).paper is None
    with pytest.raises(ConfigError, match=r"ensemble.protocol: 'authors' is not one of"):
        EnsembleConfig(protocol="authors")
