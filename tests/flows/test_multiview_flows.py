"""The GenRep flows end to end under Prefect's test harness: sample → train → probe → report, rerun skips."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from flows.multiview import multiview, multiview_sample, worker_slice
from ganviews.core.errors import ConfigError
from storage.adapters.digits import render_digit
from storage.manifest import write_manifest
from storage.multiview import MultiviewStore

pytestmark = pytest.mark.slow


def _digits_manifest(root) -> str:
    """60 real digits (32 px RGB), 20 per split, labelled 0–9."""
    data = load_digits()
    rows = []
    for i in range(60):
        path = root / f"d{i:02d}.png"
        Image.fromarray(render_digit(data.images[i])).save(path)
        rows.append({"image_id": f"d{i:02d}", "path": str(path), "split": ("train", "val", "test")[i % 3], "label": int(data.target[i])})  # fmt: skip
    return str(
        write_manifest(pd.DataFrame(rows), root / "manifest.parquet", label_columns=["label"])
    )


def test_multiview_flow_end_to_end_and_rerun(tmp_path, stylegan2_fixtures, harness) -> None:
    config = {"multiview": {
        "generator": str(stylegan2_fixtures / "nvidia-ada-res32.pkl"),
        "manifest": _digits_manifest(tmp_path), "out": str(tmp_path / "out"), "device": "cpu",
        "shard_size": 4, "sampling": {"n_anchors": 8, "sigma": 0.3},
        "train": {"encoder": {"small_input": False, "input_size": 16, "proj_dim": 8},
                  "steps": 2, "batch_size": 4, "checkpoint_every": 2},
        "probe": {"c_grid": [0.1], "max_iter": 200},
        "variants": [{"data": "none", "t_z": "none", "t_x": "none", "objective": "none"},
                     {"data": "generated", "t_z": "gauss", "t_x": "simclr", "objective": "simclr"}],
        "sample_sizes": [4],
    }}  # fmt: skip
    out = multiview(config)
    assert out["sample"] == {"stage": "multiview-sample", "shards_run": 2, "anchors": 8}
    assert [v["variant"] for v in out["train"]["variants"]] == [
        "untrained",
        "generated-gauss0.3-simclr-simclr",
        "generated-gauss0.3-simclr-simclr-n4",
    ]
    assert MultiviewStore.open(tmp_path / "out" / "stores" / "gauss0.3").n_done() == 8
    results = pd.read_csv(tmp_path / "out" / "report" / "results.csv")
    assert list(results["n_samples"]) == [0, 8, 4] and results["probe_acc"].between(0, 1).all()
    p = results["probe_acc"].to_numpy()
    np.testing.assert_allclose(results["probe_stderr"], np.sqrt(p * (1 - p) / 20))
    assert (tmp_path / "out" / "report" / "n_samples.png").is_file()
    assert (
        "| generated | z + w_Gauss | SimCLR augs | Contrastive | 0.3 | 8 |"
        in (tmp_path / "out" / "report" / "results.md").read_text()
    )
    again = multiview(config)  # a rerun samples nothing and trains nothing
    assert again["sample"]["shards_run"] == 0
    assert all("skipped" in v for v in again["train"]["variants"])
    assert multiview_sample(config, worker="1/2")["shards_run"] == 0


def test_worker_slice() -> None:
    assert worker_slice(None) == (0, 1) and worker_slice("1/3") == (1, 3)
    with pytest.raises(ConfigError, match=r"worker: expected 'i/n' with 0 ≤ i < n, got '3/3'"):
        worker_slice("3/3")
