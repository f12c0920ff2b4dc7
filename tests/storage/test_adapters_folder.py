"""Image-folder adapter (CSV / Parquet labels), the ADAPTERS registry and the ``ganviews manifest`` CLI."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from ganviews.cli import main
from storage.adapters import (
    ADAPTERS,
    AdapterError,
    AnnotationFileMissing,
    build_folder,
    build_manifest,
)
from storage.manifest import read_manifest


def write_folder(
    root: Path, table: pd.DataFrame, *, name: str = "labels.csv", images: bool = True
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    if name.endswith(".csv"):
        table.to_csv(root / name, index=False)
    else:
        table.to_parquet(root / name, index=False)
    if images:
        column = next(c for c in ("file", "image", "filename", "img") if c in table.columns)
        for rel in table[column]:
            path = Path(rel) if Path(rel).is_absolute() else root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"\x89PNG")
    return root


def _table(n: int = 6) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "file": [f"{'cats' if i % 2 else 'dogs'}/img_{i}.png" for i in range(n)],
            "animal": ["cat" if i % 2 else "dog" for i in range(n)],
            "smiling": [i % 3 == 0 for i in range(n)],
            "split": [
                ["train", "Train", " validation", "val", "test", "TESTING"][i % 6] for i in range(n)
            ],
        }
    )


def test_csv_with_split_column(tmp_path):
    root = write_folder(tmp_path / "f", _table())
    df = build_folder(root)
    assert df["image_id"].tolist() == [
        "dogs/img_0",
        "cats/img_1",
        "dogs/img_2",
        "cats/img_3",
        "dogs/img_4",
        "cats/img_5",
    ]
    assert df["split"].tolist() == ["train", "train", "val", "val", "test", "test"]
    assert df.attrs["label_columns"] == ["animal", "smiling"]
    assert df["animal"].tolist() == [
        1,
        0,
        1,
        0,
        1,
        0,
    ]  # text labels coded in sorted order: cat 0, dog 1
    assert df["animal_name"].tolist() == ["dog", "cat"] * 3
    assert df["smiling"].tolist() == [1, 0, 0, 1, 0, 0] and str(df["smiling"].dtype) == "int64"
    assert df["path"].iloc[1] == str((root / "cats" / "img_1.png").resolve())


def test_parquet_without_split_gets_a_seeded_split(tmp_path):
    table = _table(40).drop(columns=["split"])
    root = write_folder(tmp_path / "p", table, name="labels.parquet")
    df = build_folder(root, fractions=(0.5, 0.25, 0.25), seed=3, stratify="animal")
    counts = df.groupby(["animal_name", "split"]).size().to_dict()
    assert counts == {
        (a, s): n for a in ("cat", "dog") for s, n in (("test", 5), ("train", 10), ("val", 5))
    }
    again = build_folder(root, fractions=(0.5, 0.25, 0.25), seed=3, stratify="animal")
    assert again["split"].tolist() == df["split"].tolist()
    assert (
        build_folder(root, fractions=(0.5, 0.25, 0.25), seed=4)["split"].tolist()
        != df["split"].tolist()
    )


def test_boxes_landmarks_and_explicit_columns(tmp_path):
    table = pd.DataFrame(
        {
            "img": ["a.png", "b.png"],
            "image_id": ["first", "second"],
            "y": [3, 7],
            "note": ["x", "y"],
            "bbox_x0": [0.0, 1.5],
            "bbox_y0": [0.0, 2.0],
            "bbox_x1": [10.0, 8.0],
            "bbox_y1": [12.0, float("nan")],
            "landmarks": ["1 2 3 4", "5,6,7,8"],
            "part": ["train", "test"],
        }
    )
    root = write_folder(tmp_path / "b", table)
    df = build_folder(root, image_column="img", split_column="part", label_columns=["y"])
    assert df["image_id"].tolist() == ["first", "second"]
    assert df["y"].tolist() == [3, 7] and df.attrs["label_columns"] == ["y"]
    assert df["bbox"].tolist() == [[0.0, 0.0, 10.0, 12.0], None]
    assert df["landmarks"].tolist() == [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]
    assert df["split"].tolist() == ["train", "test"]
    assert "note" not in df.columns  # not asked for


def test_relative_labels_path_is_looked_up_under_root_then_the_current_directory(
    tmp_path, monkeypatch
):
    root = write_folder(tmp_path / "r", _table())
    (root / "labels.csv").rename(tmp_path / "mine.csv")
    monkeypatch.chdir(tmp_path)
    assert len(build_folder(root, labels="mine.csv")) == len(
        build_folder(root, labels=str(tmp_path / "mine.csv"))
    )
    (tmp_path / "mine.csv").rename(root / "mine.csv")
    assert len(build_folder(root, labels="mine.csv")) == len(_table())


def test_failure_messages(tmp_path):
    root = write_folder(tmp_path / "e", _table())
    with pytest.raises(
        AnnotationFileMissing,
        match=r"no labels file in .* \(looked for labels\.csv, labels\.parquet\)",
    ):
        build_folder(tmp_path)
    with pytest.raises(AnnotationFileMissing, match=r"labels file '.*other\.csv' not found"):
        build_folder(root, labels="other.csv")
    with pytest.raises(
        AdapterError,
        match=r"image_column 'photo' is not a column; columns: \['file', 'animal', 'smiling', 'split'\]",
    ):
        build_folder(root, image_column="photo")
    with pytest.raises(AdapterError, match=r"split_column 'fold' is not a column"):
        build_folder(root, split_column="fold")
    with pytest.raises(AdapterError, match=r"label_columns \['age'\] are not columns"):
        build_folder(root, label_columns=["age"])
    nosplit = write_folder(tmp_path / "nosplit", _table().drop(columns=["split"]))
    with pytest.raises(
        AdapterError, match=r"fractions=\(0\.8, 0\.1, 0\.2\) \(train, val, test\) must sum to 1"
    ):
        build_folder(nosplit, fractions=(0.8, 0.1, 0.2))
    with pytest.raises(AdapterError, match=r"stratify='file' is not a label column"):
        build_folder(nosplit, stratify="file")
    bad = _table()
    bad.loc[2, "split"] = "holdout"
    with pytest.raises(AdapterError, match=r"row 2 has split='holdout'; allowed: train, val, test"):
        build_folder(write_folder(tmp_path / "s", bad))
    noimage = _table().rename(columns={"file": "picture"})
    (tmp_path / "n").mkdir()
    noimage.to_csv(tmp_path / "n" / "labels.csv", index=False)
    with pytest.raises(AdapterError, match=r"no image column \(looked for \['image', 'file'"):
        build_folder(tmp_path / "n")
    floats = _table().assign(score=[0.5, 1, 2, 3, 4, 5])
    with pytest.raises(
        AdapterError, match=r"label column 'score' has non-integer values \(e\.g\. 0\.5\)"
    ):
        build_folder(write_folder(tmp_path / "fl", floats))
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "labels.txt").write_text("file,label\n")
    with pytest.raises(AdapterError, match=r"unknown format '\.txt'; use \.csv or \.parquet"):
        build_folder(tmp_path / "t", labels="labels.txt")
    missing = write_folder(tmp_path / "m", _table())
    (missing / "cats" / "img_3.png").unlink()
    with pytest.raises(
        AnnotationFileMissing, match=r"folder: 1 of 6 annotated images are missing on disk"
    ):
        build_folder(missing)


def test_registry_names_its_adapters(tmp_path):
    assert sorted(ADAPTERS) == ["cars", "cats", "celebahq", "digits", "folder"]
    with pytest.raises(
        AdapterError,
        match=r"unknown dataset adapter 'imagenet'; available: \['cars', 'cats', 'celebahq', 'digits', 'folder'\]",
    ):
        build_manifest("imagenet", tmp_path)
    with pytest.raises(AdapterError, match=r"folder root '.*nowhere' is not a directory"):
        build_manifest("folder", tmp_path / "nowhere")


def test_cli_writes_manifest_and_prints_counts(tmp_path, capsys):
    root = write_folder(tmp_path / "cli", _table())
    out = tmp_path / "manifest.parquet"
    assert main(["manifest", "folder", str(root), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out} (6 images, 2 label column(s))" in printed
    assert "images per split: train 2, val 2, test 2" in printed
    assert "0 cat" in printed and "1 dog" in printed
    assert re.search(r"smiling \(positives\): +train 1/2, val 1/2, test 0/2", printed)
    back = read_manifest(out)
    assert back.attrs["label_columns"] == ["animal", "smiling"]
    assert back["split"].tolist() == ["train", "train", "val", "val", "test", "test"]


def test_cli_reports_errors_in_one_line(tmp_path, capsys):
    code = main(["manifest", "cats", str(tmp_path), "--out", str(tmp_path / "m.parquet")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("ganviews manifest: error: Oxford-IIIT Pet list not found")
    assert err.count("\n") == 1
    assert not (tmp_path / "m.parquet").exists()
