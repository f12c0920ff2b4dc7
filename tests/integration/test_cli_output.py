"""CLI output for scripts: ``status --json``, ids saved with latents, a closed pipe ends quietly."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
from test_storage_query_cli import tables  # noqa: F401  (fixture)

from ganviews.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_status_json(tables, capsys):  # noqa: F811
    assert main(["status", str(tables / "s.zarr"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["n_images"], data["done"], data["failed"], data["pending"]) == (5, 3, 1, 1)
    assert data["generator_sha256"] == "9" * 64 and data["shard_size"] == 2
    assert [s["done"] for s in data["shards"]] == [2, 1, 0]
    assert data["failure_reasons"] == {"RuntimeError: CUDA out of memory": 1}
    assert [f["image_id"] for f in data["failures"]] == ["i4"]
    assert [f["attempts"] for f in data["failures"]] == [1] and data["given_up"] is None
    assert main(["status", str(tables / "s.zarr"), "--json", "--max-attempts", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["given_up"] == 1


def test_query_latents_out_keeps_the_image_ids(tables, tmp_path, capsys):  # noqa: F811
    store = str(tables / "s.zarr")
    assert (
        main(["query", "latents", store, "--ids", "i2", "0", "--out", str(tmp_path / "w.npz")]) == 0
    )
    saved = np.load(tmp_path / "w.npz")
    assert saved["image_id"].tolist() == ["i0", "i2"] and saved["index"].tolist() == [0, 2]
    np.testing.assert_array_equal(saved["w"][1], np.arange(24, 36, dtype=np.float32).reshape(3, 4))
    assert main(["query", "latents", store, "--ids", "0:2", "--out", str(tmp_path / "w.npy")]) == 0
    ids = pd.read_csv(tmp_path / "w.npy.ids.csv")
    assert ids.to_dict("list") == {"index": [0, 1], "image_id": ["i0", "i1"]}
    assert np.load(tmp_path / "w.npy").shape == (2, 3, 4)
    capsys.readouterr()
    assert main(["query", "latents", store, "--out", str(tmp_path / "w.txt")]) == 2
    assert "use a .npz (array + ids) or .npy (+ .ids.csv) name" in capsys.readouterr().err


def test_a_reader_that_stops_early_ends_the_command_quietly(tables):  # noqa: F811
    """``ganviews status S | head`` used to crash with BrokenPipeError: the read end of the
    pipe is closed before the command writes, so every write fails with EPIPE."""
    env = {**os.environ, "PYTHONPATH": REPO}
    for argv in (
        ["status", str(tables / "s.zarr"), "--all"],
        ["query", "latents", str(tables / "s.zarr")],
    ):
        proc = subprocess.Popen(
            [sys.executable, "-m", "ganviews", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        proc.stdout.close()  # the reader is gone before the first line is written
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=60) == 141, err
        assert "Traceback" not in err and "BrokenPipeError" not in err, err
