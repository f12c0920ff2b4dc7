"""View settings: which views to render and how (:class:`ViewConfig`), the official presets,
and the groups of the logits table they produce (:func:`view_groups`).

Chai et al., "Ensembling with Deep Generative Views" (CVPR 2021), Sec. 3.3–3.4; grids and
counts from the authors' code (chail/gan-ensembling ``networks/perturb_settings.py``,
``data/data_*.py``, ``scripts/eval_ensemble/*.py``). :mod:`ganviews.views.render` renders and
classifies them.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch

from ganviews.core.config import from_dict, to_dict
from ganviews.core.errors import ConfigError
from ganviews.core.runtime import PRECISIONS
from ganviews.views.augment import JitterConfig
from ganviews.views.perturb import (
    DEFAULT_PCA_COMPONENTS,
    FIRST_VIEW,
    PERTURBATIONS,
    format_setting,
)

IMAGE_METHODS = ("color", "crop")  # image-only groups ("combined" rides on a GAN group)
DTYPES = {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}


# ---------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class GanGroup:
    """One GAN perturbation family on one layer group, with its grid of settings."""

    method: str  # "isotropic" | "pca" | "stylemix"
    layers: str  # a key of G.layer_groups: "coarse" | "middle" | "fine"
    settings: tuple[float, ...] = ()  # σ grid for isotropic / pca; empty for stylemix
    combined: bool = False  # also emit "combined_<method>_<layers>" (these renders + image jitter)

    def __post_init__(self) -> None:
        if self.method not in PERTURBATIONS:
            raise ConfigError(f"gan.method: got {self.method!r}, allowed: {sorted(PERTURBATIONS)}")
        if self.method == "stylemix" and self.settings:
            raise ConfigError(
                f"gan.settings: stylemix takes no settings, got {list(self.settings)}"
            )
        if self.method != "stylemix":
            if not self.settings:
                raise ConfigError(f"gan.settings: {self.method} needs a σ grid, got none")
            bad = [s for s in self.settings if not (float(s) >= 0)]
            if bad:
                raise ConfigError(f"gan.settings: σ must be ≥ 0, got {bad}")
            if len(set(map(float, self.settings))) != len(self.settings):
                raise ConfigError(f"gan.settings: duplicate values in {list(self.settings)}")


@dataclass(frozen=True)
class ViewConfig:
    """Which views to render and classify, and how. No GAN groups by default: start from a
    preset (``view_config(preset="faces")``, PRESETS) for the official grids."""

    n_views: int = 32  # N per group: reconstruction + N−1 perturbed (image groups: x + N−1 copies)
    # perturbed views per GAN / combined group; 0 → n_views − 1. The authors: 32 with n_views 32
    # (33 GAN columns with the reconstruction; image groups: original + 31 copies)
    perturbed_views: int = 0
    gan: tuple[GanGroup, ...] = ()  # GAN groups; empty → none (use a preset for the official grid)
    image_methods: tuple[str, ...] = IMAGE_METHODS  # image-only groups: "color", "crop"
    jitter: JitterConfig = field(default_factory=JitterConfig)  # image-jitter strengths
    pca_components: int = DEFAULT_PCA_COMPONENTS  # PCA: d drawn among the top this many
    batch_size: int = 64  # views rendered + classified per forward pass
    noise_mode: Literal["const", "none"] = "const"  # synthesis noise (both reproducible)
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"  # autocast for render+classify
    # the classifiers' numerics (ganviews.core.runtime.NumericsPolicy): exact fp32, tf32 (CUDA
    # tensor cores) or bf16 autocast; applies when dtype is float32 (dtype autocasts G as well)
    precision: Literal["exact", "tf32", "bf16"] = "exact"
    persist_views: bool = (
        False  # also return uint8 views (for the store's views/<method>/<setting>)
    )
    persist_resolution: int = 0  # side of persisted views; 0 → the generator's resolution
    # combined groups: 0 → every perturbed view its own render + one jitter; R > 0 → the first R
    # renders, each jittered again and again (the authors' tensortransform: 8 renders × 4 jitters)
    combined_renders: int = 0
    # view 0 and the colour / crop views: "aligned" = the aligned frame the GAN inverts; "photo" =
    # the raw photo, Resize(photo_size) + CenterCrop / RandomCrop(photo_size), classified with
    # normalisation only (the authors' cars: imval / imcrop of data_cars.py)
    original_source: Literal["aligned", "photo"] = "aligned"
    photo_size: int = 256  # "photo": the shorter side after resizing = the side of the window

    def __post_init__(self) -> None:
        if self.n_views < 2:
            raise ConfigError(
                f"n_views: got {self.n_views}, must be ≥ 2 (reconstruction + ≥ 1 view)"
            )
        unknown = [m for m in self.image_methods if m not in IMAGE_METHODS]
        if unknown:
            raise ConfigError(f"image_methods: got {unknown}, allowed: {list(IMAGE_METHODS)}")
        if len(set(self.image_methods)) != len(self.image_methods):
            raise ConfigError(f"image_methods: duplicates in {list(self.image_methods)}")
        keys = [(g.method, g.layers) for g in self.gan]
        if len(set(keys)) != len(keys):
            raise ConfigError(f"gan: (method, layers) pairs must be unique, got {keys}")
        if self.pca_components < 1:
            raise ConfigError(f"pca_components: got {self.pca_components}, must be ≥ 1")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size: got {self.batch_size}, must be ≥ 1")
        if self.noise_mode not in ("const", "none"):
            raise ConfigError(f"noise_mode: got {self.noise_mode!r}, allowed: ['const', 'none']")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype: got {self.dtype!r}, allowed: {list(DTYPES)}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision: got {self.precision!r}, allowed: {list(PRECISIONS)}")
        if self.precision != "exact" and self.dtype != "float32":
            raise ConfigError(
                f"precision: {self.precision!r} with dtype {self.dtype!r}: choose one (dtype "
                "autocasts the generator and the classifiers; precision sets the classifiers' "
                "numerics when dtype is float32)"
            )
        if self.persist_resolution < 0:
            raise ConfigError(f"persist_resolution: got {self.persist_resolution}, must be ≥ 0")
        if self.perturbed_views < 0:
            raise ConfigError(
                f"perturbed_views: got {self.perturbed_views}, must be ≥ 0 (0 → n_views − 1)"
            )
        if self.original_source not in ("aligned", "photo"):
            raise ConfigError(
                f"original_source: got {self.original_source!r}, allowed: ['aligned', 'photo']"
            )
        if self.photo_size < 1:
            raise ConfigError(f"photo_size: got {self.photo_size}, must be ≥ 1")
        if self.combined_renders < 0:
            raise ConfigError(
                f"combined_renders: got {self.combined_renders}, must be ≥ 0 "
                "(≥ the perturbed views acts as 0)"
            )

    @property
    def num_perturbed(self) -> int:
        """Perturbed views per GAN / combined group (views 2 … num_perturbed + 1)."""
        return self.perturbed_views or self.n_views - 1


def _official_gan(iso_fine, iso_coarse, pca_grid) -> tuple[GanGroup, ...]:
    return (
        GanGroup("isotropic", "fine", iso_fine),
        GanGroup("isotropic", "coarse", iso_coarse),
        GanGroup("pca", "fine", pca_grid),
        GanGroup("pca", "coarse", pca_grid),
        GanGroup("stylemix", "fine"),
        GanGroup("stylemix", "coarse"),
    )


# Official grids (chail/gan-ensembling, networks/perturb_settings.py) and image jitter
# (data/data_*.py). Faces: 1056/1024 zoom crop. Cats: RandomCrop(224) of 256 = the classifier's
# 224 window moved by 0–32 px on both axes. Cars: RandomCrop(256) of the 342×256 resize of the
# de-padded 512×384 render = the classifier's 384-px-wide window of the 512² frame moved
# horizontally only (whole render pixels: 129 offsets of 2/3 of an official pixel step).
# Combined views: 8 renders, each jittered repeatedly (evaluate_gan_ensemble.py tensortransform).
# Cats and cars: crops only (data_cats.py / data_cars.py have no colour transform). Cars: view 0
# and the crops from the raw photo (imval / imcrop), as configs/cars.yaml.
# View counts (evaluate_gan_ensemble.py n_ens 32, transforms.ImageEnsemble): 32 perturbed views
# per GAN group (+ the reconstruction: 33 columns), 8 × 4 = 32 combined views; image groups:
# the original + 31 augmented copies (32 columns).
PRESETS: dict[str, ViewConfig] = {
    "faces": ViewConfig(
        perturbed_views=32,
        gan=_official_gan((0.1, 0.2, 0.3), (0.1, 0.2, 0.3), (1.0, 2.0, 3.0)),
        combined_renders=8,
        jitter=JitterConfig(crop_scale=1056 / 1024, combined_color=True),
    ),
    "cars": ViewConfig(
        perturbed_views=32,
        gan=_official_gan((0.3, 0.5, 0.7), (1.0, 1.5, 2.0), (1.0, 2.0, 3.0)),
        combined_renders=8,
        image_methods=("crop",),
        jitter=JitterConfig(crop_mode="window", crop_window=(1.0, 0.75), combined_color=False),
        original_source="photo",
    ),
    "cats": ViewConfig(
        perturbed_views=32,
        gan=_official_gan((0.1, 0.2, 0.3), (0.5, 0.7, 1.0), (0.5, 0.7, 1.0)),
        combined_renders=8,
        image_methods=("crop",),
        jitter=JitterConfig(
            crop_mode="window", crop_window=(224 / 256, 224 / 256), combined_color=False
        ),
    ),
}


def view_config(data: Mapping[str, Any] | None = None, *, preset: str | None = None) -> ViewConfig:
    """A ViewConfig from a mapping (YAML); ``preset`` (argument or key) supplies the defaults.

    Keys given in ``data`` replace the preset's values wholesale (``gan`` is replaced, not merged).
    """
    data = dict(data or {})
    name = data.pop("preset", None) or preset
    if name is None:
        return from_dict(ViewConfig, data)
    if name not in PRESETS:
        raise ConfigError(f"preset: got {name!r}, allowed: {sorted(PRESETS)}")
    return from_dict(ViewConfig, with_preset(name, data))


def with_preset(name: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """Preset ``name``'s values with ``data``'s on top: ``jitter`` merged key by key, ``gan``
    replaced. The preset's ``perturbed_views`` belongs to its ``n_views``: a mapping that sets
    ``n_views`` alone gets ``perturbed_views`` 0 (n_views − 1), so a smaller N shrinks both."""
    base = to_dict(PRESETS[name])
    data = dict(data)
    if isinstance(data.get("jitter"), Mapping):
        data["jitter"] = {**base["jitter"], **data["jitter"]}
    if "n_views" in data and "perturbed_views" not in data:
        data["perturbed_views"] = 0
    return {**base, **data}


# ---------------------------------------------------------------------------------------------
# groups of the logits table


@dataclass(frozen=True)
class ViewGroup:
    """One (method, setting) group of the logits table."""

    method: str  # the table's method string, e.g. "isotropic_fine", "combined_pca_coarse", "crop"
    setting: str  # the table's setting string ("" when none)
    kind: Literal["gan", "combined", "image"]  # how its views ≥ 1 (image) / ≥ 2 (GAN) are made
    base: str  # perturbation ("isotropic" | "pca" | "stylemix") or image method ("color" | "crop")
    layers: str  # GAN layer group ("" for image groups)
    sigma: float | None  # σ for isotropic / pca, else None
    num_views: int  # views per image (GAN groups: 2 + perturbed views; image groups: N)


def view_groups(config: ViewConfig) -> list[ViewGroup]:
    """All groups the config produces, in output order."""
    out = []
    gan_views = FIRST_VIEW + config.num_perturbed  # views 0, 1 and the perturbed ones
    for g in config.gan:
        settings: Sequence[float | None] = g.settings or (None,)
        for s in settings:
            name = f"{g.method}_{g.layers}"
            sigma = None if s is None else float(s)
            out.append(
                ViewGroup(name, format_setting(s), "gan", g.method, g.layers, sigma, gan_views)
            )
            if g.combined:
                out.append(
                    ViewGroup(
                        f"combined_{name}",
                        format_setting(s),
                        "combined",
                        g.method,
                        g.layers,
                        sigma,
                        gan_views,
                    )
                )
    for m in config.image_methods:
        out.append(ViewGroup(m, "", "image", m, "", None, config.n_views))
    return out


def subset_config(config: ViewConfig, wanted: Collection[tuple[str, str]]) -> ViewConfig:
    """``config`` reduced to what renders the (method, setting) groups in ``wanted``.

    Every view depends only on its own seed (image, method, layers, σ, view), so the reduced
    config renders the same views for those groups. A combined group needs its GAN group's
    renders: that GAN group stays (the caller drops its rows); a GAN group whose combined twin
    is not wanted is rendered without it."""
    wanted = set(wanted)
    known = {(g.method, g.setting) for g in view_groups(config)}
    unknown = sorted(wanted - known)
    if unknown:
        raise ConfigError(f"groups {unknown} are not groups of this view config ({sorted(known)})")
    gan = []
    for g in config.gan:
        name = f"{g.method}_{g.layers}"
        keep, combined = [], False
        for s in g.settings or (None,):
            plain_wanted = (name, format_setting(s)) in wanted
            twin_wanted = g.combined and (f"combined_{name}", format_setting(s)) in wanted
            if plain_wanted or twin_wanted:
                keep.append(s)
                combined = combined or twin_wanted
        if keep:
            settings = tuple(keep) if g.settings else ()
            gan.append(replace(g, settings=settings, combined=combined))
    image = tuple(m for m in config.image_methods if (m, "") in wanted)
    return replace(config, gan=tuple(gan), image_methods=image)
