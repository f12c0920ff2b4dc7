"""The GenRep experiment: which encoders to train, on which data, and how results are shown.

Jahanian et al. (ICLR 2022): Table 1/2 compare training variants by their linear-probe
accuracy on real data — data source (real or generated), latent views ``T_z``, pixel views
``T_x`` and objective; Fig. 5 sweeps σ of the Gaussian views (an inverse-U, peak σ ≈ 0.2);
Fig. 6 grows the number of unique samples at a fixed number of training steps (sub-logarithmic
gains). :class:`MultiviewConfig` is the ``multiview`` YAML section; :class:`Variant` one row;
:func:`dataset_for` says which multiview dataset a variant reads; :func:`write_report` writes
``results.csv``, ``results.md`` and the two plots.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ganviews.core.atomic import write_atomically
from ganviews.core.errors import ConfigError
from ganviews.genrep.contrastive import ContrastiveConfig
from ganviews.genrep.probe import ProbeConfig
from ganviews.genrep.sampling import SamplingConfig

RESULT_COLUMNS = (
    "variant",
    "data",
    "t_z",
    "t_x",
    "objective",
    "sigma",
    "n_samples",
    "probe_acc",
    "probe_stderr",
    "probe_c",
    "val_acc",
    "train_seconds",
)


@dataclass(frozen=True)
class Variant:
    """One training run: a row of the paper's Table 1/2 (``data="none"``: untrained encoder)."""

    data: Literal["real", "generated", "none"] = "generated"  # image source
    t_z: Literal["gauss", "independent", "none"] = "gauss"  # latent views (generated data only)
    t_x: Literal["simclr", "none"] = "simclr"  # SimCLR pixel augmentations on every image
    objective: Literal["simclr", "supcon", "none"] = "simclr"  # NT-Xent, SupCon or none (untrained)
    sigma: float | None = None  # σ of the Gaussian views (None: sampling.sigma)
    n_samples: int | None = None  # unique images/anchors used (None: all)

    def __post_init__(self) -> None:
        if self.data != "generated" and self.t_z != "none":
            raise ConfigError(
                f"variants: t_z={self.t_z!r} needs data 'generated', got {self.data!r}"
            )
        if (self.data == "none") != (self.objective == "none"):
            raise ConfigError(
                "variants: data 'none' (untrained encoder) goes with objective 'none'"
            )
        if self.data != "none" and self.t_x == "none" and self.t_z == "none":
            raise ConfigError("variants: t_x and t_z both 'none' leave no positive pairs")
        if self.n_samples is not None and self.n_samples < 2:
            raise ConfigError(f"variants: n_samples must be ≥ 2, got {self.n_samples}")

    def name(self, default_sigma: float) -> str:
        """A file-safe id: ``generated-gauss0.2-simclr-simclr-n1024``."""
        if self.data == "none":
            return "untrained"
        tz = self.t_z
        if tz == "gauss":
            tz = f"gauss{self.sigma if self.sigma is not None else default_sigma:g}"
        n = f"-n{self.n_samples}" if self.n_samples else ""
        return f"{self.data}-{tz}-{self.t_x}-{self.objective}{n}"


# The paper's Table 1 rows that apply here (no steering, no inverter), plus an untrained reference.
DEFAULT_VARIANTS = (
    Variant(data="none", t_z="none", t_x="none", objective="none"),
    Variant(data="real", t_z="none", t_x="simclr"),
    Variant(data="generated", t_z="none", t_x="simclr"),
    Variant(data="generated", t_z="gauss", t_x="none"),
    Variant(data="generated", t_z="gauss", t_x="simclr"),
)


@dataclass(frozen=True)
class MultiviewConfig:
    """The ``multiview`` YAML section: data sources, outputs, sampling, training, probe, variants."""

    generator: Path | None = (
        None  # generator checkpoint (None: models.generator of the pipeline YAML)
    )
    manifest: Path | None = (
        None  # real labelled manifest: probe splits + the real baseline (None: data.manifest)
    )
    image_root: Path | None = None  # base of relative manifest paths (None: the manifest's folder)
    label: str = "label"  # manifest column probed (and SupCon's class on real data)
    out: Path = Path("multiview-out")  # folder of stores/, encoders/, report/
    device: str = "auto"  # device of sampling, training and feature extraction
    cpu_threads: int = 0  # torch + BLAS threads of CPU work (0: the libraries' defaults)
    shard_size: int = 256  # anchors per store chunk = per sampling task
    train_split: str = "train"  # manifest split of the real baseline and the probe's training set
    val_split: str = "val"  # split choosing the probe's C
    test_split: str = "test"  # split the probe accuracy is reported on
    sampling: SamplingConfig = field(default_factory=SamplingConfig)  # anchors and latent views
    train: ContrastiveConfig = field(default_factory=ContrastiveConfig)  # encoder training
    probe: ProbeConfig = field(default_factory=ProbeConfig)  # linear probe
    variants: tuple[Variant, ...] = DEFAULT_VARIANTS  # the Table 1/2 rows trained and probed
    sigma_sweep: tuple[float, ...] = ()  # extra σ values for the Fig. 5 curve (gauss + simclr)
    sample_sizes: tuple[int, ...] = ()  # extra anchor counts for the Fig. 6 curve (gauss + simclr)

    def __post_init__(self) -> None:
        if self.shard_size < 1:
            raise ConfigError(f"multiview.shard_size: expected ≥ 1, got {self.shard_size}")
        if self.cpu_threads < 0:
            raise ConfigError(f"multiview.cpu_threads: expected ≥ 0, got {self.cpu_threads}")
        too_many = [n for n in self.sample_sizes if n > self.sampling.n_anchors]
        if too_many:
            raise ConfigError(
                f"multiview.sample_sizes: {too_many} exceed sampling.n_anchors={self.sampling.n_anchors}"
            )


def all_variants(cfg: MultiviewConfig) -> list[Variant]:
    """``variants`` plus the σ-sweep and sample-size runs, without duplicates, in that order."""
    sweep = Variant(data="generated", t_z="gauss", t_x="simclr")
    extra = [dataclasses.replace(sweep, sigma=float(s)) for s in cfg.sigma_sweep]
    extra += [dataclasses.replace(sweep, n_samples=int(n)) for n in cfg.sample_sizes]
    out: list[Variant] = []
    names = set()
    for v in (*cfg.variants, *extra):
        name = v.name(cfg.sampling.sigma)
        if name not in names:
            names.add(name)
            out.append(v)
    return out


def dataset_for(cfg: MultiviewConfig, variant: Variant) -> tuple[str, SamplingConfig] | None:
    """(store name, sampling config) a generated variant reads; None for real/untrained.

    Anchors do not depend on σ or T_z, so ``t_z="none"`` reads view 0 of the default store.
    """
    if variant.data != "generated":
        return None
    base = cfg.sampling
    if variant.t_z == "none":
        variant = dataclasses.replace(variant, t_z=base.t_z if base.t_z != "none" else "gauss")
    sigma = base.sigma if variant.sigma is None else variant.sigma
    sampling = dataclasses.replace(base, t_z=variant.t_z, sigma=sigma)
    name = f"{variant.t_z}{sigma:g}" if variant.t_z == "gauss" else variant.t_z
    return name, sampling


def datasets(cfg: MultiviewConfig) -> dict[str, SamplingConfig]:
    """Every multiview dataset the variants need, by store name."""
    out = {}
    for v in all_variants(cfg):
        found = dataset_for(cfg, v)
        if found is not None:
            out[found[0]] = found[1]
    return out


# ---------------------------------------------------------------------------- report


def results_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The Table 1/2 layout: Data | T_z | T_x | Objective | n | probe accuracy ± s.e."""
    lines = [
        "| Data | T_z | T_x | Objective | σ | n samples | probe accuracy (%) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        tz = {"gauss": "z + w_Gauss", "independent": "p_z", "none": "-"}[r["t_z"]]
        tx = {"simclr": "SimCLR augs", "none": "-"}[r["t_x"]]
        obj = {"simclr": "Contrastive", "supcon": "SupCon", "none": "- (untrained)"}[r["objective"]]
        sigma = f"{r['sigma']:g}" if r["t_z"] == "gauss" else "-"
        lines.append(
            f"| {r['data']} | {tz} | {tx} | {obj} | {sigma} | {r['n_samples']} | "
            f"{100 * r['probe_acc']:.1f} ± {100 * r['probe_stderr']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def _curve(rows, *, x: str, keep, path: Path, xlabel: str, log_x: bool) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = sorted((r[x], r["probe_acc"], r["probe_stderr"]) for r in rows if keep(r))
    if len(pts) < 2:
        return None
    xs, ys, es = zip(*pts, strict=True)
    fig, ax = plt.subplots(figsize=(4.5, 3.2), dpi=120)
    ax.errorbar(xs, [100 * y for y in ys], yerr=[100 * e for e in es], marker="o", capsize=3)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("linear probe accuracy (%)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    write_atomically(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return path


def write_report(
    rows: Sequence[dict[str, Any]], folder: str | Path, *, default_sigma: float
) -> dict[str, Path]:
    """``results.csv`` (one row per variant), ``results.md`` and, when they have ≥ 2 points,
    ``sigma_sweep.png`` (Fig. 5: gauss + SimCLR rows at the full sample count) and
    ``n_samples.png`` (Fig. 6: gauss + SimCLR rows at ``default_sigma``) in ``folder``."""
    import pandas as pd

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(list(rows), columns=list(RESULT_COLUMNS))
    out = {"csv": folder / "results.csv", "markdown": folder / "results.md"}
    write_atomically(out["csv"], lambda tmp: frame.to_csv(tmp, index=False))
    write_atomically(out["markdown"], lambda tmp: tmp.write_text(results_markdown(rows)))
    latent = [r for r in rows if r["t_z"] == "gauss" and r["t_x"] == "simclr"]
    full = max((r["n_samples"] for r in latent), default=0)
    sigma = _curve(
        latent, x="sigma", keep=lambda r: r["n_samples"] == full,
        path=folder / "sigma_sweep.png", xlabel="σ of the Gaussian latent views", log_x=False,
    )  # fmt: skip
    curve = _curve(
        latent, x="n_samples", keep=lambda r: r["sigma"] == default_sigma,
        path=folder / "n_samples.png", xlabel="unique anchors (log scale)", log_x=True,
    )  # fmt: skip
    for key, path in (("sigma_plot", sigma), ("samples_plot", curve)):
        if path is not None:
            out[key] = path
    return out
