"""The ensemble report: tidy tables (CSV + Parquet), PNG plots and report.md / report.html.

Chai et al. 2021, Sec. 4 (Tables 1–3, Fig. 3–6 and 8): for every (task, classifier, method,
setting) the test accuracy at the α chosen on val, against the single image, the GAN views
alone, the reconstruction and the test oracle, with standard errors; averages over tasks;
α curves; ensemble-size curves; a reconstruction gallery.

The report is assembled as a list of blocks (headings, text, tables, images) rendered to
Markdown and to HTML, so the same content can also be published elsewhere (e.g. a Prefect
Markdown artifact with the images inlined) by :meth:`ReportOutputs.render_markdown`.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ganviews import __version__
from ganviews.core.atomic import write_atomically
from ganviews.core.config import to_dict
from ganviews.core.errors import ConfigError
from ganviews.ensemble.evaluate import (
    GROUP_COLUMNS,
    EnsembleConfig,
    EnsembleResults,
    best_settings,
)
from ganviews.report import plots

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportConfig:
    """What the report contains; the YAML given to ``ganviews report --config`` maps onto it."""

    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)  # how ensembles are evaluated
    title: str = "Ensembles of deep generative views"  # heading of report.md / report.html
    html: bool = True  # also write report.html
    html_embed_images: bool = True  # report.html carries its PNGs inline (one self-contained file)
    plots: bool = True  # draw the PNGs (False: tables and report text only, much faster)
    max_alpha_plots: int = 12  # single-group α-curve figures (best setting per method, first tasks)
    grid_max_tasks: int = 8  # tasks (columns) in each α-curve grid figure
    table_max_rows: int = 300  # per-group rows shown in report.md (the CSV always has all)
    gallery_images: int = 4  # images (rows) in the reconstruction gallery, when a store is given
    gallery_views: int = 6  # views per method in the gallery
    # store arrays shown as views ("views/<method>/<setting>"); None: best setting per GAN method
    gallery_arrays: tuple[str, ...] | None = None
    dpi: int = 110  # resolution of the PNGs

    def __post_init__(self) -> None:
        for name in ("max_alpha_plots", "grid_max_tasks", "table_max_rows", "gallery_images"):
            if getattr(self, name) < 0:
                raise ConfigError(f"report.{name}: {getattr(self, name)} must be ≥ 0")
        if self.gallery_views < 1 or self.dpi < 20:
            raise ConfigError(
                f"report: gallery_views must be ≥ 1 and dpi ≥ 20, got {self.gallery_views}, {self.dpi}"
            )


@dataclass(frozen=True)
class GalleryArrays:
    """Arrays for :func:`ganviews.report.plots.gallery_figure` (uint8, see there for the layouts)."""

    inputs: np.ndarray  # [N, C, H, W] aligned inputs
    masks: np.ndarray  # [N, 1, H, W] validity masks
    reconstructions: np.ndarray  # [N, C, H, W] G(w*)
    views: Mapping[str, np.ndarray]  # name → [N, V, C, H, W]
    image_ids: Sequence[str] | None = None  # row labels
    first_view: Mapping[str, int] | None = None  # name → view number of views[name][:, 0]


@dataclass(frozen=True)
class Block:
    """One piece of the report: kind ∈ heading / text / table / image / code."""

    kind: str
    text: str = ""
    level: int = 2  # heading level
    table: pd.DataFrame | None = None
    path: Path | None = None  # image file


@dataclass(frozen=True)
class ReportOutputs:
    """Where everything went, plus the blocks for re-rendering."""

    out_dir: Path
    report_md: Path
    report_html: Path | None
    results_csv: Path
    results_parquet: Path
    tables: dict[str, Path]  # name → CSV of the other tidy tables
    plots: list[tuple[str, Path]]  # (caption, PNG)
    summary: pd.DataFrame  # per (classifier, method, setting), averaged over tasks
    results: EnsembleResults  # the evaluated tables themselves
    blocks: list[Block] = field(default_factory=list)

    def render_markdown(self, image_ref: Callable[[Path], str] | None = None) -> str:
        ref = image_ref or (lambda p: p.relative_to(self.out_dir).as_posix())
        return render_markdown(self.blocks, ref)


# ----------------------------------------------------------------------------- tables


def summary_table(table: pd.DataFrame) -> pd.DataFrame:
    """Per (classifier, method, setting): accuracies averaged over tasks, gain ± SE, win/tie/loss.

    ``gain_se`` is the standard error over tasks when there are several, else the paired
    per-image standard error of the one task (``se_over`` says which). ``best`` marks the
    setting of each (classifier, method) with the best mean *validation* accuracy.
    """
    cols = ["classifier", "method", "setting", "kind", "n_tasks", "alpha_star_mean", "acc_single", "acc",
            "acc_gan_only", "acc_recon", "acc_oracle", "gain_mean", "gain_se", "se_over",
            "oracle_gain_mean", "wins", "ties", "losses", "best"]  # fmt: skip
    if table.empty:
        return pd.DataFrame(columns=cols)
    keys = ["classifier", "method", "setting"]
    g = table.groupby(keys, sort=True)
    out = g.agg(
        kind=("kind", "first"),
        n_tasks=("task", "nunique"),
        alpha_star_mean=("alpha_star", "mean"),
        acc_single=("test_acc_single", "mean"),
        acc=("test_acc", "mean"),
        acc_gan_only=("test_acc_gan_only", "mean"),
        acc_recon=("test_acc_recon", "mean"),
        acc_oracle=("test_acc_oracle", "mean"),
        gain_mean=("gain", "mean"),
        gain_sd=("gain", "std"),
        one_task_se=("gain_se", "first"),
        wins=("gain", lambda s: int((s > 0).sum())),
        ties=("gain", lambda s: int((s == 0).sum())),
        losses=("gain", lambda s: int((s < 0).sum())),
    ).reset_index()
    oracle = (
        (table["test_acc_oracle"] - table["test_acc_single"])
        .groupby([table[k] for k in keys])
        .mean()
    )
    out["oracle_gain_mean"] = oracle.reindex(pd.MultiIndex.from_frame(out[keys])).to_numpy()
    many = out["n_tasks"] > 1
    out["gain_se"] = np.where(
        many, out["gain_sd"] / np.sqrt(out["n_tasks"].clip(lower=1)), out["one_task_se"]
    )
    out["se_over"] = np.where(many, "tasks", "images")
    best = best_settings(table)
    best_keys = set(map(tuple, best[keys].to_numpy().tolist()))
    out["best"] = [tuple(k) in best_keys for k in out[keys].to_numpy().tolist()]
    return out[cols]


def write_tables(results: EnsembleResults, out_dir: Path) -> dict[str, Path]:
    """The curve and summary tables as CSV (the results table itself is the catalog's:
    ``storage.results.write_results``); returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = {
        "exclusions": out_dir / "exclusions.csv",
        "predictions": out_dir / "predictions.parquet",
        "alpha_curves": out_dir / "alpha_curves.csv",
        "size_curves": out_dir / "size_curves.csv",
        "size_curve_summary": out_dir / "size_curve_summary.csv",
        "summary": out_dir / "summary.csv",
    }
    frames = {
        "exclusions": results.exclusions,
        "predictions": results.predictions,
        "alpha_curves": results.curves,
        "size_curves": results.size_curves,
        "size_curve_summary": results.size_curve_summary(),
        "summary": summary_table(results.table),
    }
    if results.paper is not None:  # protocol "paper"
        for name, frame in (
            ("paper_protocol", results.paper),
            ("paper_baselines", results.paper_baselines),
        ):
            tables[name], frames[name] = out_dir / f"{name}.csv", frame
    for name, path in tables.items():
        if path.suffix == ".parquet":
            write_atomically(path, lambda p, f=frames[name]: f.to_parquet(p, index=False))
        else:
            write_atomically(path, lambda p, f=frames[name]: f.to_csv(p, index=False))
    return tables


def exclusion_summary(exclusions: pd.DataFrame) -> pd.DataFrame:
    """Per (split, reason): distinct images, results affected, and a few example ids with details."""
    cols = ["split", "reason", "images", "results", "examples"]
    if exclusions.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    for (split, reason), part in exclusions.groupby(["split", "reason"], sort=True):
        first = part.drop_duplicates("image_id").head(3)
        examples = ", ".join(
            f"{r.image_id} ({r.detail})" if r.detail else str(r.image_id)
            for r in first.itertuples()
        )
        results = part[list(GROUP_COLUMNS)].drop_duplicates()
        rows.append([split, reason, part["image_id"].nunique(), len(results), examples])
    return pd.DataFrame(rows, columns=cols)


# ----------------------------------------------------------------------------- plots


def make_plots(
    results: EnsembleResults,
    out_dir: Path,
    config: ReportConfig,
    *,
    gallery: GalleryArrays | None = None,
) -> list[tuple[str, Path]]:
    """Every PNG of the report, as (caption, path); per classifier where it matters."""
    table, curves = results.table, results.curves
    out: list[tuple[str, Path]] = []
    if table.empty:
        return out
    plot_dir = out_dir / "plots"
    summary = summary_table(table)
    best = best_settings(table)
    size_summary = results.size_curve_summary()
    for clf in sorted(table["classifier"].unique()):
        tag = plots.safe_name(clf)
        part = summary[summary["classifier"] == clf]
        path = plots.gain_bar_figure(
            part,
            plot_dir / f"gain_bars__{tag}.png",
            title=f"{clf}: ensemble at α* vs single image",
            dpi=config.dpi,
        )
        out.append(
            (
                f"{clf}: accuracy gain over the single image per method and setting (mean over {int(part['n_tasks'].max())} task(s); error bars: SE over {part['se_over'].iloc[0]}; black tick: test-oracle α)",
                path,
            )
        )
        sizes = size_summary[size_summary["classifier"] == clf]
        if not sizes.empty:
            path = plots.size_curve_figure(
                sizes,
                plot_dir / f"ensemble_size__{tag}.png",
                title=f"{clf}: accuracy vs number of views at α*",
                dpi=config.dpi,
            )
            out.append(
                (
                    f"{clf}: ensemble-size curves (bootstrap over views, {results.config.bootstrap_draws} draws)",
                    path,
                )
            )
        rows = _best_rows(table[table["classifier"] == clf], best)
        if rows.empty:
            continue
        path = plots.alpha_mean_figure(
            curves, rows, plot_dir / f"alpha_mean__{tag}.png", dpi=config.dpi
        )
        out.append(
            (
                f"{clf}: accuracy vs α, mean ± SE over tasks, best setting per method (ticks: α* of each task)",
                path,
            )
        )
        if config.grid_max_tasks:
            path = plots.alpha_grid_figure(
                curves,
                rows,
                plot_dir / f"alpha_grid__{tag}.png",
                max_tasks=config.grid_max_tasks,
                dpi=config.dpi,
            )
            out.append(
                (
                    f"{clf}: accuracy vs α per task (up to {config.grid_max_tasks} tasks), val dashed, test solid, α* green",
                    path,
                )
            )
    singles = alpha_plot_rows(table, best).head(config.max_alpha_plots)
    index = curves.set_index(list(GROUP_COLUMNS)).sort_index()
    for r in singles.to_dict("records"):
        key = tuple(r[c] for c in GROUP_COLUMNS)
        name = plots.safe_name(*key)
        path = plots.alpha_curve_figure(
            index.loc[key].reset_index(), r, plot_dir / "alpha" / f"{name}.png", dpi=config.dpi
        )
        out.append(
            (
                f"α curve: {r['task']} · {r['classifier']} · {r['method']} {r['setting']}".rstrip(),
                path,
            )
        )
    if gallery is not None:
        path = plots.gallery_figure(
            gallery.inputs, gallery.masks, gallery.reconstructions, gallery.views, plot_dir / "gallery.png",
            image_ids=gallery.image_ids, first_view=gallery.first_view, max_views=config.gallery_views,
            dpi=config.dpi,
        )  # fmt: skip
        out.append(
            (
                "Reconstruction gallery: input, input with mask (outside dimmed), reconstruction, views per method",
                path,
            )
        )
    return out


def _best_rows(table: pd.DataFrame, best: pd.DataFrame) -> pd.DataFrame:
    return table.merge(best[["classifier", "method", "setting"]], how="inner")


def alpha_plot_rows(table: pd.DataFrame, best: pd.DataFrame) -> pd.DataFrame:
    """Groups that get a single α-curve figure, in the order they are drawn: the best setting
    of every (classifier, method) for its first task before any method's second task, so a
    cap (``max_alpha_plots``) still shows every method once before it repeats one."""
    rows = _best_rows(table, best).sort_values(["task", "classifier", "method"])
    rank = rows.groupby(["classifier", "method"], sort=False).cumcount()
    return (
        rows.assign(_rank=rank.to_numpy())
        .sort_values(["_rank", "classifier", "method"], kind="stable")
        .drop(columns="_rank")
    )


# ----------------------------------------------------------------------------- report


_PCT = ("acc", "gain")


def _display(frame: pd.DataFrame) -> pd.DataFrame:
    """Accuracies and gains as percentages with 2 decimals, α with 2, p-values with 3 significant digits."""
    out = frame.copy()
    for col in out.columns:
        if (
            col in ("n_tasks", "wins", "ties", "losses")
            or not pd.api.types.is_numeric_dtype(out[col])
            or pd.api.types.is_bool_dtype(out[col])
        ):
            continue
        values = out[col].to_numpy(dtype=float)
        if col.startswith("alpha"):
            out[col] = [f"{v:.2f}" if np.isfinite(v) else "–" for v in values]
        elif col == "mcnemar_p":
            out[col] = [f"{v:.3g}" if np.isfinite(v) else "–" for v in values]
        elif any(t in col for t in _PCT):
            out[col] = [_pct(v) for v in values]
    if "best" in out.columns:
        out["best"] = ["★" if b else "" for b in out["best"]]
    return out


def _pct(v: float) -> str:
    if not np.isfinite(v):
        return "–"
    text = f"{100 * v:.2f}"
    return "0.00" if text == "-0.00" else text


def build_blocks(
    results: EnsembleResults,
    plot_list: Sequence[tuple[str, Path]],
    config: ReportConfig,
    *,
    source: str = "",
    notes: Sequence[str] = (),
    extra: Sequence[Block] = (),
) -> list[Block]:
    """The report's content: overview, definitions, summary, figures, per-group table."""
    table = results.table
    ens = results.config
    alphas = ens.alphas
    b: list[Block] = [Block("heading", config.title, level=1)]
    when = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    overview = (
        f"Generated {when} by ganviews {__version__}"
        + (f" from `{source}`" if source else "")
        + ". "
        f"{table['task'].nunique() if not table.empty else 0} task(s), "
        f"{table['classifier'].nunique() if not table.empty else 0} classifier(s), "
        f"{len(table)} (task, classifier, method, setting) rows."
    )
    b.append(Block("text", overview))
    b += [Block("text", f"Note: {n}") for n in notes]
    b += _exclusion_blocks(results)
    b.append(Block("heading", "How the numbers are computed"))
    b.append(Block("text", (
        "y_ens(α) = (1 − α)·p(image views) + α·mean p(GAN views) (paper Eq. 7); p = softmax of the logits, "
        "or the sigmoid for a single-logit binary classifier. GAN views are every view ≥ 1 (the reconstruction "
        f"included). α runs over {len(alphas)} values {alphas[0]:g}, {alphas[1]:g}, …, {alphas[-1]:g}; "
        f"α* maximises validation accuracy, ties → the {ens.tie_break} α"
        + (" (prefer the single image without evidence for the views)" if ens.tie_break == "smallest" else "")
        + ". The test oracle α uses the same rule on test. For image augmentations (color, crop) the views are "
        "augmented copies; in combinations (image+GAN) the original and its augmentations share weight 1 − α. "
        "Accuracies and gains are in %. SE: binomial over test images; gain SE: paired over images (one task) "
        f"or over tasks; view SE: bootstrap over views ({ens.bootstrap_draws} draws, seed {ens.seed})."
    )))  # fmt: skip
    if table.empty:
        b.append(Block("text", "No val/test rows in the logits table: nothing to report."))
        return b
    summary = summary_table(table)
    b.append(Block("heading", "Summary over tasks"))
    b.append(
        Block(
            "text",
            "Per classifier, method and setting; ★ = setting with the best mean validation accuracy (used in the plots).",
        )
    )
    b.append(Block("table", table=_display(summary)))
    for caption, path in plot_list:
        if "α curve:" in caption:
            continue
        b.append(Block("image", caption, path=path))
    b += list(extra)  # sections of other analyses (the robustness table, Fig. 7)
    b.append(Block("heading", "Per task"))
    cols = ["task", "classifier", "method", "setting", "alpha_star", "val_acc", "test_acc", "test_acc_se",
            "test_acc_single", "test_acc_recon", "test_acc_gan_only", "test_acc_oracle", "alpha_oracle",
            "gain", "gain_se", "test_acc_views_se", "mcnemar_p", "n_val", "n_test",
            "n_test_excluded", "n_test_fallback"]  # fmt: skip
    shown = table.sort_values(list(GROUP_COLUMNS))[cols]
    if len(shown) > config.table_max_rows:
        b.append(
            Block(
                "text",
                f"First {config.table_max_rows} of {len(shown)} rows; all rows in results.csv.",
            )
        )
        shown = shown.head(config.table_max_rows)
    b.append(Block("table", table=_display(shown)))
    if results.paper is not None:
        from ganviews.report.paper_section import paper_blocks  # it imports Block from here

        b += paper_blocks(results)
    singles = [(c, p) for c, p in plot_list if "α curve:" in c]
    if singles:
        total = len(alpha_plot_rows(table, best_settings(table)))
        b.append(Block("heading", "α curves (best setting per method)"))
        b.append(Block("text", (
            f"{len(singles)} of {total} curves (every method's first task first; "
            "`max_alpha_plots` sets the cap); all α curves are in alpha_curves.csv and the grids above."
        )))  # fmt: skip
        b += [Block("image", c, path=p) for c, p in singles]
    b.append(Block("heading", "Configuration"))
    b.append(Block("code", yaml.safe_dump(to_dict(config), sort_keys=False)))
    return b


def _exclusion_blocks(results: EnsembleResults) -> list[Block]:
    """The "Excluded images" section: what each accuracy leaves out, per split and reason."""
    b = [Block("heading", "Excluded images")]
    fallback = int(results.table["n_test_fallback"].sum()) if not results.table.empty else 0
    if results.exclusions.empty:
        b.append(Block("text", "No val/test image is left out of any result."))
    else:
        test = results.exclusions[results.exclusions["split"] == "test"]["image_id"].nunique()
        b.append(Block("text", (
            f"{test} test image(s) are left out of at least one result, so those accuracies are "
            "over fewer images (n_test; per result in results.csv: n_val_excluded, "
            "n_test_excluded, excluded_reasons; per image in exclusions.csv). "
            "`ensemble.on_missing_views: single` keeps images that have the original (view 0) "
            "but lack views, predicting them from the original alone; in `ganviews run` it also "
            "classifies the original of an image whose inversion failed, when it can be read."
        )))  # fmt: skip
        b.append(Block("table", table=exclusion_summary(results.exclusions)))
    if fallback:
        b.append(Block("text", (
            f"{fallback} (result, test image) pairs are predicted from the original image alone "
            "(ensemble.on_missing_views: single; n_test_fallback in results.csv)."
        )))  # fmt: skip
    return b


def _md_cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: Sequence[Block], image_ref: Callable[[Path], str]) -> str:
    lines: list[str] = []
    for blk in blocks:
        if blk.kind == "heading":
            lines += ["#" * blk.level + " " + blk.text, ""]
        elif blk.kind == "text":
            lines += [blk.text, ""]
        elif blk.kind == "code":
            lines += ["```yaml", blk.text.rstrip(), "```", ""]
        elif blk.kind == "image":
            lines += [f"![{_md_cell(blk.text)}]({image_ref(blk.path)})", "", f"*{blk.text}*", ""]
        elif blk.kind == "table":
            t = blk.table
            lines.append("| " + " | ".join(map(_md_cell, t.columns)) + " |")
            lines.append("|" + "|".join("---" for _ in t.columns) + "|")
            lines += [
                "| " + " | ".join(_md_cell(v) for v in row) + " |"
                for row in t.itertuples(index=False)
            ]
            lines.append("")
    return "\n".join(lines)


_CSS = (
    "body{font-family:sans-serif;max-width:1400px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;font-size:12px;margin:1em 0}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
    "th{background:#f3f3f3}figure{margin:1.5em 0}img{max-width:100%}figcaption{font-size:13px;color:#555}"
    "pre{background:#f6f6f6;padding:1em;font-size:12px}"
)


def render_html(blocks: Sequence[Block], image_ref: Callable[[Path], str], *, title: str) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_CSS}</style></head><body>"]  # fmt: skip
    for blk in blocks:
        if blk.kind == "heading":
            parts.append(f"<h{blk.level}>{html.escape(blk.text)}</h{blk.level}>")
        elif blk.kind == "text":
            parts.append(f"<p>{html.escape(blk.text)}</p>")
        elif blk.kind == "code":
            parts.append(f"<pre>{html.escape(blk.text)}</pre>")
        elif blk.kind == "image":
            parts.append(f"<figure><img src='{html.escape(image_ref(blk.path))}' alt='{html.escape(blk.text)}'>"
                         f"<figcaption>{html.escape(blk.text)}</figcaption></figure>")  # fmt: skip
        elif blk.kind == "table":
            t = blk.table
            head = "".join(f"<th>{html.escape(str(c))}</th>" for c in t.columns)
            body = "".join(
                "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
                for row in t.itertuples(index=False)
            )
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def data_uri(path: Path) -> str:
    """A PNG as a ``data:image/png;base64,…`` URI (self-contained HTML, Prefect artifacts)."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def write_report(
    results: EnsembleResults,
    out_dir: str | Path,
    *,
    results_files: tuple[Path, Path],
    config: ReportConfig | None = None,
    gallery: GalleryArrays | None = None,
    source: str = "",
    notes: Sequence[str] = (),
    extra: Sequence[Block] = (),
) -> ReportOutputs:
    """Tables, plots, report.md (and report.html) under ``out_dir``.

    ``results_files``: (results.csv, results.parquet) already written by the caller
    (``storage.results.write_results``: the library does not write the catalog's tables).
    """
    config = config or ReportConfig(ensemble=results.config)
    out_dir = Path(out_dir)
    csv, parquet = results_files
    tables = write_tables(results, out_dir)
    plot_list = make_plots(results, out_dir, config, gallery=gallery) if config.plots else []
    blocks = build_blocks(results, plot_list, config, source=source, notes=notes, extra=extra)
    md_path = out_dir / "report.md"
    relative = lambda p: Path(p).relative_to(out_dir).as_posix()  # noqa: E731
    write_atomically(
        md_path, lambda p: p.write_text(render_markdown(blocks, relative), encoding="utf-8")
    )
    html_path = None
    if config.html:
        html_path = out_dir / "report.html"
        ref = data_uri if config.html_embed_images else relative
        write_atomically(
            html_path,
            lambda p: p.write_text(render_html(blocks, ref, title=config.title), encoding="utf-8"),
        )
    log.info("report written to %s (%d plots)", md_path, len(plot_list))
    return ReportOutputs(
        out_dir,
        md_path,
        html_path,
        csv,
        parquet,
        tables,
        list(plot_list),
        summary_table(results.table),
        results,
        blocks,
    )
