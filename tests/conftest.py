"""Shared test set-up: the shared fixtures folder, a private Prefect home, quiet analytics."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

# Prefect reads its settings at import time: isolate it before any test imports it.
_PREFECT_HOME = Path(tempfile.mkdtemp(prefix="ganviews-test-prefect-"))
os.environ.setdefault("PREFECT_HOME", str(_PREFECT_HOME))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_LOGGING_TO_API_ENABLED", "false")

# Prefect configures logging when `prefect.main` is first imported (any `from prefect import
# flow`), binding its console handler to sys.stderr *of that moment*. Imported first inside a
# test that captures output (capsys), the handler keeps that test's stream, which is closed
# afterwards: every later Prefect log line then prints "--- Logging error ---" into whichever
# test runs (the suite passed only in an order where a plain test imported Prefect first).
# Importing it here binds the handler to the session's stream, in any order.
import prefect.main  # noqa: E402, F401

# Tests are many small tensor ops on 2 cores, several processes at a time: one intra-op
# thread per process avoids oversubscription (measured: 263 s → 19 s wall for one test).
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
INTEGRATION = Path(__file__).resolve().parent / "integration"


def pytest_collection_modifyitems(items) -> None:
    """Everything under tests/integration/ (servers, subprocesses) is marked ``integration``,
    so ``./run test-fast`` (``-m "not slow and not integration"``) never starts one.

    Integration modules run first, then other modules holding a slow test (order kept
    otherwise): under ``--dist loadfile`` the long modules start at once on some workers while
    the many short ones fill the others, instead of one long module starting last and
    running alone."""
    heavy = set()
    for item in items:
        if INTEGRATION in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)
        if item.get_closest_marker("slow") or item.get_closest_marker("integration"):
            heavy.add(str(item.fspath))
    items.sort(  # stable sort: False sorts first
        key=lambda item: (
            INTEGRATION not in Path(str(item.fspath)).parents,
            str(item.fspath) not in heavy,
        )
    )


SHARED_FIXTURES = Path(
    os.environ.get("GANVIEWS_SHARED_FIXTURES", REPO.parent / "shared" / "fixtures")
)


@pytest.fixture(scope="session")
def shared_fixtures() -> Path:
    """``../shared/fixtures`` (or $GANVIEWS_SHARED_FIXTURES); fail loudly when it is absent."""
    if not (SHARED_FIXTURES / "stylegan2").is_dir():
        pytest.fail(
            f"shared fixtures not found at {SHARED_FIXTURES}: the tests read the StyleGAN2 "
            "checkpoint fixtures from ../shared/fixtures/stylegan2 next to this checkout "
            "(or set GANVIEWS_SHARED_FIXTURES to the folder that holds stylegan2/)"
        )
    return SHARED_FIXTURES


@pytest.fixture(scope="session")
def stylegan2_fixtures(shared_fixtures: Path) -> Path:
    return shared_fixtures / "stylegan2"


@pytest.fixture(scope="session")
def harness():
    """One Prefect test harness (a temporary server on SQLite) for the whole session: its first
    start creates the database, which takes tens of seconds, so the flow tests share it."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=300):
        yield
