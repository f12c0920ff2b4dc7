"""The authors' precomputed evaluations → logits table → ``ganviews report`` = their notebook.

Files follow chail/gan-ensembling ``scripts/eval_ensemble/evaluate_{gan,image}_ensemble.py``
(npz of probabilities: ``original`` [N, 1(, K)], ``reconstructed``, per-setting keys
[N, 32(, K)], ``label`` [N, 1]); the reference is an independent implementation of
``notebooks/evaluate_ensemble.ipynb`` (``get_accuracy_from_npz``: weights linspace(0, 1, 21),
ensemble = (1 − w)·original + w·mean(GAN views), binary P > 0.5, multi-class argmax;
``get_accuracy_from_image_ensembles``: plain mean of the original and its augmentations).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ganviews.cli import main as cli_main
from storage import read_logits
from storage.errors import StoreError
from storage.official import (
    EvaluationFile,
    evaluation_files,
    import_official_evaluations,
    method_and_setting,
    to_logits,
)

N = {"val": 120, "test": 130}
WEIGHTS = np.linspace(0, 1, 21)


def _probs(rng, n: int, views: int, k: int | None, base: np.ndarray) -> np.ndarray:
    """Views scattered around a per-image base probability (so ensembles change predictions)."""
    if k is None:  # binary: P(attribute) [n, views]
        noise = rng.normal(0, 0.25, (n, views))
        return (1 / (1 + np.exp(-(np.log(base / (1 - base))[:, None] + noise)))).astype(np.float32)
    logits = np.log(base)[:, None, :] + rng.normal(0, 0.8, (n, views, k))
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def _write_domain(root: Path, domain: str, classifier: str, k: int | None, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for split, n in N.items():
        folder = root / domain / "output" / f"{classifier}_{split}"
        folder.mkdir(parents=True)
        label = rng.integers(0, k or 2, n)
        if k is None:
            base = np.clip(np.where(label == 1, 0.62, 0.38) + rng.normal(0, 0.2, n), 0.02, 0.98)
        else:
            base = rng.dirichlet(np.ones(k), n) * 0.6
            base[np.arange(n), label] += 0.4
        heads = {
            "original": _probs(rng, n, 1, k, base),
            "reconstructed": _probs(rng, n, 1, k, base),
            "label": label[:, None],
            "random_seed": np.int64(2),
        }
        if k is None:
            heads["original"][0, 0] = 1.0  # saturated outputs stay finite
            heads["original"][1, 0] = 0.0
        np.savez(
            folder / "gan_ensemble_stylemix_fine.npz",
            **heads,
            stylemix_fine=_probs(rng, n, 32, k, base),
        )
        np.savez(
            folder / "gan_ensemble_isotropic_coarse_tensortransform.npz",
            **heads,
            **{f"isotropic_coarse_{s:0.2f}": _probs(rng, n, 32, k, base) for s in (0.1, 0.2)},
        )
        np.savez(
            folder / "image_ensemble_imcrop.npz",
            original=heads["original"],
            label=heads["label"],
            random_seed=np.int64(2),
            imcrop=_probs(rng, n, 31, k, base),
        )


# ------------------------------------------------------------------ the notebook, written anew


def _predict(p: np.ndarray) -> np.ndarray:
    return (p[:, 0] > 0.5).astype(int) if p.ndim == 2 else np.argmax(p[:, 0], axis=-1)


def _notebook(path: Path, key: str, ens_size: int | None = None) -> dict:
    d = np.load(path)
    label = d["label"].reshape(-1)
    acc = lambda p: 100.0 * np.mean(_predict(p) == label)  # noqa: E731
    gan = np.concatenate([d["reconstructed"], d[key]], axis=1)[:, : ens_size or None]
    mean = gan.mean(axis=1, keepdims=True)
    curve = [acc((1 - w) * d["original"] + w * mean) for w in WEIGHTS]
    return {
        "original": acc(d["original"]),
        "reconstructed": acc(d["reconstructed"]),
        "curve": np.array(curve),
    }


def _notebook_image(path: Path, key: str) -> float:
    d = np.load(path)
    both = np.concatenate([d["original"], d[key]], axis=1).mean(axis=1, keepdims=True)
    return 100.0 * np.mean(_predict(both) == d["label"].reshape(-1))


@pytest.fixture(scope="module")
def evaluations(tmp_path_factory):
    root = tmp_path_factory.mktemp("precomputed_evaluations")
    _write_domain(root, "celebahq", "Smiling", None, seed=1)
    _write_domain(root, "car", "imageclassifier", 3, seed=2)
    return root


def _report(root: Path, out: Path, *extra: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Import, then ``ganviews report`` (tables only: the plots would take most of the time)."""
    logits, report = out / "logits", out / "report"
    assert (
        cli_main(["import-official", "evaluations", str(root), "--logits", str(logits), *extra])
        == 0
    )
    (out / "report.yaml").write_text("plots: false\nhtml: false\nensemble: {size_curve: none}\n")
    argv = [
        "report",
        "--logits",
        str(logits),
        "--out",
        str(report),
        "--config",
        str(out / "report.yaml"),
    ]
    assert cli_main(argv) == 0
    return _csv(report / "results.csv"), _csv(report / "alpha_curves.csv")


def _csv(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path, dtype={"setting": str})
    frame["setting"] = frame["setting"].fillna("")
    return frame


def _select(frame: pd.DataFrame, values: dict) -> pd.DataFrame:
    return frame[np.logical_and.reduce([frame[c] == v for c, v in values.items()])]


GROUPS = [  # (domain, the authors' classifier folder, task, classifier, file, npz key, method, setting)
    ("celebahq", "Smiling", "Smiling", "celebahq", "gan_ensemble_stylemix_fine", "stylemix_fine",
     "stylemix_fine", ""),
    ("celebahq", "Smiling", "Smiling", "celebahq", "gan_ensemble_isotropic_coarse_tensortransform",
     "isotropic_coarse_0.20", "combined_isotropic_coarse", "0.2"),
    ("car", "imageclassifier", "car", "imageclassifier", "gan_ensemble_stylemix_fine", "stylemix_fine",
     "stylemix_fine", ""),
    ("car", "imageclassifier", "car", "imageclassifier", "gan_ensemble_isotropic_coarse_tensortransform",
     "isotropic_coarse_0.10", "combined_isotropic_coarse", "0.1"),
]  # fmt: skip


@pytest.mark.slow  # 4–9 s each: import + `ganviews report` (tables only) on 2 × 250 images
@pytest.mark.parametrize("gan_views", [None, 31])
def test_report_on_imported_evaluations_equals_the_notebook(evaluations, tmp_path, gan_views):
    extra = [] if gan_views is None else ["--gan-views", str(gan_views)]
    table, curves = _report(evaluations, tmp_path, *extra)
    assert len(table[table["kind"] != "combined"]) == 2 * 3 + 2  # 3 GAN groups + crop, per domain
    for domain, folder, task, clf, file, key, method, setting in GROUPS:
        key_cols = {"task": task, "classifier": clf, "method": method, "setting": setting}
        row = _select(table, key_cols).iloc[0]
        ref = {s: _notebook(evaluations / domain / "output" / f"{folder}_{s}" / f"{file}.npz", key, gan_views)
               for s in N}  # fmt: skip
        for split in N:
            got = _select(curves, {**key_cols, "split": split}).sort_values("alpha")
            np.testing.assert_allclose(got["alpha"], WEIGHTS, atol=1e-12)
            np.testing.assert_allclose(
                100 * got["acc"].to_numpy(), ref[split]["curve"], rtol=0, atol=1e-6
            )
        assert abs(100 * row.test_acc_single - ref["test"]["original"]) <= 1e-6
        assert abs(100 * row.test_acc_recon - ref["test"]["reconstructed"]) <= 1e-6
        assert abs(100 * row.val_acc_single - ref["val"]["original"]) <= 1e-6
        best = np.flatnonzero(ref["val"]["curve"] == ref["val"]["curve"].max())
        assert np.isclose(WEIGHTS[best], row.alpha_star).any()  # one of the notebook's best weights
        i = int(np.argmin(np.abs(WEIGHTS - row.alpha_star)))
        assert abs(100 * row.test_acc - ref["test"]["curve"][i]) <= 1e-6
        assert row.n_views == (gan_views or 33)
    for domain, task, folder in (
        ("celebahq", "Smiling", "Smiling"),
        ("car", "car", "imageclassifier"),
    ):
        row = table[(table.task == task) & (table.method == "crop")].iloc[0]
        path = evaluations / domain / "output" / f"{folder}_test" / "image_ensemble_imcrop.npz"
        assert abs(100 * row.test_acc_uniform - _notebook_image(path, "imcrop")) <= 1e-6


def test_logits_round_trip_to_the_stored_probabilities(evaluations, tmp_path):
    out = tmp_path / "logits"
    assert (
        cli_main(
            [
                "import-official",
                "evaluations",
                str(evaluations),
                "--logits",
                str(out),
                "--split",
                "val",
            ]
        )
        == 0
    )
    frame = read_logits(out, {"task": "Smiling", "method": "stylemix_fine"})
    assert set(frame["split"]) == {"val"} and len(frame) == N["val"] * 34
    frame = frame.sort_values(["image_id", "view"])
    logit = np.stack(frame["logits"].to_numpy())[:, 0].reshape(N["val"], 34)
    d = np.load(
        evaluations / "celebahq" / "output" / "Smiling_val" / "gan_ensemble_stylemix_fine.npz"
    )
    p = np.concatenate([d["original"], d["reconstructed"], d["stylemix_fine"]], axis=1)
    np.testing.assert_allclose(
        1 / (1 + np.exp(-logit.astype(np.float64))), p.astype(np.float64), rtol=2e-6, atol=1e-300
    )
    assert np.array_equal(logit > 0, p > 0.5)  # every single-view decision is kept exactly
    assert np.isfinite(logit).all() and logit[0, 0] > 700 and logit[1, 0] < -700  # P = 1 and P = 0
    assert (frame.groupby("image_id")["label"].first().to_numpy() == d["label"][:, 0]).all()
    car = read_logits(out, {"task": "car", "method": "crop"}).sort_values(["image_id", "view"])
    assert len(car) == N["val"] * 32 and car["setting"].eq("").all()
    q = np.exp(np.stack(car["logits"].to_numpy()).astype(np.float64)).reshape(N["val"], 32, 3)
    e = np.load(
        evaluations / "car" / "output" / "imageclassifier_val" / "image_ensemble_imcrop.npz"
    )
    np.testing.assert_allclose(q, np.concatenate([e["original"], e["imcrop"]], axis=1), rtol=2e-6)


def test_names_and_conversions():
    def entry(domain: str, folder: str) -> EvaluationFile:
        return EvaluationFile(Path("x.npz"), domain, folder, "val", "gan", False)

    names = lambda e: (e.task, e.classifier_name, e.condition)  # noqa: E731
    assert names(entry("celebahq", "Smiling")) == ("Smiling", "celebahq", "clean")
    assert names(entry("celebahq", "fgsm_Smiling")) == ("Smiling", "celebahq", "fgsm")
    assert names(entry("celebahq", "corruption_gaussian_blur_Young")) == (
        "Young", "celebahq", "corruption_gaussian_blur")  # fmt: skip
    assert names(entry("celebahq", "Smiling__latent")) == ("Smiling", "celebahq__latent", "clean")
    assert names(entry("car", "latentclassifier_stylemix_fine")) == (
        "car", "latentclassifier_stylemix_fine", "clean")  # fmt: skip
    assert method_and_setting("isotropic_fine_0.30", kind="gan", combined=False) == (
        "isotropic_fine",
        "0.3",
    )
    assert method_and_setting("pca_coarse_2.00", kind="gan", combined=True) == (
        "combined_pca_coarse",
        "2.0",
    )
    assert method_and_setting("stylemix_layer6", kind="gan", combined=False) == (
        "stylemix_layer6",
        "",
    )
    assert method_and_setting("imcolor", kind="image", combined=False) == ("color", "")
    np.testing.assert_allclose(to_logits(np.array([[0.5, 0.75]])), [[[0.0], [np.log(3)]]])
    np.testing.assert_allclose(to_logits(np.array([[[0.25, 0.75]]])), np.log([[[0.25, 0.75]]]))
    with pytest.raises(StoreError, match=r"expected \[N, V\] or \[N, V, K\]"):
        to_logits(np.zeros(3))


def test_errors_name_the_file(tmp_path, capsys):
    with pytest.raises(StoreError, match="no <domain>/output/<classifier>_<split>"):
        evaluation_files(tmp_path)
    bad = tmp_path / "cat" / "output" / "imageclassifier_val"
    bad.mkdir(parents=True)
    probs = np.full((4, 1, 12), 1 / 12, np.float32)
    np.savez(bad / "gan_ensemble_pca_fine.npz", original=probs, label=np.zeros((4, 1), int))
    with pytest.raises(StoreError, match=r"pca_fine.npz: lacks key\(s\) \['reconstructed'\]"):
        import_official_evaluations(tmp_path, tmp_path / "out")
    np.savez(bad / "gan_ensemble_pca_fine.npz", original=probs * 24, reconstructed=probs,
             label=np.zeros((4, 1), int), **{"pca_fine_1.00": np.repeat(probs, 3, axis=1)})  # fmt: skip
    argv = ["import-official", "evaluations", str(tmp_path), "--logits", str(tmp_path / "out")]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "pca_fine.npz: key 'original' holds values outside [0, 1]" in err
    assert cli_main([*argv, "--split", "val,dev"]) == 2
    assert "--split: ['dev'] not in ['train', 'val', 'test']" in capsys.readouterr().err


def _notebook_resampled(folder: Path, file: str, key: str, *, add_aug: bool = False) -> float:
    """The notebook's ``resample_wrapper`` (test mean over seeds 0…19; ens_size 31, or 16 + 16
    crops with ``add_aug``), α by pandas' ``argsort().iloc[-1]`` on val as theirs."""
    ens_size = 16 if add_aug else 31

    def sample(raw: np.ndarray, seed: int) -> np.ndarray:
        return raw[:, np.random.RandomState(seed).choice(raw.shape[1], ens_size, replace=True)]

    def table(split: str, seed: int, weights) -> list[float]:
        d = np.load(folder.with_name(folder.name + f"_{split}") / f"{file}.npz")
        label = d["label"].reshape(-1)
        if add_aug:
            aug = np.load(folder.with_name(folder.name + f"_{split}") / "image_ensemble_imcrop.npz")
            original = sample(np.concatenate([aug["original"], aug["imcrop"]], axis=1), seed)
            original = original.mean(axis=1, keepdims=True)
        else:
            original = d["original"]
        gan = sample(np.concatenate([d["reconstructed"], d[key]], axis=1), seed)
        mean = gan.mean(axis=1, keepdims=True)
        return [100.0 * np.mean(_predict((1 - w) * original + w * mean) == label) for w in weights]

    tests = []
    for seed in range(20):
        val = pd.Series(table("val", seed, WEIGHTS))
        best = WEIGHTS[val.argsort().iloc[-1]]
        tests.append(table("test", seed, [best])[0])
    return float(np.mean(tests))


@pytest.mark.slow  # ~10 s: the resampled protocol evaluates 20 × 21 ensembles per group
def test_protocol_paper_on_imported_evaluations_equals_the_notebook_resampling(
    evaluations, tmp_path
):
    """The paper's figure numbers: `ensemble.protocol: paper` on the authors' own files."""
    logits, report = tmp_path / "logits", tmp_path / "report"
    assert (
        cli_main(["import-official", "evaluations", str(evaluations), "--logits", str(logits)]) == 0
    )
    cfg = tmp_path / "report.yaml"
    cfg.write_text(
        "plots: false\nhtml: false\nensemble: {size_curve: none, protocol: paper, "
        "combinations: ['crop+stylemix_fine']}\n"
    )
    argv = ["report", "--logits", str(logits), "--out", str(report), "--config", str(cfg)]
    assert cli_main(argv) == 0
    paper = _csv(report / "paper_protocol.csv")
    car = evaluations / "car" / "output" / "imageclassifier"
    for task, method, folder, add_aug in (
        ("Smiling", "stylemix_fine", evaluations / "celebahq" / "output" / "Smiling", False),
        ("car", "stylemix_fine", car, False),
        ("car", "crop+stylemix_fine", car, True),
    ):
        row = _select(paper, {"task": task, "method": method, "setting": ""}).iloc[0]
        ref = _notebook_resampled(
            folder, "gan_ensemble_stylemix_fine", "stylemix_fine", add_aug=add_aug
        )
        assert abs(row.test_acc - ref) <= 1e-6, (task, method, row.test_acc, ref)
