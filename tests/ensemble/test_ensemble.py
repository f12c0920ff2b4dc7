"""α cross-validation on hand-built logit tables with known answers, and against a per-image reference.

The reference implementation below is deliberately plain Python (a loop per image and per α,
probabilities with ``math.exp``, argmax by scanning): the vectorised library must equal it.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from ganviews.core.config import from_dict
from ganviews.core.errors import ConfigError
from ganviews.ensemble.evaluate import (
    EnsembleConfig,
    EnsembleInputError,
    alpha_grid,
    build_groups,
    evaluate,
    make_group,
    mcnemar_p,
    probabilities,
    select_alpha,
    size_curve_accuracy,
    summarize_size_curves,
)

# ----------------------------------------------------------------------------- builders


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def image_rows(task, classifier, method, setting, split, image_id, label, view_logits):
    """Rows of one image of one group: ``view_logits[v]`` is the logit list of view v."""
    return [
        dict(image_id=image_id, split=split, task=task, classifier=classifier, method=method,
             setting=setting, view=v, logits=np.asarray(l, dtype=np.float32), label=int(label),
             seed=None if v < 2 else 1000 + v)
        for v, l in enumerate(view_logits)
    ]  # fmt: skip


# Binary, one sigmoid logit; views 0 (image), 1 (reconstruction), 2–4. (label, p(view 0), p(views 1–4)).
# Worked out by hand in the docstring of test_known_answers.
KNOWN_VAL = {
    "v0": (1, 0.2, [0.9, 0.9, 0.9, 0.9]),  # right for α ≥ 0.45 (threshold 3/7)
    "v1": (1, 0.9, [0.2, 0.2, 0.2, 0.2]),  # right for α ≤ 0.55 (threshold 4/7)
}
KNOWN_TEST = {
    "tA": (1, 0.2, [0.9, 0.9, 0.9, 0.9]),  # right for α ≥ 0.45
    "tE": (1, 0.1, [0.95, 0.95, 0.95, 0.95]),  # right for α ≥ 0.5 (threshold 0.4706)
    "tF": (0, 0.45, [0.3, 0.3, 0.3, 0.3]),  # always right
    "tG": (1, 0.3, [0.45, 0.85, 0.85, 0.85]),  # right for α ≥ 0.45 (0.4444); reconstruction wrong
}


def known_table(*, two_logits: bool = False, task="Smiling", classifier="r50", method="isotropic_fine",
                setting="0.3") -> pd.DataFrame:  # fmt: skip
    rows = []
    for split, spec in (("val", KNOWN_VAL), ("test", KNOWN_TEST)):
        for image_id, (label, p0, views) in spec.items():
            logits = [[logit(p)] for p in [p0, *views]]
            if two_logits:
                logits = [[0.0, x[0]] for x in logits]  # softmax([0, x]) = [1 − σ(x), σ(x)]
            rows += image_rows(task, classifier, method, setting, split, image_id, label, logits)
    rows += image_rows(task, classifier, method, setting, "train", "x0", 0, [[5.0]] * 5)  # ignored
    return pd.DataFrame(rows)


def random_table(seed: int = 0, *, n_val: int = 17, n_test: int = 23) -> pd.DataFrame:
    """Several tasks, a sigmoid, a two-logit and a 4-class classifier, GAN and image methods."""
    rng = np.random.default_rng(seed)
    classifiers = {"bin1": 1, "bin2": 2, "multi": 4}
    methods = {
        ("isotropic_fine", "0.1"): 6,
        ("isotropic_fine", "0.2"): 6,
        ("pca_coarse", "1"): 4,
        ("crop", ""): 5,
    }
    rows = []
    for task in ("t0", "t1"):
        for clf, length in classifiers.items():
            k = max(2, length)
            for split, n in (("val", n_val), ("test", n_test)):
                labels = rng.integers(0, k, size=n)
                for (method, setting), v in methods.items():
                    for i in range(n):
                        base = rng.normal(size=length) + 1.2 * np.eye(k)[labels[i]][-length:]
                        views = [base + rng.normal(scale=1.5, size=length) for _ in range(v)]
                        rows += image_rows(
                            task, clf, method, setting, split, f"{split}-{i:03d}", labels[i], views
                        )
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- reference


def ref_probs(logits) -> list[float]:
    if len(logits) == 1:
        p = 1.0 / (1.0 + math.exp(-float(logits[0])))
        return [1.0 - p, p]
    top = max(float(x) for x in logits)
    e = [math.exp(float(x) - top) for x in logits]
    return [x / sum(e) for x in e]


def ref_argmax(p) -> int:
    best = 0
    for c in range(1, len(p)):
        if p[c] > p[best]:
            best = c
    return best


def ref_mean(vectors):
    return [sum(v[c] for v in vectors) / len(vectors) for c in range(len(vectors[0]))]


def ref_images(frame, key, split):
    """{image_id: (label, [probs of view 0, 1, …])} for one group and split."""
    sel = frame[(frame["task"] == key[0]) & (frame["classifier"] == key[1]) & (frame["method"] == key[2])
                & (frame["setting"] == key[3]) & (frame["split"] == split)]  # fmt: skip
    out = {}
    for r in sel.itertuples():
        label, views = out.setdefault(r.image_id, (r.label, {}))
        views[r.view] = ref_probs(r.logits)
    return {i: (lab, [v[j] for j in sorted(v)]) for i, (lab, v) in out.items()}


def ref_counts(images, alphas):
    """images: {id: (label, image-side prob vectors, GAN-side prob vectors)} → correct count per α."""
    counts = []
    for a in alphas:
        c = 0
        for label, img, gan in images.values():
            pi, pg = ref_mean(img), ref_mean(gan)
            y = [(1.0 - a) * pi[k] + a * pg[k] for k in range(len(pi))]
            c += ref_argmax(y) == label
        counts.append(c)
    return counts


def ref_pick(counts, tie_break):
    best = max(counts)
    idx = [i for i, c in enumerate(counts) if c == best]
    return idx[0] if tie_break == "smallest" else idx[-1]


def ref_evaluate(frame, tie_break="smallest", alphas=None):
    alphas = list(alpha_grid(21)) if alphas is None else alphas
    keys = sorted(
        set(map(tuple, frame[["task", "classifier", "method", "setting"]].to_numpy().tolist()))
    )
    out = {}
    sides = {}
    for key in keys:
        for split in ("val", "test"):
            imgs = ref_images(frame, key, split)
            sides[key, split] = {i: (lab, v[:1], v[1:], v) for i, (lab, v) in imgs.items()}
    jobs = [(key, {s: {i: (lab, img, gan) for i, (lab, img, gan, _) in sides[key, s].items()} for s in ("val", "test")},
             key[2] != "crop") for key in keys]  # fmt: skip
    for ik in [k for k in keys if k[2] == "crop"]:
        for gk in [k for k in keys if k[:2] == ik[:2] and k[2] != "crop"]:
            combo = {}
            for s in ("val", "test"):
                a, b = sides[ik, s], sides[gk, s]
                combo[s] = {i: (a[i][0], a[i][3], b[i][2]) for i in a}
            jobs.append(((ik[0], ik[1], f"crop+{gk[2]}", gk[3]), combo, True))
    for key, data, has_recon in jobs:
        cv, ct = ref_counts(data["val"], alphas), ref_counts(data["test"], alphas)
        i_star, i_orc = ref_pick(cv, tie_break), ref_pick(ct, tie_break)
        n_val, n_test = len(data["val"]), len(data["test"])
        test = data["test"]
        single = sum(ref_argmax(img[0]) == lab for lab, img, _ in test.values()) / n_test
        recon = sum(ref_argmax(gan[0]) == lab for lab, _, gan in test.values()) / n_test
        uniform = (
            sum(ref_argmax(ref_mean(img + gan)) == lab for lab, img, gan in test.values()) / n_test
        )
        out[key] = dict(
            alpha_star=alphas[i_star], val_acc=cv[i_star] / n_val, test_acc=ct[i_star] / n_test,
            test_acc_single=single, test_acc_recon=recon if has_recon else float("nan"),
            test_acc_gan_only=ct[-1] / n_test, test_acc_oracle=ct[i_orc] / n_test, alpha_oracle=alphas[i_orc],
            test_acc_alpha0=ct[0] / n_test, test_acc_uniform=uniform, n_val=n_val, n_test=n_test,
            curve_val=[c / n_val for c in cv], curve_test=[c / n_test for c in ct],
        )  # fmt: skip
    return out


FAST = EnsembleConfig(bootstrap_draws=20)


# ----------------------------------------------------------------------------- known answers


def test_known_answers():
    """Val: both images right only for α ∈ [0.45, 0.55] → α* = 0.45 (smallest tie).

    Test at α* = 0.45: tA, tF, tG right, tE wrong → 0.75; α = 0: only tF → 0.25; α = 1: all
    four → 1.0; reconstruction: tG wrong → 0.75; oracle: first α with 4 right is 0.5.
    """
    res = evaluate(known_table(), FAST)
    assert len(res.table) == 1
    row = res.table.iloc[0]
    assert row["alpha_star"] == pytest.approx(0.45)
    assert row["val_acc"] == 1.0 and row["val_acc_single"] == 0.5
    assert row["test_acc"] == 0.75
    assert row["test_acc_single"] == 0.25 and row["test_acc_alpha0"] == 0.25
    assert row["test_acc_gan_only"] == 1.0
    assert row["test_acc_recon"] == 0.75
    assert row["test_acc_oracle"] == 1.0 and row["alpha_oracle"] == pytest.approx(0.5)
    assert row["alpha_oracle"] != row["alpha_star"]  # α* on val is not the test oracle
    assert row["test_acc_uniform"] == 1.0  # equal weights = α 0.8
    assert (row["n_val"], row["n_test"], row["n_views"], row["num_classes"], row["num_logits"]) == (
        2,
        4,
        4,
        2,
        1,
    )
    assert (row["n_improved"], row["n_worsened"]) == (2, 0)  # tA and tG fixed, nothing broken
    assert row["gain"] == pytest.approx(0.5)
    assert row["mcnemar_p"] == pytest.approx(0.5)
    assert row["test_acc_se"] == pytest.approx(math.sqrt(0.75 * 0.25 / 4))
    # paired SE of the per-image differences (0, 1, 0, 1 → sd 0.57735)
    assert row["gain_se"] == pytest.approx(np.std([1, 0, 0, 1], ddof=1) / 2)
    assert row["test_acc_views_se"] >= 0.0 and row["kind"] == "gan"
    curve = res.curves[res.curves["split"] == "val"].set_index("alpha")["acc"]
    assert (
        curve.loc[0.4] == 0.5
        and curve.loc[0.45] == 1.0
        and curve.loc[0.55] == 1.0
        and curve.loc[0.6] == 0.5
    )


def test_tie_rule_largest():
    """With tie_break='largest': α* = 0.55 (all four test images right), oracle = 1.0."""
    res = evaluate(known_table(), dataclasses.replace(FAST, tie_break="largest"))
    row = res.table.iloc[0]
    assert row["alpha_star"] == pytest.approx(0.55) and row["test_acc"] == 1.0
    assert row["alpha_oracle"] == pytest.approx(1.0)


def test_no_evidence_prefers_the_single_image():
    """All views equal to the image: every α ties, so α* = 0 (smallest) and views add nothing."""
    rows = []
    for split in ("val", "test"):
        for i, (label, p) in enumerate([(1, 0.7), (0, 0.8), (1, 0.4)]):
            rows += image_rows(
                "t", "c", "isotropic_fine", "0.1", split, f"i{i}", label, [[logit(p)]] * 4
            )
    res = evaluate(pd.DataFrame(rows), FAST)
    row = res.table.iloc[0]
    assert row["alpha_star"] == 0.0 and row["alpha_oracle"] == 0.0
    assert (
        row["test_acc"]
        == row["test_acc_single"]
        == row["test_acc_gan_only"]
        == pytest.approx(1 / 3)
    )
    assert row["test_acc_views_se"] == 0.0  # views identical: resampling them changes nothing
    largest = evaluate(pd.DataFrame(rows), dataclasses.replace(FAST, tie_break="largest"))
    assert largest.table.iloc[0]["alpha_star"] == 1.0


def test_select_alpha_tie_rules():
    counts = np.array([3, 5, 5, 4, 5, 2])
    assert select_alpha(counts, tie_break="smallest") == 1
    assert select_alpha(counts, tie_break="largest") == 4
    with pytest.raises(ConfigError, match="tie_break: 'middle' is not one of"):
        select_alpha(counts, tie_break="middle")
    with pytest.raises(ValueError, match="non-empty 1-d"):
        select_alpha(np.zeros((0,)))


def test_sigmoid_equals_two_logit_softmax():
    """One logit x (sigmoid) and two logits [0, x] (softmax) give the same probabilities and results."""
    x = np.array([[-3.0], [0.0], [2.5]])
    np.testing.assert_allclose(
        probabilities(x), probabilities(np.concatenate([np.zeros_like(x), x], axis=1))
    )
    one = evaluate(known_table(), FAST).table
    two = evaluate(known_table(two_logits=True), FAST).table
    cols = ["alpha_star", "val_acc", "test_acc", "test_acc_single", "test_acc_recon", "test_acc_gan_only",
            "test_acc_oracle", "alpha_oracle"]  # fmt: skip
    pd.testing.assert_frame_equal(one[cols], two[cols])
    assert (one["num_logits"].item(), two["num_logits"].item()) == (1, 2)
    assert one["num_classes"].item() == two["num_classes"].item() == 2


def test_two_logit_binary_is_softmax_not_sigmoid_of_one_logit():
    """Views [10, 9] mean class 0 under softmax although σ(9) ≈ 1: the ensemble must say class 0."""
    p = probabilities(np.array([[10.0, 9.0]]))
    np.testing.assert_allclose(p, [[1 / (1 + math.exp(-1)), 1 / (1 + math.exp(1))]])
    rows = []
    for split in ("val", "test"):
        rows += image_rows(
            "t", "c", "stylemix_fine", "", split, "a", 0, [[0.0, 5.0], [10.0, 9.0], [10.0, 9.0]]
        )
    row = evaluate(pd.DataFrame(rows), FAST).table.iloc[0]
    assert row["test_acc_single"] == 0.0 and row["test_acc_gan_only"] == 1.0


def test_multiclass_averages_probabilities_not_logits():
    """Mean of probabilities → class 0; mean of logits would give class 2."""
    views = [[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [-20.0, 1.0, 1.2]]
    probs = probabilities(np.array(views[1:]))
    assert probs.mean(axis=0).argmax() == 0 and np.array(views[1:]).mean(axis=0).argmax() == 2
    rows = []
    for split in ("val", "test"):
        rows += image_rows("t", "c3", "pca_fine", "2", split, "a", 0, views)
    row = evaluate(pd.DataFrame(rows), FAST).table.iloc[0]
    assert row["num_classes"] == 3 and row["test_acc_gan_only"] == 1.0
    assert row["test_acc_single"] == 1.0  # uniform view 0 → tie between classes → lowest index (0)


def test_class_ties_go_to_the_lowest_index():
    assert probabilities(np.array([[0.0]])).tolist() == [[0.5, 0.5]]
    rows = []
    for split in ("val", "test"):
        rows += image_rows("t", "c", "isotropic_fine", "0.1", split, "a", 1, [[0.0], [0.0]])
    row = evaluate(pd.DataFrame(rows), FAST).table.iloc[0]
    assert (
        row["test_acc_single"] == 0.0 and row["test_acc_gan_only"] == 0.0
    )  # p = 0.5 predicts class 0


def test_mcnemar_exact_values():
    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(5, 0) == pytest.approx(2 * 0.5**5)
    assert mcnemar_p(3, 1) == pytest.approx(10 / 16)
    assert mcnemar_p(1, 3) == pytest.approx(10 / 16)
    assert 0.0 < mcnemar_p(12000, 11000) < 1e-9


# ----------------------------------------------------------------------------- vectorised == reference


@pytest.mark.parametrize("tie_break", ["smallest", "largest"])
def test_vectorised_equals_reference_on_random_tables(tie_break):
    frame = random_table(seed=1)
    config = dataclasses.replace(FAST, tie_break=tie_break)
    res = evaluate(frame, config)
    ref = ref_evaluate(frame, tie_break)
    got = res.table.set_index(["task", "classifier", "method", "setting"])
    curves = res.curves.set_index(["task", "classifier", "method", "setting", "split"]).sort_index()
    assert sorted(got.index) == sorted(ref)
    assert len(ref) == 2 * 3 * (3 + 1 + 3)  # tasks × classifiers × (groups + crop combinations)
    for key, want in ref.items():
        row = got.loc[key]
        for col in ("alpha_star", "alpha_oracle", "val_acc", "test_acc", "test_acc_single", "test_acc_gan_only",
                    "test_acc_oracle", "test_acc_alpha0", "test_acc_uniform"):  # fmt: skip
            assert row[col] == pytest.approx(want[col], abs=1e-12), (key, col)
        np.testing.assert_equal(row["test_acc_recon"], want["test_acc_recon"])
        assert (row["n_val"], row["n_test"]) == (want["n_val"], want["n_test"])
        curve = curves.loc[key]
        np.testing.assert_allclose(
            curve.loc["val", "acc"].to_numpy(), want["curve_val"], atol=1e-12
        )
        np.testing.assert_allclose(
            curve.loc["test", "acc"].to_numpy(), want["curve_test"], atol=1e-12
        )


def test_chunking_does_not_change_results():
    frame = random_table(seed=2, n_val=9, n_test=11)
    big = evaluate(frame, FAST)
    small = evaluate(frame, dataclasses.replace(FAST, chunk_elements=7))
    pd.testing.assert_frame_equal(big.table, small.table)
    pd.testing.assert_frame_equal(big.size_curves, small.size_curves)


def test_size_curve_matches_reference_with_explicit_draws():
    rng = np.random.default_rng(3)
    n, v = 13, 6
    labels = rng.integers(0, 3, size=n)
    logits = rng.normal(size=(n, v, 3)) + 0.8 * np.eye(3)[labels][:, None]
    group = make_group("t", "c", "isotropic_fine", "0.1", val_logits=logits, val_labels=labels,
                       test_logits=logits, test_labels=labels)  # fmt: skip
    draws = rng.integers(0, v - 1, size=(7, v - 1))
    alpha = 0.65
    got = size_curve_accuracy(group.test, alpha, draws)
    assert got.shape == (7, v - 1)
    for b in range(7):
        for k in range(1, v):
            correct = 0
            for i in range(n):
                pv = [ref_probs(logits[i, 1 + j]) for j in draws[b, :k]]
                p0 = ref_probs(logits[i, 0])
                g = ref_mean(pv)
                correct += (
                    ref_argmax([(1 - alpha) * p0[c] + alpha * g[c] for c in range(3)]) == labels[i]
                )
            assert got[b, k - 1] == pytest.approx(correct / n, abs=1e-12)
    with pytest.raises(ValueError, match="indices in 0…4"):
        size_curve_accuracy(group.test, alpha, np.array([[5]]))


def test_size_curves_and_view_bootstrap_are_consistent_and_seeded():
    frame = random_table(seed=4, n_val=8, n_test=15)
    config = dataclasses.replace(FAST, size_curve="all")
    res = evaluate(frame, config)
    size = res.size_curves
    plain = res.table[res.table["kind"] != "combined"]
    assert len(size) == sum(plain["n_views"] + 1)
    for row in plain.itertuples():
        s = size[(size["task"] == row.task) & (size["classifier"] == row.classifier) & (size["method"] == row.method)
                 & (size["setting"] == row.setting)].sort_values("num_views")  # fmt: skip
        assert s["num_views"].tolist() == list(range(row.n_views + 1))
        assert s["acc"].iloc[0] == pytest.approx(row.test_acc_single)  # 0 views: the image alone
        assert s["acc_se"].iloc[0] == 0.0
        # the full-size bootstrap uses the same draws as the table's view SE
        assert s["acc_se"].iloc[-1] == pytest.approx(row.test_acc_views_se, abs=1e-12)
    again = evaluate(frame, config)
    pd.testing.assert_frame_equal(res.size_curves, again.size_curves)
    other = evaluate(frame, dataclasses.replace(config, seed=1))
    assert not np.allclose(res.table["test_acc_views_se"], other.table["test_acc_views_se"])
    # a group's bootstrap does not depend on which other groups are evaluated with it
    only = evaluate(frame[frame["method"] == "pca_coarse"], config).table.set_index(
        ["task", "classifier"]
    )
    full = res.table[res.table["method"] == "pca_coarse"].set_index(["task", "classifier"])
    np.testing.assert_array_equal(
        only["test_acc_views_se"], full.loc[only.index, "test_acc_views_se"]
    )


def test_size_curve_best_setting_and_summary_over_tasks():
    frame = random_table(seed=5, n_val=10, n_test=12)
    res = evaluate(frame, FAST)
    size = res.size_curves
    # one setting per (classifier, method): the one with the best mean val accuracy over tasks
    per = size.groupby(["classifier", "method"])["setting"].nunique()
    assert (per == 1).all()
    iso = res.table[
        (res.table["method"] == "isotropic_fine") & (res.table["classifier"] == "multi")
    ]
    means = iso.groupby("setting")["val_acc"].mean()
    assert (
        size[(size["classifier"] == "multi") & (size["method"] == "isotropic_fine")][
            "setting"
        ].iloc[0]
        == means.idxmax()
    )
    summary = summarize_size_curves(size)
    k = summary[
        (summary["classifier"] == "bin1")
        & (summary["method"] == "pca_coarse")
        & (summary["num_views"] == 2)
    ]
    raw = size[(size["classifier"] == "bin1") & (size["method"] == "pca_coarse")]
    acc2 = raw[raw["num_views"] == 2].sort_values("task")["acc"].to_numpy()
    acc0 = raw[raw["num_views"] == 0].sort_values("task")["acc"].to_numpy()
    assert k["n_tasks"].item() == 2
    assert k["acc_mean"].item() == pytest.approx(acc2.mean())
    assert k["acc_se"].item() == pytest.approx(acc2.std(ddof=1) / math.sqrt(2))
    assert k["gain_mean"].item() == pytest.approx((acc2 - acc0).mean())
    assert k["gain_se"].item() == pytest.approx((acc2 - acc0).std(ddof=1) / math.sqrt(2))
    none = evaluate(frame, dataclasses.replace(FAST, size_curve="none"))
    assert none.size_curves.empty


# ----------------------------------------------------------------------------- combinations


def test_combination_weights_image_views_against_gan_views():
    frame = random_table(seed=6, n_val=9, n_test=14)
    res = evaluate(frame, FAST).table.set_index(["task", "classifier", "method", "setting"])
    crop = res.loc[("t0", "multi", "crop", "")]
    gan = res.loc[("t0", "multi", "isotropic_fine", "0.2")]
    combo = res.loc[("t0", "multi", "crop+isotropic_fine", "0.2")]
    assert combo["kind"] == "combined" and combo["n_image_views"] == 5 and combo["n_views"] == 5
    assert (
        combo["test_acc_alpha0"] == crop["test_acc_uniform"]
    )  # α = 0: original + its augmentations
    assert combo["test_acc_gan_only"] == gan["test_acc_gan_only"]  # α = 1: the GAN views only
    assert combo["test_acc_recon"] == gan["test_acc_recon"]
    assert (combo["image_method"], combo["gan_method"], combo["gan_setting"]) == (
        "crop",
        "isotropic_fine",
        "0.2",
    )


def test_combinations_are_configurable():
    frame = random_table(seed=7, n_val=6, n_test=6)
    only = evaluate(
        frame, dataclasses.replace(FAST, combinations=("crop+isotropic_fine@0.2",))
    ).table
    combos = only[only["kind"] == "combined"]
    assert set(combos["method"]) == {"crop+isotropic_fine"} and set(combos["setting"]) == {"0.2"}
    assert len(combos) == 2 * 3
    none = evaluate(frame, dataclasses.replace(FAST, combinations=())).table
    assert (none["kind"] != "combined").all()
    with pytest.raises(ConfigError, match="'isotropic_fine' is not an image-augmentation method"):
        evaluate(frame, dataclasses.replace(FAST, combinations=("isotropic_fine+crop",)))
    with pytest.raises(ConfigError, match="is not 'image_method\\+gan_method'"):
        EnsembleConfig(combinations=("crop",))


def test_combination_uses_common_images_only():
    frame = random_table(seed=8, n_val=6, n_test=8)
    frame = frame[~((frame["method"] == "crop") & (frame["image_id"] == "test-003"))]
    res = evaluate(frame, FAST).table.set_index(["task", "classifier", "method", "setting"])
    combo = res.loc[("t1", "bin2", "crop+pca_coarse", "1")]
    assert combo["n_test"] == 7 and combo["n_dropped"] == 1


# ----------------------------------------------------------------------------- ragged and bad input


def test_missing_view_is_an_error_naming_the_image():
    frame = known_table()
    frame = frame[~((frame["image_id"] == "tE") & (frame["view"] == 3))]
    with pytest.raises(
        EnsembleInputError,
        match=r"1 of 4 images lack some of views 0…4, e\.g\. image 'tE' lacks views \[3\]",
    ):
        evaluate(frame, FAST)


def test_missing_view_can_drop_the_image():
    frame = known_table()
    frame = frame[~((frame["image_id"] == "tE") & (frame["view"] == 3))]
    row = evaluate(frame, dataclasses.replace(FAST, on_missing_views="drop")).table.iloc[0]
    assert row["n_test"] == 3 and row["n_dropped"] == 1
    assert row["test_acc"] == 1.0  # tA, tF, tG right at α* = 0.45


def test_duplicate_rows_are_an_error():
    frame = known_table()
    frame = pd.concat([frame, frame.iloc[[3]]], ignore_index=True)
    with pytest.raises(EnsembleInputError, match="has 2 rows for view 3"):
        build_groups(frame)


def test_differing_logit_lengths_within_a_group_are_an_error():
    frame = known_table()
    frame["logits"] = (
        list(frame["logits"].iloc[:2]) + [np.zeros(3, np.float32)] + list(frame["logits"].iloc[3:])
    )
    with pytest.raises(
        EnsembleInputError, match=r"logits lengths differ within the group: \[1, 3\]"
    ):
        build_groups(frame)


def test_classifiers_with_different_class_counts_share_a_table():
    frame = random_table(seed=9, n_val=5, n_test=5)
    groups = build_groups(frame)
    classes = {(g.classifier, g.num_classes, g.num_logits) for g in groups}
    assert classes == {("bin1", 2, 1), ("bin2", 2, 2), ("multi", 4, 4)}


def test_other_bad_inputs_name_the_problem():
    frame = known_table()
    bad = frame.copy()
    bad.loc[(bad["image_id"] == "tA") & (bad["view"] == 2), "label"] = 0
    with pytest.raises(EnsembleInputError, match="image 'tA' has different labels across views"):
        build_groups(bad)
    bad = frame[frame["split"] != "test"]
    with pytest.raises(EnsembleInputError, match="has val rows but no test rows"):
        build_groups(bad)
    bad = frame.copy()
    bad["label"] = np.where(bad["image_id"] == "v0", 2, bad["label"])
    with pytest.raises(EnsembleInputError, match="label 2 outside 0…1"):
        build_groups(bad)
    bad = frame.copy()
    bad["logits"] = [np.array([np.nan], dtype=np.float32)] + list(bad["logits"].iloc[1:])
    with pytest.raises(EnsembleInputError, match="non-finite logits for image 'v0' view 0"):
        build_groups(bad)
    bad = frame[~((frame["split"] == "test") & (frame["view"] == 4))]
    with pytest.raises(EnsembleInputError, match="val has 5 views but test has 4"):
        build_groups(bad)
    bad = frame[frame["view"] == 0]
    with pytest.raises(EnsembleInputError, match="only view 0 present"):
        build_groups(bad)
    with pytest.raises(EnsembleInputError, match=r"lacks columns \['view'\]"):
        build_groups(frame.drop(columns=["view"]))
    assert build_groups(frame[frame["split"] == "train"]) == []


def test_config_validation_names_the_key():
    with pytest.raises(ConfigError, match="ensemble.num_alphas: 1 is too small"):
        EnsembleConfig(num_alphas=1)
    with pytest.raises(ConfigError, match="tie_break: 'middle' is not one of"):
        from_dict(EnsembleConfig, {"tie_break": "middle"})
    with pytest.raises(ConfigError, match="bootstrap_draws"):
        EnsembleConfig(bootstrap_draws=1)
    cfg = from_dict(EnsembleConfig, {"num_alphas": 11, "combinations": ["crop+pca_fine@2"]})
    assert cfg.alphas.tolist() == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert cfg.combinations == ("crop+pca_fine@2",)
    assert alpha_grid(21)[1] == 0.05 and alpha_grid(21)[-1] == 1.0


def test_arrow_list_logits_column_gives_the_same_groups():
    import pyarrow as pa

    frame = random_table(seed=10, n_val=5, n_test=6)
    arrow = frame.copy()
    arrow["logits"] = pd.Series(
        pd.arrays.ArrowExtensionArray(
            pa.array([list(x) for x in frame["logits"]], type=pa.list_(pa.float32()))
        )
    )
    assert isinstance(arrow["logits"].dtype, pd.ArrowDtype)
    a, b = evaluate(frame, FAST), evaluate(arrow, FAST)
    pd.testing.assert_frame_equal(a.table, b.table)
    pd.testing.assert_frame_equal(a.curves, b.curves)


def test_blas_thread_limit_is_optional_and_validated():
    frame = known_table()
    free = evaluate(frame, dataclasses.replace(FAST, blas_threads=None)).table
    pd.testing.assert_frame_equal(free, evaluate(frame, FAST).table)
    with pytest.raises(ConfigError, match="ensemble.blas_threads: 0 must be ≥ 1"):
        EnsembleConfig(blas_threads=0)
