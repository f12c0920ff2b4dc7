"""Typed jobs of the sharded stages, built once from the pipeline config.

An :class:`InvertJob` / :class:`RenderJob` holds everything one shard of its stage needs
(paths, models, the stage's library configs, the seed) plus how the shard runner records it
(``state_dir``, ``cpu_threads``). The CLI builds them from its arguments, the flows from the
:class:`~tasks.pipeline_config.PipelineConfig` (:func:`invert_job`, :func:`render_job`). They
travel as objects to the shard tasks (threads, and pickled to a process pool); only where a
shard becomes a run of the deployment are they turned into plain data (:func:`to_plain`) and
back (:func:`from_plain`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ganviews.core.config import from_dict, to_dict
from ganviews.inversion.align import AlignConfig
from ganviews.inversion.invert import InversionConfig
from ganviews.views.render import PRESETS, ViewConfig
from tasks.pipeline_config import PCAConfig, PipelineConfig

J = TypeVar("J")


@dataclass(frozen=True)
class InvertJob:
    """Invert the images of a latent store (Sec. 3.2)."""

    store: Path  # latent store (Zarr)
    generator: Path  # StyleGAN2 checkpoint
    encoder: Path | None = None  # RGBM encoder (None: start at G's mean w)
    align: AlignConfig = field(default_factory=AlignConfig)
    invert: InversionConfig = field(default_factory=InversionConfig)
    image_root: Path | None = None  # base of relative manifest paths (None: the store folder)
    lpips_weights_dir: Path | None = None  # folder searched first for the LPIPS backbone
    seed: int = 0  # recorded in the summary (the objective draws nothing)
    state_dir: Path | None = None  # progress records of the shard runner (None: none)
    cpu_threads: int = 0  # torch threads of a CPU shard (0: torch's default)
    allow_mixed_numerics: bool = False  # resume with another batch size/threads/device type
    retry_failed: bool = True  # rerun items whose inversion failed (False: only pending ones)
    max_attempts: int | None = None  # give up on an item after it failed this often (None: never)

    @property
    def attempt_limit(self) -> int | None:
        """Failures after which an item is given up on (None: never; retry_failed False: 1)."""
        return self.max_attempts if self.retry_failed else 1


@dataclass(frozen=True)
class RenderJob:
    """Render + classify the views of a store's inverted images into the logits dataset (Sec. 3.3)."""

    store: Path  # latent store with inverted images
    generator: Path  # the generator the store was inverted with
    classifiers: dict[str, Path]  # name → checkpoint
    logits: Path  # root of the logits Parquet dataset
    # name → ClassifierConfig keys for files that do not record them (else the file's / sidecar)
    classifier_configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    tasks: dict[str, str] = field(default_factory=dict)  # name → label column (default: its own)
    views: ViewConfig = field(default_factory=lambda: PRESETS["faces"])
    seed: int = 0  # base seed of every view
    class_column: str | None = None  # label column of a class-conditional generator
    align: AlignConfig | None = None  # re-align originals missing from the store (None: recorded)
    image_root: Path | None = None  # base of relative manifest paths (None: the store folder)
    pca: PCAConfig = field(default_factory=PCAConfig)  # PCA statistics computed when missing
    state_dir: Path | None = None  # progress records and render markers (None: none)
    cpu_threads: int = 0  # torch threads of a CPU shard (0: torch's default)


def invert_job(cfg: PipelineConfig) -> InvertJob:
    """The pipeline's inversion job."""
    return InvertJob(
        store=cfg.paths.store,
        generator=cfg.models.generator,
        encoder=cfg.models.encoder,
        align=cfg.align,
        invert=cfg.invert,
        image_root=cfg.image_root,
        lpips_weights_dir=cfg.models.lpips_weights_dir,
        seed=cfg.seed,
        state_dir=cfg.state_dir,
        cpu_threads=cfg.orchestration.cpu_threads,
        retry_failed=cfg.orchestration.retry_failed_images,
        max_attempts=cfg.orchestration.max_image_attempts,
    )


def render_job(cfg: PipelineConfig) -> RenderJob:
    """The pipeline's render job."""
    refs = cfg.models.classifiers
    return RenderJob(
        store=cfg.paths.store,
        generator=cfg.models.generator,
        classifiers={k: v.path for k, v in refs.items()},
        classifier_configs={k: dict(v.config) for k, v in refs.items() if v.config is not None},
        logits=cfg.paths.logits,
        tasks={k: v.task for k, v in refs.items() if v.task},
        views=cfg.views,
        seed=cfg.seed,
        class_column=cfg.models.class_column,
        align=cfg.align,
        image_root=cfg.image_root,
        pca=cfg.pca,
        state_dir=cfg.state_dir,
        cpu_threads=cfg.orchestration.cpu_threads,
    )


def to_plain(job: Any) -> dict[str, Any]:
    """A job as JSON-friendly data (deployment parameters)."""
    return to_dict(job)


def from_plain(cls: type[J], data: dict[str, Any]) -> J:
    """The job of type ``cls`` from :func:`to_plain`'s data (ConfigError names a bad key)."""
    return from_dict(cls, data, key="job")
