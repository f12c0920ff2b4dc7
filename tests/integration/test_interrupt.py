"""Clean interruption: real signals to a real ``ganviews demo`` subprocess (embedded mode).

What a terminal does on Ctrl-C — SIGINT to the whole process group — and what a scheduler
does — SIGTERM — must stop the job after the current batch, keep the store consistent, stop
the private Prefect API server last and print the command that resumes; a second signal
exits at once.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_demo import _config

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _start(tmp_path: Path) -> tuple[subprocess.Popen, list[str], Path]:
    config = _config(tmp_path)
    cfg = yaml.safe_load(config.read_text())
    cfg["invert"].update(steps=40, batch_size=2)  # several batches per shard, each a while
    config.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    argv = ["ganviews", "demo", "--out", str(out), "--config", str(config), "--limit", "10"]
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.Popen(
        [sys.executable, "-m", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,  # its own group, so the test can signal it like a terminal
        text=True,
    )
    return proc, argv, out


def _wait_for_inversion(proc: subprocess.Popen, store_path: Path, timeout: float = 300.0) -> None:
    from storage import LatentStore

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if (store_path / "zarr.json").is_file():
            try:
                if len(LatentStore.open(store_path, mode="r").done()):
                    return
            except Exception:  # noqa: BLE001 - the store is being created
                pass
        time.sleep(0.3)
    proc.kill()
    pytest.fail("the inversion did not start in time")


def _server_pid(err: str) -> int:
    found = re.search(r"Prefect API: private server \S+ \(pid (\d+)\)", err)
    assert found, err
    return int(found.group(1))


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_first_sigint_stops_after_the_current_batch_and_prints_the_resume_command(tmp_path):
    from storage import LatentStore

    proc, argv, out = _start(tmp_path)
    _wait_for_inversion(proc, out / "store")
    os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole process group
    t0 = time.monotonic()
    stdout, err = proc.communicate(timeout=120)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 130, err
    assert elapsed < 60, elapsed
    assert "SIGINT: stopping after the current batch" in err
    assert f"Resume with:\n  {' '.join(argv)}" in err
    assert "ConnectError" not in stdout + err and "Traceback" not in err
    assert _gone(_server_pid(err))  # stopped last, not killed first
    store = LatentStore.open(out / "store", mode="r")
    table = store.status_table()
    done, pending = int(table["done"].sum()), int(table["pending"].sum())
    assert int(table["failed"].sum()) == 0 and done >= 1 and pending >= 1
    w = store.read(store.done(), ["w"])["w"]
    assert np.isfinite(w).all()  # every batch marked done was written whole
    assert not (out / "logits").exists()  # no later stage started


def test_sigterm_then_a_second_signal_exits_at_once(tmp_path):
    proc, argv, out = _start(tmp_path)
    _wait_for_inversion(proc, out / "store")
    os.kill(proc.pid, signal.SIGTERM)  # a scheduler's stop
    time.sleep(0.5)
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    stdout, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert time.monotonic() - t0 < 15
    assert "SIGTERM: stopping after the current batch" in err
    assert f"SIGINT again: exiting now; resume with: {' '.join(argv)}" in err
    assert _gone(_server_pid(err))
