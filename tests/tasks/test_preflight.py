"""Preflight: `ganviews run` reports every cheap-to-find config problem at once, before any work."""

from __future__ import annotations

import pandas as pd
import yaml
from pipeline_job import make_dataset, write_config

from ganviews.cli import main


def test_run_lists_every_problem_before_any_work(tmp_path, stylegan2_fixtures, capsys, monkeypatch):
    gen = stylegan2_fixtures / "nvidia-ada-res32.pkl"
    make_dataset(tmp_path, gen, n=6)
    cfg = write_config(tmp_path, gen)
    cfg["views"]["gan"][1]["layers"] = "top"
    cfg["models"]["classifiers"]["clf"]["task"] = "Label"
    cfg["orchestration"]["devices"] = ["cuda:7"]  # no such device on this machine
    cfg["classifier_training"] = {"enabled": True, "name": "other", "data": "manifest",
                                  "classifier": {"arch": "smallcnn", "num_outputs": 2}}  # fmt: skip
    cfg["models"]["classifiers"]["other"] = {"path": "models/other.safetensors", "task": "label"}
    cfg["models"]["encoder"] = "models/encoder.safetensors"  # not an encoder at all
    (tmp_path / "models" / "encoder.safetensors").write_bytes(b"\x00" * 64)
    cfg["invert"]["lambda_lpips"] = 0.5  # LPIPS-alex: its backbone file is nowhere on this node
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(cfg))
    manifest = pd.read_parquet(tmp_path / "manifest.parquet")
    manifest.loc[1, "path"] = manifest.loc[0, "path"]  # one file in val and in test
    from storage.manifest import write_manifest

    manifest.attrs["label_columns"] = ["label"]
    write_manifest(manifest, tmp_path / "manifest.parquet")

    assert main(["run", str(tmp_path / "pipeline.yaml")]) == 2
    err = capsys.readouterr().err
    assert "preflight: 6 problem(s) before any work started:" in err
    assert "models.encoder: " in err and "encoder.safetensors" in err
    assert (
        "models.lpips_weights_dir: LPIPS backbone weights alexnet-owt-7be5be79.pth not found" in err
    )
    assert "orchestration.devices: 'cuda:7' does not exist here" in err
    assert (
        "data.manifest: 1 path(s) in more than one split, e.g. 'images/img000.png' in ['test', 'val']"
        in err
    )
    assert (
        "views.gan[1].layers: 'top' is not a layer group of the generator (allowed: ['coarse'"
        in err
    )
    assert (
        "models.classifiers.clf.task: 'Label' is not a label column of the manifest (label columns: ['label']); did you mean 'label'?"
        in err
    )
    assert "resume" not in err  # a config error is not fixed by resuming
    assert not (tmp_path / "out" / "store").exists()  # nothing started


def test_a_sound_config_passes(tmp_path, stylegan2_fixtures):
    from tasks.pipeline_config import load_pipeline_config
    from tasks.preflight import preflight

    gen = stylegan2_fixtures / "nvidia-ada-res32.pkl"
    make_dataset(tmp_path, gen, n=6)
    write_config(tmp_path, gen)
    preflight(
        load_pipeline_config(tmp_path / "pipeline.yaml"), ["invert", "pca", "render", "evaluate"]
    )
