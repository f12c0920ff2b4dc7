"""The pipeline flows in embedded mode: a few dozen generated images, end to end, under Prefect.

Real modules throughout (alignment, inversion, views, classifiers, store, logits, report)
with the 32 px fixture generator, a small random classifier, tiny step counts; runs under
the session's Prefect test harness (tests/conftest.py: its SQLite database takes a while to create).
"""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from pipeline_job import N_IMAGES, SHARD, make_dataset, write_config

from ganviews.stylegan.generator import load_generator
from storage.latents import LatentStore
from storage.logits import read_logits


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # two OpenMP threads on a shared 2-core runner spin
    yield
    torch.set_num_threads(old)


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
    record = json.loads(
        (job / "out" / "store.state" / "shards" / "invert" / "00000000-00000008.json").read_text()
    )
    assert (
        record["status"] == "completed"
        and record["device"] == "cpu"
        and record["summary"]["done"] == SHARD
    )

    # A rerun skips every stage: nothing to invert, render or re-evaluate; nothing recomputed.
    w_before = store.read(np.arange(N_IMAGES), ["w"])["w"]
    mtimes = {p: p.stat().st_mtime_ns for p in (job / "out" / "logits").rglob("*.parquet")}
    again = pipeline(str(job / "pipeline.yaml"))
    assert again["invert"]["shards_run"] == 0 and again["render"]["shards_run"] == 0
    assert "skipped" in again["pca"] and "skipped" in again["evaluate"]
    np.testing.assert_array_equal(
        LatentStore.open(job / "out" / "store").read(np.arange(N_IMAGES), ["w"])["w"], w_before
    )
    assert mtimes == {p: p.stat().st_mtime_ns for p in (job / "out" / "logits").rglob("*.parquet")}


@pytest.mark.slow
@pytest.mark.integration  # reads what the end-to-end test above wrote: same tier
def test_progress_and_table_artifacts(job, harness) -> None:
    """After the end-to-end test (same module, same harness): per-stage progress at 100 %, shard tables."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from tasks.pipeline_config import as_config, job_name

    name = job_name(as_config(job / "pipeline.yaml"))
    with get_client(sync_client=True) as client:
        progress = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"{name}-invert-progress"]))
        )
        table = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"{name}-render-shards"]))
        )
    assert progress and progress[0].type == "progress" and float(progress[0].data) == 100.0
    assert table and table[0].type == "table"
    rows = json.loads(table[0].data)
    assert sorted(r["shard"] for r in rows) == [
        "00000000-00000008",
        "00000008-00000016",
        "00000016-00000024",
    ]
    assert all(r["images"] == SHARD and r["device"] == "cpu" for r in rows)


@pytest.mark.slow
@pytest.mark.integration
def test_cli_run_then_resume_retries_failed_images(
    tmp_path, stylegan2_fixtures, harness, capsys
) -> None:
    """A corrupt image fails (reason kept); `orchestration.retry_failed_images: false` and
    `max_image_attempts: 1` give up on it even once the file is fixed; with the default (retry
    every run) `resume` runs only that image."""
    from ganviews.cli import main

    gen_path = stylegan2_fixtures / "nvidia-ada-res32.pkl"
    make_dataset(tmp_path, gen_path, n=8)
    good = (tmp_path / "images" / "img005.png").read_bytes()
    (tmp_path / "images" / "img005.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    write_config(tmp_path, gen_path, shard_size=4, job="cli-job")
    config = str(tmp_path / "pipeline.yaml")
    assert main(["run", config, "--stages", "invert"]) == 0
    out = capsys.readouterr().out
    assert (
        "ganviews run: job cli-job, stages invert, embedded mode" in out and "shards_run=2" in out
    )
    assert (
        "failed=1" in out
        and (
            f"1 image(s) failed to invert: `ganviews status {tmp_path / 'out' / 'store'}` lists why; "
            f"`ganviews resume {config} --stages invert` retries them "
            "(orchestration.max_image_attempts: N gives up after N)"
        )
        in out
    )
    # the per-stage throughput table: 7 inverted + 1 failed image handled
    assert re.search(r"^invert +8 images +[\d.]+ +[\d.]+$", out, re.M), out
    store = LatentStore.open(tmp_path / "out" / "store")
    assert store.failed().tolist() == [5] and len(store.done()) == 7
    w_done = store.read(store.done(), ["w"])["w"]

    (tmp_path / "images" / "img005.png").write_bytes(good)
    write_config(tmp_path, gen_path, shard_size=4, job="cli-job", retry_failed_images=False)
    assert main(["resume", config, "--stages", "invert"]) == 0
    out = capsys.readouterr().out
    assert "1 failed images are given up on (orchestration.retry_failed_images: false)" in out
    assert "they are given up on (orchestration.retry_failed_images: false)" in out
    assert "shards_run=0" in out and "todo_after=0" in out
    assert LatentStore.open(tmp_path / "out" / "store").failed().tolist() == [5]
    # max_image_attempts: 1 gives up on it too (it failed once; the fixed file alone is no retry)
    write_config(tmp_path, gen_path, shard_size=4, job="cli-job", max_image_attempts=1)
    assert main(["resume", config, "--stages", "invert"]) == 0
    out = capsys.readouterr().out
    rule = "after 1 failures, orchestration.max_image_attempts"
    assert f"1 failed images are given up on ({rule})" in out
    assert f"they are given up on ({rule})" in out and "given_up=1" in out
    assert "shards_run=0" in out

    write_config(tmp_path, gen_path, shard_size=4, job="cli-job")  # the default: retry them
    assert main(["resume", config, "--stages", "invert"]) == 0
    out = capsys.readouterr().out
    assert (
        "7 done, 0 pending, 1 failed images" in out
        and "shards_run=1" in out
        and "todo_after=0" in out
    )
    store = LatentStore.open(tmp_path / "out" / "store")
    assert len(store.done()) == 8 and store.failures().empty
    np.testing.assert_array_equal(
        store.read([0, 1, 2, 3, 4, 6, 7], ["w"])["w"], w_done
    )  # done items untouched
    record = json.loads(
        (
            tmp_path / "out" / "store.state" / "shards" / "invert" / "00000004-00000008.json"
        ).read_text()
    )
    assert record["summary"]["todo"] == 1 and record["summary"]["done"] == 1


def test_retry_policy() -> None:
    """Transient errors (I/O, CUDA OOM) are retried with the configured back-off; input errors are not."""
    from prefect.states import Failed

    from flows.shards import idempotency_key, retrying
    from ganviews.core.errors import ConfigError
    from storage.errors import StoreError
    from tasks.pipeline_config import load_pipeline_config
    from tasks.shard_runner import is_transient
    from tasks.stages import SHARD_STAGES

    for exc, retry in (
        (OSError("stale NFS file handle"), True),
        (RuntimeError("CUDA out of memory"), True),
        (ConfigError("invert.steps: …"), False),
        (StoreError("holds latents made with other settings"), False),
        (ValueError("bad shape"), False),
    ):
        assert is_transient(None, None, Failed(data=exc)) is retry, exc
    cfg = load_pipeline_config(
        {
            "data": {"manifest": "m"},
            "paths": {"store": "s", "logits": "l", "report": "r"},
            "models": {"generator": "g"},
            "orchestration": {"retries": 3, "retry_delay_seconds": [1, 5]},
        },
        base_dir="/x",
    )
    orch = cfg.orchestration
    task = retrying(SHARD_STAGES["invert"].task, orch.retries, orch.retry_delay_seconds)
    assert (
        task.retries == 3
        and list(task.retry_delay_seconds) == [1.0, 5.0]
        and task.retry_condition_fn is is_transient
    )
    key = idempotency_key("job-1", "invert", (64, 128), "parent-id", 0)
    assert key == "ganviews/job-1/invert/00000064-00000128/parent-id/0"
    assert key != idempotency_key("job-1", "invert", (64, 128), "parent-id", 1)


@pytest.mark.slow
@pytest.mark.integration
def test_training_stages_write_their_models_once(tmp_path, stylegan2_fixtures, harness) -> None:
    """train_encoder and train_classifier write models.encoder / the classifier, and are skipped afterwards."""
    from flows.pipeline import pipeline
    from ganviews.classifiers.checkpoints import load_classifier
    from ganviews.inversion.encoder import load_encoder

    gen_path = stylegan2_fixtures / "nvidia-ada-res32.pkl"
    make_dataset(tmp_path, gen_path, n=12)
    from storage.manifest import read_manifest, write_manifest

    manifest = read_manifest(tmp_path / "manifest.parquet")  # a train split to train on
    manifest["split"] = manifest["split"].replace({"val": "train"})
    write_manifest(manifest, tmp_path / "manifest.parquet")
    cfg = write_config(tmp_path, gen_path)
    cfg["models"]["encoder"] = "models/encoder.safetensors"
    cfg["models"]["classifiers"]["trained"] = {
        "path": "models/trained.safetensors",
        "task": "label",
    }
    cfg["encoder_training"] = {
        "enabled": True,
        "steps": 2,
        "batch_size": 2,
        "perceptual": "none",
        "depth": 18,
        "width": 8,
        "resolution": 32,
        "norm": "group",
        "log_every": 1,
    }
    cfg["classifier_training"] = {
        "enabled": True,
        "name": "trained",
        "data": "manifest",
        "train_split": "train",
        "val_split": "test",
        "classifier": {"arch": "smallcnn", "width": 4},
        "train": {"epochs": 1},
        "views": {"batch_size": 4},
    }
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(cfg))
    out = pipeline(str(tmp_path / "pipeline.yaml"), stages=["train_encoder", "train_classifier"])
    assert set(out) == {"train_encoder", "train_classifier"}
    assert out["train_encoder"]["steps"] == 2 and out["train_classifier"]["n_train"] == 6
    E = load_encoder(tmp_path / "models" / "encoder.safetensors")
    G = load_generator(gen_path)
    assert E.sha256 == out["train_encoder"]["sha256"] and (E.num_ws, E.w_dim) == (G.num_ws, G.w_dim)
    assert (
        tmp_path / "models" / "encoder.safetensors.ckpt"
    ).is_file()  # resumable training checkpoint
    C = load_classifier(tmp_path / "models" / "trained.safetensors")
    assert C.sha256 == out["train_classifier"]["sha256"] and C.name == "trained"
    again = pipeline(str(tmp_path / "pipeline.yaml"), stages=["train_encoder", "train_classifier"])
    assert (
        "exists" in again["train_encoder"]["skipped"]
        and "exists" in again["train_classifier"]["skipped"]
    )
