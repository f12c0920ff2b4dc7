"""DuckDB views over logits / manifest / store status, and the ``status`` / ``query`` commands."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ganviews.cli import main
from storage import LatentStore, StoreError, write_logits
from storage.query import sql

ATTRS = {"generator_sha256": "9" * 64, "config": {"steps": 500}}


@pytest.fixture
def tables(tmp_path):
    manifest = pd.DataFrame(
        {
            "image_id": ["i0", "i1", "i2", "i3", "i4"],
            "path": [f"/d/{i}.png" for i in range(5)],
            "split": ["val", "val", "test", "test", "test"],
            "Smiling": [1, 0, 1, 1, 0],
        }
    )
    store = LatentStore.create(tmp_path / "s.zarr", 5, 3, 4, 2, attrs=ATTRS, manifest=manifest)
    store.write(
        [0, 1, 2],
        w=np.arange(36, dtype=np.float32).reshape(3, 3, 4),
        loss=np.array([0.1, 0.2, 0.3]),
        psnr=np.array([25.0, 26.0, 27.0]),
    )
    store.mark_failed([4], "Traceback (most recent call last):\nRuntimeError: CUDA out of memory")
    rows = []
    for k, image_id in enumerate(manifest["image_id"]):
        label = int(manifest["Smiling"][k])
        for view in range(3):
            right = (k + view) % 2 == 0  # original view correct for even k
            logits = [0.0, 1.0] if (label == 1) == right else [1.0, 0.0]
            rows.append(
                {
                    "image_id": image_id,
                    "split": manifest["split"][k],
                    "task": "Smiling",
                    "classifier": "r18",
                    "method": "isotropic_fine",
                    "setting": "0.3",
                    "view": view,
                    "logits": np.asarray(logits, np.float32),
                    "label": label,
                    "seed": None if view < 2 else view,
                }
            )
    write_logits(tmp_path / "logits", pd.DataFrame(rows), shard="000000-000005")
    return tmp_path


def test_sql_joins_logits_manifest_and_status(tables):
    acc = sql(
        "SELECT split, avg((list_position(logits, list_max(logits)) - 1 = label)::INT) AS acc, "
        "count(*) AS n FROM logits WHERE view = 0 GROUP BY split ORDER BY split",
        logits=tables / "logits",
    )
    assert acc.to_dict("list") == {
        "split": ["test", "val"],
        "acc": [pytest.approx(2 / 3), 0.5],
        "n": [3, 2],
    }
    joined = sql(
        "SELECT m.image_id, m.Smiling, s.status, s.loss FROM manifest m JOIN latents_status s "
        "USING (image_id) ORDER BY m.image_id",
        store=tables / "s.zarr",
    )
    assert joined["status"].tolist() == ["done", "done", "done", "pending", "failed"]
    assert joined["loss"].tolist()[:3] == pytest.approx([0.1, 0.2, 0.3]) and np.isnan(
        joined["loss"][3]
    )
    n = sql(
        "SELECT count(*) AS n FROM logits l JOIN manifest m USING (image_id) WHERE m.Smiling = 1",
        logits=tables / "logits",
        manifest=tables / "s.zarr" / "manifest.parquet",
    )
    assert n["n"].tolist() == [9]


def test_sql_errors_are_clear(tables):
    with pytest.raises(
        StoreError, match=r"Table with name manifest does not exist.*views available: logits"
    ):
        sql("SELECT * FROM manifest", logits=tables / "logits")
    with pytest.raises(StoreError, match="query must be a non-empty SQL string"):
        sql("  ", logits=tables / "logits")
    with pytest.raises(StoreError, match="SQL failed: Parser Error"):
        sql("SELEC 1", logits=tables / "logits")


def test_status_command(tables, capsys):
    assert main(["status", str(tables / "s.zarr")]) == 0
    out = capsys.readouterr().out
    assert "progress   done 3 (60.0%)  failed 1  pending 1" in out
    assert "shard  start  stop  pending  done  failed" in out
    assert "     1  RuntimeError: CUDA out of memory" in out  # grouped by the traceback's last line
    assert "i4" in out
    assert "by failed attempts: 1 after 1" in out and "given up" not in out
    assert main(["status", str(tables / "s.zarr"), "--max-attempts", "1"]) == 0
    assert "given up   1 (failed 1 times; runs retry the other 0)" in capsys.readouterr().out
    assert main(["status", str(tables / "s.zarr"), "--max-attempts", "2"]) == 0
    assert "given up   0 (failed 2 times; runs retry the other 1)" in capsys.readouterr().out


def test_status_of_a_missing_store_is_one_clean_line(tmp_path, capsys):
    assert main(["status", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        f"ganviews status: error: no latent store at {tmp_path / 'nope'}: the path does not exist"
    ]


def test_query_latents_command(tables, capsys, tmp_path):
    out_file = tmp_path / "sel.npy"
    assert (
        main(
            [
                "query",
                "latents",
                str(tables / "s.zarr"),
                "--ids",
                "0:2",
                "i2",
                "--out",
                str(out_file),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "w: shape (3, 3, 4) dtype float32 (3 of 3 selected done)" in out
    assert "mean 17.5  std 10.3883  min 0  max 35" in out
    saved = np.load(out_file)
    np.testing.assert_array_equal(saved, np.arange(36, dtype=np.float32).reshape(3, 3, 4))
    assert main(["query", "latents", str(tables / "s.zarr")]) == 0  # default: every done item
    assert "(3 of 3 selected done)" in capsys.readouterr().out
    assert main(["query", "latents", str(tables / "s.zarr"), "--ids", "7"]) == 2
    assert "index 7 out of range" in capsys.readouterr().err
    assert main(["query", "latents", str(tables / "s.zarr"), "--ids", "ghost"]) == 2
    assert "unknown image_id(s) ['ghost']" in capsys.readouterr().err


def test_query_sql_command(tables, capsys, tmp_path):
    out_csv = tmp_path / "r.csv"
    code = main(
        [
            "query",
            "sql",
            "SELECT view, count(*) AS n FROM logits GROUP BY view ORDER BY view",
            "--logits",
            str(tables / "logits"),
            "--out",
            str(out_csv),
        ]
    )
    assert code == 0
    assert pd.read_csv(out_csv).to_dict("list") == {"view": [0, 1, 2], "n": [5, 5, 5]}
    assert "wrote 3 rows" in capsys.readouterr().out
    assert main(["query", "sql", "SELECT 1"]) == 2
    assert "give at least one of --logits, --manifest, --store" in capsys.readouterr().err
    assert main(["query", "sql", "SELECT * FROM nowhere", "--store", str(tables / "s.zarr")]) == 2
    assert "Table with name nowhere does not exist" in capsys.readouterr().err


def _tree_bytes(root):
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


ATTACKS = [  # (statement, what the one-line refusal says)
    ("COPY (SELECT 'x') TO '{store}/zarr.json'", "only SELECT"),
    ("COPY (SELECT * FROM logits WHERE view < 0) TO '{shard}' (FORMAT parquet)", "only SELECT"),
    ("ATTACH '{root}/x.duckdb'", "only SELECT"),
    ("SELECT 1; COPY (SELECT 'x') TO '{store}/zarr.json'", "exactly one SELECT"),
    ("SELECT * FROM read_csv('{store}/zarr.json')", "file system operations are disabled"),
    ("SELECT * FROM read_parquet('{shard}')", "file system operations are disabled"),
    ("SET enable_external_access = true", "only SELECT"),
    ("INSTALL httpfs", "only SELECT"),
    ("CREATE TABLE t AS SELECT 1", "only SELECT"),
    ("SELECT (", "SQL failed: Parser Error"),
]


def test_query_sql_is_read_only_and_sees_only_its_views(tables, capsys):
    """Issue 18.1: COPY/ATTACH/several statements wrote into the store; now one line, no write."""
    store, logits = tables / "s.zarr", tables / "logits"
    shard = next(logits.rglob("*.parquet"))
    before = _tree_bytes(tables)
    for attack, refusal in ATTACKS:
        query = attack.format(store=store, shard=shard, root=tables)
        code = main(["query", "sql", query, "--store", str(store), "--logits", str(logits)])
        err = capsys.readouterr().err
        assert code == 2, attack
        assert refusal in err and len(err.strip().splitlines()) == 1, (attack, err)
    assert _tree_bytes(tables) == before  # nothing written, emptied or created
    assert sql("SELECT count(*) AS n FROM logits", logits=logits)["n"].tolist() == [15]
