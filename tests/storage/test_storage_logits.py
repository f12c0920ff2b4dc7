"""Logit tables: partitioned layout, rerun replacement, validation and foreign files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage import LOGITS_SCHEMA, PARTITION_COLUMNS, StoreError, read_logits, write_logits
from storage.logits import logits_files, read_logits_metadata


def rows(
    image_ids,
    *,
    setting="0.3",
    method="isotropic_fine",
    task="Smiling",
    classifier="r18",
    n_views=4,
    n_classes=2,
    split="val",
    offset=0.0,
):
    out = []
    for k, image_id in enumerate(image_ids):
        for view in range(n_views):
            logits = np.arange(n_classes, dtype=np.float32) * (k + 1) + view + offset
            out.append(
                {
                    "image_id": image_id,
                    "split": split,
                    "task": task,
                    "classifier": classifier,
                    "method": method,
                    "setting": setting,
                    "view": view,
                    "logits": logits,
                    "label": k % n_classes,
                    "seed": None if view < 2 else 1000 * k + view,
                }
            )
    return pd.DataFrame(out)


def test_layout_round_trip_and_metadata(tmp_path):
    written = write_logits(
        tmp_path, rows(["a", "b"]), shard="000000-000002", metadata={"config_hash": "c0"}
    )
    assert [p.relative_to(tmp_path).as_posix() for p in written] == [
        "task=Smiling/classifier=r18/method=isotropic_fine/shard-000000-000002.parquet"
    ]
    frame = read_logits(tmp_path)
    assert list(frame.columns) == LOGITS_SCHEMA.names and len(frame) == 8
    a2 = frame[(frame.image_id == "a") & (frame.view == 2)].iloc[0]
    np.testing.assert_array_equal(a2["logits"], [2.0, 3.0])
    assert a2["seed"] == 2 and pd.isna(frame[frame.view == 0]["seed"]).all()
    assert frame["view"].dtype == np.int32 and frame["label"].dtype == np.int64
    meta = read_logits_metadata(tmp_path)
    assert meta[
        ["task", "classifier", "method", "shard", "setting", "num_classes"]
    ].values.tolist() == [["Smiling", "r18", "isotropic_fine", "000000-000002", "0.3", 2]]
    assert meta["metadata"][0] == {"config_hash": "c0"}
    assert PARTITION_COLUMNS == ("task", "classifier", "method")


def test_rerun_replaces_and_never_duplicates(tmp_path):
    write_logits(tmp_path, rows(["a", "b"]), shard="s0")
    write_logits(tmp_path, rows(["c"]), shard="s1")
    write_logits(tmp_path, rows(["a", "b"], offset=10.0), shard="s0")  # the rerun of shard s0
    frame = read_logits(tmp_path)
    assert len(frame) == 12
    assert frame.groupby(["image_id", "view"]).size().max() == 1
    first = frame[(frame.image_id == "a") & (frame.view == 0)]["logits"].iloc[0]
    np.testing.assert_array_equal(first, [10.0, 11.0])
    # settings written one call at a time accumulate; a rerun of one setting replaces only it
    write_logits(tmp_path, rows(["a", "b"], setting="0.5"), shard="s0")
    write_logits(tmp_path, rows(["a", "b"], setting="0.5", n_views=3), shard="s0")
    frame = read_logits(tmp_path, {"image_id": ["a", "b"]})
    assert frame.groupby("setting").size().to_dict() == {"0.3": 8, "0.5": 6}
    files = logits_files(tmp_path)
    assert sorted(p.name for p in files) == ["shard-s0.parquet", "shard-s1.parquet"]
    assert not list(tmp_path.rglob("*.partial"))


def test_filters_partitions_and_columns(tmp_path):
    write_logits(
        tmp_path,
        pd.concat(
            [
                rows(["a"], method="crop", setting=""),
                rows(["a"], method="stylemix_coarse", setting="0.5"),
                rows(["a"], task="Young", n_classes=2),
            ]
        ),
        shard="s0",
    )
    assert len(logits_files(tmp_path)) == 3
    assert [p.parts[-2] for p in logits_files(tmp_path, {"method": "crop"})] == ["method=crop"]
    got = read_logits(tmp_path, {"method": ["crop", "stylemix_coarse"], "view": [0, 1]})
    assert sorted(set(got["method"])) == ["crop", "stylemix_coarse"] and set(got["view"]) == {0, 1}
    assert read_logits(tmp_path, {"task": "Young"}).shape[0] == 4
    only = read_logits(tmp_path, {"setting": "0.5"}, columns=["image_id", "logits"])
    assert list(only.columns) == ["image_id", "logits"] and len(only) == 4
    with pytest.raises(StoreError, match="filter on 'setting': 0.5 is not text"):
        read_logits(tmp_path, {"setting": 0.5})
    with pytest.raises(StoreError, match="filter on unknown column 'sigma'"):
        read_logits(tmp_path, {"sigma": "0.5"})
    with pytest.raises(StoreError, match=r"unknown column\(s\) \['prob'\]"):
        read_logits(tmp_path, columns=["prob"])


def test_tasks_with_different_class_counts_share_the_dataset(tmp_path):
    write_logits(
        tmp_path,
        pd.concat(
            [rows(["a"], task="car_type", n_classes=3), rows(["a"], task="Smiling", n_classes=2)]
        ),
        shard="s0",
    )
    frame = read_logits(tmp_path)
    lengths = frame.groupby("task")["logits"].apply(lambda s: {len(v) for v in s}).to_dict()
    assert lengths == {"Smiling": {2}, "car_type": {3}}
    with pytest.raises(StoreError, match="have length 4, but .* holds length 3"):
        write_logits(tmp_path, rows(["b"], task="car_type", n_classes=4, method="crop"), shard="s1")


def test_arrow_logits_option_keeps_the_values_without_python_objects(tmp_path):
    write_logits(
        tmp_path,
        pd.concat(
            [
                rows(["a", "b"], task="car_type", n_classes=3),
                rows(["a"], task="Smiling", n_classes=2),
            ]
        ),
        shard="s0",
    )
    plain, arrow = read_logits(tmp_path), read_logits(tmp_path, arrow_logits=True)
    assert list(arrow.columns) == list(plain.columns) and isinstance(
        arrow["logits"].dtype, pd.ArrowDtype
    )
    assert [np.asarray(v, np.float32).tolist() for v in arrow["logits"]] == [
        v.tolist() for v in plain["logits"]
    ]
    assert arrow.drop(columns="logits").equals(plain.drop(columns="logits"))
    narrow = read_logits(
        tmp_path, {"task": "Smiling"}, columns=["image_id", "logits"], arrow_logits=True
    )
    assert (
        list(narrow.columns) == ["image_id", "logits"]
        and narrow["logits"].list.len().tolist() == [2] * 4
    )


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: f.drop(columns=["seed"]), r"lack columns \['seed'\]"),
        (lambda f: f.assign(prob=1.0), r"unknown columns \['prob'\]"),
        (lambda f: f.assign(split="holdout"), r"'split': values \['holdout'\]"),
        (lambda f: f.assign(view=-1), "'view' must be ≥ 0"),
        (lambda f: f.assign(image_id=None), "image_id.* 8 null"),
        (lambda f: f.assign(logits=[np.array([np.nan, 1.0], np.float32)] * len(f)), "null/NaN"),
        (
            lambda f: f.assign(logits=[np.array([np.inf, 1.0], np.float32)] * len(f)),
            "NaN or infinite",
        ),
        (lambda f: f.assign(logits=[np.zeros(0, np.float32)] * len(f)), "empty list"),
        (
            lambda f: f.assign(logits=[np.zeros(1 + i % 2, np.float32) for i in range(len(f))]),
            r"lengths 1…2; one length per classifier",
        ),
        (lambda f: pd.concat([f, f.iloc[:1]]), "1 duplicate logit row key"),
        (
            lambda f: f.assign(method="iso fine"),
            "'method': value 'iso fine' cannot name a partition",
        ),
        (lambda f: f.assign(label="smile"), "do not fit the schema"),
    ],
)
def test_bad_rows_are_rejected_and_nothing_written(tmp_path, mutate, message):
    with pytest.raises(StoreError, match=message):
        write_logits(tmp_path, mutate(rows(["a", "b"])), shard="s0")
    assert not list(tmp_path.rglob("*.parquet")) and not list(tmp_path.rglob("*.partial"))


def test_bad_shard_key_and_root(tmp_path):
    with pytest.raises(StoreError, match="shard key '../x'"):
        write_logits(tmp_path, rows(["a"]), shard="../x")
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="exists and is not a directory"):
        write_logits(tmp_path / "file", rows(["a"]), shard="s0")
    with pytest.raises(StoreError, match="logits dataset not found"):
        read_logits(tmp_path / "missing")


def test_arrow_table_input(tmp_path):
    table = pa.Table.from_pandas(
        rows(["a"]).assign(condition="clean"), schema=LOGITS_SCHEMA, preserve_index=False
    )
    write_logits(tmp_path, table, shard="s0")
    loose = pa.Table.from_pandas(
        rows(["b"]).assign(logits=lambda f: f["logits"].map(lambda v: v.tolist())),
        preserve_index=False,
    )  # list<double>, int64 view: cast on write
    write_logits(tmp_path, loose, shard="s1")
    assert sorted(set(read_logits(tmp_path)["image_id"])) == ["a", "b"]


def test_foreign_parquet_file_is_rejected(tmp_path):
    write_logits(tmp_path, rows(["a"]), shard="s0")
    folder = tmp_path / "task=Smiling" / "classifier=r18" / "method=isotropic_fine"
    pq.write_table(pa.table({"image_id": ["x"], "score": [0.5]}), folder / "other.parquet")
    with pytest.raises(
        StoreError, match=r"other.parquet: not a ganviews logits file \(split missing"
    ):
        read_logits(tmp_path)
    (folder / "other.parquet").unlink()
    pq.write_table(
        rows(["z"]).assign(view=lambda f: f["view"].astype(float)).pipe(pa.Table.from_pandas),
        folder / "typed.parquet",
    )
    with pytest.raises(StoreError, match="view is double, expected int32"):
        read_logits(tmp_path)
    (folder / "typed.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(StoreError, match="typed.parquet: not a readable Parquet file"):
        read_logits(tmp_path)


def test_empty_dataset_reads_as_empty_frame(tmp_path):
    frame = read_logits(tmp_path)
    assert list(frame.columns) == LOGITS_SCHEMA.names and len(frame) == 0


def test_large_seeds_survive_a_round_trip(tmp_path):
    """Seeds are 63-bit: reading them must not pass through float64 (exact above 2**53)."""
    import pandas as pd

    from storage.logits import read_logits, write_logits

    seeds = [2**62 + 1, 2**53 + 1, None]
    frame = pd.DataFrame(
        {
            "image_id": ["a", "a", "a"],
            "split": ["val"] * 3,
            "task": ["t"] * 3,
            "classifier": ["c"] * 3,
            "method": ["isotropic_fine"] * 3,
            "setting": ["0.1"] * 3,
            "view": [2, 3, 0],
            "logits": [[0.5], [0.1], [0.2]],
            "label": [1, 1, 1],
            "seed": pd.array(seeds, dtype="Int64"),
        }
    )
    write_logits(tmp_path, frame, shard="000-001")
    back = read_logits(tmp_path).sort_values("view")
    assert back["seed"].tolist()[1:] == [2**62 + 1, 2**53 + 1]
    assert back["seed"].isna().tolist() == [True, False, False]


def test_folder_reads_with_plain_pandas_and_pyarrow_hive(tmp_path):
    """Partition columns live only in the folder names, so other readers see one schema."""
    import pyarrow.dataset as ds

    write_logits(tmp_path, rows(["a", "b"]), shard="s0")
    write_logits(tmp_path, rows(["c"], method="crop", setting="", task="Young"), shard="s1")
    ours = read_logits(tmp_path).sort_values(["task", "method", "image_id", "view"])
    plain = pd.read_parquet(tmp_path).sort_values(["task", "method", "image_id", "view"])
    hive = ds.dataset(tmp_path, partitioning="hive", format="parquet").to_table().to_pandas()
    assert len(plain) == len(hive) == len(ours) == 12
    for other in (plain, hive.sort_values(["task", "method", "image_id", "view"])):
        for column in ("image_id", "split", "task", "classifier", "method", "setting", "label"):
            assert other[column].astype(str).tolist() == ours[column].astype(str).tolist()
        assert other["view"].tolist() == ours["view"].tolist()
        np.testing.assert_array_equal(np.stack(other["logits"]), np.stack(ours["logits"]))
    file = logits_files(tmp_path)[0]
    assert not set(PARTITION_COLUMNS) & set(pq.read_schema(file).names)
    meta = read_logits_metadata(tmp_path)
    assert meta["task"].tolist() == ["Smiling", "Young"]


def test_pandas3_written_dataset_is_cast_on_read(tmp_path):
    """pandas 3 writes large_string, int64 views, list<double> logits, a null-typed seed and
    partition columns only in the path: compatible, so read and cast to LOGITS_SCHEMA."""
    frame = rows(["a", "b"]).assign(
        logits=lambda f: f["logits"].map(lambda v: v.astype(np.float64).tolist()),
        seed=None,
    )
    frame.to_parquet(tmp_path, partition_cols=list(PARTITION_COLUMNS))
    file = next(tmp_path.rglob("*.parquet"))
    schema = pq.read_schema(file)
    assert schema.field("image_id").type == pa.large_string()
    assert schema.field("view").type == pa.int64()
    back = read_logits(tmp_path)
    assert list(back.columns) == LOGITS_SCHEMA.names and len(back) == 8
    assert back["view"].dtype == np.int32 and set(back["task"]) == {"Smiling"}
    np.testing.assert_array_equal(
        np.stack(back.sort_values(["image_id", "view"])["logits"]),
        np.stack(rows(["a", "b"])["logits"]),
    )
    # a rerun of our own writer into that folder keeps working
    write_logits(tmp_path, rows(["c"]), shard="s1")
    assert sorted(set(read_logits(tmp_path)["image_id"])) == ["a", "b", "c"]
    # a view that does not fit int32 is named, not silently wrapped
    folder = file.parent
    pq.write_table(
        pa.Table.from_pandas(rows(["z"]).assign(view=2**40, seed=7), preserve_index=False),
        folder / "big.parquet",
    )
    with pytest.raises(StoreError, match="values do not fit the logits schema"):
        read_logits(tmp_path)


OLD_SCHEMA = pa.schema([f for f in LOGITS_SCHEMA if f.name != "condition"])  # before Fig. 7


def test_conditions_get_their_own_files_and_old_files_read_as_clean(tmp_path):
    folder = tmp_path / "task=Smiling" / "classifier=r18" / "method=isotropic_fine"
    folder.mkdir(parents=True)
    old = pa.Table.from_pandas(
        rows(["a"]), schema=OLD_SCHEMA, preserve_index=False
    )  # a file written before the condition column existed
    pq.write_table(old, folder / "shard-s0.parquet")
    written = write_logits(
        tmp_path, rows(["a"], offset=5.0).assign(condition="pgd-8_255"), shard="s0"
    )
    assert [p.name for p in written] == ["shard-s0--pgd-8_255.parquet"]
    frame = read_logits(tmp_path)
    assert sorted(frame["condition"].unique()) == ["clean", "pgd-8_255"]
    assert len(read_logits(tmp_path, {"condition": "clean"})) == 4  # the old file's rows
    attacked = read_logits(tmp_path, {"condition": "pgd-8_255"})
    assert len(attacked) == 4 and attacked["logits"].map(lambda v: v[0]).min() == 5.0
    # rewriting the clean shard leaves the condition's file alone
    write_logits(tmp_path, rows(["a"], offset=1.0), shard="s0")
    assert len(read_logits(tmp_path, {"condition": "pgd-8_255"})) == 4
    assert read_logits(tmp_path, {"condition": "clean"})["logits"].map(lambda v: v[0]).min() == 1.0


def test_sql_view_reads_old_files_as_clean(tmp_path):
    from storage.query import sql

    folder = tmp_path / "task=Smiling" / "classifier=r18" / "method=isotropic_fine"
    folder.mkdir(parents=True)
    old = pa.Table.from_pandas(rows(["a"]), schema=OLD_SCHEMA, preserve_index=False)
    pq.write_table(old, folder / "shard-s0.parquet")
    write_logits(tmp_path, rows(["b"]).assign(condition="jpeg-20"), shard="s0")
    got = sql(
        "SELECT condition, count(*) AS n FROM logits GROUP BY condition ORDER BY condition",
        logits=tmp_path,
    )
    assert got.to_dict("list") == {"condition": ["clean", "jpeg-20"], "n": [4, 4]}


def test_condition_label_must_name_a_file(tmp_path):
    with pytest.raises(StoreError, match="condition.*pgd-8/255"):
        write_logits(tmp_path, rows(["a"]).assign(condition="pgd-8/255"), shard="s0")


def test_identity_record_refuses_differing_keys_and_merges_new_ones(tmp_path):
    from storage.logits import IDENTITY_FILE, read_identity

    ident = {"generator_sha256": "g1", "group/isotropic_fine/0.3": {"num_views": 9}}
    write_logits(tmp_path, rows(["a"]), shard="s0", identity=ident)
    assert read_identity(tmp_path) == ident
    with pytest.raises(
        StoreError,
        match=r"group/isotropic_fine/0.3: stored \{'num_views': 9\}, given \{'num_views': 33\}",
    ):
        write_logits(
            tmp_path,
            rows(["b"]),
            shard="s1",
            identity={**ident, "group/isotropic_fine/0.3": {"num_views": 33}},
        )
    assert sorted(p.name for p in logits_files(tmp_path)) == ["shard-s0.parquet"]  # nothing written
    write_logits(tmp_path, rows(["b"], method="crop", setting=""), shard="s1",
                 identity={"generator_sha256": "g1", "group/crop/": {"num_views": 4}})  # fmt: skip
    assert set(read_identity(tmp_path)) == {
        "generator_sha256",
        "group/isotropic_fine/0.3",
        "group/crop/",
    }
    assert (tmp_path / IDENTITY_FILE).is_file() and len(
        pd.read_parquet(tmp_path)
    ) == 8  # readers skip it
