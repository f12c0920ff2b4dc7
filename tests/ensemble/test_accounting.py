"""Honest evaluation: exclusions per split and why, the view-0 fallback, predictions at α*."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from test_ensemble import FAST, known_table, random_table

from ganviews.ensemble.evaluate import EnsembleConfig, evaluate


def without(frame, image_id, view=None):
    drop = frame["image_id"] == image_id
    if view is not None:
        drop &= frame["view"] == view
    return frame[~drop]


def test_images_without_rows_are_counted_per_split_with_their_reason():
    expected = pd.DataFrame(
        {
            "image_id": ["v0", "v1", "vZ", "tA", "tE", "tF", "tG", "tX", "x0"],
            "split": ["val"] * 3 + ["test"] * 5 + ["train"],
            "detail": ["", "", "", "", "", "", "", "inversion failed: cannot decode", ""],
        }
    )
    res = evaluate(known_table(), FAST, expected=expected)
    row = res.table.iloc[0]
    assert (row["n_val"], row["n_test"]) == (2, 4)
    assert (row["n_val_excluded"], row["n_test_excluded"]) == (1, 1)
    assert row["excluded_reasons"] == "test: 1 no logits; val: 1 no logits"
    ex = res.exclusions.set_index("image_id")
    assert sorted(ex.index) == ["tX", "vZ"]
    assert ex.loc["tX", "split"] == "test" and ex.loc["tX", "reason"] == "no logits"
    assert ex.loc["tX", "detail"] == "inversion failed: cannot decode"
    assert ex.loc["tX", "method"] == "isotropic_fine"
    # without the expected images nothing is known to be missing
    plain = evaluate(known_table(), FAST).table.iloc[0]
    assert (plain["n_val_excluded"], plain["n_test_excluded"], plain["excluded_reasons"]) == (
        0,
        0,
        "",
    )


def test_dropped_images_say_which_views_they_lack():
    frame = without(known_table(), "tE", view=3)
    res = evaluate(frame, dataclasses.replace(FAST, on_missing_views="drop"))
    row = res.table.iloc[0]
    assert (row["n_test"], row["n_test_excluded"], row["n_dropped"]) == (3, 1, 1)
    assert res.exclusions[["split", "image_id", "reason", "detail"]].values.tolist() == [
        ["test", "tE", "missing views", "lacks views [3]"]
    ]


def test_single_fallback_keeps_the_image_and_predicts_it_from_view_0():
    """tE (label 1) lacks view 3; from view 0 alone (p = 0.1) it is wrong at every α.
    α* stays 0.45 (val unchanged); tA, tF, tG right → 3 of 4, accuracy over all 4 images."""
    frame = without(known_table(), "tE", view=3)
    res = evaluate(frame, dataclasses.replace(FAST, on_missing_views="single"))
    row = res.table.iloc[0]
    assert row["alpha_star"] == pytest.approx(0.45)
    assert (row["n_test"], row["n_test_excluded"], row["n_test_fallback"]) == (4, 0, 1)
    assert row["test_acc"] == 0.75 and row["test_acc_gan_only"] == 0.75  # tE wrong even at α=1
    pred = res.predictions.set_index("image_id")
    assert bool(pred.loc["tE", "fallback"]) and pred["fallback"].sum() == 1
    assert pred.loc["tE", "prediction"] == 0 and pred.loc["tE", "prediction_single"] == 0
    np.testing.assert_allclose(pred.loc["tE", "probabilities"], [0.9, 0.1], atol=1e-6)
    # an image without view 0 cannot fall back: it is excluded
    res = evaluate(
        without(frame, "tA", view=0), dataclasses.replace(FAST, on_missing_views="single")
    )
    assert res.exclusions["image_id"].tolist() == ["tA"]
    assert res.table.iloc[0]["n_test"] == 3
    with pytest.raises(Exception, match="single to predict them from view 0 alone"):
        evaluate(frame, FAST)
    with pytest.raises(Exception, match=r"\['error', 'drop', 'single'\]"):
        EnsembleConfig(on_missing_views="fallback")


def test_predictions_at_alpha_star_match_the_reported_accuracy():
    """At α* = 0.45: p₁(tA) = 0.55·0.2 + 0.45·mean(0.9, 0.9, 0.9, 0.9) = 0.515 → class 1."""
    res = evaluate(known_table(), FAST)
    pred = res.predictions.set_index("image_id")
    assert sorted(pred.index) == ["tA", "tE", "tF", "tG"] and set(pred["split"]) == {"test"}
    assert pred["correct"].mean() == res.table.iloc[0]["test_acc"]
    np.testing.assert_allclose(pred.loc["tA", "probabilities"], [0.485, 0.515], atol=1e-6)
    assert pred.loc["tA", "alpha"] == pytest.approx(0.45)
    assert pred.loc["tA", "prediction"] == 1 and pred.loc["tA", "prediction_single"] == 0
    assert pred[["label", "prediction"]].dtypes.tolist() == [np.int64, np.int64]


def test_multiclass_predictions_and_combination_exclusions():
    frame = random_table(seed=8, n_val=6, n_test=8)
    frame = frame[~((frame["method"] == "crop") & (frame["image_id"] == "test-003"))]
    res = evaluate(frame, FAST)
    key = ("t1", "multi", "isotropic_fine", "0.1")
    table = res.table.set_index(["task", "classifier", "method", "setting"])
    pred = res.predictions.set_index(["task", "classifier", "method", "setting"]).loc[key]
    assert len(pred) == 8 and np.stack(pred["probabilities"]).shape == (8, 4)
    np.testing.assert_allclose(np.stack(pred["probabilities"]).sum(axis=1), 1.0)
    assert pred["correct"].mean() == pytest.approx(table.loc[key, "test_acc"])
    combo = res.exclusions[res.exclusions["method"] == "crop+pca_coarse"]
    assert set(combo["image_id"]) == {"test-003"} and set(combo["reason"]) == {"not in both groups"}
    assert table.loc[("t1", "bin2", "crop+pca_coarse", "1"), "n_test_excluded"] == 1
