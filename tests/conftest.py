"""Shared test set-up: the shared fixtures folder, a private Prefect home, quiet analytics, one
migrated Prefect database per session."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from unittest import mock

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


# Creates Prefect's SQLite schema (every Alembic migration) the way a server's start does.
_MIGRATE = (
    "import asyncio\n"
    "from prefect.server.database import provide_database_interface\n"
    "asyncio.run(provide_database_interface().create_db())\n"
)


@pytest.fixture(scope="session")
def prefect_db_template(request, tmp_path_factory) -> Path:
    """A Prefect SQLite database with every migration applied, made once and shared: kept in
    pytest's cache folder per Prefect version (so later sessions reuse it), or, with the cache
    disabled, in the session's temporary folder; the xdist workers of a session share it
    through a file lock.

    A Prefect server started on a fresh database first runs all of Prefect's migrations
    (measured: ~7 of the ~14 CPU seconds of the flow-test harness's start). Tests that start a
    real server (the flow-test harness, ``prefect server start``, ganviews' private server,
    ``ganviews server``) start it on a copy of this file (:func:`seed_prefect_db`): the server
    and its start are real, only the schema creation is shared."""
    import prefect

    cache = getattr(request.config, "cache", None)
    if cache is not None:
        folder = cache.mkdir(f"prefect-db-{prefect.__version__}")
    else:
        base = tmp_path_factory.getbasetemp()
        folder = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    template = folder / "prefect-migrated.db"
    with open(folder / "prefect-migrated.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not template.is_file():
            partial = folder / f"prefect-migrating-{os.getpid()}.db"
            env = {**os.environ, "PREFECT_SERVER_DATABASE_CONNECTION_URL": _sqlite_url(partial)}
            subprocess.run([sys.executable, "-c", _MIGRATE], env=env, check=True, timeout=600)
            os.replace(partial, template)  # whole or absent, never half-migrated
    return template


def _sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


def seed_prefect_db(template: Path, home: Path, name: str = "prefect.db") -> Path:
    """Copy the migrated template to ``home/name`` (Prefect's default database in a
    PREFECT_HOME is ``prefect.db``) unless a database is already there."""
    home.mkdir(parents=True, exist_ok=True)
    target = home / name
    if not target.exists():
        shutil.copyfile(template, target)
    return target


@pytest.fixture(scope="session")
def harness(prefect_db_template: Path):
    """One Prefect test harness (a temporary server on SQLite) for the whole session, the flow
    tests share it. Prefect's harness puts its database in a fresh ``mkdtemp()`` folder; the
    folder it gets here already holds a copy of the migrated template, so the harness's server
    starts without re-running every migration."""
    import prefect.testing.utilities as utilities

    def seeded_mkdtemp() -> str:
        folder = Path(tempfile.mkdtemp(prefix="ganviews-test-harness-"))
        seed_prefect_db(prefect_db_template, folder, name="prefect-test.db")
        return str(folder)

    with contextlib.ExitStack() as stack:
        with mock.patch.object(utilities, "mkdtemp", seeded_mkdtemp):
            stack.enter_context(utilities.prefect_test_harness(server_startup_timeout=300))
        yield


@pytest.fixture(scope="session")
def migrated_prefect_home(prefect_db_template: Path) -> Path:
    """The session's PREFECT_HOME (see the top) with a copy of the migrated database: the
    private Prefect servers of embedded ``ganviews`` subprocesses use it."""
    return seed_prefect_db(prefect_db_template, Path(os.environ["PREFECT_HOME"]))


@pytest.fixture(autouse=True)
def _integration_prefect_home(request) -> None:
    """Integration tests start real Prefect servers under the session's PREFECT_HOME; others
    never pay for the template."""
    if INTEGRATION in Path(str(request.node.fspath)).parents:
        request.getfixturevalue("migrated_prefect_home")
