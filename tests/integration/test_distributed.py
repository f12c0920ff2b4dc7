"""Distributed mode against a real Prefect server with two process workers (CPU).

One server (`prefect server start`, SQLite in a temporary PREFECT_HOME, analytics off) and two
`prefect worker start --type process --limit 1` workers serve the module; `ganviews deploy`
registers the deployments. (b) an inversion job of 2 shards completes with one on each
workers; (c) one shard's process is SIGKILLed mid-shard, the job reports the crashed shard,
`ganviews resume` completes it, every image is done exactly once, and the latents equal those
of the uninterrupted job bit for bit. Every process started here is stopped here, by its
process-group id, in a finally block.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import seed_prefect_db
from pipeline_job import make_dataset, write_config

from storage.latents import LatentStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_IMAGES, SHARD = 16, 8  # two shards: one per worker
POOL, DEPLOYMENT = "ganviews-test", "test"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    """A process in its own session (process group = its pid), output to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGINT to the process group, SIGKILL after ``grace`` seconds."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def ganviews(args: list[str], env: dict, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "ganviews"), *args], env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, stylegan2_fixtures, prefect_db_template):
    """Data + two job configs, a server, the deployments, two workers; all stopped at the end."""
    root = tmp_path_factory.mktemp("cluster")
    seed_prefect_db(prefect_db_template, root / "prefect-home")  # migrated once per session
    gen = stylegan2_fixtures / "nvidia-ada-res32.pkl"
    make_dataset(root, gen, n=N_IMAGES)
    configs = {}
    for name in ("a", "b"):
        cfg = write_config(
            root,
            gen,
            mode="distributed",
            work_pool=POOL,
            deployment=DEPLOYMENT,
            poll_seconds=0.5,
            cpu_threads=1,
            job=f"job-{name}",
        )
        cfg["paths"] = {k: f"out_{name}/{k}" for k in ("store", "logits", "report")}
        # batch 1: an invert() call takes 4 images (CALL_BATCHES), so a shard of 8 is written in
        # two steps and a SIGKILL can land between them
        cfg["invert"].update(steps=10, batch_size=1)
        configs[name] = root / f"{name}.yaml"
        configs[name].write_text(yaml.safe_dump(cfg))
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(root / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_API_URL": url,
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_LOGGING_TO_API_ENABLED": "true",
        "PREFECT_LOGGING_LEVEL": "INFO",
        "OMP_NUM_THREADS": "1",
    }
    env.pop("PREFECT_API_KEY", None)
    procs = []
    try:
        server_env = {k: v for k, v in env.items() if k != "PREFECT_API_URL"}
        procs.append(
            start(
                [
                    str(BIN / "prefect"),
                    "server",
                    "start",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--no-ui",
                ],
                server_env,
                root / "server.log",
            )
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                if procs[0].poll() is not None or time.monotonic() > deadline:
                    pytest.fail(
                        f"prefect server did not come up:\n{(root / 'server.log').read_text()[-3000:]}"
                    )
                time.sleep(0.5)
        out = ganviews(["deploy", "--config", str(configs["a"])], env)
        assert out.returncode == 0, out.stdout + out.stderr
        for i in (1, 2):
            procs.append(
                start(
                    [
                        str(BIN / "prefect"),
                        "worker",
                        "start",
                        "--pool",
                        POOL,
                        "--work-queue",
                        "shards",
                        "--type",
                        "process",
                        "--limit",
                        "1",
                        "--name",
                        f"worker{i}",
                    ],
                    env,
                    root / f"worker{i}.log",
                )
            )
        yield {
            "root": root,
            "env": env,
            "url": url,
            "configs": configs,
            "deploy_output": out.stdout,
        }
    finally:
        for proc in reversed(procs):  # workers first, then the server
            stop(proc)


def flow_runs(url: str, tag: str):
    """Shard flow runs of one job, read through the API (settings scoped to this call)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: url}), get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag, "invert"]))
        )
    return runs


def run_log_messages(url: str, run_ids: list, expected: tuple, timeout: float = 60.0) -> list[str]:
    """Log messages of the given flow runs, read until every ``expected`` predicate matches one
    or ``timeout`` passes. A run's state can reach Completed before its process has shipped its
    last log batch to the API (logs travel in batches from a background thread), so one read
    right after the job may miss the final lines."""
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    deadline = time.monotonic() + timeout
    with temporary_settings({PREFECT_API_URL: url}), get_client(sync_client=True) as client:
        while True:
            messages, offset = [], 0
            while True:  # page through: the server caps one read at its default limit
                page = client.read_logs(
                    log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=run_ids)),
                    offset=offset,
                )
                messages += [log.message for log in page]
                offset += len(page)
                if not page:
                    break
            if all(any(p(m) for m in messages) for p in expected) or time.monotonic() > deadline:
                return messages
            time.sleep(1.0)


def read_latents(store_path: Path) -> dict[str, np.ndarray]:
    store = LatentStore.open(store_path)
    return store.read(np.arange(store.n_images), ["w", "w_init", "loss", "iterations", "status"])


@pytest.fixture(scope="module")
def uninterrupted(cluster):
    out = ganviews(["run", str(cluster["configs"]["a"]), "--stages", "invert"], cluster["env"])
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    return out


def test_deploy_registers_pool_deployments_and_zombie_automation(cluster, capsys) -> None:
    text = cluster["deploy_output"]
    assert f"created work pool {POOL} (process)" in text
    assert (
        f"deployment ganviews-shard/{DEPLOYMENT}" in text
        and f"deployment ganviews-pipeline/{DEPLOYMENT}" in text
    )
    assert "automation 'ganviews: crash zombie flow runs' created" in text
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from ganviews.cli import main

    with temporary_settings({PREFECT_API_URL: cluster["url"]}):
        assert (
            main(["deploy", "--config", str(cluster["configs"]["a"])]) == 0
        )  # again, in this process: idempotent
    again = capsys.readouterr().out
    assert "created " not in again and f"deployment ganviews-shard/{DEPLOYMENT}" in again
    assert "automation 'ganviews: crash zombie flow runs' updated" in again
    with (
        temporary_settings({PREFECT_API_URL: cluster["url"]}),
        get_client(sync_client=True) as client,
    ):
        pools = [p.name for p in client.read_work_pools()]
        queues = sorted(q.name for q in client.read_work_queues(work_pool_name=POOL))
        deployment = client.read_deployment_by_name(f"ganviews-shard/{DEPLOYMENT}")
        automations = client.read_automations_by_name("ganviews: crash zombie flow runs")
    assert pools.count(POOL) == 1 and queues == ["control", "default", "shards"]
    assert deployment.work_pool_name == POOL and deployment.work_queue_name == "shards"
    assert (
        deployment.entrypoint == "flows.shards.shard_flow"
    )  # module path: no code directory needed
    assert int(deployment.job_variables["env"]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"]) >= 30
    assert len(automations) == 1 and automations[0].actions[0].type == "change-flow-run-state"


def test_job_of_two_shards_runs_on_both_workers(cluster, uninterrupted) -> None:
    store = LatentStore.open(cluster["root"] / "out_a" / "store")
    assert len(store.done()) == N_IMAGES and store.failures().empty and len(store.shards()) == 2
    runs = flow_runs(cluster["url"], "job-a")
    assert len(runs) == 2 and all(r.state.is_completed() for r in runs), [
        (r.name, r.state) for r in runs
    ]
    workers = {r.labels.get("prefect.worker.name") for r in runs}
    assert workers == {"worker1", "worker2"}, workers

    # Progress reaches the runs' logs: the shard summary and the library's per-batch lines.
    def summary_line(m: str) -> bool:
        return m.startswith("invert shard 00000008-00000016 on auto")

    def batch_line(m: str) -> bool:
        return re.search(r"shard 00000008-00000016: \d/8 items handled", m) is not None

    messages = run_log_messages(
        cluster["url"], [r.id for r in runs], expected=(summary_line, batch_line)
    )
    assert any(summary_line(m) for m in messages), messages
    assert any(batch_line(m) for m in messages), messages
    # Each shard ran in its own process, pinned as its worker was started.
    records = [
        json.loads(p.read_text())
        for p in (cluster["root"] / "out_a" / "store.state" / "shards" / "invert").glob("*.json")
    ]
    assert len(records) == 2 and all(
        r["status"] == "completed" and r["summary"]["done"] == SHARD for r in records
    )
    assert len({r["pid"] for r in records}) == 2
    assert (
        "invert: shard 00000000-00000008 completed by worker worker"
        in uninterrupted.stdout + uninterrupted.stderr
    )


def test_sigkill_mid_shard_then_resume_matches_uninterrupted(cluster, uninterrupted) -> None:
    root, env = cluster["root"], cluster["env"]
    store_path, progress = (
        root / "out_b" / "store",
        root / "out_b" / "store.state" / "shards" / "invert",
    )
    job = start(
        [str(BIN / "ganviews"), "run", str(cluster["configs"]["b"]), "--stages", "invert"],
        env,
        root / "job_b.log",
    )
    killed = None
    try:
        deadline = time.monotonic() + 150
        while killed is None and time.monotonic() < deadline and job.poll() is None:
            time.sleep(0.05)
            for path in sorted(progress.glob("*.json")) if progress.is_dir() else []:
                record = json.loads(path.read_text())
                start_, stop_ = (int(v) for v in record["shard"].split("-"))
                status = LatentStore.open(store_path).read(np.arange(start_, stop_), ["status"])[
                    "status"
                ]
                if record["status"] == "running" and 0 < (status == 1).sum() < SHARD:  # mid-shard
                    os.kill(record["pid"], signal.SIGKILL)
                    killed = record
                    break
        assert killed is not None, (
            "no shard was caught mid-way:\n" + (root / "job_b.log").read_text()[-3000:]
        )
        rc = job.wait(180)
    finally:
        stop(job)
    log = (root / "job_b.log").read_text()
    assert rc == 2 and "1 of 2 shards did not complete" in log and "ganviews resume" in log, log[
        -3000:
    ]

    start_, stop_ = (int(v) for v in killed["shard"].split("-"))
    store = LatentStore.open(store_path)
    done_before = int((store.read(np.arange(start_, stop_), ["status"])["status"] == 1).sum())
    assert 0 < done_before < SHARD and len(store.done()) == N_IMAGES - (SHARD - done_before)
    crashed = [r for r in flow_runs(cluster["url"], "job-b") if not r.state.is_completed()]
    assert [r.state.type.value for r in crashed] == ["CRASHED"], [
        (r.name, r.state) for r in crashed
    ]

    out = ganviews(["resume", str(cluster["configs"]["b"]), "--stages", "invert"], env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"interrupted: invert shard {killed['shard']} (pid {killed['pid']}" in out.stdout
    assert "shards_run=1" in out.stdout  # only the cut-off shard runs again
    record = json.loads((progress / f"{killed['shard']}.json").read_text())
    assert record["status"] == "completed" and record["summary"]["todo"] == SHARD - done_before
    assert record["summary"]["done"] == SHARD - done_before  # the done items were not recomputed

    b, a = read_latents(store_path), read_latents(root / "out_a" / "store")
    assert (b["status"] == 1).all() and LatentStore.open(store_path).failures().empty
    for key in ("w", "w_init", "loss", "iterations"):
        np.testing.assert_array_equal(b[key], a[key], err_msg=key)
