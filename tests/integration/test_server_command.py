"""``ganviews server``: a local Prefect server with its UI on a fixed loopback port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import seed_prefect_db

from ganviews.cli.server import free_port

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_server_serves_the_api_and_the_ui_until_interrupted(tmp_path, prefect_db_template):
    seed_prefect_db(prefect_db_template, tmp_path / "prefect")  # migrated once per session
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PYTHONPATH=str(REPO), PREFECT_HOME=str(tmp_path / "prefect"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "ganviews", "server", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
        text=True,
    )
    try:
        deadline, healthy = time.monotonic() + 300, False
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                healthy = (
                    httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200
                )
            except httpx.HTTPError:
                healthy = False
            if healthy:
                break
            time.sleep(0.5)
        assert healthy, proc.stdout.read() if proc.poll() is not None else "no answer"
        ui = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
        assert ui.status_code == 200 and "<html" in ui.text.lower()
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in its terminal stops it
        out, _ = proc.communicate(timeout=60)
    assert f"export PREFECT_API_URL=http://127.0.0.1:{port}/api" in out
