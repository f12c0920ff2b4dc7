"""The bundled demo domain: scikit-learn digits rendered to PNG, seeded stratified split, registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from storage.adapters import ADAPTERS, AdapterError, build_folder, build_manifest
from storage.adapters.digits import build_digits, render_digit


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory) -> tuple[Path, object]:
    root = tmp_path_factory.mktemp("digits")
    return root, build_digits(root)


def test_manifest_contract_and_split_sizes(digits_dir):
    root, df = digits_dir
    assert list(df.columns[:4]) == ["image_id", "path", "split", "label"]
    assert len(df) == 1797 and df["image_id"].is_unique
    assert df.attrs["label_columns"] == ["label"] and df.attrs["dataset"] == "digits"
    counts = df["split"].value_counts().to_dict()
    assert counts == {"train": 1079, "val": 359, "test": 359}
    # stratified: every class has round(n·0.2) val and test images
    for label, group in df.groupby("label"):
        n = len(group)
        per = group["split"].value_counts()
        assert per["val"] == per["test"] == int(np.floor(n * 0.2 + 0.5)), label
    assert all(Path(p).is_file() and Path(p).parent == root / "images" for p in df["path"])


def test_pngs_match_the_source_pixels(digits_dir):
    from sklearn.datasets import load_digits

    _, df = digits_dir
    data = load_digits()
    for i in (0, 17, 1796):
        rgb = np.asarray(Image.open(df["path"][i]))
        assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8
        assert (rgb[..., 0] == rgb[..., 1]).all() and (
            rgb[..., 1] == rgb[..., 2]
        ).all()  # grey → RGB
        # box-averaging the 32 px render back to 8×8 recovers the 0…16 source levels closely
        small = rgb[..., 0].astype(np.float64).reshape(8, 4, 8, 4).mean(axis=(1, 3)) * 16 / 255
        assert np.abs(small - data.images[i]).mean() < 1.0
        assert df["label"][i] == data.target[i]


def test_render_filter_and_errors():
    img = np.zeros((8, 8))
    img[2:6, 3:5] = 16
    nearest = render_digit(img, resample="nearest")
    assert set(np.unique(nearest)) == {0, 255}
    assert (nearest[8:24, 12:20] == 255).all()
    bicubic = render_digit(img)
    assert len(np.unique(bicubic)) > 10  # smooth edges, clipped to 0…255
    with pytest.raises(AdapterError, match=r"resample: 'box' is not one of"):
        render_digit(img, resample="box")
    with pytest.raises(AdapterError, match=r"image8: expected shape \(8, 8\), got \(4, 4\)"):
        render_digit(np.zeros((4, 4)))


@pytest.mark.slow
def test_split_is_seeded_and_rerun_is_a_no_op(digits_dir, tmp_path: Path):
    root, df = digits_dir
    mtime = Path(df["path"][0]).stat().st_mtime_ns
    again = build_digits(root)
    assert again.equals(df)
    assert Path(df["path"][0]).stat().st_mtime_ns == mtime  # unchanged files are not rewritten
    other = build_digits(tmp_path / "s1", seed=1)
    assert (other["split"] != df["split"]).any()
    assert other["split"].value_counts().to_dict() == df["split"].value_counts().to_dict()
    with pytest.raises(
        AdapterError, match="val_fraction \\+ test_fraction: 0.5 \\+ 0.5 leaves no training"
    ):
        build_digits(tmp_path / "bad", val_fraction=0.5, test_fraction=0.5)


def test_registry_and_folder_adapter_read_it_back(digits_dir):
    root, df = digits_dir
    assert ADAPTERS["digits"] is build_digits
    via_registry = build_manifest("digits", root)
    assert via_registry.equals(df)
    folder = build_folder(root).set_index("image_id").loc[df["image_id"]]
    assert (folder["split"].to_numpy() == df["split"].to_numpy()).all()
    assert (folder["label"].to_numpy() == df["label"].to_numpy()).all()


def test_manifest_digits_command(tmp_path, capsys):
    """``ganviews manifest digits`` (named in the README) builds the demo domain's manifest."""
    import pandas as pd

    from ganviews.cli import main

    out = tmp_path / "digits.parquet"
    args = ["manifest", "digits", str(tmp_path / "d"), "--out", str(out), "--resolution", "16"]
    assert main([*args, "--val-fraction", "0.1", "--test-fraction", "0.3"]) == 0
    printed = capsys.readouterr().out
    assert "images per split: train 1079, val 179, test 539" in printed
    frame = pd.read_parquet(out)
    assert len(frame) == 1797 and Image.open(frame["path"].iloc[0]).size == (16, 16)
    bad = ["--val-fraction", "0.6", "--test-fraction", "0.5"]
    assert main(["manifest", "digits", str(tmp_path / "d"), "--out", str(out), *bad]) == 2
    assert "leaves no training images" in capsys.readouterr().err
