"""``ganviews demo`` end to end on a tiny configuration: all stages, resume without recomputation, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ganviews.cli import main


def _models(root: Path) -> tuple[Path, Path]:
    from ganviews.classify import ClassifierConfig, Preprocessing, build_classifier, save_classifier
    from ganviews.generator import Generator, GeneratorConfig, save_generator

    torch.manual_seed(0)
    G = Generator(GeneratorConfig(z_dim=8, w_dim=8, img_resolution=16, mapping_layers=1, channels=(8, 8, 8)))
    C = build_classifier(ClassifierConfig(arch="smallcnn", num_outputs=10, task="label", width=4,
                                          name="tiny", preprocessing=Preprocessing()))
    return save_generator(G, root / "G.safetensors"), save_classifier(C.eval(), root / "C.safetensors")


def _config(root: Path, **changes) -> Path:
    G, C = _models(root)
    cfg = {
        "data": {"resolution": 16},
        "models": {"generator": str(G), "encoder": None, "classifier": str(C), "classifier_name": "tiny",
                   "task": "label"},
        "splits": ["val", "test"],
        "limit_per_split": 6,
        "shard_size": 4,
        "threads": 1,
        "align": {"mode": "none", "resolution": 16},
        "invert": {"steps": 2, "lambda_lpips": 0.0, "latent_term": "l2", "batch_size": 4},
        "views": {"n_views": 3, "gan": [{"method": "isotropic", "layers": "fine", "settings": [0.5]},
                                        {"method": "stylemix", "layers": "coarse"}],
                  "image_methods": ["crop"], "jitter": {"flip": False}, "persist_views": True},
        "report": {"gallery_images": 2, "ensemble": {"bootstrap_draws": 10}},
    }
    cfg.update(changes)
    path = root / "demo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _snapshot(out: Path) -> dict[str, int]:
    files = [p for p in (out / "logits").rglob("*.parquet")] + list((out / "state").glob("*.json"))
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in files}


@pytest.mark.slow
def test_demo_runs_every_stage_and_resumes_without_recomputing(tmp_path: Path, capsys):
    from storage import LatentStore, read_logits

    config, out = _config(tmp_path), tmp_path / "out"
    assert main(["demo", "--out", str(out), "--config", str(config)]) == 0
    first = capsys.readouterr().out
    assert "invert: 12 of 12 images to do" in first
    assert f"report: {out / 'report' / 'report.md'}" in first
    store = LatentStore.open(out / "store")
    assert len(store.done()) == 12 and len(store.shards()) == 3
    assert sorted(set(store.manifest()["split"])) == ["test", "val"]
    logits = read_logits(out / "logits")
    # 12 images × (isotropic_fine, stylemix_coarse: original + recon + 2 views; crop: original + 2 copies)
    assert len(logits) == 12 * (4 + 4 + 3)
    assert set(logits["method"]) == {"isotropic_fine", "stylemix_coarse", "crop"}
    assert {"views/isotropic_fine/0.5", "views/stylemix_coarse/none", "views/crop/none"} <= set(store.array_names())
    report = (out / "report" / "report.md").read_text()
    assert "| label | tiny | isotropic_fine | 0.5 |" in report
    timings = json.loads((out / "timings.json").read_text())
    assert {"data", "invert", "views+logits", "report", "total"} <= set(timings)

    w_before = store.read(np.arange(12), ["w"])["w"]
    files_before = _snapshot(out)
    assert len(files_before) == 3 * 3 + 3  # a logits file per (method, shard) + a marker per shard
    assert main(["demo", "--out", str(out), "--config", str(config)]) == 0
    second = capsys.readouterr().out
    assert "invert: 0 of 12 images to do" in second and "every shard already rendered" in second
    assert "shard 0000" not in second  # no shard inverted or rendered again
    assert _snapshot(out) == files_before  # no logits file or marker rewritten
    assert np.array_equal(LatentStore.open(out / "store").read(np.arange(12), ["w"])["w"], w_before)
    assert json.loads((out / "timings.json").read_text())["invert"] < timings["invert"]

    # --fresh starts over: every image is inverted again
    assert main(["demo", "--out", str(out), "--config", str(config), "--fresh"]) == 0
    assert "invert: 12 of 12 images to do" in capsys.readouterr().out


def test_demo_config_errors_name_the_key(tmp_path: Path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"models": {}, "align": {}, "invert": {}, "views": {}, "colour": 1}))
    assert main(["demo", "--out", str(tmp_path / "o"), "--config", str(bad)]) == 2
    assert "unknown key(s) ['colour']" in capsys.readouterr().err
    missing = tmp_path / "missing.yaml"
    missing.write_text(yaml.safe_dump({"data": {"resolution": 16}, "models": {"generator": str(tmp_path / "nope.safetensors"),
                                                                             "classifier": "x"},
                                       "align": {}, "invert": {}, "views": {}}))
    assert main(["demo", "--out", str(tmp_path / "o"), "--config", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"models.generator: {tmp_path / 'nope.safetensors'} not found" in err
    assert main(["demo", "--out", str(tmp_path / "o"), "--config", str(tmp_path / "absent.yaml")]) == 2
    assert "--config:" in capsys.readouterr().err


def test_generator_check_counts_classes(tmp_path: Path):
    from ganviews.classify import load_classifier
    from ganviews.cli.demo import generator_check, sample_grid
    from ganviews.generator import load_generator

    G_path, C_path = _models(tmp_path)
    G, C = load_generator(G_path), load_classifier(C_path)
    stats = generator_check(G, C, n=40, batch=16)
    assert stats["samples"] == 40 and sum(stats["class_counts"]) == 40 and len(stats["class_counts"]) == 10
    assert 0.1 <= stats["mean_max_confidence"] <= 1.0
    other = generator_check(G, C, n=40, batch=7)  # batch-independent (up to float rounding), seeded
    assert other["class_counts"] == stats["class_counts"]
    assert other["mean_max_confidence"] == pytest.approx(stats["mean_max_confidence"], rel=1e-3)
    grid = sample_grid(G, tmp_path / "grid.png", rows=2, cols=3)
    from PIL import Image

    assert Image.open(grid).size == (3 * 18 + 2, 2 * 18 + 2)
