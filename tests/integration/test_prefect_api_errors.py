"""Issue 18.6: distributed mode and deploy against a closed port or a silent API: one line,
bounded time (was a RuntimeError, an httpx.ConnectError, or no output for ≥ 180 s)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

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
