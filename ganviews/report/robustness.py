"""The robustness table and plot (Chai et al. 2021, Sec. 4.1, Fig. 7): accuracy per input condition.

For each condition (``clean`` first, for reference, then every corruption or attack) and each
(task, classifier), four test accuracies with binomial standard errors, read from that
condition's own ensemble evaluation (:func:`ganviews.ensemble.evaluate.evaluate` on the
condition's rows only, so α is chosen on the same condition's val split):

- **image**: the classifier on the (corrupted) image, C(x);
- **reconstruction**: on its GAN reconstruction G(w*) alone (the DefenseGAN step);
- **GAN ensemble**: the α-weighted ensemble of the image and its GAN views of ``gan_method``
  (style-mixing in the paper);
- **combined ensemble**: image augmentations (``image_method``) and GAN views together.

Attacks add their success rate on the test split (targeted: the prediction became the target;
untargeted: it left the true label), measured on the 8-bit adversarial images.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from ganviews.report.plots import _new_figure, _save
from ganviews.report.tables import Block

COLUMNS = [
    "condition", "task", "classifier", "n_test", "attack_success",
    "image", "image_se", "reconstruction", "reconstruction_se",
    "gan_ensemble", "gan_ensemble_se", "alpha_gan",
    "combined_ensemble", "combined_ensemble_se", "alpha_combined",
    "gan_method", "combined_method",
]  # fmt: skip
_BARS = (
    ("image", "image"),
    ("reconstruction", "reconstruction"),
    ("gan_ensemble", "GAN ensemble"),
    ("combined_ensemble", "combined ensemble"),
)


def robustness_table(
    results: Mapping[str, pd.DataFrame],
    *,
    gan_method: str = "stylemix_fine",
    image_method: str = "crop",
    success: Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """One row per (condition, task, classifier) from each condition's ensemble result table.

    ``results``: condition label → :attr:`EnsembleResults.table` of that condition's logits;
    ``success``: condition label → attack success rate on the test split (attacks only).
    A condition whose table lacks the GAN group (or the combination) gets NaN there.
    """
    rows = []
    combined = f"{image_method}+{gan_method}"
    for condition, table in results.items():
        gan = table[table["method"] == gan_method]
        comb = table[table["method"] == combined]
        for (task, classifier), g in gan.groupby(["task", "classifier"], sort=True):
            best = g.sort_values("val_acc", ascending=False, kind="stable").iloc[0]
            c = comb[(comb["task"] == task) & (comb["classifier"] == classifier)]
            cbest = (
                c.sort_values("val_acc", ascending=False, kind="stable").iloc[0] if len(c) else None
            )
            rows.append({
                "condition": condition, "task": task, "classifier": classifier,
                "n_test": int(best["n_test"]),
                "attack_success": (success or {}).get(condition, np.nan),
                "image": best["test_acc_single"], "image_se": best["test_acc_single_se"],
                "reconstruction": best["test_acc_recon"],
                "reconstruction_se": best["test_acc_recon_se"],
                "gan_ensemble": best["test_acc"], "gan_ensemble_se": best["test_acc_se"],
                "alpha_gan": best["alpha_star"],
                "combined_ensemble": np.nan if cbest is None else cbest["test_acc"],
                "combined_ensemble_se": np.nan if cbest is None else cbest["test_acc_se"],
                "alpha_combined": np.nan if cbest is None else cbest["alpha_star"],
                "gan_method": gan_method, "combined_method": combined if cbest is not None else "",
            })  # fmt: skip
    return pd.DataFrame(rows, columns=COLUMNS)


def _cell(value: float, se: float) -> str:
    if not np.isfinite(value):
        return "–"
    return f"{100 * value:.1f} ± {100 * se:.1f}" if np.isfinite(se) else f"{100 * value:.1f}"


def robustness_markdown(table: pd.DataFrame) -> str:
    """The table as Markdown: accuracies in % ± standard error, α*, attack success in %."""
    head = (
        "| condition | task | classifier | n test | attack success | image | reconstruction "
        "| GAN ensemble (α*) | combined ensemble (α*) |\n|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in table.to_dict("records"):
        success = (
            "–" if not np.isfinite(r["attack_success"]) else f"{100 * r['attack_success']:.1f}"
        )
        gan = f"{_cell(r['gan_ensemble'], r['gan_ensemble_se'])} ({r['alpha_gan']:g})"
        comb = _cell(r["combined_ensemble"], r["combined_ensemble_se"])
        if np.isfinite(r["alpha_combined"]):
            comb += f" ({r['alpha_combined']:g})"
        lines.append(
            f"| {r['condition']} | {r['task']} | {r['classifier']} | {r['n_test']} | {success} "
            f"| {_cell(r['image'], r['image_se'])} "
            f"| {_cell(r['reconstruction'], r['reconstruction_se'])} | {gan} | {comb} |"
        )
    return head + "\n".join(lines) + "\n"


def robustness_figure(table: pd.DataFrame, path: Path, *, dpi: int = 110) -> Path:
    """Grouped bars (Fig. 7): per condition, the four accuracies with ±1 SE error bars; one
    panel per (task, classifier)."""
    pairs = list(table.groupby(["task", "classifier"], sort=True))
    fig = _new_figure(max(4.0, 1.3 * table["condition"].nunique() + 1.5), 3.2 * max(len(pairs), 1))
    axes = fig.subplots(max(len(pairs), 1), 1, squeeze=False)[:, 0]
    width = 0.8 / len(_BARS)
    for ax, ((task, classifier), rows) in zip(axes, pairs, strict=False):
        x = np.arange(len(rows))
        for i, (key, label) in enumerate(_BARS):
            ax.bar(
                x + (i - (len(_BARS) - 1) / 2) * width,
                100 * rows[key].to_numpy(dtype=float),
                width,
                yerr=100 * rows[f"{key}_se"].to_numpy(dtype=float),
                label=label,
                capsize=2,
            )
        ax.set_xticks(x, rows["condition"].tolist(), rotation=20, ha="right")
        ax.set_ylabel("test accuracy (%)")
        ax.set_ylim(0, 100)
        ax.set_title(f"{task} / {classifier}")
        ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path, dpi)


def robustness_blocks(table: pd.DataFrame, figure: Path | None) -> list[Block]:
    """The report's robustness section: what the columns mean, the table and the plot."""
    shown = pd.DataFrame({
        "condition": table["condition"], "task": table["task"], "classifier": table["classifier"],
        "n test": table["n_test"],
        "attack success": [_pct(v) for v in table["attack_success"]],
        **{label: [_cell(v, e) for v, e in zip(table[k], table[f"{k}_se"], strict=True)]
           for k, label in _BARS},
        "α* GAN": table["alpha_gan"], "α* combined": table["alpha_combined"],
    })  # fmt: skip
    blocks = [
        Block("heading", "Robustness to corrupted inputs (paper Fig. 7)"),
        Block(
            "text",
            "Test accuracy (%) ± binomial SE per input condition (docs/corruptions.md): on the "
            "corrupted image, on its GAN reconstruction alone (DefenseGAN), and the α-weighted "
            f"ensembles with {table['gan_method'].iloc[0] if len(table) else 'GAN'} views and with "
            "image augmentations added (combined); α* is chosen on the same condition's val split. "
            "Attack success: share of test images whose 8-bit adversarial copy reached the "
            "attack's goal. `clean` is the reference on the same images.",
        ),
        Block("table", table=shown),
    ]
    if figure is not None:
        blocks.append(Block("image", "Accuracy per condition (Fig. 7)", path=figure))
    return blocks


def _pct(value: float) -> str:
    return "–" if not np.isfinite(value) else f"{100 * value:.1f}"
