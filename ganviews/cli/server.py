"""``ganviews server [--port 4200]``: a local Prefect server with its UI, to watch embedded runs.

An embedded run (``ganviews run`` / ``resume`` / ``demo`` without ``PREFECT_API_URL``) talks
to a private API server that lives as long as the run and has no UI. To watch a run in the
Prefect UI, start this server in one shell and point the run at it in another::

    ganviews server                                   # UI on http://127.0.0.1:4200
    PREFECT_API_URL=http://127.0.0.1:4200/api ganviews run CONFIG

:func:`embedded_api` is the private server: started in its own session (process group), so
the Ctrl-C a terminal sends to ganviews' process group never reaches it; the run stops it
last, after its own work has stopped (:mod:`ganviews.cli._interrupt`). It runs this module
as its main (:func:`serve_private`) and dies with the run even when the run is killed with
``kill -9`` (parent-death signal + watchdog, :mod:`ganviews.core.lifeline`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

DEFAULT_PORT = 4200  # Prefect's own default port
STARTUP_SECONDS = 120.0  # a loaded node can take a while to import the server


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "server",
        help="start a local Prefect server with its UI (watch embedded runs)",
        description="Start a Prefect server and UI on a loopback port in the foreground (Ctrl-C "
        "stops it). Runs started with PREFECT_API_URL=http://HOST:PORT/api report to it.",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: %(default)s)"
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="port to bind (default: %(default)s)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    url = f"http://{args.host}:{args.port}"
    print(
        f"ganviews server: Prefect UI on {url}; in another shell run jobs against it with\n"
        f"  export PREFECT_API_URL={url}/api\n  ganviews run CONFIG   (Ctrl-C here stops the server)",
        flush=True,
    )
    argv = [sys.executable, "-m", "prefect", "server", "start"]
    os.execv(sys.executable, [*argv, "--host", args.host, "--port", str(args.port)])
    return 0  # not reached: the process becomes the server


def api_url_from_settings() -> str | None:
    """PREFECT_API_URL as Prefect sees it (environment or profile), or None."""
    from prefect.settings import PREFECT_API_URL

    return os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value() or None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def embedded_api() -> Iterator[subprocess.Popen | None]:
    """The API an embedded run uses: PREFECT_API_URL when set (yields None), else a private
    server in its own session for the duration of the block (yields its process)."""
    if api_url_from_settings():
        yield None
        return
    import httpx
    from prefect.settings import PREFECT_API_URL, temporary_settings

    port = free_port()
    # this module as the server's main (see the end): it dies with this process
    command = [sys.executable, "-m", __name__, str(os.getpid()), str(port)]
    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1"}
    process = subprocess.Popen(command, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the Prefect API server exited with code {process.returncode}")
            try:
                if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Prefect API server did not answer on {url} in time")
            time.sleep(0.2)
        print(f"Prefect API: private server {url} (pid {process.pid})", file=sys.stderr, flush=True)
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield process
    finally:
        _drain_prefect_clients()  # logs and events still queued go out while the server is up
        stop_server(process)


def _drain_prefect_clients(timeout: float = 5.0) -> None:
    """Send the run's queued logs and events before the server goes (they used to fail with
    ``httpx.ConnectError`` at exit)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):
            service.drain_all(timeout=timeout)


def stop_server(process: subprocess.Popen | None, *, wait: float = 10.0) -> None:
    """Terminate the private server (its whole session), killing it if it does not exit in time."""
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, 15)
    try:
        process.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 9)
        process.wait()


def serve_private(parent: int, port: int) -> None:
    """The private server's process: bound to ``parent`` (the run that started it) by a
    parent-death signal and a watchdog (:func:`ganviews.core.lifeline.die_with_parent`), so a
    ``kill -9`` of the run does not leave it behind; then Prefect's API app on loopback."""
    from ganviews.core.lifeline import die_with_parent

    die_with_parent(parent)
    import uvicorn

    uvicorn.run(
        "prefect.server.api.server:create_app", factory=True, host="127.0.0.1", port=port,
        log_level="error", lifespan="on",
    )  # fmt: skip


if __name__ == "__main__":  # python -m ganviews.cli.server PARENT_PID PORT (embedded_api)
    serve_private(int(sys.argv[1]), int(sys.argv[2]))
