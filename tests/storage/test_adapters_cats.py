"""Oxford-IIIT Pet (cats) adapter on tiny files in the real list.txt / trainval.txt / test.txt / VOC XML layouts."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage.adapters import AdapterError, AnnotationFileMissing, build_cats
from storage.manifest import read_manifest, write_manifest

HEADER = """#Image CLASS-ID SPECIES BREED ID
#ID: 1:37 Class ids
#SPECIES: 1:Cat 2:Dog
#BREED ID: 1-25:Cat 1:12:Dog
#All images with 1st letter as captial are cat images
#images with small first letter are dog images
"""
# (image, CLASS-ID, SPECIES, BREED ID, partition) — real class/breed ids of these breeds
ROWS = [
    ("Abyssinian_1", 1, 1, 1, "trainval"),
    ("Abyssinian_10", 1, 1, 1, "trainval"),
    ("Abyssinian_2", 1, 1, 1, "trainval"),
    ("Abyssinian_100", 1, 1, 1, "test"),
    ("american_bulldog_1", 2, 2, 1, "trainval"),
    ("British_Shorthair_1", 10, 1, 5, "trainval"),
    ("British_Shorthair_12", 10, 1, 5, "trainval"),
    ("British_Shorthair_3", 10, 1, 5, "test"),
    ("Sphynx_9", 34, 1, 12, "trainval"),
    ("Sphynx_4", 34, 1, 12, "test"),
    ("yorkshire_terrier_7", 37, 2, 25, "test"),
]
CATS = [r for r in ROWS if r[2] == 1]
# head boxes (VOC, 1-based inclusive) for the trainval cats except Sphynx_9
BOXES = {
    "Abyssinian_1": (333, 72, 425, 158),
    "Abyssinian_10": (72, 105, 288, 291),
    "Abyssinian_2": (1, 1, 100, 80),
    "British_Shorthair_1": (120, 40, 300, 210),
    "British_Shorthair_12": (55, 66, 77, 88),
    "american_bulldog_1": (10, 10, 20, 20),
}


def voc_xml(image: str, box) -> str:
    xmin, ymin, xmax, ymax = box
    return f"""<annotation><folder>OXIIIT</folder><filename>{image}.jpg</filename>
<source><database>OXFORD-IIIT Pet Dataset</database><annotation>OXIIIT</annotation></source>
<size><width>500</width><height>375</height><depth>3</depth></size><segmented>0</segmented>
<object><name>cat</name><pose>Frontal</pose><truncated>0</truncated><occluded>0</occluded>
<bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox>
<difficult>0</difficult></object></annotation>
"""


def write_pets(root: Path, rows=ROWS, boxes=BOXES, *, images: bool = True) -> Path:
    ann = root / "annotations"
    (ann / "xmls").mkdir(parents=True, exist_ok=True)
    line = "{} {} {} {}".format
    (ann / "list.txt").write_text(HEADER + "".join(line(*r[:4]) + "\n" for r in rows))
    for part in ("trainval", "test"):
        (ann / f"{part}.txt").write_text("".join(line(*r[:4]) + "\n" for r in rows if r[4] == part))
    for image, box in boxes.items():
        (ann / "xmls" / f"{image}.xml").write_text(voc_xml(image, box))
    if images:
        (root / "images").mkdir(exist_ok=True)
        for r in rows:
            (root / "images" / f"{r[0]}.jpg").write_bytes(b"\xff\xd8\xff")
    return root


def test_cats_only_labels_and_head_boxes(tmp_path):
    root = write_pets(tmp_path / "pets")
    df = build_cats(root, val_fraction=0.34)
    assert df["image_id"].tolist() == [r[0] for r in CATS]  # list.txt order, dogs gone
    assert df["label"].tolist() == [0, 0, 0, 0, 4, 4, 4, 11, 11]
    assert (
        df["label_name"].tolist() == ["Abyssinian"] * 4 + ["British_Shorthair"] * 3 + ["Sphynx"] * 2
    )
    box = dict(zip(df["image_id"], df["bbox"], strict=True))
    assert box["Abyssinian_1"] == [332.0, 71.0, 425.0, 158.0]
    assert box["Abyssinian_2"] == [0.0, 0.0, 100.0, 80.0]
    assert box["Sphynx_9"] is None and box["Abyssinian_100"] is None
    flag = dict(zip(df["image_id"], df["has_bbox"], strict=True))
    assert [k for k, v in flag.items() if not v] == [
        "Abyssinian_100",
        "British_Shorthair_3",
        "Sphynx_9",
        "Sphynx_4",
    ]
    assert df["path"].iloc[0] == str((root / "images" / "Abyssinian_1.jpg").resolve())


def test_official_split(tmp_path):
    df = build_cats(write_pets(tmp_path / "pets"), val_fraction=0.34, seed=0)
    split = dict(zip(df["image_id"], df["split"], strict=True))
    assert [k for k, v in split.items() if v == "test"] == [
        "Abyssinian_100",
        "British_Shorthair_3",
        "Sphynx_4",
    ]
    # val per breed = round(n * 0.34), half up: Abyssinian 3 -> 1, British_Shorthair 2 -> 1, Sphynx 1 -> 0
    val = df[df["split"] == "val"]
    assert val["label_name"].value_counts().to_dict() == {"Abyssinian": 1, "British_Shorthair": 1}
    assert split["Sphynx_9"] == "train"
    seeds = {
        tuple(build_cats(write_pets(tmp_path / f"s{s}"), val_fraction=0.34, seed=s)["split"])
        for s in range(6)
    }
    assert len(seeds) > 1  # the seed matters
    assert tuple(
        build_cats(write_pets(tmp_path / "again"), val_fraction=0.34, seed=0)["split"]
    ) == tuple(df["split"])


def test_paper_split_sorts_names_as_strings(tmp_path):
    rows = [(f"Bengal_{i}", 6, 1, 2, "trainval" if i % 2 else "test") for i in range(1, 10)]
    df = build_cats(write_pets(tmp_path / "pets", rows=rows, boxes={}), scheme="paper")
    order = sorted(
        r[0] for r in rows
    )  # Bengal_1, Bengal_2, ... (one digit: string order = numeric)
    split = dict(zip(df["image_id"], df["split"], strict=True))
    # n = 9: first 4 train, last ceil(9/4) = 3 test, 2 val — regardless of trainval/test membership
    assert [split[i] for i in order] == ["train"] * 4 + ["val"] * 2 + ["test"] * 3
    assert not df["has_bbox"].any() and df["bbox"].isna().all()
    rows = [(f"Bombay_{i}", 8, 1, 4, "trainval") for i in (1, 2, 10, 11)]
    df = build_cats(write_pets(tmp_path / "b", rows=rows, boxes={}), scheme="paper")
    # string order: Bombay_1, Bombay_10, Bombay_11, Bombay_2 -> train, train, val, test
    assert dict(zip(df["image_id"], df["split"], strict=True)) == {
        "Bombay_1": "train",
        "Bombay_10": "train",
        "Bombay_11": "val",
        "Bombay_2": "test",
    }


def test_roundtrip_keeps_null_boxes(tmp_path):
    df = build_cats(write_pets(tmp_path / "pets"))
    back = read_manifest(write_manifest(df, tmp_path / "cats.parquet", label_columns=["label"]))
    assert back["bbox"].tolist() == df["bbox"].tolist()
    assert back["has_bbox"].tolist() == df["has_bbox"].tolist()


def test_missing_files(tmp_path):
    root = write_pets(tmp_path / "pets")
    (root / "annotations" / "test.txt").unlink()
    with pytest.raises(
        AnnotationFileMissing, match=r"Oxford-IIIT Pet test\.txt not found .*annotations\.tar\.gz"
    ):
        build_cats(root)
    assert (
        build_cats(root, scheme="paper")["split"] == "test"
    ).sum() == 3  # the paper scheme needs list.txt only
    (root / "annotations" / "list.txt").unlink()
    with pytest.raises(AnnotationFileMissing, match=r"annotations/list\.txt"):
        build_cats(root)
    root = write_pets(tmp_path / "noimg")
    (root / "images" / "Sphynx_4.jpg").unlink()
    with pytest.raises(
        AnnotationFileMissing, match=r"cats: 1 of 9 annotated images are missing on disk"
    ):
        build_cats(root)
    assert len(build_cats(root, on_missing_image="drop")) == 8


def test_malformed_lines_and_unknown_breed(tmp_path):
    root = write_pets(tmp_path / "pets")
    listing = root / "annotations" / "list.txt"
    listing.write_text(listing.read_text() + "Persian_3 24 1\n")
    with pytest.raises(
        AdapterError,
        match=r"list\.txt:18: expected '<Image> <CLASS-ID> <SPECIES> <BREED ID>', got 'Persian_3 24 1'",
    ):
        build_cats(root)
    root = write_pets(tmp_path / "unknown", rows=ROWS + [("Tabby_1", 38, 1, 13, "trainval")])
    with pytest.raises(
        AdapterError, match=r"cat image 'Tabby_1' has BREED ID 13, outside the 12 cat breeds"
    ):
        build_cats(root)
    root = write_pets(tmp_path / "clash", rows=ROWS + [("Persian_1", 24, 1, 5, "trainval")])
    with pytest.raises(
        AdapterError,
        match=r"BREED ID 5 is used by several breeds \['British_Shorthair', 'Persian'\]",
    ):
        build_cats(root)


def test_inconsistent_partition_files(tmp_path):
    root = write_pets(tmp_path / "pets")
    trainval = root / "annotations" / "trainval.txt"
    trainval.write_text(trainval.read_text().replace("Sphynx_9 34 1 12", "Sphynx_9 34 1 11"))
    with pytest.raises(
        AdapterError, match=r"trainval\.txt: image 'Sphynx_9' has BREED ID 11 but list\.txt says 12"
    ):
        build_cats(root)
    root = write_pets(tmp_path / "twice")
    test = root / "annotations" / "test.txt"
    test.write_text(test.read_text() + "Abyssinian_1 1 1 1\n")
    with pytest.raises(AdapterError, match=r"image 'Abyssinian_1' is also listed in trainval\.txt"):
        build_cats(root)


def test_malformed_xml_and_bad_box(tmp_path):
    root = write_pets(tmp_path / "pets")
    (root / "annotations" / "xmls" / "Abyssinian_10.xml").write_text("<annotation><object><bndbox>")
    with pytest.raises(AdapterError, match=r"Abyssinian_10\.xml: malformed XML"):
        build_cats(root)
    root = write_pets(tmp_path / "box", boxes={"Abyssinian_1": (300, 72, 200, 158)})
    with pytest.raises(
        AdapterError,
        match=r"Abyssinian_1\.xml: bounding box \(xmin=300\.0, ymin=72\.0, xmax=200\.0, ymax=158\.0\) is empty",
    ):
        build_cats(root)
    root = write_pets(tmp_path / "tag")
    path = root / "annotations" / "xmls" / "Sphynx_4.xml"
    path.write_text(voc_xml("Sphynx_4", (1, 2, 3, 4)).replace("<ymax>4</ymax>", ""))
    with pytest.raises(AdapterError, match=r"Sphynx_4\.xml: <bndbox> has no numeric <ymax>"):
        build_cats(root)


def test_cli_prints_breeds_and_missing_boxes(tmp_path, capsys):
    from ganviews.cli import main

    root = write_pets(tmp_path / "pets")
    assert (
        main(
            [
                "manifest",
                "cats",
                str(root),
                "--out",
                str(tmp_path / "c.parquet"),
                "--val-fraction",
                "0.34",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "images per split: train 4, val 2, test 3" in printed
    assert "without bbox: train 1, val 0, test 3" in printed
    assert "4 British_Shorthair" in printed and "11 Sphynx" in printed
