"""Prefect task: corrupted copies of a store's aligned images under one condition (Sec. 4.1, Fig. 7).

Each condition (:class:`ganviews.corruptions.conditions.Condition`) gets a latent store of
its own (:func:`prepare_condition_store`): the clean store's manifest, layout and inversion
identity, plus the condition (and, for attacks, the attacked classifier's hash) in its
attributes. :func:`run_corrupt` fills one shard of it: for every image the clean store has
inverted, the clean ``images/aligned`` is corrupted (attacks through the classifier's own
preprocessing, against the label column it predicts), and the 8-bit result is written as the
condition store's ``images/aligned`` with the clean ``images/mask``; per-item predictions,
attack target and success go to ``corruption/*`` arrays; ``corruption/done`` is written last,
so a killed writer never leaves an item marked corrupted without its image.

Downstream the condition store is an ordinary store: the inversion stage fits w* to the stored
corrupted image (:func:`stored_targets`) instead of loading and aligning the manifest's file,
the render stage classifies its views into the logits dataset with the condition's label in
the ``condition`` column, and the report compares conditions (:mod:`ganviews.report.robustness`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from ganviews.core.config import to_dict
from ganviews.core.errors import ConfigError
from ganviews.core.runtime import file_sha256, resolve_device
from ganviews.corruptions.conditions import ATTACKS, Condition, corrupt_images
from storage.arrays import (
    ALIGNED,
    CORRUPTION_ADV_PRED,
    CORRUPTION_CLEAN_PRED,
    CORRUPTION_DONE,
    CORRUPTION_SUCCESS,
    CORRUPTION_TARGET,
    MASK,
)
from storage.atomic import atomic_write_bytes
from storage.latents import LatentStore
from storage.logits import CLEAN, read_logits
from storage.pca_stats import cache_path
from tasks.jobs import InvertJob, RenderJob, invert_job, render_job
from tasks.pipeline_config import PipelineConfig, attacked_classifier
from tasks.shard_runner import SHARD_TASK_OPTIONS, run_shard
from tasks.store_io import corrupted, shard_range

log = logging.getLogger(__name__)

IDENTITY_KEYS = ("generator_sha256", "encoder_sha256", "config")  # taken over from the clean store
_PER_ITEM = (  # array → dtype, fill value
    (CORRUPTION_CLEAN_PRED, np.int64, -1),
    (CORRUPTION_ADV_PRED, np.int64, -1),
    (CORRUPTION_TARGET, np.int64, -1),
    (CORRUPTION_SUCCESS, np.uint8, 0),
    (CORRUPTION_DONE, np.uint8, 0),
)


@dataclass(frozen=True)
class CorruptJob:
    """Corrupt the inverted images of a clean store into one condition's store."""

    source: Path  # the clean latent store (its images/aligned and images/mask)
    store: Path  # the condition's latent store (created by prepare_condition_store)
    condition: Condition = field(default_factory=lambda: Condition(kind="jpeg"))
    classifier: Path | None = None  # attacks: the attacked classifier's checkpoint
    task: str = ""  # attacks: the label column it predicts (default: the classifier's own task)
    splits: tuple[str, ...] = ("val", "test")  # manifest splits corrupted (empty: every split)
    max_images: int | None = None  # per split, only its first N images of the store (None: all)
    seed: int = 0  # base seed of seeded corruptions (noise)
    batch_size: int = 256  # images read and corrupted at a time (attacks batch by their own)
    state_dir: Path | None = None  # progress records of the shard runner (None: none)
    cpu_threads: int = 0  # torch threads of a CPU shard (0: torch's default)


def condition_store_path(stores: Path, label: str) -> Path:
    """Where condition ``label``'s latent store lives under the conditions folder."""
    return Path(stores) / label


def prepare_condition_store(job: CorruptJob) -> LatentStore:
    """Create (or reopen, checking its identity) the condition's store beside the clean one."""
    cond = job.condition
    if cond.is_attack and job.classifier is None:
        raise ConfigError(
            f"condition {cond.label!r} is an attack and needs the attacked classifier "
            "(corruptions.classifier in the pipeline YAML, --classifier for ganviews corrupt)"
        )
    source = LatentStore.open(job.source, mode="r")
    if ALIGNED not in source.array_names():
        raise ConfigError(
            f"{job.source} has no {ALIGNED!r}: invert the clean images first (stage invert)"
        )
    attrs = {k: source.attrs.get(k) for k in IDENTITY_KEYS}
    attrs["condition"] = {"label": cond.label, **to_dict(cond)}
    attrs["condition"].pop("batch_size")  # does not change results
    if cond.is_attack:
        attrs["attacked_classifier_sha256"] = file_sha256(job.classifier)
    store = LatentStore.open_or_create(
        job.store,
        n_images=source.n_images,
        num_ws=source.num_ws,
        w_dim=source.w_dim,
        shard_size=source.shard_size,
        attrs=attrs,
        manifest=source.manifest(),
    )
    shape = source.read_array(ALIGNED, [0]).shape[1:]  # [3, R, R]
    store.ensure_array(ALIGNED, shape, np.uint8)
    store.ensure_array(MASK, (1, *shape[1:]), np.uint8)
    for name, dtype, fill in _PER_ITEM:
        store.ensure_array(name, (), dtype, fill_value=fill)
    pca = cache_path(job.source)
    if pca.is_file() and not cache_path(job.store).is_file():  # same generator: share its PCA
        atomic_write_bytes(cache_path(job.store), pca.read_bytes())
    return store


@task(name="prepare-condition-store", cache_policy=NO_CACHE)
def prepare_condition_store_task(job: CorruptJob) -> dict[str, Any]:
    """Prefect task: :func:`prepare_condition_store` → the store's path and size."""
    store = prepare_condition_store(job)
    return {"store": str(store.path), "n_images": store.n_images}


@functools.lru_cache(maxsize=4)
def _classifier(path: str, sha256: str, device: str):
    from ganviews.classifiers.checkpoints import load_classifier

    return load_classifier(path, device=device).eval().requires_grad_(False)


def selected(job: CorruptJob, source: LatentStore) -> np.ndarray:
    """Store indices the job corrupts: inverted in the clean store, of ``job.splits``, and
    among the first ``job.max_images`` of their split (store order)."""
    manifest = source.manifest()
    split = manifest["split"].to_numpy().astype(str)
    keep = np.isin(split, list(job.splits)) if job.splits else np.ones(len(split), bool)
    if job.max_images is not None:
        rank = pd.Series(np.arange(len(split))).groupby(split).cumcount().to_numpy()
        keep &= rank < job.max_images
    done = np.zeros(len(split), bool)
    done[source.done()] = True
    return np.flatnonzero(keep & done).astype(np.int64)


def _todo(job: CorruptJob, source: LatentStore, store: LatentStore, shard) -> np.ndarray:
    idx = selected(job, source)
    idx = idx[(idx >= shard[0]) & (idx < shard[1])]
    if not len(idx):
        return idx
    return idx[store.read_array(CORRUPTION_DONE, idx) == 0]


def corrupt_shard_with(
    job: CorruptJob, source: LatentStore, store: LatentStore, shard, classifier, device
) -> dict[str, Any]:
    """Corrupt the clean store's inverted images of one shard that the condition store lacks."""
    start, stop = shard_range(store, shard)
    todo = _todo(job, source, store, (start, stop))
    manifest = store.manifest()
    summary = {"shard": f"{start:08d}-{stop:08d}", "todo": int(len(todo)), "done": 0, "success": 0}
    column = job.task or (getattr(classifier, "task", "") if classifier is not None else "")
    if classifier is not None and (manifest is None or column not in manifest.columns):
        raise ConfigError(
            f"corruptions.task: label column {column!r} not in {store.path}'s manifest; name the "
            "column the attacked classifier predicts"
        )
    for b in range(0, len(todo), job.batch_size):
        idx = todo[b : b + job.batch_size]
        res = corrupt_images(
            job.condition,
            source.read_array(ALIGNED, idx),
            image_ids=[str(i) for i in store.image_ids[idx]],
            labels=None if classifier is None else manifest[column].to_numpy()[idx],
            classifier=classifier,
            seed=job.seed,
            device=device,
        )
        store.write_array(ALIGNED, idx, res.images)
        store.write_array(MASK, idx, source.read_array(MASK, idx))
        store.write_array(CORRUPTION_CLEAN_PRED, idx, res.clean_pred)
        store.write_array(CORRUPTION_ADV_PRED, idx, res.adv_pred)
        store.write_array(CORRUPTION_TARGET, idx, res.target)
        store.write_array(CORRUPTION_SUCCESS, idx, res.success.astype(np.uint8))
        store.write_array(CORRUPTION_DONE, idx, np.ones(len(idx), np.uint8))  # last: durable
        summary["done"] += int(len(idx))
        summary["success"] += int(res.success.sum())
    return summary


def run_corrupt(
    job: CorruptJob, shards: Sequence[int | Sequence[int]], *, device: str | torch.device = "auto"
) -> list[dict[str, Any]]:
    """Corrupt ``shards`` of the condition store (created by :func:`prepare_condition_store`)."""
    device = resolve_device(device)
    source = LatentStore.open(job.source, mode="r")
    store = LatentStore.open(job.store, mode="a")
    classifier = None
    if job.condition.is_attack:
        path = str(Path(job.classifier).resolve())
        classifier = _classifier(path, file_sha256(path), str(device))
    return [corrupt_shard_with(job, source, store, shard, classifier, device) for shard in shards]


def plan_corrupt(job: CorruptJob) -> list[tuple[int, int]]:
    """Shards with clean inverted images the condition store has not corrupted yet."""
    source = LatentStore.open(job.source, mode="r")
    if not (Path(job.store) / "zarr.json").is_file():
        idx = selected(job, source)
        return [s for s in source.shards() if ((idx >= s[0]) & (idx < s[1])).any()]
    store = LatentStore.open(job.store, mode="r")
    return [s for s in store.shards() if len(_todo(job, source, store, s))]


def _corrupt_shard(job: CorruptJob, shard: tuple[int, int], device: str) -> dict[str, Any]:
    return run_corrupt(job, [shard], device=device)[0]


@task(name="corrupt-shard", task_run_name="corrupt-{shard[0]}-{shard[1]}", **SHARD_TASK_OPTIONS)
def corrupt_shard_task(
    job: CorruptJob, shard: Sequence[int], device: str = "auto"
) -> dict[str, Any]:
    """Prefect task: corrupt one shard ``(start, stop)`` of a condition store → its summary."""
    return run_shard("corrupt", _corrupt_shard, job, shard, device)


# ---------------------------------------------------------------- the report's numbers


def attack_success(store_path: str | Path, split: str = "test") -> tuple[int, float]:
    """(images, attack success rate) on ``split`` of a condition store (NaN when none, or when
    the condition is a corruption, not an attack)."""
    store = LatentStore.open(store_path, mode="r")
    idx = corrupted(store, np.flatnonzero(store.manifest()["split"].to_numpy() == split))
    if not len(idx) or store.attrs["condition"]["kind"] not in ATTACKS:
        return 0, float("nan")
    return int(len(idx)), float(store.read_array(CORRUPTION_SUCCESS, idx).astype(bool).mean())


@dataclass(frozen=True)
class RobustnessJob:
    """What the report's Fig. 7 section compares (``corruptions:`` of the pipeline)."""

    stores: dict[str, Path]  # condition label → its latent store
    gan_method: str = "stylemix_fine"  # the GAN ensemble's view group
    image_method: str = "crop"  # the combined ensemble's image views
    split: str = "test"  # split of the reported accuracies and attack success


def robustness_job(cfg: PipelineConfig) -> RobustnessJob | None:
    """The pipeline's robustness section, or None without conditions."""
    cor = cfg.corruptions
    if not cor.conditions:
        return None
    stores = {c.label: condition_store_path(cfg.conditions_dir, c.label) for c in cor.conditions}
    return RobustnessJob(stores, gan_method=cor.gan_method, image_method=cor.image_method)


def run_robustness(job: RobustnessJob, logits_dir: Path, out_dir: Path, ensemble) -> list:
    """Evaluate every condition on its own rows (α on its val split), the clean condition on the
    same images; write robustness.csv / .md / .png into ``out_dir`` → the report's blocks."""
    from ganviews.report.robustness import (
        robustness_blocks,
        robustness_figure,
        robustness_markdown,
        robustness_table,
    )
    from tasks.evaluate import evaluate_logits

    ensemble = dataclasses.replace(ensemble, size_curve="none")
    methods = [job.gan_method, job.image_method]
    present = set(read_logits(logits_dir, {"method": methods}, columns=["condition"])["condition"])
    labels = [label for label in job.stores if label in present]
    if not labels:
        log.warning("robustness: no logits of conditions %s yet", list(job.stores))
        return []
    ids = sorted(
        set(read_logits(logits_dir, {"condition": labels, "method": methods}, columns=["image_id"])
            ["image_id"])
    )  # fmt: skip
    results = {
        CLEAN: evaluate_logits(
            logits_dir, ensemble, filters={"method": methods, "image_id": ids}
        ).table
    }
    for label in labels:
        results[label] = evaluate_logits(
            logits_dir, ensemble, filters={"condition": label, "method": methods}
        ).table
    success = {label: attack_success(job.stores[label], job.split)[1] for label in labels}
    table = robustness_table(
        results, gan_method=job.gan_method, image_method=job.image_method, success=success
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / "robustness.csv", table.to_csv(index=False).encode())
    atomic_write_bytes(out_dir / "robustness.md", robustness_markdown(table).encode("utf-8"))
    figure = robustness_figure(table, out_dir / "robustness.png") if len(table) else None
    return robustness_blocks(table, figure)


# ---------------------------------------------------------------- the pipeline's jobs


@dataclass(frozen=True)
class ConditionJobs:
    """One condition's work in the pipeline: corrupt, then invert and render its store."""

    corrupt: CorruptJob
    invert: InvertJob
    render: RenderJob


def condition_jobs(cfg: PipelineConfig) -> list[ConditionJobs]:
    """The jobs of every condition in ``cfg.corruptions`` (empty when there is none).

    A condition's store is inverted like the clean one and rendered with only the view groups
    its table reports (``gan_method`` and ``image_method``), without persisting views.
    """
    cor = cfg.corruptions
    attacked = attacked_classifier(cfg)
    ref = cfg.models.classifiers.get(attacked) if attacked else None
    views = dataclasses.replace(
        cfg.views,
        gan=tuple(g for g in cfg.views.gan if f"{g.method}_{g.layers}" == cor.gan_method),
        image_methods=(cor.image_method,),
        persist_views=False,
    )
    out = []
    for cond in cor.conditions:
        store = condition_store_path(cfg.conditions_dir, cond.label)
        corrupt = CorruptJob(
            source=cfg.paths.store, store=store, condition=cond,
            classifier=ref.path if (cond.is_attack and ref) else None,
            task=ref.task if (cond.is_attack and ref) else "",
            splits=cor.splits, max_images=cor.max_images, seed=cfg.seed,
            state_dir=cfg.state_dir / "conditions" / cond.label,
            cpu_threads=cfg.orchestration.cpu_threads,
        )  # fmt: skip
        state = cfg.state_dir / "conditions" / cond.label
        inv = dataclasses.replace(invert_job(cfg), store=store, state_dir=state)
        ren = dataclasses.replace(render_job(cfg), store=store, views=views, state_dir=state)
        out.append(ConditionJobs(corrupt, inv, ren))
    return out
