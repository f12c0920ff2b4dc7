"""Issue 18.5: a process-pool worker dies with its parent instead of running on as an orphan."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

PARENT = r"""
import multiprocessing as mp, sys, time
from pathlib import Path

def worker(pidfile):
    from ganviews.core.runtime import exit_with_parent
    assert exit_with_parent(poll_seconds=0.1)
    Path(pidfile).write_text(str(__import__("os").getpid()))
    time.sleep(600)

if __name__ == "__main__":
    from ganviews.core.runtime import exit_with_parent
    assert not exit_with_parent()  # the top-level process never watches anyone
    ctx = mp.get_context(sys.argv[2])
    ctx.Process(target=worker, args=(sys.argv[1],)).start()
    time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


@pytest.mark.slow  # two interpreters importing torch: ~4 s idle, 20 s on a loaded 2-core box
def test_worker_exits_when_its_parent_is_killed(tmp_path, start_method="spawn"):
    """``spawn`` is how Prefect's ProcessPoolTaskRunner starts workers."""
    pidfile, script = tmp_path / "worker.pid", tmp_path / "parent.py"
    script.write_text(PARENT)  # a file: spawn re-imports the parent's main module
    parent = subprocess.Popen([sys.executable, str(script), str(pidfile), start_method])
    deadline = time.monotonic() + 60
    while not pidfile.exists() and time.monotonic() < deadline and parent.poll() is None:
        time.sleep(0.05)
    if not pidfile.exists():
        parent.kill()
        pytest.fail(f"the worker did not start (parent exit {parent.wait(timeout=30)})")
    worker = int(pidfile.read_text())
    assert _alive(worker)
    os.kill(parent.pid, signal.SIGKILL)  # as a crash of `ganviews run` would
    parent.wait(timeout=30)
    deadline = time.monotonic() + 10
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        assert not _alive(worker), "the worker outlived its killed parent"
    finally:
        if _alive(worker):
            os.kill(worker, signal.SIGKILL)
