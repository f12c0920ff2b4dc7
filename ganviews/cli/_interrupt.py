"""Clean interruption of long commands (``ganviews run``, ``resume``, ``demo``).

A terminal's Ctrl-C sends SIGINT to the whole process group; a scheduler sends SIGTERM.
Before, the first killed Prefect's temporary server at once (the run went on, printing
connection errors) and the second crashed the flow. Now:

- the job runs in a worker thread; this (main) thread only waits and handles the signals, so
  Prefect's own SIGTERM handler (installed only from the main thread) never replaces ours;
- the first SIGINT/SIGTERM requests a stop (:mod:`ganviews.core.stop`): the current batch
  (inversion) or shard (render) finishes and is written, nothing new starts, the job ends
  with exit code 130 and prints the exact command that resumes it;
- a second one exits at once (code 130): the private API server is stopped first, the
  store keeps every batch that was written, and the same command resumes;
- the private API server (:func:`ganviews.cli.server.embedded_api`) is in its own session, so
  the terminal's signal never reaches it, and it is stopped last.
"""

from __future__ import annotations

import contextvars
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for an interrupted command
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def run_interruptible(
    job: Callable[[], Any],
    *,
    command: str,
    resume: str,
    on_exit_now: Callable[[], None],
    watch: Any = None,
) -> tuple[bool, Any]:
    """Run ``job`` in a worker thread with stop-on-signal handling → (interrupted, result).

    ``command`` names the command in messages, ``resume`` is the command that resumes the job,
    ``on_exit_now`` runs before an immediate exit on the second signal (stop the API server).
    An exception of ``job`` is raised here, unless a stop was requested (then interrupted).
    ``watch`` (a :class:`ganviews.cli._api.ApiWatch`): its ``failure`` is raised here as soon
    as it is set, without waiting for the job, which may be stuck on the silent API.
    """
    from ganviews.core.stop import clear_stop, request_stop, stop_requested

    clear_stop()
    outcome: dict[str, Any] = {}
    received: list[int] = []
    context = contextvars.copy_context()  # Prefect's settings (e.g. the API URL) live in it

    def target() -> None:
        try:
            outcome["result"] = context.run(job)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            outcome["error"] = exc

    def handler(signum: int, frame: object) -> None:
        received.append(signum)
        name = signal.Signals(signum).name
        if len(received) == 1:
            request_stop()
            print(
                f"\n{command}: {name}: stopping after the current batch; "
                "send it again to exit at once",
                file=sys.stderr,
                flush=True,
            )
            return
        print(
            f"{command}: {name} again: exiting now; resume with: {resume}",
            file=sys.stderr,
            flush=True,
        )
        on_exit_now()
        os._exit(EXIT_INTERRUPTED)

    previous = {s: signal.signal(s, handler) for s in _SIGNALS}
    worker = threading.Thread(target=target, name=f"{command} job", daemon=True)
    try:
        worker.start()
        while worker.is_alive():
            worker.join(0.2)  # short waits: signal handlers run between them
            if watch is not None and watch.failure is not None:
                raise watch.failure
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if stop_requested():
        return True, outcome.get("result")
    if "error" in outcome:
        if watch is not None:
            watch.explain()  # an error of a job whose API fell silent is that, in one line
        raise outcome["error"]
    return False, outcome.get("result")


def report_interrupted(command: str, resume: str) -> int:
    print(
        f"{command}: interrupted; finished batches are kept. Resume with:\n  {resume}",
        file=sys.stderr,
        flush=True,
    )
    return EXIT_INTERRUPTED
