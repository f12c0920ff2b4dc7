"""The report: ``ganviews report`` end to end on Parquet logit tables, tables, plots, gallery."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread
from test_ensemble import FAST, known_table, random_table

from ganviews.cli import main
from ganviews.cli.report import run_report
from ganviews.ensemble.evaluate import EnsembleConfig, evaluate
from ganviews.report.plots import gallery_figure
from ganviews.report.tables import Block, ReportConfig, render_markdown, summary_table
from storage.logits import write_logits

REQUIRED = ["task", "classifier", "method", "setting", "alpha_star", "val_acc", "test_acc", "test_acc_single",
            "test_acc_recon", "test_acc_gan_only", "test_acc_oracle", "alpha_oracle", "n_val", "n_test"]  # fmt: skip
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path) -> np.ndarray:
    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_MAGIC, path
    img = imread(path)
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50
    assert img.std() > 0.01  # not a blank canvas
    return img


@pytest.fixture
def known_logits(tmp_path):
    root = tmp_path / "logits"
    write_logits(root, known_table(), shard="000000-000006", metadata={"test": "known"})
    return root


def test_cli_end_to_end_on_known_table(known_logits, tmp_path, capsys):
    out = tmp_path / "report"
    code = main(["report", "--logits", str(known_logits), "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1] == str(out / "report.md")
    table = pd.read_csv(out / "results.csv", keep_default_na=False, na_values=[""])
    assert list(table.columns[: len(REQUIRED)]) == REQUIRED
    assert len(table) == 1
    row = table.iloc[0]
    assert (row["task"], row["classifier"], row["method"], str(row["setting"])) == (
        "Smiling",
        "r50",
        "isotropic_fine",
        "0.3",
    )
    assert row["alpha_star"] == pytest.approx(0.45) and row["alpha_oracle"] == pytest.approx(0.5)
    assert row["val_acc"] == 1.0 and row["test_acc"] == 0.75
    assert row["test_acc_single"] == 0.25 and row["test_acc_recon"] == 0.75
    assert row["test_acc_gan_only"] == 1.0 and row["test_acc_oracle"] == 1.0
    assert (row["n_val"], row["n_test"]) == (2, 4)
    assert row["test_acc_se"] == pytest.approx(np.sqrt(0.75 * 0.25 / 4))
    parquet = pd.read_parquet(out / "results.parquet")
    assert parquet.columns.tolist() == table.columns.tolist()
    assert parquet["test_acc"].tolist() == table["test_acc"].tolist()
    md = (out / "report.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(images) >= 4
    for rel in images:
        assert_png(out / rel)
    assert "| Smiling | r50 | isotropic_fine | 0.3 | 0.45 | 100.00 | 75.00 |" in md
    assert "ties → the smallest α" in md
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(images)
    for name in ("alpha_curves.csv", "size_curves.csv", "size_curve_summary.csv", "summary.csv"):
        assert (out / name).is_file()
    curves = pd.read_csv(out / "alpha_curves.csv")
    assert len(curves) == 2 * 21


def test_report_over_several_tasks_equals_one_pass_evaluation(tmp_path):
    """run_report reads one task at a time (two passes); the numbers equal evaluating the table at once."""
    frame = random_table(seed=11, n_val=9, n_test=12)
    root = tmp_path / "logits"
    half = frame["image_id"].str.endswith(("0", "2", "4", "6", "8"))
    write_logits(root, frame[half], shard="a")  # two shards per partition: the reader joins them
    write_logits(root, frame[~half], shard="b")
    config = ReportConfig(ensemble=FAST, plots=False, html=False)
    outputs = run_report(root, tmp_path / "out", config=config)
    direct = evaluate(frame, FAST)
    keys = ["task", "classifier", "method", "setting"]
    got = outputs.results.table.sort_values(keys).reset_index(drop=True)
    want = direct.table.sort_values(keys).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, want, check_dtype=False)
    got_size = outputs.results.size_curves.sort_values([*keys, "num_views"]).reset_index(drop=True)
    want_size = direct.size_curves.sort_values([*keys, "num_views"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(got_size, want_size, check_dtype=False)
    assert outputs.report_html is None and not (tmp_path / "out" / "report.html").exists()
    assert outputs.plots == [] and not (tmp_path / "out" / "plots").exists()
    assert "| bin2 | isotropic_fine |" in outputs.report_md.read_text()


def test_plots_per_classifier(tmp_path):
    frame = random_table(seed=13, n_val=6, n_test=7)
    frame = frame[frame["classifier"].isin(["bin1", "multi"]) & (frame["setting"] != "0.2")]
    write_logits(tmp_path / "logits", frame, shard="s")
    config = ReportConfig(ensemble=FAST, max_alpha_plots=2, grid_max_tasks=1, html=False, dpi=60)
    outputs = run_report(tmp_path / "logits", tmp_path / "out", config=config)
    plots = [p for _, p in outputs.plots]
    assert len([p for p in plots if p.parent.name == "alpha"]) == 2
    for clf in ("bin1", "multi"):
        for stem in ("gain_bars", "ensemble_size", "alpha_mean", "alpha_grid"):
            assert tmp_path / "out" / "plots" / f"{stem}__{clf}.png" in plots
    for p in plots:
        assert_png(p)


def test_summary_table_numbers():
    frame = random_table(seed=12, n_val=8, n_test=10)
    table = evaluate(frame, FAST).table
    summary = summary_table(table).set_index(["classifier", "method", "setting"])
    part = table[(table["classifier"] == "bin2") & (table["method"] == "pca_coarse")]
    row = summary.loc[("bin2", "pca_coarse", "1")]
    assert row["n_tasks"] == 2
    assert row["gain_mean"] == pytest.approx(part["gain"].mean())
    assert row["gain_se"] == pytest.approx(part["gain"].std(ddof=1) / np.sqrt(2))
    assert row["acc"] == pytest.approx(part["test_acc"].mean())
    assert row["wins"] + row["ties"] + row["losses"] == 2
    assert row["wins"] == int((part["gain"] > 0).sum())
    iso = summary.loc[("bin2", "isotropic_fine")]
    assert iso["best"].sum() == 1  # one best setting per (classifier, method)
    single_task = summary_table(table[table["task"] == "t0"]).set_index(
        ["classifier", "method", "setting"]
    )
    one = table[
        (table["task"] == "t0")
        & (table["classifier"] == "bin2")
        & (table["method"] == "pca_coarse")
    ]
    assert single_task.loc[("bin2", "pca_coarse", "1"), "gain_se"] == pytest.approx(
        one["gain_se"].item()
    )
    assert single_task.loc[("bin2", "pca_coarse", "1"), "se_over"] == "images"


def test_cli_config_yaml(known_logits, tmp_path):
    cfg = tmp_path / "report.yaml"
    cfg.write_text(
        "ensemble:\n  num_alphas: 11\n  tie_break: largest\n  bootstrap_draws: 10\nhtml: false\ntitle: My run\n"
    )
    out = tmp_path / "out"
    assert (
        main(["report", "--logits", str(known_logits), "--out", str(out), "--config", str(cfg)])
        == 0
    )
    row = pd.read_csv(out / "results.csv").iloc[0]
    assert row["alpha_star"] == pytest.approx(
        0.5
    )  # on a 0.1 grid both val images are right only at 0.5
    assert row["alpha_oracle"] == pytest.approx(1.0)  # largest of the tied best test α
    assert not (out / "report.html").exists()
    md = (out / "report.md").read_text()
    assert md.startswith("# My run") and "tie_break: largest" in md


def test_cli_errors_are_one_clean_line(known_logits, tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("ensemble:\n  tie_brake: smallest\n")
    assert (
        main(
            [
                "report",
                "--logits",
                str(known_logits),
                "--out",
                str(tmp_path / "o"),
                "--config",
                str(cfg),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "ganviews report: error: ensemble.tie_brake: unknown key" in err
    assert (
        main(["report", "--logits", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
    )
    assert "logits dataset not found" in capsys.readouterr().err
    train_only = known_table()
    train_only = train_only[train_only["split"] == "train"]
    write_logits(tmp_path / "train", train_only, shard="s")
    assert main(["report", "--logits", str(tmp_path / "train"), "--out", str(tmp_path / "o")]) == 2
    assert "no val/test logit rows to evaluate" in capsys.readouterr().err
    frame = known_table()
    write_logits(
        tmp_path / "ragged", frame[~((frame["image_id"] == "tE") & (frame["view"] == 3))], shard="s"
    )
    assert main(["report", "--logits", str(tmp_path / "ragged"), "--out", str(tmp_path / "o")]) == 2
    assert "image 'tE' lacks views [3]" in capsys.readouterr().err


def _uint8(rng, shape):
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def test_gallery_figure_from_arrays(tmp_path):
    rng = np.random.default_rng(0)
    n, h = 3, 24
    inputs = _uint8(rng, (n, 3, h, h))
    masks = np.zeros((n, 1, h, h), np.uint8)
    masks[:, :, 4:20, 4:20] = 255
    recons = _uint8(rng, (n, 3, 32, 32))
    views = {
        "isotropic_fine/0.3": _uint8(rng, (n, 8, 3, 16, 16)),
        "gray": _uint8(rng, (n, 2, 1, 16, 16)),
    }
    path = gallery_figure(
        inputs, masks, recons, views, tmp_path / "g.png", image_ids=["a", "b", "c"], max_views=4
    )
    img = assert_png(path)
    assert img.shape[1] > img.shape[0]  # 3 + 4 + 2 columns, 3 rows
    with pytest.raises(
        ValueError, match=r"inputs: expected uint8 \[N, C, H, W\], got dtype float32"
    ):
        gallery_figure(inputs.astype(np.float32), masks, recons, views, tmp_path / "x.png")
    with pytest.raises(
        ValueError, match=r"masks: expected uint8 \[N, 1, H, W\] = \[3, 1, 24, 24\]"
    ):
        gallery_figure(inputs, masks[:, :, :10], recons, views, tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"views\['gray'\]: 2 images, inputs have 3"):
        gallery_figure(inputs, masks, recons, {"gray": views["gray"][:2]}, tmp_path / "x.png")


def _store(path, *, with_images=True):
    from storage import LatentStore

    n = 5
    store = LatentStore.create(path, n, 2, 4, 5, attrs={"generator_sha256": "0" * 64},
                               image_ids=[f"img{i}" for i in range(n)])  # fmt: skip
    rng = np.random.default_rng(1)
    arrays = {}
    if with_images:
        for name, tail in (("images/aligned", (3, 16, 16)), ("images/mask", (1, 16, 16)), ("images/recon", (3, 16, 16)),
                           ("views/isotropic_fine/0.3", (3, 3, 16, 16))):  # fmt: skip
            store.ensure_array(name, tail, np.uint8)
            arrays[name] = _uint8(rng, (3, *tail))
    store.write([1, 2, 3], w=np.zeros((3, 2, 4), np.float32), arrays=arrays)
    return path


def test_cli_with_store_draws_a_gallery(known_logits, tmp_path, capsys):
    store = _store(tmp_path / "store")
    out = tmp_path / "out"
    assert (
        main(["report", "--logits", str(known_logits), "--out", str(out), "--store", str(store)])
        == 0
    )
    img = assert_png(out / "plots" / "gallery.png")
    assert img.shape[0] > 100
    md = (out / "report.md").read_text()
    assert "plots/gallery.png" in md and "Reconstruction gallery" in md


def test_store_without_images_is_a_note_not_a_failure(known_logits, tmp_path):
    store = _store(tmp_path / "store", with_images=False)
    outputs = run_report(
        known_logits, tmp_path / "out", store=store, config={"ensemble": {"bootstrap_draws": 5}}
    )
    md = outputs.report_md.read_text()
    assert "no reconstruction gallery: the store" in md and "images/aligned" in md
    assert not (tmp_path / "out" / "plots" / "gallery.png").exists()
    with pytest.raises(Exception, match="is not a latent store|no latent store"):
        run_report(known_logits, tmp_path / "out2", store=tmp_path / "logits")


def test_markdown_table_escapes_pipes():
    text = render_markdown([Block("table", table=pd.DataFrame({"a|b": ["x|y"]}))], lambda p: str(p))
    assert "a\\|b" in text and "x\\|y" in text


def test_report_config_rejects_bad_values():
    from ganviews.core.errors import ConfigError

    with pytest.raises(ConfigError, match="report.max_alpha_plots: -1 must be ≥ 0"):
        ReportConfig(max_alpha_plots=-1)
    cfg = ReportConfig(ensemble=dataclasses.replace(EnsembleConfig(), seed=3))
    assert cfg.ensemble.seed == 3


def test_cli_reads_a_logits_table_written_by_pandas(known_logits, tmp_path):
    """A table written with ``DataFrame.to_parquet(partition_cols=...)`` (large_string ids,
    int64 views, list<double> logits, partition columns only in the path) is cast, and gives
    the same results as the one written by storage.logits."""
    from storage.logits import PARTITION_COLUMNS

    foreign = tmp_path / "foreign"
    known_table().to_parquet(foreign, partition_cols=list(PARTITION_COLUMNS))
    for root, out in ((known_logits, tmp_path / "ours"), (foreign, tmp_path / "theirs")):
        assert main(["report", "--logits", str(root), "--out", str(out)]) == 0
    ours = pd.read_csv(tmp_path / "ours" / "results.csv")
    theirs = pd.read_csv(tmp_path / "theirs" / "results.csv")
    pd.testing.assert_frame_equal(ours, theirs)
    assert theirs["test_acc"].tolist() == [0.75]
