"""CelebA-HQ adapter on tiny files written in the real CelebAMask-HQ / CelebA text layouts."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage.adapters import AdapterError, AnnotationFileMissing, build_celebahq, build_manifest
from storage.manifest import read_manifest, write_manifest

ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose "
    "Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee "
    "Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard "
    "Oval_Face Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair "
    "Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()
SMILING = ATTRIBUTES.index("Smiling")
MALE = ATTRIBUTES.index("Male")

# CelebA-HQ idx -> (orig_idx, orig_file); CelebA's partition: 1..162770 train, 162771..182637 val, rest test
MAPPING = {
    0: (119613, "119614.jpg"),
    1: (162770, "162771.jpg"),
    2: (182637, "182638.jpg"),
    3: (3, "000004.jpg"),
    4: (202598, "202599.jpg"),
}
EXPECTED_SPLIT = {"0": "train", "1": "val", "2": "test", "3": "train", "4": "test"}


def _values(idx: int) -> list[int]:
    """A distinct, checkable pattern of ±1 per image: Smiling iff idx is even, Male iff idx == 3."""
    values = [-1] * len(ATTRIBUTES)
    values[SMILING] = 1 if idx % 2 == 0 else -1
    values[MALE] = 1 if idx == 3 else -1
    values[0] = 1  # 5_o_Clock_Shadow on for everyone
    return values


def write_celebahq(
    root: Path, *, indices=tuple(MAPPING), partition_dir: str = "", images: bool = True
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    lines = [str(len(indices)), " ".join(ATTRIBUTES)]
    for idx in indices:
        # the real file separates the name from the values with two spaces
        lines.append(f"{idx}.jpg  " + " ".join(str(v) for v in _values(idx)))
    (root / "CelebAMask-HQ-attribute-anno.txt").write_text("\n".join(lines) + "\n")
    mapping = ["idx         orig_idx    orig_file"]
    mapping += [f"{idx:<12d}{orig:<12d}{name}" for idx, (orig, name) in MAPPING.items()]
    (root / "CelebA-HQ-to-CelebA-mapping.txt").write_text("\n".join(mapping) + "\n")
    part = root / partition_dir / "list_eval_partition.txt"
    part.parent.mkdir(parents=True, exist_ok=True)
    rows = [
        "000001.jpg 0",
        "000004.jpg 0",
        "119614.jpg 0",
        "162770.jpg 0",
        "162771.jpg 1",
        "182637.jpg 1",
        "182638.jpg 2",
        "202599.jpg 2",
    ]
    part.write_text("\n".join(rows) + "\n")
    if images:
        (root / "CelebA-HQ-img").mkdir(exist_ok=True)
        for idx in indices:
            (root / "CelebA-HQ-img" / f"{idx}.jpg").write_bytes(b"\xff\xd8\xff")
    return root


def test_labels_partition_and_paths(tmp_path):
    root = write_celebahq(tmp_path / "celebahq")
    df = build_celebahq(root)
    assert list(df.columns[:3]) == ["image_id", "path", "split"]
    assert df.attrs["label_columns"] == ATTRIBUTES
    assert list(df.columns[3:43]) == ATTRIBUTES
    assert df["image_id"].tolist() == ["0", "1", "2", "3", "4"]
    assert dict(zip(df["image_id"], df["split"], strict=True)) == EXPECTED_SPLIT
    assert df["Smiling"].tolist() == [1, 0, 1, 0, 1]
    assert df["Male"].tolist() == [0, 0, 0, 1, 0]
    assert df["5_o_Clock_Shadow"].tolist() == [1] * 5
    assert int(df[ATTRIBUTES].to_numpy().sum()) == 5 + 3 + 1  # nothing else is on
    assert str(df["Young"].dtype) == "int64"
    assert df["celeba_file"].tolist() == [
        "119614.jpg",
        "162771.jpg",
        "182638.jpg",
        "000004.jpg",
        "202599.jpg",
    ]
    assert df["path"].tolist() == [
        str((root / "CelebA-HQ-img" / f"{i}.jpg").resolve()) for i in range(5)
    ]
    assert "bbox" not in df.columns  # pre-aligned


def test_partition_under_eval_and_explicit_file(tmp_path):
    root = write_celebahq(tmp_path / "a", partition_dir="Eval")
    assert build_celebahq(root)["split"].tolist() == ["train", "val", "test", "train", "test"]
    other = write_celebahq(tmp_path / "b", partition_dir="elsewhere")
    df = build_celebahq(other, partition_file=other / "elsewhere" / "list_eval_partition.txt")
    assert df["split"].tolist() == ["train", "val", "test", "train", "test"]


def test_roundtrip_through_manifest_writer(tmp_path):
    df = build_manifest("celebahq", write_celebahq(tmp_path / "c"))
    out = write_manifest(df, tmp_path / "m.parquet", label_columns=df.attrs["label_columns"])
    back = read_manifest(out)
    assert back.attrs["label_columns"] == ATTRIBUTES
    assert back["image_id"].tolist() == df["image_id"].tolist()
    assert back["Smiling"].tolist() == [1, 0, 1, 0, 1]
    assert back["celeba_file"].tolist() == df["celeba_file"].tolist()


def test_missing_partition_file_names_it_and_its_source(tmp_path):
    root = write_celebahq(tmp_path / "d")
    (root / "list_eval_partition.txt").unlink()
    with pytest.raises(AnnotationFileMissing, match=r"list_eval_partition\.txt.*CelebA"):
        build_celebahq(root)
    with pytest.raises(AdapterError, match="partition_file 'nope.txt' is not a file"):
        build_celebahq(root, partition_file="nope.txt")


def test_missing_attribute_file(tmp_path):
    root = write_celebahq(tmp_path / "e")
    (root / "CelebAMask-HQ-attribute-anno.txt").unlink()
    with pytest.raises(FileNotFoundError, match="CelebAMask-HQ-attribute-anno.txt.*CelebAMask-HQ"):
        build_celebahq(root)


def test_malformed_attribute_lines(tmp_path):
    root = write_celebahq(tmp_path / "f")
    path = root / "CelebAMask-HQ-attribute-anno.txt"
    lines = path.read_text().splitlines()
    good = list(lines)
    lines[3] = lines[3].rsplit(" ", 1)[0]  # 39 values
    path.write_text("\n".join(lines))
    with pytest.raises(
        AdapterError,
        match=r"attribute-anno\.txt:4: expected a file name and 40 values, got 40 fields",
    ):
        build_celebahq(root)
    lines = list(good)
    lines[4] = lines[4].replace(" -1", " 0", 1)
    path.write_text("\n".join(lines))
    with pytest.raises(AdapterError, match=r":5: attribute values must be 1 or -1, got '0'"):
        build_celebahq(root)
    lines = list(good)
    lines[0] = "6"
    path.write_text("\n".join(lines))
    with pytest.raises(AdapterError, match="line 1 announces 6 images but 5 rows follow"):
        build_celebahq(root)
    lines = list(good)
    lines[1] = " ".join(ATTRIBUTES[:-1])
    path.write_text("\n".join(lines))
    with pytest.raises(AdapterError, match=r":2: expected 40 distinct attribute names, got 39"):
        build_celebahq(root)


def test_image_without_mapping_or_partition(tmp_path):
    root = write_celebahq(tmp_path / "g", indices=(0, 1, 2, 3, 4, 5))
    with pytest.raises(
        AdapterError, match=r"image '5\.jpg' has no row in CelebA-HQ-to-CelebA-mapping\.txt"
    ):
        build_celebahq(root)
    root = write_celebahq(tmp_path / "h")
    part = root / "list_eval_partition.txt"
    part.write_text(part.read_text().replace("162771.jpg 1\n", ""))
    with pytest.raises(AdapterError, match=r"CelebA file '162771\.jpg' \(idx 1\) is not listed"):
        build_celebahq(root)
    part.write_text(part.read_text() + "162771.jpg 3\n")
    with pytest.raises(AdapterError, match=r"expected '<file> <0\|1\|2>', got '162771\.jpg 3'"):
        build_celebahq(root)


def test_missing_images_error_or_drop(tmp_path):
    root = write_celebahq(tmp_path / "i")
    (root / "CelebA-HQ-img" / "2.jpg").unlink()
    with pytest.raises(
        AnnotationFileMissing,
        match=r"celebahq: 1 of 5 annotated images are missing on disk .*2\.jpg",
    ):
        build_celebahq(root)
    df = build_celebahq(root, on_missing_image="drop")
    assert df["image_id"].tolist() == ["0", "1", "3", "4"]
    assert "test" in set(df["split"])


def test_cli_prints_positives_per_attribute(tmp_path, capsys):
    from ganviews.cli import main

    root = write_celebahq(tmp_path / "cli")
    assert main(["manifest", "celebahq", str(root), "--out", str(tmp_path / "m.parquet")]) == 0
    printed = capsys.readouterr().out
    assert "(5 images, 40 label column(s))" in printed
    assert "images per split: train 2, val 1, test 2" in printed
    smiling = next(line for line in printed.splitlines() if line.startswith("Smiling (positives):"))
    assert smiling.split(":", 1)[1].split() == ["train", "1/2,", "val", "0/1,", "test", "2/2"]
