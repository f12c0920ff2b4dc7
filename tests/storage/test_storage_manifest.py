"""Manifest schema: round trip, label columns, optional geometry, validation errors, content hash."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage import StoreError, manifest_sha256, read_manifest, write_manifest


def frame(**extra):
    base = {
        "image_id": ["c1", "c2", "c3"],
        "path": ["/data/1.jpg", "/data/2.jpg", "/data/3.jpg"],
        "split": ["train", "val", "test"],
        "car_type": [0, 2, 1],
    }
    return pd.DataFrame({**base, **extra})


def test_round_trip_with_geometry_extras_and_attrs(tmp_path):
    df = frame(
        bbox=[[0, 0, 10, 20], None, [1.5, 2, 3, 4]],
        landmarks=[[1, 2, 3, 4], None, [5, 6]],
        class_name=["SUV", "Sedan", "Cab"],
        has_bbox=[True, False, True],
        width=[640, 480, 800],
    )
    df.attrs = {"label_columns": ["car_type"], "dataset": "cars", "options": {"seed": 0}}
    path = write_manifest(df, tmp_path / "m.parquet")
    back = read_manifest(path)
    assert back.attrs == {"label_columns": ["car_type"], "dataset": "cars", "options": {"seed": 0}}
    assert back["car_type"].tolist() == [0, 2, 1] and back["car_type"].dtype == "int64"
    assert back["bbox"].tolist() == [[0.0, 0.0, 10.0, 20.0], None, [1.5, 2.0, 3.0, 4.0]]
    assert back["landmarks"].tolist() == [[1.0, 2.0, 3.0, 4.0], None, [5.0, 6.0]]
    assert back["class_name"].tolist() == ["SUV", "Sedan", "Cab"] and back["width"].tolist() == [
        640,
        480,
        800,
    ]
    schema = pq.read_schema(path)
    assert schema.field("bbox").type == pa.list_(pa.float64(), 4)
    assert schema.field("has_bbox").type == pa.bool_()


def test_labels_inferred_when_not_named(tmp_path):
    df = frame(Smiling=[True, False, True], note=["a", "b", "c"])
    back = read_manifest(write_manifest(df, tmp_path / "m.parquet"))
    assert back.attrs["label_columns"] == ["car_type", "Smiling"]
    assert back["Smiling"].tolist() == [1, 0, 1]


@pytest.mark.parametrize(
    ("df", "message"),
    [
        (frame().drop(columns=["split"]), r"lacks required column\(s\) \['split'\]"),
        (frame(image_id=["a", "a", "b"]), r"'image_id': duplicate ids \['a'\]"),
        (frame(image_id=["a", "", "b"]), "'image_id': row 1 holds ''"),
        (
            frame(path=["x", None, "z"]),
            "'path': row 1 holds (nan|None), expected a non-empty string",
        ),
        (frame(split=["train", "validation", "test"]), r"'split': values \['validation'\] not in"),
        (frame().drop(columns=["car_type"]), "no label column"),
        (
            frame(bbox=[[0, 0, 1], None, None]),
            r"'bbox', row 0 \(image_id 'c1'\): 3 values, expected 4",
        ),
        (frame(bbox=["abc", None, None]), "'bbox', row 0 .* is not a list of numbers"),
        (
            frame(landmarks=[[1, 2, 3], None, None]),
            "'landmarks', row 0: 3 values, expected x, y pairs",
        ),
        (frame(blob=[object(), object(), object()]), "'blob': row 0 holds"),
    ],
)
def test_validation_names_the_column(tmp_path, df, message):
    with pytest.raises(StoreError, match=message):
        write_manifest(df, tmp_path / "m.parquet")
    assert not (tmp_path / "m.parquet").exists()


def test_named_label_column_must_exist_and_be_integer(tmp_path):
    with pytest.raises(StoreError, match="label column 'breed' not found"):
        write_manifest(frame(), tmp_path / "m.parquet", label_columns=["breed"])
    with pytest.raises(StoreError, match="label column 'name': dtype .*, expected integer or bool"):
        write_manifest(frame(name=["a", "b", "c"]), tmp_path / "m.parquet", label_columns=["name"])


def test_read_rejects_missing_and_foreign_files(tmp_path):
    with pytest.raises(StoreError, match="manifest not found"):
        read_manifest(tmp_path / "none.parquet")
    pq.write_table(pa.table({"x": [1]}), tmp_path / "foreign.parquet")
    with pytest.raises(StoreError, match=r"foreign.parquet: manifest lacks required column\(s\)"):
        read_manifest(tmp_path / "foreign.parquet")
    (tmp_path / "junk.parquet").write_text("junk")
    with pytest.raises(StoreError, match="is not a readable Parquet file"):
        read_manifest(tmp_path / "junk.parquet")


def test_content_hash_is_stable_and_sensitive(tmp_path):
    df = frame()
    h = manifest_sha256(df)
    assert len(h) == 64
    assert manifest_sha256(write_manifest(df, tmp_path / "m.parquet")) == h
    assert (
        manifest_sha256(df.assign(path=["/elsewhere/1.jpg", "/e/2.jpg", "/e/3.jpg"])) == h
    )  # moved data
    assert manifest_sha256(df.assign(car_type=[0, 2, 2])) != h
    assert manifest_sha256(df.iloc[[1, 0, 2]]) != h  # row order is index order
