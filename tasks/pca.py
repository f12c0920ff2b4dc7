"""The PCA stage: statistics of G's w space for the PCA views (Chai et al. 2021, Sec. 3.3).

:func:`run_pca` is the one place they are computed: sample w = mapping(z) with the settings
of a :class:`~tasks.pipeline_config.PCAConfig` (samples, seed, batch), run the library's PCA
(:func:`ganviews.views.perturb.compute_pca_stats`) and save them tagged with the generator's
hash (storage/pca_stats.py). ``ganviews pca-stats``, the pipeline's ``pca`` stage and — when
the store's cache ``<store>/pca_stats.npz`` is missing — the render stage and classifier
training (:func:`load_pca`) all go through it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from ganviews.core.runtime import file_sha256, resolve_device
from ganviews.views.perturb import PCAStats, compute_pca_stats
from storage.errors import StoreError
from storage.pca_stats import cache_path, load_pca_stats, save_pca_stats
from tasks.pipeline_config import PCAConfig, PipelineConfig
from tasks.shard_runner import run_logger


def run_pca(
    G, out: str | Path, settings: PCAConfig, *, device: Any = "cpu"
) -> tuple[Path, PCAStats]:
    """PCA statistics of ``G``'s w space → (the ``.npz`` written to ``out``, the statistics)."""
    stats = compute_pca_stats(
        G,
        n_samples=settings.samples,
        seed=settings.seed,
        device=device,
        batch_size=settings.batch_size,
    )
    path = save_pca_stats(
        out,
        **stats.as_arrays(),
        generator_sha256=G.sha256,
        n_samples=stats.n_samples,
        seed=settings.seed,
    )
    run_logger().info("PCA statistics of %d w samples → %s", stats.n_samples, path)
    return path, stats


def load_pca(store: str | Path, G, settings: PCAConfig, *, device: Any = "cpu") -> PCAStats:
    """The store's cached PCA statistics of ``G`` (checked by hash), computed with
    :func:`run_pca` and ``settings`` when the cache is missing."""
    path = cache_path(store)
    if not path.is_file():
        run_pca(G, path, settings, device=device)
    data = load_pca_stats(path, generator_sha256=G.sha256)
    return PCAStats.from_arrays(
        data["mean"], data["components"], data["stdevs"],
        generator_sha256=data["generator_sha256"], n_samples=data["n_samples"],
    )  # fmt: skip


def pca_needed(cfg: PipelineConfig) -> bool:
    """Whether a view group of the pipeline uses PCA directions."""
    return any(g.method == "pca" for g in cfg.views.gan)


def pca_done(cfg: PipelineConfig) -> bool:
    """The store's PCA cache exists for this generator, sample count and seed."""
    path = cache_path(cfg.paths.store)
    if not path.is_file():
        return False
    try:
        data = load_pca_stats(path)
    except StoreError:
        return False
    return (data["n_samples"], data["seed"]) == (cfg.pca.samples, cfg.pca.seed) and data[
        "generator_sha256"
    ] == file_sha256(cfg.models.generator)


@task(name="pca-stats", cache_policy=NO_CACHE)
def pca_task(
    generator: Path, store: Path, settings: PCAConfig, device: str = "auto"
) -> dict[str, Any]:
    """Prefect task: PCA of the generator's w space → ``<store>/pca_stats.npz`` (read by render)."""
    from ganviews.stylegan.generator import load_generator

    dev = resolve_device(device)
    path, stats = run_pca(
        load_generator(generator, device=dev), cache_path(store), settings, device=dev
    )
    return {"path": str(path), "components": int(stats.components.shape[0])}
