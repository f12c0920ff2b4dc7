"""The pipeline's stages as Prefect flows (Chai et al., CVPR 2021, Sec. 3–4), each thin over tasks/.

Every flow takes ``config`` — a YAML path or the plain dict of a PipelineConfig (flow-run
parameters are plain data) — turns it into the typed config once (:func:`as_config`) and
skips work whose outputs are complete: the latent store says which images are inverted, the
render markers which shards' logits are current, the encoder/classifier/PCA files whether
those exist, the evaluate marker whether the report matches the logits. The sharded stages
run through the registry :data:`tasks.stages.SHARD_STAGES`.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.logging import get_run_logger

from flows.shards import run_shards
from tasks.corrupt import (
    attack_success,
    condition_jobs,
    plan_corrupt,
    prepare_condition_store_task,
    robustness_job,
)
from tasks.evaluate import evaluate_done, evaluate_ensembles_task, record_evaluation
from tasks.invert import failed_images, plan_invert, prepare_store_task
from tasks.pca import pca_done, pca_needed, pca_task
from tasks.pipeline_config import as_config, job_name
from tasks.render_plan import plan_render
from tasks.stages import SHARD_STAGES
from tasks.train_classifier import classifier_done, pipeline_arguments, train_classifier_task
from tasks.train_encoder import encoder_done, train_encoder_task

Config = str | dict[str, Any]


def _skip(stage: str, why: str) -> dict[str, Any]:
    get_run_logger().info("%s: skipped (%s)", stage, why)
    return {"stage": stage, "skipped": why}


@flow(name="train-encoder")
def train_encoder(config: Config) -> dict[str, Any]:
    """Train the RGBM encoder into models.encoder unless it exists (Eq. 2–3)."""
    cfg = as_config(config)
    if not cfg.encoder_training.enabled:
        return _skip("train_encoder", "encoder_training.enabled is false")
    if encoder_done(cfg):
        return _skip("train_encoder", f"{cfg.models.encoder} exists")
    return train_encoder_task(
        cfg.models.generator, cfg.models.encoder, cfg.encoder_training, device=cfg.device,
        seed=cfg.seed, lpips_weights_dir=cfg.models.lpips_weights_dir,
    )  # fmt: skip


@flow(name="invert-dataset")
def invert_dataset(config: Config) -> dict[str, Any]:
    """Create/reopen the store, plan the shards with pending or failed images, invert them (Sec. 3.2)."""
    cfg = as_config(config)
    stage = SHARD_STAGES["invert"]
    job = stage.build(cfg)
    store = prepare_store_task(
        job, cfg.data.manifest, cfg.data.splits, cfg.orchestration.shard_size
    )
    report = run_shards(cfg, "invert", job, stage.plan(job))
    return {
        "stage": "invert",
        **store,
        "shards_run": report.planned,
        "todo_after": len(stage.plan(job)),  # shards with work left
        **failed_images(job),
        "items": sum(int(s.get("done", 0)) + int(s.get("failed", 0)) for s in report.summaries),
        "item": "images",
    }


@flow(name="compute-pca-stats")
def compute_pca_stats(config: Config) -> dict[str, Any]:
    """PCA statistics of G's w space next to the store, when a PCA view group needs them (Sec. 3.3)."""
    cfg = as_config(config)
    if not pca_needed(cfg):
        return _skip("pca", "no PCA view group in views.gan")
    if pca_done(cfg):
        return _skip("pca", "the store's pca_stats.npz matches the generator, samples and seed")
    return pca_task(cfg.models.generator, cfg.paths.store, cfg.pca, device=cfg.device)


@flow(name="render-and-classify")
def render_and_classify(config: Config) -> dict[str, Any]:
    """Render + classify the views of every shard whose logits are missing or stale (Sec. 3.3)."""
    cfg = as_config(config)
    stage = SHARD_STAGES["render"]
    job = stage.build(cfg)
    report = run_shards(cfg, "render", job, stage.plan(job))
    return {
        "stage": "render",
        "shards_run": report.planned,
        "rows": sum(int(s.get("rows", 0)) for s in report.summaries),
        "items": sum(int(s.get("views", 0)) for s in report.summaries),
        "item": "views",
    }


@flow(name="corrupt-conditions")
def corrupt_conditions(config: Config) -> dict[str, Any]:
    """Per condition of ``corruptions:`` (Sec. 4.1, Fig. 7): corrupt the inverted images into the
    condition's store, invert them, render and classify their views (each step resumable)."""
    cfg = as_config(config)
    if not cfg.corruptions.conditions:
        return _skip("corrupt", "corruptions.conditions is empty")
    out = {}
    for jobs in condition_jobs(cfg):
        label = jobs.corrupt.condition.label
        prepare_condition_store_task(jobs.corrupt)
        steps = (("corrupt", jobs.corrupt, plan_corrupt), ("invert", jobs.invert, plan_invert))
        steps += (("render", jobs.render, plan_render),)
        out[label] = {
            stage: run_shards(cfg, stage, job, plan(job)).planned for stage, job, plan in steps
        }
        out[label]["attack_success_test"] = attack_success(jobs.corrupt.store)[1]
    shown = [
        f"{label} (shards {'/'.join(str(v[k]) for k in ('corrupt', 'invert', 'render'))}"
        + (f", success {v['attack_success_test']:.2f})" if v["attack_success_test"] >= 0 else ")")
        for label, v in out.items()
    ]
    return {"stage": "corrupt", "summary": "; ".join(shown), "conditions": out}


@flow(name="train-classifier")
def train_classifier(config: Config) -> dict[str, Any]:
    """Train the configured classifier on real images, reconstructions or views (Eq. 8)."""
    cfg = as_config(config)
    if not cfg.classifier_training.enabled:
        return _skip("train_classifier", "classifier_training.enabled is false")
    if classifier_done(cfg):
        return _skip(
            "train_classifier",
            f"{cfg.models.classifiers[cfg.classifier_training.name].path} exists",
        )
    report = train_classifier_task(**pipeline_arguments(cfg))
    return {k: report[k] for k in ("classifier", "sha256", "n_train")}


@flow(name="evaluate-ensembles")
def evaluate_ensembles(config: Config) -> dict[str, Any]:
    """α cross-validation, results table, plots and report (Sec. 3.4), unless the logits are unchanged."""
    cfg = as_config(config)
    if evaluate_done(cfg):
        return _skip("evaluate", "the report is current for these logits")
    outputs = evaluate_ensembles_task(
        cfg.paths.logits,
        cfg.paths.report,
        store=cfg.paths.store,
        config=cfg.report,
        artifact_prefix=job_name(cfg),
        robustness=robustness_job(cfg),
        fallback=SHARD_STAGES["render"].build(cfg),  # failed images from their original (single)
        device=cfg.device,
    )
    record_evaluation(cfg, outputs)
    return {"stage": "evaluate", **outputs}
