"""The Prefect task that evaluates ensembles: its body via ``.fn`` and, in a flow, its artifacts."""

from __future__ import annotations

import pandas as pd
import pytest
from ensemble.test_ensemble import known_table

from ganviews.core.config import from_dict
from ganviews.report.tables import ReportConfig, data_uri
from storage.logits import write_logits
from tasks.evaluate import (
    ARTIFACT_BYTES,
    _data_uri_bytes,
    _inline_images,
    _key,
    evaluate_ensembles_task,
)

CONFIG = from_dict(
    ReportConfig,
    {"ensemble": {"bootstrap_draws": 10}, "max_alpha_plots": 1, "grid_max_tasks": 1, "dpi": 50},
)


@pytest.fixture
def logits(tmp_path):
    root = tmp_path / "logits"
    write_logits(root, known_table(), shard="s0")
    return root


def test_task_body_outside_prefect(logits, tmp_path):
    paths = evaluate_ensembles_task.fn(logits, tmp_path / "out", config=CONFIG)
    assert set(paths) == {"report_md", "report_html", "results_csv", "results_parquet"}
    row = pd.read_csv(paths["results_csv"]).iloc[0]
    assert row["alpha_star"] == pytest.approx(0.45) and row["test_acc"] == 0.75
    assert paths["report_md"].endswith("report.md") and paths["report_html"].endswith("report.html")


def test_artifact_keys_are_valid():
    assert _key("ensemble_size__R50.v2") == "ensemble-size-r50-v2"
    assert _key("__") == "x"


def test_images_are_inlined_only_while_the_artifact_stays_under_the_event_limit(tmp_path):
    small, big = tmp_path / "small.png", tmp_path / "big.png"
    small.write_bytes(b"\x89PNG" + bytes(3_000))
    big.write_bytes(b"\x89PNG" + bytes(30_000))
    ref = _inline_images(_data_uri_bytes(small) + 1_000)  # room for the small one only
    assert ref(big) == big.resolve().as_uri()
    assert ref(small).startswith("data:image/png;base64,")
    assert ref(small) == small.resolve().as_uri()  # the budget is spent
    assert _data_uri_bytes(big) == len(data_uri(big)) and _data_uri_bytes(small) == len(
        data_uri(small)
    )
    assert ARTIFACT_BYTES < 1_500_000  # Prefect's default PREFECT_SERVER_EVENTS_MAXIMUM_SIZE_BYTES


@pytest.mark.slow
def test_task_publishes_artifacts_in_a_flow(harness, logits, tmp_path):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.context import get_run_context

    @flow(name="evaluate-ensembles-test")
    def run(out):
        paths = evaluate_ensembles_task(logits, out, config=CONFIG, artifact_prefix="t-ens")
        return paths, get_run_context().flow_run.id

    paths, flow_run_id = run(str(tmp_path / "out"))
    assert (tmp_path / "out" / "results.csv").is_file() and paths["report_md"]

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    by_key = {a.key: a for a in found}
    assert by_key["t-ens-results"].type == "table"
    assert by_key["t-ens-summary"].type == "table"
    assert by_key["t-ens-report"].type == "markdown"
    images = [a for a in found if a.type == "image"]
    assert {a.key for a in images} >= {
        "t-ens-gain-bars-r50",
        "t-ens-ensemble-size-r50",
        "t-ens-alpha-mean-r50",
    }
    assert all(str(a.data).startswith("data:image/png;base64,") for a in images)
    report = str(by_key["t-ens-report"].data)
    assert (
        report.startswith("# Ensembles of deep generative views")
        and "data:image/png;base64," in report
    )
    table = by_key["t-ens-results"].data
    assert "0.45" in str(table) and "isotropic_fine" in str(table)
