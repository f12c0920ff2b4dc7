"""Fig. 7 table: per condition, image / reconstruction / GAN / combined accuracies from that
condition's own evaluation, attack success, Markdown and plot."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ganviews.ensemble.evaluate import EnsembleConfig, evaluate
from ganviews.report.robustness import robustness_figure, robustness_markdown, robustness_table


def _frame(condition: str, *, image_right: bool, n: int = 12) -> pd.DataFrame:
    """Binary task; the GAN views are always right, the image only when ``image_right``."""
    rows = []
    for split in ("val", "test"):
        for k in range(n):
            label = k % 2
            good = np.array([-2.0, 2.0] if label else [2.0, -2.0], np.float32)
            for method, views in (("stylemix_fine", 5), ("crop", 4)):
                for view in range(views):
                    right = image_right or (method == "stylemix_fine" and view >= 1)
                    rows.append({
                        "image_id": f"{split}{k}", "split": split, "task": "t", "classifier": "c",
                        "method": method, "setting": "", "view": view,
                        "logits": good if right else -good, "label": label,
                        "seed": None if view < 2 else view, "condition": condition,
                    })  # fmt: skip
    return pd.DataFrame(rows)


def test_table_reads_each_conditions_evaluation(tmp_path):
    config = EnsembleConfig(bootstrap_draws=2, size_curve="none")
    results = {
        "clean": evaluate(_frame("clean", image_right=True), config).table,
        "pgd-8_255": evaluate(_frame("pgd-8_255", image_right=False), config).table,
    }
    table = robustness_table(results, success={"pgd-8_255": 0.75})
    clean, attacked = table.iloc[0], table.iloc[1]
    assert list(table["condition"]) == ["clean", "pgd-8_255"]
    assert clean["image"] == 1.0 and clean["gan_ensemble"] == 1.0
    assert np.isnan(clean["attack_success"]) and attacked["attack_success"] == 0.75
    assert attacked["image"] == 0.0 and attacked["reconstruction"] == 1.0
    assert attacked["gan_ensemble"] == 1.0 and attacked["alpha_gan"] > 0.5  # views win on val
    assert attacked["combined_method"] == "crop+stylemix_fine"
    # the combined ensemble (crop copies of the wrong image + right GAN views) picks α on val
    assert attacked["combined_ensemble"] == 1.0 and attacked["alpha_combined"] > 0.5
    assert attacked["n_test"] == 12 and attacked["image_se"] == 0.0
    md = robustness_markdown(table)
    assert "| pgd-8_255 | t | c | 12 | 75.0 | 0.0 ± 0.0 | 100.0 ± 0.0 |" in md
    png = robustness_figure(table, tmp_path / "fig7.png")
    assert png.stat().st_size > 5000


def test_missing_combination_is_left_empty():
    frame = _frame("jpeg-20", image_right=True)
    frame = frame[frame["method"] != "crop"]
    table = robustness_table(
        {"jpeg-20": evaluate(frame, EnsembleConfig(bootstrap_draws=2, size_curve="none")).table}
    )
    assert np.isnan(table.iloc[0]["combined_ensemble"]) and table.iloc[0]["combined_method"] == ""
    assert "| jpeg-20 | t | c | 12 | – | 100.0 ± 0.0 |" in robustness_markdown(table)
