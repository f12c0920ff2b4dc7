"""The corrupt stage end to end on real digits with the demo's generator and classifier:
condition stores are corrupted, inverted from their stored images, rendered into the logits
table under their label, and compared in the robustness table (paper Fig. 7)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ganviews.classifiers.checkpoints import load_classifier
from ganviews.cli import main
from ganviews.core.errors import ConfigError
from ganviews.ensemble.evaluate import EnsembleConfig
from storage.arrays import ALIGNED, CORRUPTION_DONE, CORRUPTION_SUCCESS, MASK, RECON
from storage.latents import LatentStore
from storage.logits import read_logits
from storage.manifest import read_manifest, write_manifest
from tasks.corrupt import (
    condition_jobs,
    plan_corrupt,
    prepare_condition_store,
    robustness_job,
    run_corrupt,
    run_robustness,
)
from tasks.invert import plan_invert, prepare_store, run_invert
from tasks.jobs import invert_job, render_job
from tasks.pipeline_config import load_pipeline_config
from tasks.render import run_render

ASSETS = Path(__file__).resolve().parents[2] / "ganviews" / "assets" / "demo"
PER_SPLIT = 6


def _digits(root: Path) -> Path:
    from sklearn.datasets import load_digits

    from storage.adapters.digits import render_digit

    d = load_digits()
    rows = []
    for k, i in enumerate(range(0, 24 * PER_SPLIT, 12)[: 2 * PER_SPLIT]):
        path = root / f"d{i}.png"
        Image.fromarray(render_digit(d.images[i])).save(path)
        rows.append({"image_id": f"d{i}", "path": path.name, "split": ("val", "test")[k % 2],
                     "label": int(d.target[i])})  # fmt: skip
    frame = pd.DataFrame(rows)
    frame.attrs["label_columns"] = ["label"]
    write_manifest(frame, root / "manifest.parquet")
    return root / "manifest.parquet"


def _config(root: Path, **corruptions):
    return load_pipeline_config(
        {
            "data": {"manifest": str(_digits(root)), "splits": ["val", "test"]},
            "paths": {"store": "store", "logits": "logits", "report": "report"},
            "models": {
                "generator": str(ASSETS / "generator.safetensors"),
                "classifiers": {"cnn": {"path": str(ASSETS / "classifier.safetensors"), "task": "label"}},
            },
            "align": {"mode": "none", "resolution": 32},
            "invert": {"steps": 3, "lambda_lpips": 0.0, "latent_term": "l2", "batch_size": 16},
            "views": {
                "n_views": 2,
                "gan": [{"method": "stylemix", "layers": "fine"}, {"method": "stylemix", "layers": "coarse"}],
                "image_methods": ["crop", "color"],
                "jitter": {"flip": False},
                "batch_size": 64,
            },
            "orchestration": {"shard_size": 8},
            "corruptions": {
                "conditions": [{"kind": "pgd", "steps": 5}, {"kind": "noise", "sigma": 0.1}],
                "max_images": 4,
                **corruptions,
            },
        },
        base_dir=root,
    )  # fmt: skip


def _accuracy(images: np.ndarray, labels: np.ndarray) -> float:
    C = load_classifier(ASSETS / "classifier.safetensors")
    with torch.no_grad():
        return float(
            (C.predict(torch.from_numpy(images).float() / 127.5 - 1).numpy() == labels).mean()
        )


@pytest.mark.slow
def test_conditions_flow_through_inversion_views_logits_and_report(tmp_path):
    torch.set_num_threads(1)
    cfg = _config(tmp_path)
    clean_job = invert_job(cfg)
    from ganviews.stylegan.generator import load_generator

    G = load_generator(cfg.models.generator)
    clean = prepare_store(clean_job, read_manifest(cfg.data.manifest), G, None, shard_size=8)
    run_invert(clean_job, device="cpu")
    run_render(render_job(cfg), device="cpu")
    clean_rows = read_logits(cfg.paths.logits)
    assert set(clean_rows["condition"]) == {"clean"}

    jobs = condition_jobs(cfg)
    assert [j.corrupt.condition.label for j in jobs] == ["pgd-8_255", "noise-0.1"]
    labels = clean.manifest()["label"].to_numpy()
    for j in jobs:
        store = prepare_condition_store(j.corrupt)
        assert plan_corrupt(j.corrupt) == [(0, 8)]  # items 8-11 are past max_images
        run_corrupt(j.corrupt, plan_corrupt(j.corrupt), device="cpu")
        assert plan_corrupt(j.corrupt) == []
        # the first 4 of each split, in store order: val d0 d24 d48 d72, test d12 d36 d60 d84
        chosen = np.flatnonzero(store.read_array(CORRUPTION_DONE, np.arange(12)))
        assert chosen.tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
        # the condition store's inversion fits the stored corrupted images, only those
        stored = store.read_array(ALIGNED, chosen)
        run_invert(j.invert, plan_invert(j.invert), device="cpu")
        store = LatentStore.open(j.corrupt.store)
        assert store.done().tolist() == chosen.tolist() and plan_invert(j.invert) == []
        np.testing.assert_array_equal(store.read_array(ALIGNED, chosen), stored)
        np.testing.assert_array_equal(
            store.read_array(MASK, chosen), clean.read_array(MASK, chosen)
        )
        assert store.read_array(RECON, chosen).std() > 10  # a real reconstruction
        run_render(j.render, device="cpu")
    pgd, noise = (LatentStore.open(j.corrupt.store) for j in jobs)
    diff = pgd.read_array(ALIGNED, np.arange(8)).astype(int) - clean.read_array(
        ALIGNED, np.arange(8)
    ).astype(int)
    assert 0 < np.abs(diff).max() <= 8  # 8-bit, within ε = 8/255
    assert pgd.read_array(CORRUPTION_SUCCESS, np.arange(8)).mean() >= 0.75
    assert _accuracy(pgd.read_array(ALIGNED, np.arange(8)), labels[:8]) <= 0.25
    assert _accuracy(clean.read_array(ALIGNED, np.arange(8)), labels[:8]) >= 0.75

    # logits: one set of rows per condition, the clean rows untouched
    rows = read_logits(cfg.paths.logits)
    per = rows.groupby("condition")["image_id"].nunique().to_dict()
    assert per == {"clean": 12, "pgd-8_255": 8, "noise-0.1": 8}
    assert set(rows[rows["condition"] != "clean"]["method"]) == {"stylemix_fine", "crop"}
    again = read_logits(cfg.paths.logits, {"condition": "clean"})
    pd.testing.assert_frame_equal(
        again.sort_values(list(again.columns[:7])).reset_index(drop=True),
        clean_rows.sort_values(list(clean_rows.columns[:7])).reset_index(drop=True),
    )

    # noise images are reproducible from the seed: another store, another batch size
    other = dataclasses.replace(jobs[1].corrupt, store=tmp_path / "again", batch_size=3)
    prepare_condition_store(other)
    run_corrupt(other, plan_corrupt(other), device="cpu")
    np.testing.assert_array_equal(
        LatentStore.open(other.store).read_array(ALIGNED, np.arange(8)),
        noise.read_array(ALIGNED, np.arange(8)),
    )

    # the report's table: clean on the same images, each condition on its own rows
    blocks = run_robustness(
        robustness_job(cfg), cfg.paths.logits, cfg.paths.report, EnsembleConfig(bootstrap_draws=2)
    )
    table = pd.read_csv(cfg.paths.report / "robustness.csv")
    assert table["condition"].tolist() == ["clean", "pgd-8_255", "noise-0.1"]
    assert (table["n_test"] == 4).all()
    by = table.set_index("condition")
    assert by.loc["pgd-8_255", "image"] < by.loc["clean", "image"]
    assert by.loc["pgd-8_255", "attack_success"] >= 0.75 and np.isnan(
        by.loc["clean", "attack_success"]
    )
    assert np.isnan(by.loc["noise-0.1", "attack_success"])  # a corruption, not an attack
    assert (cfg.paths.report / "robustness.png").stat().st_size > 5000
    assert blocks[0].text.startswith("Robustness")

    # one-off use: ganviews corrupt
    out = tmp_path / "cli-jpeg"
    args = ["corrupt", str(clean.path), str(out), "--condition", "{kind: jpeg, quality: 30}"]
    assert main([*args, "--max-images", "2", "--device", "cpu"]) == 0
    cli = LatentStore.open(out)
    assert cli.attrs["condition"]["label"] == "jpeg-30"
    assert np.flatnonzero(cli.read_array(CORRUPTION_DONE, np.arange(12))).tolist() == [0, 1, 2, 3]
    assert main(["corrupt", str(clean.path), str(tmp_path / "x"), "--condition", "pgd"]) == 2

    # ganviews report with --condition adds the robustness section
    rep = tmp_path / "rep"
    cond = f"pgd-8_255={jobs[0].corrupt.store}"
    assert (
        main(["report", "--logits", str(cfg.paths.logits), "--out", str(rep), "--condition", cond])
        == 0
    )
    assert pd.read_csv(rep / "robustness.csv")["condition"].tolist() == ["clean", "pgd-8_255"]
    assert "Robustness to corrupted inputs" in (rep / "report.md").read_text()


def test_config_checks_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="corruptions.gan_method: 'stylemix_middle'"):
        _config(tmp_path, gan_method="stylemix_middle")
    with pytest.raises(ConfigError, match="corruptions.classifier: 'other'"):
        _config(tmp_path, classifier="other")
    with pytest.raises(ConfigError, match=r"corruptions\[1\]: label 'jpeg-20'"):
        _config(tmp_path, conditions=[{"kind": "jpeg", "quality": 20}] * 2)
    from tasks.pipeline_config import check_pipeline_config

    cfg = _config(tmp_path)
    photo = dataclasses.replace(cfg, views=dataclasses.replace(cfg.views, original_source="photo"))
    with pytest.raises(
        ConfigError, match=r"corruptions: the conditions corrupt the aligned frames"
    ):
        check_pipeline_config(photo)  # a condition has no photo to classify
