"""The ensemble evaluation's settings and input contract (Chai et al. 2021, Sec. 3.4):
:class:`EnsembleConfig`, the α grid, combination specs, the logits table's required columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from ganviews.core.errors import ConfigError, GanviewsError
from ganviews.ensemble.accounting import (
    GROUP_COLUMNS,
)

REQUIRED_COLUMNS = ("image_id", "split", *GROUP_COLUMNS, "view", "logits", "label")


SPLITS = ("val", "test")


class EnsembleInputError(GanviewsError, ValueError):
    """A logits table cannot be turned into dense per-group arrays; the message names the group."""


@dataclass(frozen=True)
class EnsembleConfig:
    """How ensembles are evaluated; every field has a default, YAML maps onto it (``ensemble:``)."""

    num_alphas: int = 21  # α grid: num_alphas evenly spaced values from 0 to 1 (21 → 0, 0.05, …, 1)
    # which α wins among equally accurate ones ("smallest": prefer the single image)
    tie_break: Literal["smallest", "largest"] = "smallest"
    # methods whose views ≥ 1 are augmented copies of the image (no reconstruction)
    image_aug_methods: tuple[str, ...] = ("color", "crop")
    # "image_method+gan_method", each side optionally "method@setting"; None: every pair; (): none
    combinations: tuple[str, ...] | None = None
    # an image lacking some views: fail, drop it (counted in n_dropped and the exclusions), or
    # "single": predict it from view 0 alone at every α (counted in n_test_fallback)
    on_missing_views: Literal["error", "drop", "single"] = "error"
    bootstrap_draws: int = 100  # view resamples for bootstrap errors and ensemble-size curves
    # groups that get an ensemble-size curve (best_setting: per classifier and method, on val)
    size_curve: Literal["best_setting", "all", "none"] = "best_setting"
    seed: int = 0  # base seed of the view bootstrap; each group derives its own stream
    chunk_elements: int = 1 << 22  # largest temporary array (elements); bounds memory
    # BLAS threads while evaluating: the products are small ([N, M] × [M, B]), and threads cost
    # more than they save (6× the CPU time on 2 cores); None leaves the BLAS setting alone
    blas_threads: int | None = 1
    # "paper": also the authors' resampled protocol (ganviews.ensemble.paper: 20 resamples of 31
    # views, α per resample, plain-mean colour/crop baselines) in results.paper / paper_baselines
    protocol: Literal["ganviews", "paper"] = "ganviews"

    def __post_init__(self) -> None:
        if self.num_alphas < 2:
            raise ConfigError(
                f"ensemble.num_alphas: {self.num_alphas} is too small (need ≥ 2: the grid holds 0 and 1)"
            )
        if self.tie_break not in ("smallest", "largest"):
            raise ConfigError(
                f"ensemble.tie_break: {self.tie_break!r} is not one of ['smallest', 'largest']"
            )
        if self.on_missing_views not in ("error", "drop", "single"):
            raise ConfigError(
                f"ensemble.on_missing_views: {self.on_missing_views!r} is not one of "
                "['error', 'drop', 'single']"
            )
        if self.size_curve not in ("best_setting", "all", "none"):
            raise ConfigError(
                f"ensemble.size_curve: {self.size_curve!r} is not one of ['best_setting', 'all', 'none']"
            )
        if self.bootstrap_draws < 2:
            raise ConfigError(
                f"ensemble.bootstrap_draws: {self.bootstrap_draws} is too small (need ≥ 2)"
            )
        if self.blas_threads is not None and self.blas_threads < 1:
            raise ConfigError(f"ensemble.blas_threads: {self.blas_threads} must be ≥ 1 (or null)")
        if self.chunk_elements < 1:
            raise ConfigError(f"ensemble.chunk_elements: {self.chunk_elements} must be ≥ 1")
        if self.protocol not in ("ganviews", "paper"):
            raise ConfigError(
                f"ensemble.protocol: {self.protocol!r} is not one of ['ganviews', 'paper']"
            )
        for text in self.combinations or ():
            parse_combination(text)

    @property
    def alphas(self) -> np.ndarray:
        return alpha_grid(self.num_alphas)


def alpha_grid(num_alphas: int) -> np.ndarray:
    """``num_alphas`` evenly spaced α from 0 to 1, rounded to 12 decimals (0.05 prints as 0.05)."""
    if num_alphas < 2:
        raise ConfigError(f"num_alphas: {num_alphas} is too small (need ≥ 2)")
    return np.round(np.linspace(0.0, 1.0, num_alphas), 12)  # [A]


def parse_combination(text: str) -> tuple[str, str | None, str, str | None]:
    """``"crop+isotropic_fine@0.3"`` → ("crop", None, "isotropic_fine", "0.3")."""
    parts = text.split("+")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(
            f"ensemble.combinations: {text!r} is not 'image_method+gan_method' "
            "(each side optionally 'method@setting')"
        )
    out: list[str | None] = []
    for part in parts:
        method, _, setting = part.partition("@")
        if not method:
            raise ConfigError(f"ensemble.combinations: {text!r} has an empty method name")
        out += [method, setting if "@" in part else None]
    return out[0], out[1], out[2], out[3]  # type: ignore[return-value]
