"""The report's section for ``protocol: paper`` (the authors' resampled numbers; docs/report.md)."""

from __future__ import annotations

from ganviews.ensemble.evaluate import EnsembleResults
from ganviews.report.tables import Block


def paper_blocks(results: EnsembleResults) -> list[Block]:
    """protocol "paper": the authors' resampled numbers and both kinds of colour/crop baseline."""
    paper, base = results.paper, results.paper_baselines
    shown = paper.assign(best_setting=paper["best_setting"].map({True: "★", False: ""}))
    text = ("As the authors' notebook (plot_precomputed_evaluations.ipynb): 20 resamples of 31 GAN views "
            "with replacement (crops + GAN: 16 + 16), α chosen on val per resample (their argsort tie-break), "
            "test accuracy averaged over the resamples (± std/√20); ★ = best mean val setting per method. "
            "Colour/crop baselines: acc_plain_mean = their plain mean of the original and its augmentations "
            "(no α), acc_resampled = their 20 draws, acc_alpha_cv_ganviews = ganviews' α chosen on val. In %.")  # fmt: skip
    b = [Block("heading", "The authors' protocol (protocol: paper)"), Block("text", text)]
    b.append(Block("table", table=shown.drop(columns=["alphas"]).round(2)))
    if base is not None and not base.empty:
        b.append(Block("table", table=base.round(2)))
    return b
