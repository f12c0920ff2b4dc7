"""The report: ``ganviews report`` end to end on Parquet logit tables, tables, plots, gallery."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pandas as pd
import pytest
from ensemble.test_ensemble import FAST, known_table, random_table
from matplotlib.image import imread

from ganviews.cli import main
from ganviews.ensemble.evaluate import EnsembleConfig, evaluate
from ganviews.report.plots import gallery_figure
from ganviews.report.tables import Block, ReportConfig, render_markdown, summary_table
from storage.logits import write_logits
from tasks.evaluate import run_evaluate

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
    """run_evaluate reads one task at a time (two passes); the numbers equal evaluating the table at once."""
    frame = random_table(seed=11, n_val=9, n_test=12)
    root = tmp_path / "logits"
    half = frame["image_id"].str.endswith(("0", "2", "4", "6", "8"))
    write_logits(root, frame[half], shard="a")  # two shards per partition: the reader joins them
    write_logits(root, frame[~half], shard="b")
    config = ReportConfig(ensemble=FAST, plots=False, html=False)
    outputs = run_evaluate(root, tmp_path / "out", config=config)
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
    outputs = run_evaluate(tmp_path / "logits", tmp_path / "out", config=config)
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
    outputs = run_evaluate(
        known_logits,
        tmp_path / "out",
        store=store,
        config=ReportConfig(ensemble=EnsembleConfig(bootstrap_draws=5)),
    )
    md = outputs.report_md.read_text()
    assert "no reconstruction gallery: the store" in md and "images/aligned" in md
    assert not (tmp_path / "out" / "plots" / "gallery.png").exists()
    with pytest.raises(Exception, match="is not a latent store|no latent store"):
        run_evaluate(known_logits, tmp_path / "out2", store=tmp_path / "logits")


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


def test_cli_counts_failed_inversions_as_exclusions_from_the_store(known_logits, tmp_path):
    """The store's manifest names a test image whose inversion failed and a pending val
    image: neither has logit rows, and the report says so per split with the store's reason."""
    from storage import LatentStore

    ids = ["v0", "v1", "vP", "tA", "tE", "tF", "tG", "tX", "x0"]
    manifest = pd.DataFrame(
        {
            "image_id": ids,
            "path": [f"/data/{i}.png" for i in ids],
            "split": ["val"] * 3 + ["test"] * 5 + ["train"],
            "Smiling": [1, 1, 0, 1, 1, 0, 1, 1, 0],
        }
    )
    store = LatentStore.create(tmp_path / "store", len(ids), 2, 4, 3, attrs={"generator_sha256": "0" * 64},
                               manifest=manifest)  # fmt: skip
    done = [0, 1, 3, 4, 5, 6, 8]
    store.write(done, w=np.zeros((len(done), 2, 4), np.float32))
    store.mark_failed([7], "ImageError: cannot decode /data/tX.png")
    out = tmp_path / "out"
    args = ["report", "--logits", str(known_logits), "--out", str(out), "--store", str(store.path)]
    assert main(args) == 0
    row = pd.read_csv(out / "results.csv", keep_default_na=False).iloc[0]
    assert (row["n_val"], row["n_test"], row["n_val_excluded"], row["n_test_excluded"]) == (
        2,
        4,
        1,
        1,
    )
    assert row["excluded_reasons"] == "test: 1 no logits; val: 1 no logits"
    excl = pd.read_csv(out / "exclusions.csv", keep_default_na=False).set_index("image_id")
    assert excl.loc["tX", "detail"] == "inversion failed: ImageError: cannot decode /data/tX.png"
    assert excl.loc["vP", "detail"] == "not inverted (pending)"
    md = (out / "report.md").read_text()
    assert "## Excluded images" in md and "1 test image(s) are left out" in md
    assert "| test | no logits | 1 | 1 | tX (inversion failed: ImageError" in md
    predictions = pd.read_parquet(out / "predictions.parquet")
    assert sorted(predictions["image_id"]) == ["tA", "tE", "tF", "tG"]
    assert predictions["correct"].mean() == row["test_acc"]
    # without a store, the report says it cannot know about images without rows
    assert main(["report", "--logits", str(known_logits), "--out", str(tmp_path / "o2")]) == 0
    md2 = (tmp_path / "o2" / "report.md").read_text()
    assert "No val/test image is left out of any result." in md2
    assert "not counted as excluded" in md2


def test_gallery_shows_perturbed_views_under_their_view_numbers(tmp_path):
    """The store keeps views by number (0 = input, 1 = reconstruction, 2… = perturbed): the
    gallery shows views 2… of a GAN method and labels them "view 2", "view 3", …"""
    from ganviews.report.plots import gallery_columns
    from ganviews.report.tables import ReportConfig
    from storage import LatentStore
    from tasks.evaluate import load_gallery

    path = _store(tmp_path / "store")
    table = pd.DataFrame([{"task": "t", "classifier": "c", "method": "isotropic_fine",
                           "setting": "0.3", "kind": "gan", "val_acc": 1.0}])  # fmt: skip
    gallery, notes = load_gallery(path, table, ReportConfig())
    assert notes == [] and gallery.first_view == {"isotropic_fine/0.3": 2}
    stored = LatentStore.open(path, mode="r").read_array("views/isotropic_fine/0.3", [1, 2, 3])
    np.testing.assert_array_equal(gallery.views["isotropic_fine/0.3"], stored[:, 2:])
    assert gallery_columns({"isotropic_fine/0.3": 1}, gallery.first_view)[3:] == [
        "isotropic_fine/0.3\nview 2"
    ]
    assert gallery_columns({"crop/none": 2}, {"crop/none": 1})[3:] == [
        "crop/none\nview 1",
        "crop/none\nview 2",
    ]


def test_alpha_plots_are_in_percent_and_gain_bars_have_a_legend():
    from matplotlib.figure import Figure

    from ganviews.report.plots import _draw_alpha, draw_gain_bars

    res = evaluate(known_table(), FAST)
    row = res.table.iloc[0].to_dict()
    ax = Figure().add_subplot()
    _draw_alpha(ax, res.curves, row, legend=True, title="t")
    assert ax.get_ylabel() == "accuracy (%)"
    test_line = [ln for ln in ax.get_lines() if ln.get_label() == "test"][0]
    assert max(test_line.get_ydata()) == 100.0  # α = 1 gets all four test images right
    summary = summary_table(evaluate(random_table(seed=3, n_val=5, n_test=5), FAST).table)
    fig = draw_gain_bars(summary[summary["classifier"] == "multi"])
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    methods = sorted(set(summary["method"]))  # combinations included
    assert legend == [*methods, "± SE", "test-oracle α"] and "pca_coarse" in methods


def test_capped_alpha_curves_show_every_method_before_repeating_one(tmp_path):
    """Alphabetical order with a cap of 12 used to show only the first tasks' methods; now each
    (classifier, method) gets its first curve before any gets a second, and the report says
    how many of how many are shown."""
    from ganviews.ensemble.evaluate import best_settings
    from ganviews.report.tables import alpha_plot_rows

    table = evaluate(random_table(seed=4, n_val=5, n_test=5), FAST).table
    order = alpha_plot_rows(table, best_settings(table))
    first = order.head(table.groupby(["classifier", "method"]).ngroups)
    assert set(map(tuple, first[["classifier", "method"]].values.tolist())) == set(
        map(tuple, table[["classifier", "method"]].values.tolist())
    )
    assert len(first) == table.groupby(["classifier", "method"]).ngroups
    config = ReportConfig(ensemble=FAST, max_alpha_plots=3, grid_max_tasks=0, html=False)
    md = run_report_on(
        table=random_table(seed=4, n_val=5, n_test=5), tmp_path=tmp_path, config=config
    )
    assert f"3 of {len(order)} curves (every method's first task first" in md


def run_report_on(*, table, tmp_path, config) -> str:
    root = tmp_path / "logits"
    write_logits(root, table, shard="s0")
    return run_evaluate(root, tmp_path / "out", config=config).report_md.read_text()
