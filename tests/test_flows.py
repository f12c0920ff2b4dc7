"""The pipeline flows in embedded mode: a few dozen generated images, end to end, under Prefect.

Real modules throughout (alignment, inversion, views, classifiers, store, logits, report)
with the 32 px fixture generator, a small random classifier, tiny step counts; one Prefect
test harness for the module (its SQLite database takes a while to create the first time).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from ganviews.classify import build_classifier, save_classifier
from ganviews.generator import load_generator
from storage.latents import LatentStore
from storage.logits import read_logits

N_IMAGES, SHARD = 24, 8


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=300):
        yield


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # two OpenMP threads on a shared 2-core runner spin
    yield
    torch.set_num_threads(old)


def make_dataset(root, gen_path, n=N_IMAGES) -> None:
    """n PNGs of the fixture generator, a manifest with val/test splits and a binary label."""
    G = load_generator(gen_path)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        imgs = G.synthesis(G.mapping(torch.randn(n, G.z_dim, generator=gen))).clamp(-1, 1)
    pixels = ((imgs + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()  # [n, 32, 32, 3]
    (root / "images").mkdir(parents=True)
    for i in range(n):
        Image.fromarray(pixels[i]).save(root / "images" / f"img{i:03d}.png")
    frame = pd.DataFrame({
        "image_id": [f"im{i:03d}" for i in range(n)],
        "path": [f"images/img{i:03d}.png" for i in range(n)],
        "split": ["val" if i % 2 else "test" for i in range(n)],
        "label": [int(pixels[i].mean() > pixels.mean()) for i in range(n)],
    })  # fmt: skip
    from storage.manifest import write_manifest

    frame.attrs["label_columns"] = ["label"]
    write_manifest(frame, root / "manifest.parquet")


def write_config(root, gen_path, **orchestration) -> dict:
    torch.manual_seed(0)
    C = build_classifier({"arch": "smallcnn", "num_outputs": 1, "task": "label", "width": 4})
    save_classifier(C.eval(), root / "models" / "clf.safetensors")
    cfg = {
        "data": {"manifest": "manifest.parquet"},
        "paths": {"store": "out/store", "logits": "out/logits", "report": "out/report"},
        "models": {"generator": str(gen_path), "classifiers": {"clf": {"path": "models/clf.safetensors", "task": "label"}}},
        "align": {"mode": "none", "resolution": 32},
        "invert": {"steps": 2, "lambda_lpips": 0.0, "latent_term": "l2", "latent_weight": 0.01, "batch_size": 4},
        "pca": {"samples": 500},
        "views": {"n_views": 3, "gan": [{"method": "isotropic", "layers": "fine", "settings": [0.3]},
                                        {"method": "pca", "layers": "coarse", "settings": [1.0]}],
                  "image_methods": ["crop"], "batch_size": 16},
        "report": {"plots": False, "html": False, "ensemble": {"bootstrap_draws": 10}},
        "orchestration": {"shard_size": SHARD, "devices": ["cpu"], "retries": 0, **orchestration},
    }  # fmt: skip
    (root / "pipeline.yaml").write_text(yaml.safe_dump(cfg))
    return cfg


@pytest.fixture(scope="module")
def job(tmp_path_factory, stylegan2_fixtures):
    root = tmp_path_factory.mktemp("job")
    gen_path = stylegan2_fixtures / "nvidia-ada-res32.pkl"
    make_dataset(root, gen_path)
    write_config(root, gen_path)
    return root


@pytest.mark.slow
@pytest.mark.integration
def test_pipeline_embedded_end_to_end_and_rerun(job, harness) -> None:
    from flows.pipeline import pipeline

    out = pipeline(str(job / "pipeline.yaml"))
    assert out["invert"]["n_images"] == N_IMAGES and out["invert"]["todo_after"] == 0
    assert out["invert"]["shards_run"] == N_IMAGES // SHARD
    assert out["pca"]["components"] > 0
    assert out["render"]["shards_run"] == N_IMAGES // SHARD and out["render"]["rows"] > 0
    store = LatentStore.open(job / "out" / "store")
    assert len(store.done()) == N_IMAGES and store.failures().empty
    assert np.isfinite(store.read(np.arange(N_IMAGES), ["w"])["w"]).all()

    # Logits: every image, every group, views 0..n_views (GAN) / 0..n_views-1 (crop).
    logits = read_logits(job / "out" / "logits")
    assert set(logits["image_id"]) == set(store.image_ids)
    per_image = logits.groupby(["method", "setting"])["image_id"].nunique()
    assert (per_image == N_IMAGES).all(), per_image
    assert set(logits["method"]) == {"isotropic_fine", "pca_coarse", "crop"}

    # The report's results table: one row per (task, classifier, method, setting), sane values.
    results = pd.read_csv(job / "out" / "report" / "results.csv")
    assert len(results) >= 3
    for col in ("test_acc", "test_acc_single", "val_acc"):
        assert results[col].between(0, 1).all(), results[col]
    assert results["alpha_star"].between(0, 1).all()
    assert (results["n_test"] == N_IMAGES // 2).all() and (results["n_val"] == N_IMAGES // 2).all()
    assert (job / "out" / "report" / "report.md").is_file()

    # Per-shard progress records name the device and the process that ran each shard.
    record = json.loads((job / "out" / "store.state" / "shards" / "invert" / "00000000-00000008.json").read_text())
    assert record["status"] == "completed" and record["device"] == "cpu" and record["summary"]["done"] == SHARD

    # A rerun skips every stage: nothing to invert, render or re-evaluate; nothing recomputed.
    w_before = store.read(np.arange(N_IMAGES), ["w"])["w"]
    mtimes = {p: p.stat().st_mtime_ns for p in (job / "out" / "logits").rglob("*.parquet")}
    again = pipeline(str(job / "pipeline.yaml"))
    assert again["invert"]["shards_run"] == 0 and again["render"]["shards_run"] == 0
    assert "skipped" in again["pca"] and "skipped" in again["evaluate"]
    np.testing.assert_array_equal(LatentStore.open(job / "out" / "store").read(np.arange(N_IMAGES), ["w"])["w"], w_before)
    assert mtimes == {p: p.stat().st_mtime_ns for p in (job / "out" / "logits").rglob("*.parquet")}
