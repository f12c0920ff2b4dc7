"""Issue 18.5: ``kill -9`` of ``ganviews run`` (``task_runner: process``) leaves nothing behind.

It used to leave the private Prefect API server, the process-pool worker and the
multiprocessing resource tracker running indefinitely. One real run of the tiniest job (one
shard of 8 images at 32 px) in its own session: once its shard is running, only the
``ganviews run`` process is SIGKILLed, and every process that descended from it before the
kill must be gone within 15 s (the server by its parent-death signal and watchdog, the
worker by its watchdog, the tracker when the last holder of its pipe is gone).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from pipeline_job import make_dataset, write_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BIN = Path(sys.executable).parent
START_SECONDS = 300  # imports, the private server and a spawned worker on a loaded 2-core box
GONE_SECONDS = 15


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # exited while we looked
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _descendants(pid: int) -> dict[int, str]:
    """pid → command line of every live descendant of ``pid`` (all sessions)."""
    tree, found, todo = _children(), {}, [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            try:
                found[child] = (
                    Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
                ).decode()
            except OSError:
                continue
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait is missing


def test_kill_9_of_ganviews_run_leaves_no_process_behind(tmp_path, stylegan2_fixtures):
    gen = stylegan2_fixtures / "nvidia-ada-res32.pkl"
    make_dataset(tmp_path, gen, n=8)
    cfg = write_config(tmp_path, gen, task_runner="process", cpu_threads=1)
    cfg["invert"].update(steps=5000, batch_size=1)  # still running when it is killed
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)  # the private server of an embedded run
    with open(tmp_path / "run.log", "wb") as log:
        run = subprocess.Popen(
            [str(BIN / "ganviews"), "run", "pipeline.yaml", "--stages", "invert"],
            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    lease = tmp_path / "out" / "store" / ".leases" / "shard-0.lease"
    seen: dict[int, str] = {}
    try:
        deadline = time.monotonic() + START_SECONDS
        while not lease.exists() and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)  # the shard body takes the writer lease when it starts
        assert lease.exists(), (run.poll(), (tmp_path / "run.log").read_text()[-3000:])
        seen = _descendants(run.pid)
        kinds = {
            "server": "ganviews.cli.server",
            "worker": "multiprocessing.spawn",
            "tracker": "resource_tracker",
        }
        missing = [k for k, mark in kinds.items() if not any(mark in c for c in seen.values())]
        assert not missing, (missing, seen)
        os.kill(run.pid, signal.SIGKILL)  # the parent only, not its group
        run.wait(timeout=30)
        deadline = time.monotonic() + GONE_SECONDS
        while any(map(_alive, seen)) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = {pid: cmd for pid, cmd in seen.items() if _alive(pid)}
        assert not left, f"outlived the killed `ganviews run`: {left}"
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(timeout=30)
        for pid in seen:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
