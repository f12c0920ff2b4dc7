"""Processes that die with the process that started them (issue 18.5: orphans).

``kill -9`` of ``ganviews run`` with ``task_runner: process`` used to leave the private
Prefect API server, process-pool workers holding gigabytes and the multiprocessing resource
tracker running indefinitely. Two mechanisms, both here, neither importing torch:

* :func:`set_parent_death_signal`: Linux ``prctl(PR_SET_PDEATHSIG)`` (through ctypes): the
  kernel signals this process when its parent goes, even by ``kill -9``. The kernel sends
  it when the parent *thread* that forked it exits, so it is used only where ganviews
  starts the process from a thread that outlives it (the private API server, started and
  stopped by the same ``with`` block); pool workers are spawned from Prefect's resolver
  threads, whose lifetime ganviews does not control, so they rely on the watchdog alone.
* :func:`exit_with_parent`: a daemon thread polling ``os.getppid()`` against the pid the
  process was started by, leaving with ``os._exit(1)`` once it differs (re-parented to init
  or a subreaper). Portable (any POSIX), and it also covers a parent that died before the
  watch began, because the parent pid is known from the start (the spawn records it, the
  server gets it on its command line), not read when the watch starts.

The resource tracker needs neither: it exits when the last holder of its pipe (the parent
and the workers) is gone, i.e. right after the workers' watchdogs fire (tested end to end in
``tests/integration/test_orphans.py``).
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # linux/prctl.h
POLL_SECONDS = 1.0  # how often the watchdog looks at its parent pid

_WATCHED: list[int] = []  # the parent pid this process's watchdog watches (at most one)
_WATCHED_LOCK = threading.Lock()


def set_parent_death_signal(sig: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent exits (Linux only);
    False where the platform or libc has no ``prctl``."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def exit_with_parent(parent: int | None = None, *, poll_seconds: float = POLL_SECONDS) -> bool:
    """Leave with ``os._exit(1)`` as soon as ``parent`` is no longer this process's parent.

    ``parent`` None: the process that spawned this one through :mod:`multiprocessing` (a
    process-pool worker); in a process not started that way (the CLI itself) nothing is
    watched. Idempotent: one watchdog per process. Returns True when a watchdog runs.
    """
    if parent is None:
        spawner = multiprocessing.parent_process()
        if spawner is None:
            return False
        parent = int(spawner.pid)
    with _WATCHED_LOCK:
        if _WATCHED:
            return True
        _WATCHED.append(parent)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        log.error("parent process %d is gone; process %d exits", parent, os.getpid())
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
    return True


def die_with_parent(parent: int, *, sig: int = signal.SIGTERM) -> None:
    """Both mechanisms, for a child ganviews starts itself and whose parent pid it passes:
    the parent-death signal (Linux), then the watchdog (which also catches a parent that
    died before the signal was armed)."""
    set_parent_death_signal(sig)
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)
    exit_with_parent(parent)
