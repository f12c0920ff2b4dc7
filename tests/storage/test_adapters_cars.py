"""Stanford Cars adapter on tiny .mat files written with scipy in the devkit's struct layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io

from storage.adapters import AdapterError, AnnotationFileMissing, build_cars
from storage.adapters.cars import body_type
from storage.manifest import read_manifest, write_manifest

# a slice of the real cars_meta.mat names (1-based class index = position + 1)
CLASS_NAMES = [
    "AM General Hummer SUV 2000",  # 1 SUV
    "Acura RL Sedan 2012",  # 2 Sedan
    "Acura TL Type-S 2008",  # 3 excluded: token "Type-S"
    "Ford F-150 Regular Cab 2012",  # 4 Cab
    "Ford Ranger SuperCab 2011",  # 5 excluded: token "SuperCab"
    "Audi A5 Coupe 2012",  # 6 excluded: Coupe
]
# train annotations in file order: (class, bbox_x1, bbox_y1, bbox_x2, bbox_y2)
TRAIN = [
    (1, 1, 116, 569, 375),
    (2, 36, 116, 868, 587),
    (1, 85, 109, 601, 381),
    (3, 10, 10, 50, 50),
    (4, 14, 36, 133, 99),
    (1, 259, 289, 515, 416),
    (2, 88, 80, 541, 397),
    (4, 73, 79, 591, 410),
    (5, 20, 126, 1269, 771),
    (1, 21, 110, 623, 367),
    (2, 51, 93, 601, 393),
    (4, 6, 62, 499, 286),
    (6, 30, 36, 418, 307),
    (1, 27, 49, 611, 396),
    (2, 39, 52, 233, 150),
    (4, 3, 8, 190, 147),
]
TEST = [
    (4, 30, 52, 246, 147),
    (2, 100, 19, 576, 203),
    (6, 51, 105, 968, 659),
    (1, 67, 84, 581, 407),
]


def _cell(value: int) -> np.ndarray:
    """A numeric struct field as MATLAB stores it: a 1x1 array of the smallest unsigned type."""
    return np.array([[value]], dtype=np.uint8 if value < 256 else np.uint16)


def _annotations(rows, *, with_class: bool = True, start: int = 1) -> np.ndarray:
    fields = (
        ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"] + (["class"] if with_class else []) + ["fname"]
    )
    array = np.zeros((1, len(rows)), dtype=[(f, "O") for f in fields])
    for i, (cls, x1, y1, x2, y2) in enumerate(rows):
        record = {
            "bbox_x1": _cell(x1),
            "bbox_y1": _cell(y1),
            "bbox_x2": _cell(x2),
            "bbox_y2": _cell(y2),
        }
        if with_class:
            record["class"] = _cell(cls)
        record["fname"] = np.array([f"{start + i:05d}.jpg"])
        for field, value in record.items():
            array[0, i][field] = value
    return array


def write_cars(
    root: Path,
    *,
    train=TRAIN,
    test=TEST,
    test_file: str | None = "devkit/cars_test_annos_withlabels.mat",
    test_with_class: bool = True,
    images: bool = True,
) -> Path:
    (root / "devkit").mkdir(parents=True, exist_ok=True)
    names = np.empty((1, len(CLASS_NAMES)), dtype=object)
    for i, name in enumerate(CLASS_NAMES):
        names[0, i] = np.array([name])
    scipy.io.savemat(root / "devkit" / "cars_meta.mat", {"class_names": names})
    scipy.io.savemat(root / "devkit" / "cars_train_annos.mat", {"annotations": _annotations(train)})
    if test_file:
        scipy.io.savemat(
            root / test_file, {"annotations": _annotations(test, with_class=test_with_class)}
        )
    if images:
        for folder, rows in (("cars_train", train), ("cars_test", test)):
            (root / folder).mkdir(exist_ok=True)
            for i in range(len(rows)):
                (root / folder / f"{i + 1:05d}.jpg").write_bytes(b"\xff\xd8\xff")
    return root


def test_written_mat_has_the_devkit_layout(tmp_path):
    """What loadmat returns for our files matches the real devkit: 1xN struct array of 1x1 cells."""
    root = write_cars(tmp_path / "cars")
    annos = scipy.io.loadmat(root / "devkit" / "cars_train_annos.mat")["annotations"]
    assert annos.shape == (1, len(TRAIN))
    assert annos.dtype.names == ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")
    first = annos[0, 0]
    assert first["bbox_x1"].shape == (1, 1) and first["bbox_x1"].dtype == np.uint8
    assert first["bbox_x2"].dtype == np.uint16 and int(first["bbox_x2"][0, 0]) == 569
    assert first["fname"].tolist() == ["00001.jpg"]
    names = scipy.io.loadmat(root / "devkit" / "cars_meta.mat")["class_names"]
    assert names.shape == (1, len(CLASS_NAMES)) and names[0, 1].tolist() == ["Acura RL Sedan 2012"]


def test_body_type_rule():
    assert [body_type(n) for n in CLASS_NAMES] == [
        "SUV",
        "Sedan",
        "Type-S",
        "Cab",
        "SuperCab",
        "Coupe",
    ]
    assert body_type("Chevrolet Silverado 1500 Classic Extended Cab 2007") == "Cab"
    assert body_type("single") is None


def test_labels_boxes_and_paper_split(tmp_path):
    root = write_cars(
        tmp_path / "cars", test_file=None
    )  # the paper scheme needs no test annotations
    df = build_cars(root, scheme="paper")
    kept = [i for i, row in enumerate(TRAIN) if row[0] in (1, 2, 4)]
    assert df["image_id"].tolist() == [f"train/{i + 1:05d}" for i in kept]
    assert df["label_name"].tolist() == [
        {1: "SUV", 2: "Sedan", 4: "Cab"}[TRAIN[i][0]] for i in kept
    ]
    assert df["label"].tolist() == [{1: 0, 2: 1, 4: 2}[TRAIN[i][0]] for i in kept]
    assert df["fine_label"].tolist() == [TRAIN[i][0] - 1 for i in kept]
    assert df["fine_label_name"].iloc[0] == "AM General Hummer SUV 2000"
    # 1-based inclusive devkit box -> [x0, y0, x1, y1] with x0 = x1_devkit - 1; uint8 1 must not wrap
    assert df["bbox"].iloc[0] == [0.0, 115.0, 569.0, 375.0]
    assert df["bbox"].iloc[1] == [35.0, 115.0, 868.0, 587.0]
    assert df["path"].iloc[0] == str((root / "cars_train" / "00001.jpg").resolve())
    # per class, in annotation order: first n//2 train, last ceil(n/4) test, the rest val
    split = dict(zip(df["image_id"], df["split"], strict=True))
    suv = ["train/00001", "train/00003", "train/00006", "train/00010", "train/00014"]  # n = 5
    assert [split[i] for i in suv] == ["train", "train", "val", "test", "test"]
    sedan = ["train/00002", "train/00007", "train/00011", "train/00015"]  # n = 4
    assert [split[i] for i in sedan] == ["train", "train", "val", "test"]
    cab = ["train/00005", "train/00008", "train/00012", "train/00016"]
    assert [split[i] for i in cab] == ["train", "train", "val", "test"]
    assert df.attrs["label_columns"] == ["label"]


def test_official_split_uses_labelled_test_annotations(tmp_path):
    root = write_cars(tmp_path / "cars")
    df = build_cars(root, val_fraction=0.25, seed=0)
    test = df[df["split"] == "test"]
    assert test["image_id"].tolist() == [
        "test/00001",
        "test/00002",
        "test/00004",
    ]  # the Coupe is left out
    assert test["label_name"].tolist() == ["Cab", "Sedan", "SUV"]
    assert test["path"].iloc[0] == str((root / "cars_test" / "00001.jpg").resolve())
    assert test["bbox"].iloc[0] == [29.0, 51.0, 246.0, 147.0]
    train_part = df[df["split"] != "test"]
    assert len(train_part) == 13
    # val = round(n * 0.25) per fine class (half up): SUV 5 -> 1, Sedan 4 -> 1, Cab 4 -> 1
    assert train_part.groupby("label_name")["split"].apply(
        lambda s: int((s == "val").sum())
    ).to_dict() == {
        "Cab": 1,
        "SUV": 1,
        "Sedan": 1,
    }


def test_official_split_is_seeded_and_order_free(tmp_path):
    many = [(1 + (i % 2), 5, 5, 40, 40) for i in range(40)]  # 20 SUV, 20 Sedan
    a = build_cars(write_cars(tmp_path / "a", train=many), seed=0)
    again = build_cars(write_cars(tmp_path / "b", train=many), seed=0)
    assert a["split"].tolist() == again["split"].tolist()
    other = build_cars(write_cars(tmp_path / "c", train=many), seed=1)
    assert a["split"].tolist() != other["split"].tolist()
    train_part = a[a["image_id"].str.startswith("train/")]
    assert int((train_part["split"] == "val").sum()) == 10  # 5 of each 20
    # reversing the annotation order changes nothing for a given image id
    reversed_rows = list(reversed(many))
    root = tmp_path / "d"
    write_cars(root, train=reversed_rows)
    annos = _annotations(reversed_rows)
    for i in range(len(reversed_rows)):  # keep each image's own file name
        annos[0, i]["fname"] = np.array([f"{len(many) - i:05d}.jpg"])
    scipy.io.savemat(root / "devkit" / "cars_train_annos.mat", {"annotations": annos})
    flipped = build_cars(root, seed=0)
    assert dict(zip(flipped["image_id"], flipped["split"], strict=True)) == dict(
        zip(a["image_id"], a["split"], strict=True)
    )


def test_custom_body_types(tmp_path):
    df = build_cars(
        write_cars(tmp_path / "cars"), scheme="paper", body_types=("Sedan", "SUV", "Coupe")
    )
    assert set(df["label_name"]) == {"Sedan", "SUV", "Coupe"}
    assert df.loc[df["label_name"] == "Coupe", "label"].unique().tolist() == [2]
    with pytest.raises(AdapterError, match=r"body_types \['Van'\] match no class name"):
        build_cars(write_cars(tmp_path / "v"), body_types=("SUV", "Van"))


def test_unlabelled_test_annotations_need_the_withlabels_file(tmp_path):
    root = write_cars(
        tmp_path / "cars", test_file="devkit/cars_test_annos.mat", test_with_class=False
    )
    with pytest.raises(
        AnnotationFileMissing,
        match=r"cars_test_annos\.mat has no class labels.*cars_test_annos_withlabels\.mat",
    ):
        build_cars(root)
    assert len(build_cars(root, scheme="paper")) == 13  # the paper scheme does not need them
    # a cars_test_annos.mat that does carry the class is accepted
    root = write_cars(tmp_path / "labelled", test_file="cars_test_annos.mat", test_with_class=True)
    assert (build_cars(root)["split"] == "test").sum() == 3
    root = write_cars(tmp_path / "none", test_file=None)
    with pytest.raises(AnnotationFileMissing, match="test annotations not found"):
        build_cars(root)


def test_missing_devkit_file(tmp_path):
    root = write_cars(tmp_path / "cars")
    (root / "devkit" / "cars_meta.mat").unlink()
    with pytest.raises(AnnotationFileMissing, match=r"cars_meta\.mat not found .*car_devkit\.tgz"):
        build_cars(root)


def test_unknown_class_and_bad_box(tmp_path):
    root = write_cars(tmp_path / "cars", train=TRAIN + [(7, 1, 1, 5, 5)])
    with pytest.raises(
        AdapterError,
        match=r"annotations\[16\] \(00017\.jpg\): class 7 is not a class index in 1\.\.6",
    ):
        build_cars(root, scheme="paper")
    root = write_cars(tmp_path / "box", train=[(1, 50, 10, 20, 40)])
    with pytest.raises(
        AdapterError,
        match=r"00001\.jpg\): bounding box \(xmin=50, ymin=10, xmax=20, ymax=40\) is empty",
    ):
        build_cars(root, scheme="paper")


def test_not_a_mat_file_and_bad_options(tmp_path):
    root = write_cars(tmp_path / "cars")
    (root / "devkit" / "cars_train_annos.mat").write_text("not matlab")
    with pytest.raises(
        AdapterError, match=r"cars_train_annos\.mat: not a readable MATLAB \.mat file"
    ):
        build_cars(root)
    with pytest.raises(
        AdapterError, match=r"scheme='random' is not one of \['official', 'paper'\]"
    ):
        build_cars(root, scheme="random")
    with pytest.raises(AdapterError, match=r"val_fraction=1\.5 is not a fraction in \[0, 1\)"):
        build_cars(root, val_fraction=1.5)


def test_manifest_roundtrip_keeps_boxes(tmp_path):
    df = build_cars(write_cars(tmp_path / "cars"))
    back = read_manifest(write_manifest(df, tmp_path / "cars.parquet", label_columns=["label"]))
    assert back.attrs["label_columns"] == ["label"]
    assert back["bbox"].tolist() == df["bbox"].tolist()
    assert back["label_name"].tolist() == df["label_name"].tolist()


def test_cli_paper_scheme_prints_label_table(tmp_path, capsys):
    from ganviews.cli import main

    root = write_cars(tmp_path / "cars", test_file=None)
    out = tmp_path / "cars.parquet"
    assert main(["manifest", "cars", str(root), "--out", str(out), "--scheme", "paper"]) == 0
    printed = capsys.readouterr().out
    assert "images per split: train 6, val 3, test 4" in printed
    rows = {
        line.split()[1]: line.split()[2:]
        for line in printed.splitlines()
        if line[:2] in ("0 ", "1 ", "2 ")
    }
    assert rows == {"SUV": ["2", "1", "2"], "Sedan": ["2", "1", "1"], "Cab": ["2", "1", "1"]}
    assert read_manifest(out)["split"].value_counts().to_dict() == {"train": 6, "test": 4, "val": 3}
    assert (
        main(["manifest", "cars", str(root), "--out", str(out), "--body-types", "SUV", "Truck"])
        == 2
    )
    assert "body_types ['Truck'] match no class name" in capsys.readouterr().err
