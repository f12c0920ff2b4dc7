"""SQL over the pipeline's tables with DuckDB, under stable view names.

=================  ==========================================================================
view               source
=================  ==========================================================================
``logits``         the logits Parquet dataset (:mod:`storage.logits`), one row per view
``manifest``       the dataset manifest (:mod:`storage.manifest`); defaults to the store's copy
``latents_status`` one row per store index: index, image_id, shard, status, reason, metrics
=================  ==========================================================================

Example: accuracy of the original images per task on the test split::

    sql("SELECT task, avg((list_position(logits, list_max(logits)) - 1 = label)::INT) AS acc "
        "FROM logits WHERE view = 0 AND split = 'test' GROUP BY task", logits="out/logits")

Queries are read-only and see nothing outside the views: the connection turns off DuckDB's
external access (files, ``COPY``, ``ATTACH``, extensions) and locks its configuration after the
views are registered, and :func:`sql` runs exactly one ``SELECT``/``WITH`` statement per call.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from storage.errors import StoreError
from storage.latent_layout import METRICS, STATUS_NAMES
from storage.latents import LatentStore
from storage.logits import CLEAN, logits_dataset
from storage.manifest import read_manifest

VIEWS = ("logits", "manifest", "latents_status")


def latents_status_frame(store: LatentStore) -> pd.DataFrame:
    """One row per image of a latent store: index, image_id, shard, status, reason, metrics."""
    status = store.read(np.arange(store.n_images), fields=["status", "reason", *METRICS])
    frame = pd.DataFrame(
        {
            "index": np.arange(store.n_images, dtype=np.int64),
            "image_id": store.image_ids.astype(str),
            "shard": np.arange(store.n_images, dtype=np.int64) // store.shard_size,
            "status": pd.Series(status["status"]).map(STATUS_NAMES).astype(str),
            "reason": status["reason"].astype(str),
        }
    )
    for name in METRICS:
        frame[name] = status[name]
    return frame


def connect(
    *,
    logits: str | Path | None = None,
    manifest: str | Path | None = None,
    store: str | Path | LatentStore | None = None,
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the views for whatever sources were given."""
    con = duckdb.connect(database=":memory:")
    # Only the registered views: never let DuckDB resolve a table name to a Python variable.
    con.execute("SET python_enable_replacements = false")
    if isinstance(store, (str, Path)):
        store = LatentStore.open(store, mode="r")
    if manifest is None and store is not None and (store.path / "manifest.parquet").is_file():
        manifest = store.path / "manifest.parquet"
    if logits is not None:
        con.register("logits_files", logits_dataset(logits))
        # files written before the condition column read as the clean condition
        con.execute(
            "CREATE VIEW logits AS SELECT * REPLACE "
            f"(coalesce(condition, '{CLEAN}') AS condition) FROM logits_files"
        )
    if manifest is not None:
        frame = read_manifest(manifest)  # validates before exposing it
        con.register("manifest", frame)
    if store is not None:
        con.register("latents_status", latents_status_frame(store))
    # From here on the connection reads only the registered views: no files, COPY, ATTACH,
    # INSTALL/LOAD, and no statement may turn that back on.
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def check_select(con: duckdb.DuckDBPyConnection, query: str) -> None:
    """Refuse anything but exactly one ``SELECT``/``WITH`` statement (StoreError, one line)."""
    try:
        statements = con.extract_statements(query)
    except duckdb.Error as exc:
        raise StoreError(f"SQL failed: {str(exc).strip().splitlines()[0]}") from exc
    if len(statements) != 1:
        raise StoreError(
            f"SQL: give exactly one SELECT (or WITH … SELECT) statement, got {len(statements)}"
        )
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise StoreError(
            f"SQL: only SELECT (or WITH … SELECT) is allowed, got a {kind.name} statement; "
            "queries are read-only"
        )


def sql(
    query: str,
    *,
    logits: str | Path | None = None,
    manifest: str | Path | None = None,
    store: str | Path | LatentStore | None = None,
) -> pd.DataFrame:
    """Run one read-only ``SELECT`` over the views ``logits``, ``manifest``, ``latents_status``.

    Returns a DataFrame. Several statements, anything but a query, or a query that reaches for
    files (``read_csv``, ``COPY``, ``ATTACH``) raise StoreError with one line.
    """
    if not isinstance(query, str) or not query.strip():
        raise StoreError("query must be a non-empty SQL string")
    given = [
        name for name, src in zip(VIEWS, (logits, manifest, store), strict=True) if src is not None
    ]
    if manifest is None and store is not None:
        given.insert(1, "manifest (from the store, if it has one)")
    con = connect(logits=logits, manifest=manifest, store=store)
    try:
        check_select(con, query)
        return con.execute(query).df()
    except duckdb.Error as exc:
        first = str(exc).strip().splitlines()[0]
        raise StoreError(
            f"SQL failed: {first} (views available: {', '.join(given) or 'none'})"
        ) from exc
    finally:
        con.close()
