"""CLI failure paths of `ganviews run` / `resume`: one clean line each (no Prefect server here)."""

from __future__ import annotations

import pytest
from pipeline_job import make_dataset, write_config


def test_cli_errors_are_one_line(tmp_path, stylegan2_fixtures, capsys) -> None:
    from ganviews.cli import main

    write_config(tmp_path, stylegan2_fixtures / "nvidia-ada-res32.pkl")
    config = str(tmp_path / "pipeline.yaml")
    assert main(["resume", config]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("ganviews resume: error: paths.store: no latent store at")
        and "\n" not in err
    )
    assert main(["run", config, "--stages", "invert,paint"]) == 2
    assert (
        "stages: ['paint'] not known; choose from ['train_encoder', 'invert'"
        in capsys.readouterr().err
    )
    assert main(["run", config, "--devices", "gpu"]) == 2
    assert (
        "orchestration.devices[0]: 'gpu' is not auto, cpu, cuda or cuda:N"
        in capsys.readouterr().err
    )
    assert main(["run", config, "--stages", "invert"]) == 2  # no manifest written in this folder
    assert f"data.manifest: {tmp_path / 'manifest.parquet'} not found" in capsys.readouterr().err


def test_distributed_mode_needs_a_server(tmp_path, stylegan2_fixtures, capsys, monkeypatch) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from ganviews.cli import main

    write_config(tmp_path, stylegan2_fixtures / "nvidia-ada-res32.pkl")
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings(
        restore_defaults={PREFECT_API_URL}
    ):  # the session's test harness sets one
        if PREFECT_API_URL.value():
            pytest.skip("a Prefect API URL is configured in this environment's profile")
        assert main(["run", str(tmp_path / "pipeline.yaml"), "--mode", "distributed"]) == 2
    assert "PREFECT_API_URL is not set: point it at the Prefect server" in capsys.readouterr().err


def test_embedded_run_starts_prefect_without_telemetry_unless_set(
    tmp_path, stylegan2_fixtures, monkeypatch
) -> None:
    import os

    from ganviews.cli.run import prepare_environment
    from tasks.pipeline_config import load_pipeline_config

    write_config(tmp_path, stylegan2_fixtures / "nvidia-ada-res32.pkl")
    cfg = load_pipeline_config(tmp_path / "pipeline.yaml")
    monkeypatch.delenv("PREFECT_SERVER_ANALYTICS_ENABLED", raising=False)
    prepare_environment(cfg)
    assert os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "true")  # the user's own choice wins
    prepare_environment(cfg)
    assert os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "true"


@pytest.mark.usefixtures("harness")
def test_align_resolution_that_is_not_the_generators_fails_before_the_store_exists(
    tmp_path, stylegan2_fixtures, capsys
) -> None:
    import yaml

    from ganviews.cli import main

    gen = stylegan2_fixtures / "nvidia-ada-res32.pkl"
    make_dataset(tmp_path, gen, n=2)
    cfg = write_config(tmp_path, gen)
    cfg["align"]["resolution"] = 64
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["run", str(tmp_path / "pipeline.yaml"), "--stages", "invert"]) == 2
    err = capsys.readouterr().err
    assert "align.resolution: 64, but" in err and "set align.resolution: 32" in err
    assert not (tmp_path / "out" / "store").exists()


def test_throughput_table_at_the_end_of_a_run(capsys) -> None:
    """`ganviews run` ends with one line per stage: items, seconds and items/s."""
    from ganviews.cli.run import print_outcome

    print_outcome(
        {
            "invert": {"stage": "invert", "shards_run": 2, "items": 8, "item": "images",
                       "seconds": 4.0},
            "pca": {"stage": "pca", "skipped": "no PCA view group", "seconds": 0.5},
            "render": {"stage": "render", "shards_run": 2, "rows": 90, "items": 300,
                       "item": "views", "seconds": 12.0},
        }
    )  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "invert            shards_run=2"
    assert lines[2] == "render            shards_run=2, rows=90"
    table = [line.split() for line in lines[3:]]
    assert table == [
        ["stage", "items", "seconds", "items/s"],
        ["invert", "8", "images", "4.0", "2.00"],
        ["pca", "-", "0.5", "-"],
        ["render", "300", "views", "12.0", "25.00"],
    ]
