"""Perturbations of an inverted latent w*: the GAN views of Chai et al. (CVPR 2021), Sec. 3.3.

Three families, each applied to one layer group of w+ (``G.layer_groups``: "coarse",
"middle", "fine"); the other layers of w* are left bit-for-bit unchanged:

- ``isotropic``: w̃ = w* + σ·ε, ε ~ N(0, I) drawn independently for every layer of the group.
- ``pca``: w̃ = w* + β·λ_d·v̂_d on every layer of the group, with d uniform among the top
  ``pca_components`` (20) principal directions of w = mapping(z), β ~ U[−σ, σ] and λ_d the
  standard deviation along v̂_d (:func:`compute_pca_stats`).
- ``stylemix``: the group's layers replaced by mapping(z) for a random z ~ N(0, I), at
  truncation ψ = 1 (the official code mixes with untruncated samples). For a class-conditional
  G the mixing latent uses the image's own class ``c`` (the official code uses the class the
  classifier predicts for the original image; pass that as ``c`` to reproduce it).

Reproducibility: every view owns a seed, :func:`view_seed` (base seed, image id, method,
layers, setting, view index); all its randomness is drawn on the CPU from a
``torch.Generator`` seeded with it, so a view never depends on the other images or views in a
call, the batch order or the device, and a stored seed re-renders its view exactly
(:func:`perturb_from_seeds`). σ = 0 returns w* exactly. View indices follow the logits
table: 0 original, 1 reconstruction, 2… perturbed, so ``perturb`` renders views 2..n_views+1.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ganviews.core.runtime import assert_shape, item_seed

log = logging.getLogger(__name__)

FIRST_VIEW = 2  # table view index of the first perturbed view (0 original, 1 reconstruction)
DEFAULT_PCA_COMPONENTS = 20  # d is drawn among the top 20 directions (official value)


# ---------------------------------------------------------------------------------------------
# seeds and settings


def format_setting(setting: float | str | None) -> str:
    """The canonical string of a setting, as stored in the logits table ("" when none)."""
    if setting is None or setting == "":
        return ""
    return repr(float(setting))


SEED_BITS = 53  # stored seeds stay exact through float64 (pandas/JSON/DuckDB round trips)


def view_seed(
    seed: int, image_id: str, method: str, layers: str, setting: float | str | None, view: int
) -> int:
    """The seed of one GAN view (view ≥ 2), < 2**53; all of the view's randomness comes from it."""
    key = item_seed(
        seed, "gan-view", str(image_id), method, layers, format_setting(setting), int(view)
    )
    return key & ((1 << SEED_BITS) - 1)


# ---------------------------------------------------------------------------------------------
# PCA statistics of w = mapping(z)


@dataclass(frozen=True)
class PCAStats:
    """Principal directions of the generator's w space (rows of ``components``, descending)."""

    mean: torch.Tensor  # [w_dim] mean of w
    components: torch.Tensor  # [D, w_dim] orthonormal directions v̂_d, by descending variance
    stdevs: torch.Tensor  # [D] standard deviation λ_d of w along v̂_d (ddof = 1)
    generator_sha256: str = ""  # the generator these statistics belong to
    n_samples: int = 0  # how many w were sampled

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> PCAStats:
        return PCAStats(
            self.mean.to(device, dtype),
            self.components.to(device, dtype),
            self.stdevs.to(device, dtype),
            self.generator_sha256,
            self.n_samples,
        )

    def as_arrays(self) -> dict[str, np.ndarray]:
        """numpy copies (float64 where computed so), for ``storage.pca_stats.save_pca_stats``."""
        return {
            "mean": self.mean.detach().cpu().numpy(),
            "components": self.components.detach().cpu().numpy(),
            "stdevs": self.stdevs.detach().cpu().numpy(),
        }

    @classmethod
    def from_arrays(
        cls, mean, components, stdevs, *, generator_sha256: str = "", n_samples: int = 0
    ) -> PCAStats:
        mean_t = torch.as_tensor(np.asarray(mean))
        comp_t = torch.as_tensor(np.asarray(components))
        std_t = torch.as_tensor(np.asarray(stdevs))
        if mean_t.ndim != 1 or comp_t.ndim != 2 or comp_t.shape[1] != mean_t.shape[0]:
            raise ValueError(
                f"PCA stats: expected mean [w_dim], components [D, w_dim]; got {list(mean_t.shape)}, "
                f"{list(comp_t.shape)}"
            )
        if std_t.shape != (comp_t.shape[0],):
            raise ValueError(
                f"PCA stats: expected stdevs [{comp_t.shape[0]}], got {list(std_t.shape)}"
            )
        return cls(mean_t, comp_t, std_t, generator_sha256, int(n_samples))


def _sample_classes(G, n: int, gen: torch.Generator, device: torch.device) -> torch.Tensor | None:
    if not G.c_dim:
        return None
    idx = torch.randint(G.c_dim, (n,), generator=gen)
    return torch.nn.functional.one_hot(idx, G.c_dim).to(device=device, dtype=torch.float32)


@torch.no_grad()
def sample_w(
    G,
    *,
    n_samples: int,
    seed: int = 0,
    device: torch.device | str = "cpu",
    batch_size: int = 4096,
) -> Iterator[torch.Tensor]:
    """Batches of w = mapping(z)[:, 0] ([B, w_dim]), z ~ N(0, I), ψ = 1, seeded per batch.

    Batch b draws from a generator seeded by (seed, "pca-stats", b) on the CPU; a
    conditional G gets uniformly drawn classes.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: got {batch_size}, must be ≥ 1")
    device = torch.device(device)
    for b, start in enumerate(range(0, n_samples, batch_size)):
        n = min(batch_size, n_samples - start)
        gen = torch.Generator().manual_seed(item_seed(seed, "pca-stats", b))
        z = torch.randn(n, G.z_dim, generator=gen).to(device)  # [n, z_dim]
        c = _sample_classes(G, n, gen, device)
        yield G.mapping(z, c, truncation_psi=1.0)[:, 0]  # [n, w_dim]


@torch.no_grad()
def compute_pca_stats(
    G,
    *,
    n_samples: int = 100_000,
    seed: int = 0,
    device: torch.device | str = "cpu",
    batch_size: int = 4096,
) -> PCAStats:
    """PCA of ``n_samples`` w from :func:`sample_w` (float64, ddof = 1).

    Batches are merged with Chan's pairwise mean/scatter update, so memory stays
    O(w_dim²) whatever ``n_samples`` is.
    """
    if n_samples < 2:
        raise ValueError(f"n_samples: got {n_samples}, need at least 2")
    count, mean, scatter = 0, None, None
    for w in sample_w(G, n_samples=n_samples, seed=seed, device=device, batch_size=batch_size):
        w = w.double()  # [n, w_dim]
        n = w.shape[0]
        b_mean = w.mean(0)
        centred = w - b_mean
        b_scatter = centred.T @ centred  # [w_dim, w_dim]
        if mean is None:
            count, mean, scatter = n, b_mean, b_scatter
            continue
        delta = b_mean - mean
        total = count + n
        scatter = scatter + b_scatter + torch.outer(delta, delta) * (count * n / total)
        mean = mean + delta * (n / total)
        count = total
    cov = scatter / (count - 1)
    evals, evecs = torch.linalg.eigh(cov)  # ascending
    order = torch.argsort(evals, descending=True)
    evals, evecs = evals[order].clamp_min(0.0), evecs[:, order]
    comps = evecs.T.contiguous()  # [D, w_dim]
    # Fix each direction's sign (eigenvectors are defined up to ±): largest |entry| positive.
    pivot = comps.abs().argmax(dim=1)
    signs = torch.sign(comps.gather(1, pivot[:, None]))
    comps = comps * torch.where(signs == 0, torch.ones_like(signs), signs)
    return PCAStats(
        mean=mean.cpu(),
        components=comps.cpu(),
        stdevs=evals.sqrt().cpu(),
        generator_sha256=str(getattr(G, "sha256", "") or ""),
        n_samples=count,
    )


# ---------------------------------------------------------------------------------------------
# the three perturbation families: one view per row, all randomness from that row's seed


def check_pca_stats(G, pca: PCAStats | None) -> None:
    """Refuse statistics computed for another generator (by content hash) or another w_dim."""
    if pca is None:
        return
    if pca.components.shape[1] != G.w_dim:
        raise ValueError(f"pca: components have w_dim {pca.components.shape[1]}, G has {G.w_dim}")
    sha = str(getattr(G, "sha256", "") or "")
    if pca.generator_sha256 and sha and pca.generator_sha256 != sha:
        raise ValueError(
            f"pca: statistics belong to generator {pca.generator_sha256[:12]}…, G is {sha[:12]}…"
        )


def attach_pca_stats(G, pca: PCAStats) -> None:
    """Cache ``pca`` on ``G`` (checked against G's hash), so ``perturb`` finds it without an argument."""
    check_pca_stats(G, pca)
    G.pca_stats = pca


def _group_indices(G, layers: str) -> list[int]:
    groups = G.layer_groups
    if layers not in groups:
        raise ValueError(f"layers: got {layers!r}, allowed: {sorted(groups)}")
    idx = list(groups[layers])
    if not idx:
        raise ValueError(f"layers: the group {layers!r} of this generator is empty")
    return idx


def _sigma(method: str, setting) -> float:
    if setting is None or setting == "":
        raise ValueError(f"setting: method {method!r} needs σ (a number ≥ 0), got {setting!r}")
    try:
        sigma = float(setting)
    except (TypeError, ValueError):
        raise ValueError(
            f"setting: method {method!r} needs σ (a number ≥ 0), got {setting!r}"
        ) from None
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"setting: method {method!r} needs σ (a number ≥ 0), got {setting!r}")
    return sigma


def _generators(seeds: Sequence[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def _upload(draws: torch.Tensor, like: torch.Tensor, dtype: torch.dtype | None = None):
    """CPU draws → ``like``'s device (and dtype, or ``dtype``): one pinned, asynchronous copy to
    a GPU (the draws stay on the CPU generator, so a view is the same on every device)."""
    if like.device.type == "cuda":
        draws = draws.pin_memory().to(like.device, non_blocking=True)
    return draws.to(like.device, dtype or like.dtype)


def _isotropic(G, w, seeds, *, idx, setting, **_) -> torch.Tensor:
    sigma = _sigma("isotropic", setting)
    shape = (len(idx), w.shape[-1])
    eps = torch.stack([torch.randn(shape, generator=g) for g in _generators(seeds)])  # [M, |g|, C]
    out = w.clone()
    out[:, idx] = w[:, idx] + sigma * _upload(eps, w)
    return out


def _pca(
    G, w, seeds, *, idx, setting, pca: PCAStats | None, pca_components: int, **_
) -> torch.Tensor:
    sigma = _sigma("pca", setting)
    if pca is None:
        raise ValueError(
            "pca: method 'pca' needs PCA statistics (compute_pca_stats(G) or "
            "storage.pca_stats.load_pca_stats → PCAStats.from_arrays); got None"
        )
    if pca.components.shape[1] != w.shape[-1]:
        raise ValueError(
            f"pca: components have w_dim {pca.components.shape[1]}, w has {w.shape[-1]}"
        )
    k = min(int(pca_components), pca.components.shape[0])
    if k < 1:
        raise ValueError(f"pca_components: got {pca_components}, must be ≥ 1")
    draws = []
    for g in _generators(seeds):
        d = int(torch.randint(k, (1,), generator=g))
        beta = sigma * (2.0 * float(torch.rand(1, generator=g, dtype=torch.float64)) - 1.0)
        draws.append((d, beta))
    d = _upload(torch.tensor([x[0] for x in draws]), w, torch.long)  # [M]
    beta = _upload(torch.tensor([x[1] for x in draws], dtype=w.dtype), w)  # [M]
    comps = pca.components.to(w.device, w.dtype)
    stdev = pca.stdevs.to(w.device, w.dtype)
    delta = (beta * stdev[d])[:, None] * comps[d]  # [M, C]
    out = w.clone()
    out[:, idx] = w[:, idx] + delta[:, None, :]
    return out


def _stylemix(G, w, seeds, *, idx, setting, c, **_) -> torch.Tensor:
    if setting not in (None, ""):
        raise ValueError(f"setting: method 'stylemix' takes no setting, got {setting!r}")
    if G.c_dim and c is None:
        raise ValueError(
            f"c: G is class-conditional (c_dim={G.c_dim}); stylemix needs the class of each image"
        )
    z = torch.stack([torch.randn(G.z_dim, generator=g) for g in _generators(seeds)])  # [M, z_dim]
    mix = G.mapping(_upload(z, w), c if G.c_dim else None, truncation_psi=1.0)  # [M, L, C]
    out = w.clone()
    out[:, idx] = mix[:, idx].to(w.dtype)
    return out


PERTURBATIONS: dict[str, Callable[..., torch.Tensor]] = {
    "isotropic": _isotropic,
    "pca": _pca,
    "stylemix": _stylemix,
}


def perturb_from_seeds(
    G,
    w: torch.Tensor,
    seeds: Sequence[int] | torch.Tensor,
    *,
    method: str,
    layers: str,
    setting: float | str | None = None,
    pca: PCAStats | None = None,
    pca_components: int = DEFAULT_PCA_COMPONENTS,
    c: torch.Tensor | None = None,
) -> torch.Tensor:
    """One perturbed w+ per row: w [M, num_ws, w_dim], seeds [M] → [M, num_ws, w_dim].

    ``c`` ([M, c_dim], conditional G only) is the class used by style-mixing.
    """
    if method not in PERTURBATIONS:
        raise ValueError(f"method: got {method!r}, allowed: {sorted(PERTURBATIONS)}")
    assert_shape(w, [None, G.num_ws, G.w_dim], "w")
    seeds = seeds.tolist() if isinstance(seeds, torch.Tensor) else list(seeds)
    if len(seeds) != w.shape[0]:
        raise ValueError(f"seeds: expected one per row of w ({w.shape[0]}), got {len(seeds)}")
    if c is not None:
        assert_shape(c, [w.shape[0], G.c_dim], "c")
    idx = _group_indices(G, layers)
    fn = PERTURBATIONS[method]
    return fn(G, w, seeds, idx=idx, setting=setting, pca=pca, pca_components=pca_components, c=c)


def perturb(
    G,
    w: torch.Tensor,
    method: str = "stylemix",
    layers: str = "fine",
    setting: float | str | None = None,
    n_views: int = 31,
    image_ids: Sequence[str] | None = None,
    seed: int = 0,
    pca: PCAStats | None = None,
    *,
    pca_components: int = DEFAULT_PCA_COMPONENTS,
    c: torch.Tensor | None = None,
    first_view: int = FIRST_VIEW,
) -> torch.Tensor:
    """``n_views`` perturbed copies of each w*: w [N, num_ws, w_dim] → [N, n_views, num_ws, w_dim].

    View j of image i is table view ``first_view + j`` with seed
    ``view_seed(seed, image_ids[i], method, layers, setting, first_view + j)``; it depends on
    nothing else. ``image_ids`` is required (views keyed on batch position would change with
    the batch). ``c`` [N, c_dim]: each image's class, needed by stylemix for a conditional G.
    ``pca``: the statistics for method "pca"; when None, ``G.pca_stats`` is used if set
    (:func:`attach_pca_stats`).
    """
    assert_shape(w, [None, G.num_ws, G.w_dim], "w")
    n = w.shape[0]
    if image_ids is None:
        raise ValueError("image_ids: required, one id per row of w (views are seeded by image id)")
    image_ids = [str(i) for i in image_ids]
    if len(image_ids) != n:
        raise ValueError(f"image_ids: expected {n} ids (one per row of w), got {len(image_ids)}")
    if n_views < 0:
        raise ValueError(f"n_views: got {n_views}, must be ≥ 0")
    if c is not None:
        assert_shape(c, [n, G.c_dim], "c")
    if method == "pca":
        pca = pca if pca is not None else getattr(G, "pca_stats", None)
        check_pca_stats(G, pca)
    seeds = [
        view_seed(seed, iid, method, layers, setting, first_view + j)
        for iid in image_ids
        for j in range(n_views)
    ]
    w_rep = (
        w[:, None].expand(n, n_views, *w.shape[1:]).reshape(n * n_views, *w.shape[1:])
    )  # [N·V, L, C]
    c_rep = None if c is None else c.repeat_interleave(n_views, dim=0)  # [N·V, c_dim]
    out = perturb_from_seeds(
        G,
        w_rep,
        seeds,
        method=method,
        layers=layers,
        setting=setting,
        pca=pca,
        pca_components=pca_components,
        c=c_rep,
    )
    return out.view(n, n_views, *w.shape[1:])  # [N, V, L, C]
