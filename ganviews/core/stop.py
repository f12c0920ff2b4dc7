"""Stopping a long job cleanly: a process-wide request, honoured between units of work.

The command line sets the request on the first SIGINT/SIGTERM (:mod:`ganviews.cli._interrupt`);
loops that own units of work — a batch of inversions, a shard of renders, the shards and the
stages of the pipeline — look at :func:`stop_requested` before starting the next one and end
early (a summary marked ``stopped``), without raising: a unit that has started finishes and
writes its results, so the latent store and the logits stay consistent, no run is marked
failed, and a rerun (``ganviews resume``) picks up exactly the work that never started.

Only units that run in this process see the request (threads included); the request is a
flag, not a signal, so nothing is interrupted half-way.
"""

from __future__ import annotations

import threading

_requested = threading.Event()


def request_stop() -> None:
    """Ask every loop of this process to stop before its next unit of work."""
    _requested.set()


def stop_requested() -> bool:
    return _requested.is_set()


def clear_stop() -> None:
    """Forget an earlier request (a new job in the same process)."""
    _requested.clear()
