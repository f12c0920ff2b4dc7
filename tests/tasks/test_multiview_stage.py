"""GenRep sampling in the shard registry: what a deployed shard run receives finds and runs it."""

from __future__ import annotations

import json

import numpy as np
import yaml

from ganviews.cli.deploy import STAGE_ENTRYPOINTS
from storage.multiview import MultiviewStore
from tasks.jobs import from_plain, to_plain
from tasks.multiview import MultiviewJob, multiview_pipeline, multiview_shard_task
from tasks.stages import SHARD_STAGES


def test_registry_lists_multiview_and_a_deployed_shard_run_rebuilds_and_runs_it(
    tmp_path, stylegan2_fixtures
) -> None:
    spec = SHARD_STAGES["multiview"]
    assert spec.job_type is MultiviewJob and spec.task is multiview_shard_task
    assert STAGE_ENTRYPOINTS["multiview-sample"] == "flows.multiview:multiview_sample"
    config = tmp_path / "mv.yaml"
    config.write_text(yaml.safe_dump({
        "multiview": {
            "generator": str(stylegan2_fixtures / "nvidia-ada-res32.pkl"),
            "manifest": "unused.parquet", "out": "out", "shard_size": 2, "cpu_threads": 1,
            "sampling": {"n_anchors": 3, "sigma": 0.3, "seed": 1}, "sigma_sweep": [0.5],
            "variants": [{"data": "generated", "t_z": "gauss", "t_x": "none"}],
        },
        "orchestration": {"mode": "distributed", "deployment": "gpu", "retries": 4},
    }))  # fmt: skip
    cfg = multiview_pipeline(config)
    assert (cfg.orchestration.mode, cfg.orchestration.deployment) == ("distributed", "gpu")
    assert cfg.paths.store == tmp_path / "out" / "stores"
    jobs = spec.build(cfg)
    assert [j.store for j in jobs] == ["gauss0.3", "gauss0.5"]
    assert jobs[0].state_dir == tmp_path / "out" / "state" / "gauss0.3"
    assert jobs[0].cpu_threads == 1 and jobs[0].config.generator.is_absolute()
    assert spec.plan(jobs[0]) == [(0, 2), (2, 3)]  # creates the store, every anchor pending

    # what flows.shards sends a deployment run (JSON parameters) and how shard_flow rebuilds it
    params = json.loads(json.dumps({"stage": "multiview", "job": to_plain(jobs[0])}))
    job = from_plain(SHARD_STAGES[params["stage"]].job_type, params["job"])
    assert job == jobs[0]
    summary = SHARD_STAGES[params["stage"]].task.fn(job, [2, 3], "cpu")
    assert summary["stage"] == "multiview" and summary["anchors"] == 1
    assert summary["device"] == "cpu" and summary["shard"] == "2-3"
    assert spec.plan(jobs[0]) == [(0, 2)]
    store = MultiviewStore.open(tmp_path / "out" / "stores" / "gauss0.3")
    assert store.status().tolist() == [0, 0, 1]
    assert np.isfinite(np.asarray(store._group["latents"][2])).all()
    assert (tmp_path / "out" / "state" / "gauss0.3").is_dir()  # the shard runner's record
