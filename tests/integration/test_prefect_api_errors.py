"""Issue 18.6: distributed mode and deploy against a closed port or a silent API: one line,
bounded time (was a RuntimeError, an httpx.ConnectError, or no output for ≥ 180 s), also when
the API falls silent in the middle of a run."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from pipeline_job import make_dataset, write_config

from ganviews.cli import main

pytestmark = pytest.mark.integration


def test_closed_port_is_one_line(monkeypatch, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free once closed: nothing listens there
    monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{port}/api")
    assert main(["deploy"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"Prefect API http://127.0.0.1:{port}/api: cannot connect" in err


def test_api_that_never_answers_times_out_with_one_line(monkeypatch, capsys):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept_and_stay_silent() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept_and_stay_silent, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}/api"
    monkeypatch.setenv("PREFECT_API_URL", url)
    monkeypatch.setenv("PREFECT_API_REQUEST_TIMEOUT", "1")
    try:
        start = time.monotonic()
        assert main(["deploy"]) == 2
        assert time.monotonic() - start < 10
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in held:
            conn.close()
        server.close()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"Prefect API {url}: accepted the connection but did not answer within 1 s" in err


class SwitchingApi:
    """A real loopback HTTP server that answers ``GET /api/health`` with 200 for the first
    ``answers`` health requests, then accepts every connection and never answers (as it
    does every other request from the start): an API that falls silent mid-run."""

    def __init__(self, answers: int) -> None:
        self.answers, self.silent_since = answers, None
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(64)
        self.server.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}/api"
        self.held: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn = self.server.accept()[0]
            except OSError:
                continue
            conn.settimeout(5)
            try:
                request = conn.recv(65536)
            except OSError:
                request = b""
            if request.startswith(b"GET /api/health") and self.answers > 0:
                self.answers -= 1
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\ntrue"
                )
                conn.close()
                continue
            if request.startswith(b"GET /api/health") and self.silent_since is None:
                self.silent_since = time.monotonic()
            self.held.append(conn)  # accepted, never answered

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        for conn in self.held:
            conn.close()
        self.server.close()


@pytest.mark.slow  # a real (distributed) `ganviews run` in this process: ~8 s on a loaded box
def test_api_falling_silent_mid_run_is_one_line_within_the_read_timeout(
    tmp_path, stylegan2_fixtures, monkeypatch, capsys
):
    """`ganviews run --mode distributed`: the preflight and the first watch probes are
    answered, then the API goes silent while the pipeline flow talks to it; the command ends
    with one line within read timeout + probe interval (Prefect's client alone retried each
    call for minutes)."""
    from prefect.settings import (
        PREFECT_API_REQUEST_TIMEOUT,
        PREFECT_API_URL,
        PREFECT_CLIENT_MAX_RETRIES,
        temporary_settings,
    )

    gen = stylegan2_fixtures / "nvidia-ada-res32.pkl"
    make_dataset(tmp_path, gen, n=8)
    write_config(tmp_path, gen, mode="distributed")
    api = SwitchingApi(answers=3)  # the preflight check, then two watch probes
    monkeypatch.setenv("PREFECT_API_URL", api.url)
    monkeypatch.setenv("PREFECT_API_REQUEST_TIMEOUT", "1")
    monkeypatch.chdir(tmp_path)
    settings = {
        PREFECT_API_URL: api.url,
        PREFECT_API_REQUEST_TIMEOUT: 1.0,
        PREFECT_CLIENT_MAX_RETRIES: 0,
    }  # fmt: skip  (the abandoned job thread ends soon)
    try:
        with temporary_settings(updates=settings):
            assert main(["run", "pipeline.yaml", "--stages", "invert"]) == 2
            ended = time.monotonic()
    finally:
        api.close()  # the abandoned job thread's calls now fail at once
        for thread in threading.enumerate():
            if thread.name == "ganviews run job":
                thread.join(timeout=60)
    assert api.silent_since is not None
    assert ended - api.silent_since < 1.0 + 1 / 6 + 2.0  # read timeout + interval + slack
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    line = err
    assert line.startswith(f"ganviews run: error: Prefect API {api.url}: accepted the connection")
    assert "it stopped answering during the run" in line
    assert "when it answers again: ganviews resume pipeline.yaml --stages invert" in line


def test_watch_raises_while_the_job_is_stuck_on_the_silent_api():
    """The watch path alone: the job hangs (as a Prefect call with minutes of retries would);
    the command's main thread raises ApiUnavailable within read timeout + one interval."""
    from ganviews.cli._api import ApiUnavailable, ApiWatch
    from ganviews.cli._interrupt import run_interruptible

    api, release = SwitchingApi(answers=2), threading.Event()
    try:
        with ApiWatch(api.url, read=1.0, resume="ganviews resume c.yaml", interval=0.2) as watch:
            with pytest.raises(ApiUnavailable, match="it stopped answering during the run") as err:
                run_interruptible(
                    lambda: release.wait(60), command="ganviews run",
                    resume="ganviews resume c.yaml", on_exit_now=lambda: None, watch=watch,
                )  # fmt: skip
            ended = time.monotonic()
    finally:
        release.set()
        api.close()
    assert api.silent_since is not None and ended - api.silent_since < 1.0 + 0.2 + 1.0
    assert f"Prefect API {api.url}: accepted the connection but did not answer within 1 s" in str(
        err.value
    )
