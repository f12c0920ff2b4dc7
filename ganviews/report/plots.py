"""PNG figures of ensemble results (Chai et al. 2021, Fig. 3–6 and 8) and a reconstruction gallery.

Every function draws on its own ``matplotlib.figure.Figure`` (the Agg canvas; pyplot's
global state is never touched, so figures are safe to make from worker threads) and writes
one PNG. Inputs are the tidy frames of :mod:`ganviews.ensemble.evaluate` and plain numpy arrays.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from ganviews.core.atomic import write_atomically

log = logging.getLogger(__name__)

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_name(*parts: str) -> str:
    """A file-name-safe join of ``parts`` (anything else becomes '-'; empty parts dropped)."""
    return "__".join(_SAFE.sub("-", p).strip("-") or "none" for p in parts if p != "")


def _new_figure(width: float, height: float, *, constrained: bool = True) -> Figure:
    # Constrained layout costs ~0.3 s per axes: grids of panels space themselves by hand instead.
    fig = Figure(figsize=(width, height), layout="constrained" if constrained else None)
    FigureCanvasAgg(fig)
    return fig


def _panel_grid(fig: Figure, nrow: int, ncol: int, *, width: float, height: float, **kwargs):
    """``nrow × ncol`` axes with fixed margins in inches (titles of two lines, axis labels)."""
    w, h = width, height
    fig.subplots_adjust(left=0.75 / w, right=1 - 0.2 / w, bottom=0.6 / h, top=1 - 0.55 / h,
                        wspace=0.35, hspace=0.6)  # fmt: skip
    return fig.subplots(nrow, ncol, squeeze=False, **kwargs)


def _save(fig: Figure, path: Path, dpi: int) -> Path:
    return write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))


def _group_label(row: Mapping) -> str:
    setting = f" [{row['setting']}]" if row.get("setting") else ""
    return f"{row['method']}{setting}"


def _draw_alpha(ax, curve: pd.DataFrame, row: Mapping, *, legend: bool, title: str) -> None:
    for split, style in (
        ("val", dict(color="tab:blue", ls="--")),
        ("test", dict(color="tab:orange", ls="-")),
    ):
        part = curve[curve["split"] == split].sort_values("alpha")
        ax.plot(part["alpha"], 100 * part["acc"], marker=".", ms=3, label=split, **style)
    ax.axvline(
        row["alpha_star"], color="tab:green", lw=1.2, label=f"α* = {row['alpha_star']:.2f} (val)"
    )
    ax.axvline(
        row["alpha_oracle"],
        color="grey",
        lw=0.8,
        ls=":",
        label=f"test oracle {row['alpha_oracle']:.2f}",
    )
    ax.plot([row["alpha_star"]], [100 * row["test_acc"]], marker="o", color="tab:green", ms=5)
    ax.set_xlim(-0.03, 1.03)  # keep α* = 0 or 1 visible off the frame
    ax.set_xlabel("α (weight of the views)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=7, loc="best")


def alpha_curve_figure(curve: pd.DataFrame, row: Mapping, path: Path, *, dpi: int = 110) -> Path:
    """Validation and test accuracy vs α for one group, α* and the test oracle marked."""
    fig = _new_figure(5.0, 3.6)
    ax = fig.add_subplot()
    title = f"{row['task']} · {row['classifier']} · {_group_label(row)}"
    _draw_alpha(ax, curve, row, legend=True, title=title)
    return _save(fig, path, dpi)


def alpha_grid_figure(
    curves: pd.DataFrame, rows: pd.DataFrame, path: Path, *, max_tasks: int = 8, dpi: int = 110
) -> Path:
    """A grid of α curves: one row per group label (method [setting]), one column per task."""
    tasks = sorted(rows["task"].unique())[:max_tasks]
    rows = rows[rows["task"].isin(tasks)]
    labels = sorted({_group_label(r) for r in rows.to_dict("records")})
    width, height = 2.8 * len(tasks) + 0.6, 2.4 * len(labels) + 0.6
    fig = _new_figure(width, height, constrained=False)
    axes = _panel_grid(fig, len(labels), len(tasks), width=width, height=height, sharex=True)
    index = curves.set_index(["task", "classifier", "method", "setting"]).sort_index()
    for r in rows.to_dict("records"):
        i, j = labels.index(_group_label(r)), tasks.index(r["task"])
        curve = index.loc[(r["task"], r["classifier"], r["method"], r["setting"])].reset_index()
        title = f"{r['task']}\n{_group_label(r)} · α*={r['alpha_star']:.2f}"
        _draw_alpha(axes[i][j], curve, r, legend=(i == 0 and j == 0), title=title)
        if i < len(labels) - 1:
            axes[i][j].set_xlabel("")
    for ax in axes.flat:
        if not ax.has_data():
            ax.set_visible(False)
    return _save(fig, path, dpi)


def alpha_mean_figure(
    curves: pd.DataFrame, rows: pd.DataFrame, path: Path, *, dpi: int = 110
) -> Path:
    """Accuracy vs α averaged over tasks (± standard error), one panel per group label.

    Ticks along the bottom mark each task's α* (chosen on its own val split).
    """
    labels = sorted({_group_label(r) for r in rows.to_dict("records")})
    ncol = min(3, len(labels))
    nrow = math.ceil(len(labels) / ncol)
    width, height = 4.4 * ncol + 0.4, 3.4 * nrow + 0.4
    fig = _new_figure(width, height, constrained=False)
    axes = _panel_grid(fig, nrow, ncol, width=width, height=height)
    keyed = curves.merge(rows[["task", "classifier", "method", "setting"]], how="inner")
    for k, label in enumerate(labels):
        ax = axes[k // ncol][k % ncol]
        sel = rows[[_group_label(r) == label for r in rows.to_dict("records")]]
        part = keyed.merge(sel[["task", "classifier", "method", "setting"]], how="inner")
        n_tasks = sel["task"].nunique()
        for split, color in (("val", "tab:blue"), ("test", "tab:orange")):
            g = (100 * part[part["split"] == split].set_index("alpha")["acc"]).groupby(level=0)
            mean, sd = g.mean(), g.std().fillna(0.0)
            se = sd / math.sqrt(max(1, n_tasks))
            ax.plot(mean.index, mean.to_numpy(), color=color, label=f"{split} (mean of {n_tasks})")
            ax.fill_between(
                mean.index, (mean - se).to_numpy(), (mean + se).to_numpy(), color=color, alpha=0.2
            )
        lo = ax.get_ylim()[0]
        ax.plot(
            sel["alpha_star"],
            np.full(len(sel), lo),
            "|",
            color="tab:green",
            ms=10,
            label="α* per task",
        )
        ax.set_xlim(0, 1)
        ax.set_xlabel("α")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(labels) :]:
        ax.set_visible(False)
    return _save(fig, path, dpi)


def gain_bar_figure(summary: pd.DataFrame, path: Path, *, title: str = "", dpi: int = 110) -> Path:
    """Bars: test accuracy at α* minus single-image accuracy, per method (a bar per setting).

    ``summary`` rows carry ``method, setting, gain_mean, gain_se`` and optionally
    ``oracle_gain_mean`` (drawn as a marker: the gain an α tuned on test would give).
    """
    return _save(draw_gain_bars(summary, title=title), path, dpi)


def draw_gain_bars(summary: pd.DataFrame, *, title: str = "") -> Figure:
    """The figure of :func:`gain_bar_figure`, with a legend naming each method's colour."""
    methods = list(dict.fromkeys(summary.sort_values(["method", "setting"])["method"]))
    fig = _new_figure(max(4.5, 0.55 * len(summary) + 2.0), 3.8)
    ax = fig.add_subplot()
    x, ticks, labels = 0.0, [], []
    for m_i, method in enumerate(methods):
        part = summary[summary["method"] == method].sort_values("setting")
        color = f"C{m_i % 10}"
        for r in part.to_dict("records"):
            err = r["gain_se"] if np.isfinite(r["gain_se"]) else 0.0
            ax.bar(x, 100 * r["gain_mean"], yerr=100 * err, color=color, capsize=3, width=0.8)
            if "oracle_gain_mean" in r and np.isfinite(r["oracle_gain_mean"]):
                ax.plot(
                    [x], [100 * r["oracle_gain_mean"]], marker="_", color="black", ms=12, mew=1.5
                )
            ticks.append(x)
            labels.append(f"{method}\n{r['setting']}" if r["setting"] else method)
            x += 1.0
        x += 0.6
    ax.axhline(0, color="black", lw=0.8)
    handles = [Patch(color=f"C{i % 10}", label=m) for i, m in enumerate(methods)]
    handles += [
        Line2D([], [], color="black", marker="|", ls="", ms=8, label="± SE"),
        Line2D([], [], color="black", marker="_", ls="", ms=12, mew=1.5, label="test-oracle α"),
    ]
    ax.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_xticks(ticks, labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("accuracy gain over single image (points)")
    ax.set_title(
        title or "Ensemble at α* vs single image (bars ± SE; — : test-oracle α)", fontsize=9
    )
    ax.grid(axis="y", alpha=0.3)
    return fig


def size_curve_figure(
    summary: pd.DataFrame, path: Path, *, title: str = "", dpi: int = 110
) -> Path:
    """Accuracy and gain over the single image vs the number of views, mean ± SE over tasks.

    Within one task the band is the bootstrap standard error over views (``view_se_mean``).
    """
    fig = _new_figure(10.0, 3.8)
    ax_acc, ax_gain = fig.subplots(1, 2)
    for i, ((method, setting), part) in enumerate(
        summary.groupby(["method", "setting"], sort=True)
    ):
        part = part.sort_values("num_views")
        n_tasks = int(part["n_tasks"].max())
        label = f"{method} [{setting}]" if setting else method
        label += f" (n={n_tasks})" if n_tasks > 1 else ""
        k = part["num_views"].to_numpy()
        for ax, mean_col, se_col in (
            (ax_acc, "acc_mean", "acc_se"),
            (ax_gain, "gain_mean", "gain_se"),
        ):
            mean = 100 * part[mean_col].to_numpy(dtype=float)
            se = (
                part[se_col].to_numpy(dtype=float)
                if n_tasks > 1
                else part["view_se_mean"].to_numpy(dtype=float)
            )
            se = 100 * np.nan_to_num(se)
            ax.plot(k, mean, marker=".", ms=3, color=f"C{i % 10}", label=label)
            ax.fill_between(k, mean - se, mean + se, color=f"C{i % 10}", alpha=0.15)
    ax_acc.set_ylabel("test accuracy (%)")
    ax_gain.set_ylabel("gain over 0 views (points)")
    ax_gain.axhline(0, color="black", lw=0.8)
    for ax in (ax_acc, ax_gain):
        ax.set_xlabel("number of views in the ensemble")
        ax.grid(alpha=0.3)
    ax_gain.legend(fontsize=7, loc="best")
    fig.suptitle(
        title or "Ensemble size at α* (bands: SE over tasks; one task: bootstrap SE over views)",
        fontsize=9,
    )
    return _save(fig, path, dpi)


# ----------------------------------------------------------------------------- gallery


def _to_hwc(img: np.ndarray) -> np.ndarray:
    """[C, H, W] uint8 → [H, W, C] (C = 3) or [H, W] (C = 1) for imshow."""
    hwc = np.moveaxis(img, 0, -1)  # [H, W, C]
    return hwc[..., 0] if hwc.shape[-1] == 1 else hwc


def _check_uint8(name: str, arr: np.ndarray, ndim: int, layout: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:
        raise ValueError(f"{name}: expected uint8 {layout}, got dtype {arr.dtype}")
    if arr.ndim != ndim or arr.shape[-3] not in (1, 3):
        raise ValueError(f"{name}: expected {layout} with C in (1, 3), got shape {list(arr.shape)}")
    return arr


def masked_overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``image [C, H, W]`` uint8 with the pixels outside ``mask [1, H, W]`` dimmed and tinted red."""
    scale = 255.0 if mask.max() > 1 else 1.0
    m = (mask[0].astype(np.float32) / scale)[..., None]  # [H, W, 1] in [0, 1]
    rgb = np.moveaxis(image, 0, -1).astype(np.float32)  # [H, W, C]
    if rgb.shape[-1] == 1:
        rgb = np.repeat(rgb, 3, axis=-1)  # [H, W, 3]
    tint = np.array([200.0, 40.0, 40.0], dtype=np.float32)
    out = m * rgb + (1.0 - m) * (0.35 * rgb + 0.65 * tint)  # [H, W, 3]
    return np.clip(out, 0, 255).astype(np.uint8)


def gallery_columns(
    num_views: Mapping[str, int], first_view: Mapping[str, int] | None = None
) -> list[str]:
    """Column titles of the gallery: input, input × mask, reconstruction, then "name / view k"
    with k the view number of the logits table (``first_view[name]`` + position)."""
    columns = ["input", "input × mask", "reconstruction"]
    for name, count in num_views.items():
        start = (first_view or {}).get(name, 0)
        columns += [f"{name}\nview {start + j}" for j in range(count)]
    return columns


def gallery_figure(
    inputs: np.ndarray,
    masks: np.ndarray,
    reconstructions: np.ndarray,
    views: Mapping[str, np.ndarray],
    path: Path,
    *,
    image_ids: Sequence[str] | None = None,
    first_view: Mapping[str, int] | None = None,
    max_views: int = 6,
    cell_inches: float = 1.3,
    dpi: int = 110,
) -> Path:
    """Input, input with its mask, reconstruction, then ``max_views`` views per method; a row per image.

    ``inputs [N, C, H, W]``, ``masks [N, 1, H, W]``, ``reconstructions [N, C, H', W']`` and each
    ``views[name] [N, V, C, h, w]`` are uint8; masks hold {0, 1} or {0, 255} (1/255 = valid).
    Column titles carry the view numbers of the logits table: ``views[name][:, j]`` is view
    ``first_view[name] + j`` (default 0: the arrays as the store keeps them, 0 = the input).
    """
    inputs = _check_uint8("inputs", inputs, 4, "[N, C, H, W]")
    reconstructions = _check_uint8("reconstructions", reconstructions, 4, "[N, C, H, W]")
    masks = np.asarray(masks)
    n = inputs.shape[0]
    if (
        masks.dtype != np.uint8
        or masks.ndim != 4
        or masks.shape[1] != 1
        or masks.shape[0] != n
        or masks.shape[2:] != inputs.shape[2:]
    ):
        raise ValueError(
            f"masks: expected uint8 [N, 1, H, W] = [{n}, 1, {inputs.shape[2]}, {inputs.shape[3]}], "
            f"got {masks.dtype} {list(masks.shape)}"
        )
    if reconstructions.shape[0] != n:
        raise ValueError(f"reconstructions: {reconstructions.shape[0]} images, inputs have {n}")
    if max_views < 1:
        raise ValueError(f"max_views: {max_views} must be ≥ 1")
    checked = {}
    for name, arr in views.items():
        arr = _check_uint8(f"views[{name!r}]", arr, 5, "[N, V, C, H, W]")
        if arr.shape[0] != n:
            raise ValueError(f"views[{name!r}]: {arr.shape[0]} images, inputs have {n}")
        checked[name] = arr[:, :max_views]
    if n == 0:
        raise ValueError("inputs: no images to show")
    columns = gallery_columns({k: v.shape[1] for k, v in checked.items()}, first_view)
    width, height = cell_inches * len(columns) + 0.6, cell_inches * n + 0.8
    fig = _new_figure(width, height, constrained=False)
    fig.subplots_adjust(left=0.3 / width, right=1 - 0.1 / width, bottom=0.1 / height, top=1 - 0.5 / height,
                        wspace=0.05, hspace=0.05)  # fmt: skip
    axes = fig.subplots(n, len(columns), squeeze=False)
    for i in range(n):
        cells = [
            _to_hwc(inputs[i]),
            masked_overlay(inputs[i], masks[i]),
            _to_hwc(reconstructions[i]),
        ]
        for arr in checked.values():
            cells += [_to_hwc(v) for v in arr[i]]
        for j, cell in enumerate(cells):
            ax = axes[i][j]
            ax.imshow(
                cell,
                cmap="gray" if cell.ndim == 2 else None,
                vmin=0,
                vmax=255,
                interpolation="lanczos",
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(columns[j], fontsize=6)
        if image_ids is not None:
            axes[i][0].set_ylabel(str(image_ids[i]), fontsize=6)
    return _save(fig, path, dpi)
