"""``ganviews demo`` end to end on a tiny configuration: all stages, resume without recomputation, errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ganviews.cli import main


def _models(root: Path) -> tuple[Path, Path]:
    from ganviews.classifiers.checkpoints import save_classifier
    from ganviews.classifiers.model import ClassifierConfig, Preprocessing, build_classifier
    from ganviews.stylegan.generator import Generator, GeneratorConfig, save_generator

    torch.manual_seed(0)
    G = Generator(
        GeneratorConfig(
            z_dim=8, w_dim=8, img_resolution=32, mapping_layers=1, channels=(8, 8, 8, 8)
        )
    )
    C = build_classifier(
        ClassifierConfig(
            arch="smallcnn",
            num_outputs=10,
            task="label",
            width=4,
            name="tiny",
            preprocessing=Preprocessing(),
        )
    )
    return save_generator(G, root / "G.safetensors"), save_classifier(
        C.eval(), root / "C.safetensors"
    )


def _config(root: Path) -> Path:
    """configs/demo.yaml with tiny models, few steps and views (a valid pipeline config)."""
    from ganviews.cli.demo import DEFAULT_CONFIG

    G, C = _models(root)
    cfg = yaml.safe_load(DEFAULT_CONFIG.read_text())
    cfg["models"]["generator"] = str(G)
    cfg["models"]["classifiers"] = {"tiny": {"path": str(C), "task": "label"}}
    cfg["invert"].update(steps=2, batch_size=4)
    cfg["pca"]["samples"] = 500
    cfg["views"].update(
        n_views=3,
        batch_size=64,
        gan=[
            {"method": "isotropic", "layers": "fine", "settings": [0.5]},
            {"method": "pca", "layers": "coarse", "settings": [1.0]},
            {"method": "stylemix", "layers": "coarse"},
        ],
        image_methods=["crop"],
    )
    cfg["corruptions"].update(
        conditions=[{"kind": "pgd", "steps": 2}, {"kind": "jpeg", "quality": 20}],
        classifier="tiny",
        max_images=2,
        gan_method="stylemix_coarse",
    )
    # one α-curve figure and no grid (tests/report draws every kind): the plots are the
    # report stage's main cost and the demo test asserts the stage, not each figure
    cfg["report"].update(
        gallery_images=2,
        gallery_arrays=None,
        ensemble={"bootstrap_draws": 10},
        max_alpha_plots=1,
        grid_max_tasks=0,
    )
    cfg["orchestration"].update(shard_size=4, cpu_threads=1)
    path = root / "demo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _snapshot(out: Path) -> dict[str, int]:
    files = list((out / "logits").rglob("*.parquet")) + [
        out / "store" / "pca_stats.npz",
        out / "report" / "report.md",
    ]
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in files}


@pytest.mark.slow
def test_demo_runs_the_pipeline_flow_and_resumes_without_recomputing(
    tmp_path: Path, capsys, harness
):
    from storage import LatentStore, read_logits

    config, out = _config(tmp_path), tmp_path / "out"
    environ_before = dict(os.environ)
    assert main(["demo", "--out", str(out), "--config", str(config), "--limit", "6"]) == 0
    first = capsys.readouterr().out
    # The demo's quiet Prefect settings last for the call only (they once leaked into later tests).
    assert "PREFECT_LOGGING_LEVEL" not in set(os.environ) - set(environ_before)
    assert "Prefect flow 'ganviews-pipeline'" in first
    assert "n_images=12, shards=3, todo=12, shards_run=3, todo_after=0" in first
    assert f"report: {out / 'report' / 'report.md'}" in first
    store = LatentStore.open(out / "store")
    assert len(store.done()) == 12
    assert sorted(set(store.manifest()["split"])) == ["test", "val"]
    logits = read_logits(out / "logits", {"condition": "clean"})
    # 12 images × (3 GAN groups: original + recon + 2 views; crop: original + 2 copies)
    assert len(logits) == 12 * (3 * 4 + 3)
    assert set(logits["method"]) == {"isotropic_fine", "pca_coarse", "stylemix_coarse", "crop"}
    assert "views/isotropic_fine/0.5" in store.array_names()
    assert "| label | tiny | isotropic_fine | 0.5 |" in (out / "report" / "report.md").read_text()
    # the corrupt stage: 2 val + 2 test images per condition, inverted, rendered, in the report
    assert "pgd-8_255 (shards " in first and "jpeg-20 (shards " in first, first
    per = read_logits(out / "logits").groupby("condition")["image_id"].nunique().to_dict()
    assert per == {"clean": 12, "jpeg-20": 4, "pgd-8_255": 4}
    assert "Robustness to corrupted inputs" in (out / "report" / "report.md").read_text()
    assert (out / "report" / "robustness.png").is_file()
    timings = json.loads((out / "timings.json").read_text())
    assert {"data", "invert", "pca", "render", "evaluate", "total"} <= set(timings)
    resolved = yaml.safe_load((out / "pipeline.yaml").read_text())
    assert resolved["paths"]["store"] == str(out / "store")

    w_before = store.read(np.arange(12), ["w"])["w"]
    files_before = _snapshot(out)
    assert main(["demo", "--out", str(out), "--config", str(config), "--limit", "6"]) == 0
    second = capsys.readouterr().out
    assert "todo=0, shards_run=0" in second
    assert "render" in second and "shards_run=0, rows=0" in second
    assert "skipped (the report is current for these logits)" in second
    assert "pgd-8_255 (shards 0/0/0" in second
    assert _snapshot(out) == files_before  # no logits file, PCA file or report rewritten
    assert np.array_equal(LatentStore.open(out / "store").read(np.arange(12), ["w"])["w"], w_before)

    # --fresh (with --data-only, to stay quick) removes the store and outputs
    assert main(["demo", "--out", str(out), "--config", str(config), "--fresh", "--data-only"]) == 0
    assert not (out / "store").exists() and not (out / "logits").exists()
    assert not (out / "store-conditions").exists()
    assert (out / "data" / "manifest.parquet").is_file()


def test_demo_errors_name_the_problem(tmp_path: Path, capsys):
    from ganviews.cli.demo import DEFAULT_CONFIG

    cfg = yaml.safe_load(DEFAULT_CONFIG.read_text())
    cfg["views"]["colour"] = 1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    assert main(["demo", "--out", str(tmp_path / "o"), "--config", str(bad), "--limit", "2"]) == 2
    assert "views.colour" in capsys.readouterr().err
    cfg = yaml.safe_load(DEFAULT_CONFIG.read_text())
    cfg["models"]["generator"] = str(tmp_path / "nope.safetensors")
    missing = tmp_path / "missing.yaml"
    missing.write_text(yaml.safe_dump(cfg))
    assert (
        main(["demo", "--out", str(tmp_path / "o"), "--config", str(missing), "--limit", "2"]) == 2
    )
    assert f"models.generator: {tmp_path / 'nope.safetensors'} not found" in capsys.readouterr().err
    assert (
        main(["demo", "--out", str(tmp_path / "o"), "--config", str(tmp_path / "absent.yaml")]) == 2
    )
    assert "--config:" in capsys.readouterr().err


def test_generator_check_counts_classes(tmp_path: Path):
    from ganviews.classifiers.checkpoints import load_classifier
    from ganviews.cli.demo import generator_check, sample_grid
    from ganviews.stylegan.generator import load_generator

    G_path, C_path = _models(tmp_path)
    G, C = load_generator(G_path), load_classifier(C_path)
    stats = generator_check(G, C, n=40, batch=16)
    assert (
        stats["samples"] == 40
        and sum(stats["class_counts"]) == 40
        and len(stats["class_counts"]) == 10
    )
    assert 0.1 <= stats["mean_max_confidence"] <= 1.0
    other = generator_check(G, C, n=40, batch=7)  # batch-independent (up to float rounding), seeded
    assert other["class_counts"] == stats["class_counts"]
    assert other["mean_max_confidence"] == pytest.approx(stats["mean_max_confidence"], rel=1e-3)
    grid = sample_grid(G, tmp_path / "grid.png", rows=2, cols=3)
    from PIL import Image

    side = G.resolution + 2  # padding 2 between and around tiles
    assert Image.open(grid).size == (3 * side + 2, 2 * side + 2)
