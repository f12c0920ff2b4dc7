"""Prefect tasks of the pipeline flows, configured by one :class:`tasks.pipeline_config.PipelineConfig`.

Chai et al. (CVPR 2021) Sec. 3–4 as a dataset job: the sharded stages (invert, render +
classify; Sec. 3.2–3.3) run one shard per task through :func:`run_shard`, which calls the
shard functions of :mod:`tasks.invert` and :mod:`tasks.render`; the one-shot stages
(encoder training Eq. 2–3, PCA statistics Sec. 3.3, classifier training Eq. 8, α-CV report
Sec. 3.4) are thin adapters over the library. The latent store is the source of truth for
what is done; the files written here under ``cfg.state_dir`` only say what ran where:

- ``shards/<stage>/<start>-<stop>.json`` — per-shard progress (pid, host, device, status,
  summary), rewritten atomically when a shard starts and ends;
- ``render/<start>-<stop>.json`` — the key (generator, classifiers, view config, seed, image
  ids) a shard's logits were rendered with, so an unchanged shard is not rendered again;
- ``evaluate.json`` — the key (logits files, report config) of the last report.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger

from ganviews.core.config import to_dict
from ganviews.core.errors import ConfigError, GanviewsError
from storage.atomic import atomic_write_bytes
from storage.errors import StoreError
from storage.latents import LatentStore
from tasks.pipeline_config import PipelineConfig, load_pipeline_config, pipeline_config_dict

log = logging.getLogger(__name__)

LIBRARY_LOGGERS = ("ganviews", "tasks", "storage")
SHARD_STAGES = (
    "invert",
    "render",
    "noop",
)  # "noop": opens the store and counts (overhead benchmarks)


# ----------------------------------------------------------------------------- config and devices


def as_config(config: PipelineConfig | Mapping[str, Any] | str | Path) -> PipelineConfig:
    """A PipelineConfig from itself, its plain dict (:func:`pipeline_config_dict`) or a YAML path."""
    return config if isinstance(config, PipelineConfig) else load_pipeline_config(config)


def plain_config(cfg: PipelineConfig) -> dict[str, Any]:
    """JSON-friendly config (absolute paths) for flow-run parameters and process pools."""
    return pipeline_config_dict(cfg)


def device_list(devices: str | Sequence[str]) -> list[str]:
    """``"auto"`` → every visible GPU (``cuda:i``), else ``["cpu"]``; a list is returned as is."""
    if isinstance(devices, str):
        devices = [devices]
    if list(devices) != ["auto"]:
        return list(devices)
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [f"cuda:{i}" for i in range(n)] or ["cpu"]


def job_name(cfg: PipelineConfig) -> str:
    """The job's name: ``orchestration.job``, else ``job-<hash of the store path>``."""
    if cfg.orchestration.job:
        return cfg.orchestration.job
    return "job-" + hashlib.sha1(str(cfg.paths.store).encode()).hexdigest()[:10]


def shard_name(shard: Sequence[int]) -> str:
    return f"{int(shard[0]):08d}-{int(shard[1]):08d}"


def _logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except MissingContextError:  # called as a plain function
        return log


def _write_json(path: Path, payload: Mapping[str, Any]) -> None:
    atomic_write_bytes(
        path, (json.dumps(payload, indent=2, default=str, sort_keys=True) + "\n").encode()
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


_HINTS = {
    "models.encoder": " (put the authors' released RGBM encoder for this generator there, "
    "sgan_encoders_<ffhq|car|cat>_RGBM_model_initial.pth.tar, docs/quickstart.md; or name a "
    ".safetensors file and set encoder_training.enabled: true to train one)"
}


def check_files(cfg: PipelineConfig, stages: Sequence[str]) -> None:
    """ConfigError naming every input file the given stages need and cannot find."""
    need: list[tuple[str, Path | None]] = [("models.generator", cfg.models.generator)]
    if "invert" in stages:
        need.append(("data.manifest", cfg.data.manifest))
        if cfg.models.encoder is not None and not (
            "train_encoder" in stages and cfg.encoder_training.enabled
        ):
            need.append(("models.encoder", cfg.models.encoder))
    trained = (
        cfg.classifier_training.name
        if cfg.classifier_training.enabled and "train_classifier" in stages
        else None
    )
    if "render" in stages:
        if not cfg.models.classifiers:
            raise ConfigError("models.classifiers: the render stage needs at least one classifier")
        need += [
            (f"models.classifiers.{k}.path", v.path)
            for k, v in cfg.models.classifiers.items()
            if k != trained
        ]
    missing = [
        f"{key}: {path} not found{_HINTS.get(key, '')}"
        for key, path in need
        if path is not None and not Path(path).is_file()
    ]
    if missing:
        raise ConfigError(
            "\n".join(missing) + "\n(put the files there or fix the paths in the config)"
        )


# ----------------------------------------------------------------------------- the latent store


def _selected_manifest(cfg: PipelineConfig):
    from storage.manifest import read_manifest

    manifest = read_manifest(cfg.data.manifest)
    if not cfg.data.splits:
        return manifest
    present = sorted(set(manifest["split"]))
    missing = [s for s in cfg.data.splits if s not in present]
    if missing:
        raise ConfigError(
            f"data.splits: {missing} not in {cfg.data.manifest} (its splits: {present})"
        )
    frame = manifest[manifest["split"].isin(list(cfg.data.splits))].reset_index(drop=True)
    frame.attrs = dict(manifest.attrs)
    return frame


def prepare_store(cfg: PipelineConfig) -> dict[str, Any]:
    """Create the latent store from the manifest's selected splits, or reopen it checking its identity."""
    from ganviews.stylegan.generator import load_generator
    from tasks.invert import (
        check_align_resolution,
        check_store_models,
        resolve_configs,
        store_attrs,
    )

    manifest = _selected_manifest(cfg)
    if not len(manifest):
        raise ConfigError(f"data.splits: no rows of {cfg.data.manifest} selected")
    G = load_generator(cfg.models.generator, device="cpu")
    E = None
    if cfg.models.encoder is not None:
        from ganviews.inversion.encoder import load_encoder

        E = load_encoder(cfg.models.encoder, device="cpu")
    align, inv = resolve_configs(cfg.align, cfg.invert)
    check_align_resolution(align, G)  # before the store exists, not once per shard
    path = cfg.paths.store
    if (path / "zarr.json").is_file():
        check_store_models(LatentStore.open(path, mode="r"), G, E)
    store = LatentStore.open_or_create(
        path,
        n_images=len(manifest),
        num_ws=G.num_ws,
        w_dim=G.w_dim,
        shard_size=cfg.orchestration.shard_size,
        attrs=store_attrs(G, E, align, inv),
        manifest=manifest,
    )
    return {
        "store": str(store.path),
        "n_images": store.n_images,
        "shards": len(store.shards()),
        "todo": int(len(store.todo())),
    }


def plan_invert(cfg: PipelineConfig) -> list[tuple[int, int]]:
    """Shards of the store with pending or failed items (chunk-aligned ranges)."""
    store = LatentStore.open(cfg.paths.store, mode="r")
    return [s for s in store.shards() if len(store.todo(shard=s))]


def render_key(cfg: PipelineConfig, image_ids: Sequence[str], hashes: Mapping[str, str]) -> str:
    """What a shard's logits depend on: models (file hashes), view config, seed and its images."""
    return _digest(
        {
            "models": dict(hashes),
            "views": to_dict(cfg.views),
            "seed": cfg.seed,
            "tasks": {k: v.task for k, v in cfg.models.classifiers.items()},
            "class_column": cfg.models.class_column,
            "ids": [str(i) for i in image_ids],
        }
    )


def model_hashes(cfg: PipelineConfig) -> dict[str, str]:
    from ganviews.core.runtime import file_sha256

    out = {"generator": file_sha256(cfg.models.generator)}
    out.update({f"classifier:{k}": file_sha256(v.path) for k, v in cfg.models.classifiers.items()})
    return out


def _render_marker(cfg: PipelineConfig, shard: Sequence[int]) -> Path:
    return cfg.state_dir / "render" / f"{shard_name(shard)}.json"


def _shard_ids(store: LatentStore, shard: Sequence[int]) -> np.ndarray:
    done = store.done()
    return store.image_ids[done[(done >= shard[0]) & (done < shard[1])]]


def plan_render(cfg: PipelineConfig) -> list[tuple[int, int]]:
    """Shards with inverted images whose logits are missing or were rendered with other inputs."""
    store = LatentStore.open(cfg.paths.store, mode="r")
    hashes = model_hashes(cfg)
    todo = []
    for shard in store.shards():
        ids = _shard_ids(store, shard)
        if len(ids) and _read_json(_render_marker(cfg, shard)).get("key") != render_key(
            cfg, ids, hashes
        ):
            todo.append(shard)
    return todo


# ----------------------------------------------------------------------------- one shard


class ShardProgress:
    """``<state>/shards/<stage>/<start>-<stop>.json``: who runs the shard, and how it ended."""

    def __init__(self, cfg: PipelineConfig, stage: str, shard: Sequence[int], device: str):
        self.path = cfg.state_dir / "shards" / stage / f"{shard_name(shard)}.json"
        self.record: dict[str, Any] = {
            "stage": stage,
            "shard": shard_name(shard),
            "device": device,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "flow_run_id": os.environ.get("PREFECT__FLOW_RUN_ID"),
            "status": "running",
            "started": time.time(),
        }

    def __enter__(self) -> ShardProgress:
        _write_json(self.path, self.record)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.record.update(
            finished=time.time(), status="failed" if exc is not None else "completed"
        )
        if exc is not None:
            self.record["error"] = f"{type(exc).__name__}: {exc}"
        _write_json(self.path, self.record)


def run_shard(
    config: PipelineConfig | Mapping[str, Any],
    stage: str,
    shard: Sequence[int],
    *,
    device: str = "auto",
) -> dict[str, Any]:
    """Run ``stage`` on one shard ``(start, stop)`` of the store → the shard's summary."""
    cfg = as_config(config)
    if stage not in SHARD_STAGES:
        raise ConfigError(f"stage: {stage!r} is not a sharded stage ({list(SHARD_STAGES)})")
    shard = (int(shard[0]), int(shard[1]))
    if cfg.orchestration.cpu_threads and device.startswith("cpu"):
        import torch

        torch.set_num_threads(cfg.orchestration.cpu_threads)
    t0 = time.perf_counter()
    with ShardProgress(cfg, stage, shard, device) as progress:
        summary = _SHARD_FUNCTIONS[stage](cfg, shard, device)
        summary.update(
            stage=stage,
            device=device,
            pid=os.getpid(),
            host=socket.gethostname(),
            wall_seconds=round(time.perf_counter() - t0, 3),
        )
        progress.record["summary"] = summary
    return summary


def _invert(cfg: PipelineConfig, shard: tuple[int, int], device: str) -> dict[str, Any]:
    from tasks.invert import run_invert_shard

    return run_invert_shard(
        cfg.paths.store,
        shard,
        generator_path=cfg.models.generator,
        encoder_path=cfg.models.encoder,
        align_cfg=cfg.align,
        inversion_cfg=cfg.invert,
        device=device,
        seed=cfg.seed,
        image_root=cfg.image_root,
        lpips_weights_dir=cfg.models.lpips_weights_dir,
    )


def _render(cfg: PipelineConfig, shard: tuple[int, int], device: str) -> dict[str, Any]:
    from tasks.render import run_render_shard

    store = LatentStore.open(cfg.paths.store, mode="r")
    key = render_key(cfg, _shard_ids(store, shard), model_hashes(cfg))
    summary = run_render_shard(
        cfg.paths.store, shard, generator_path=cfg.models.generator,
        classifier_paths={k: v.path for k, v in cfg.models.classifiers.items()},
        tasks={k: v.task for k, v in cfg.models.classifiers.items() if v.task}, view_cfg=cfg.views,
        logits_dir=cfg.paths.logits, device=device, seed=cfg.seed, class_column=cfg.models.class_column,
        align=cfg.align, image_root=cfg.image_root, pca_samples=cfg.pca.samples,
    )  # fmt: skip
    _write_json(_render_marker(cfg, shard), {"key": key, **summary})
    return summary


def _noop(cfg: PipelineConfig, shard: tuple[int, int], device: str) -> dict[str, Any]:
    store = LatentStore.open(cfg.paths.store, mode="r")
    return {"shard": shard_name(shard), "todo": int(len(store.todo(shard=shard)))}


_SHARD_FUNCTIONS = {"invert": _invert, "render": _render, "noop": _noop}


def is_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry condition: configuration, identity and input errors fail at once; anything else
    (I/O, CUDA out of memory, a lost connection) is retried with back-off."""
    exc = state.data if isinstance(getattr(state, "data", None), BaseException) else None
    return not isinstance(exc, (ConfigError, GanviewsError, StoreError, TypeError, ValueError))


@task(
    name="shard",
    cache_policy=NO_CACHE,
    retry_condition_fn=is_transient,
    task_run_name="{stage}-{shard[0]}-{shard[1]}",
)
def shard_task(
    config: Mapping[str, Any], stage: str, shard: Sequence[int], device: str = "auto"
) -> dict[str, Any]:
    """Prefect task around :func:`run_shard` (no result cache: the store says what is done)."""
    for name in (
        LIBRARY_LOGGERS
    ):  # their per-batch progress reaches the run's logs (PREFECT_LOGGING_EXTRA_LOGGERS)
        if logging.getLogger(name).level == logging.NOTSET:
            logging.getLogger(name).setLevel(logging.INFO)
    summary = run_shard(config, stage, shard, device=device)
    _logger().info(
        "%s shard %s on %s (pid %d): %s",
        stage,
        summary.get("shard", shard_name(shard)),
        device,
        os.getpid(),
        {
            k: v
            for k, v in summary.items()
            if k in ("todo", "done", "failed", "images", "rows", "mean_psnr", "wall_seconds")
        },
    )
    return summary


# ----------------------------------------------------------------------------- one-shot stages


@task(name="prepare-store", cache_policy=NO_CACHE)
def prepare_store_task(config: Mapping[str, Any]) -> dict[str, Any]:
    """Prefect task around :func:`prepare_store`."""
    out = prepare_store(as_config(config))
    _logger().info(
        "store %s: %d images in %d shards, %d to do",
        out["store"],
        out["n_images"],
        out["shards"],
        out["todo"],
    )
    return out


def encoder_done(cfg: PipelineConfig) -> bool:
    return cfg.models.encoder is not None and Path(cfg.models.encoder).is_file()


@task(name="train-encoder", cache_policy=NO_CACHE)
def train_encoder_task(config: Mapping[str, Any]) -> dict[str, Any]:
    """Train the RGBM encoder (Eq. 2–3) into ``models.encoder``; continues ``<encoder>.ckpt``."""
    from ganviews.core.runtime import resolve_device, set_numerics_policy
    from ganviews.inversion.encoder import EncoderConfig, save_encoder, train_encoder
    from ganviews.stylegan.generator import load_generator

    cfg = as_config(config)
    et, out = cfg.encoder_training, Path(cfg.models.encoder)
    device = resolve_device(cfg.device)
    set_numerics_policy(device)
    G = load_generator(cfg.models.generator, device=device)
    P = None
    if et.perceptual != "none":
        from ganviews.inversion.perceptual import load_perceptual

        P = load_perceptual(et.perceptual, device=device, weights_dir=cfg.models.lpips_weights_dir)
    arch = EncoderConfig(
        num_ws=G.num_ws,
        w_dim=G.w_dim,
        img_channels=G.img_channels,
        depth=et.depth,
        resolution=et.resolution or min(G.resolution, 256),
        width=et.width,
        norm=et.norm,
    )
    ckpt = out.with_name(out.name + ".ckpt")
    result = train_encoder(
        G,
        steps=et.steps,
        batch_size=et.batch_size,
        lr=et.lr,
        lambda_latent=et.lambda_latent,
        perceptual=P,
        config=arch,
        truncation_psi=et.truncation_psi,
        style_mix_prob=et.style_mix_prob,
        device=device,
        seed=cfg.seed,
        checkpoint=ckpt,
        checkpoint_every=et.checkpoint_every,
        resume=True,
        log_every=et.log_every,
    )
    save_encoder(
        result.encoder,
        out,
        metadata={"steps": str(result.steps), "perceptual": et.perceptual, "seed": str(cfg.seed)},
    )
    _logger().info("encoder %s: %d steps in %.0f s", out, result.steps, result.seconds)
    return {"encoder": str(out), "sha256": result.encoder.sha256, "steps": result.steps}


def pca_needed(cfg: PipelineConfig) -> bool:
    return any(g.method == "pca" for g in cfg.views.gan)


def pca_done(cfg: PipelineConfig) -> bool:
    """The store's PCA cache exists for this generator, sample count and seed."""
    from ganviews.core.runtime import file_sha256
    from storage.pca_stats import cache_path, load_pca_stats

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
def pca_stats_task(config: Mapping[str, Any]) -> dict[str, Any]:
    """PCA of G's w space → ``<store>/pca_stats.npz`` (read by the render stage)."""
    from ganviews.core.runtime import resolve_device
    from ganviews.stylegan.generator import load_generator
    from ganviews.views.perturb import compute_pca_stats
    from storage.pca_stats import cache_path, save_pca_stats

    cfg = as_config(config)
    device = resolve_device(cfg.device)
    G = load_generator(cfg.models.generator, device=device)
    stats = compute_pca_stats(
        G,
        n_samples=cfg.pca.samples,
        seed=cfg.pca.seed,
        device=device,
        batch_size=cfg.pca.batch_size,
    )
    path = save_pca_stats(
        cache_path(cfg.paths.store),
        **stats.as_arrays(),
        generator_sha256=G.sha256,
        n_samples=stats.n_samples,
        seed=cfg.pca.seed,
    )
    _logger().info("PCA statistics of %d w samples → %s", stats.n_samples, path)
    return {"path": str(path), "components": int(stats.components.shape[0])}


def classifier_done(cfg: PipelineConfig) -> bool:
    ct = cfg.classifier_training
    out = Path(cfg.models.classifiers[ct.name].path)
    return out.is_file() and out.with_name(out.name + ".train.json").is_file()


@task(name="train-classifier", cache_policy=NO_CACHE)
def train_classifier_stage_task(config: Mapping[str, Any]) -> dict[str, Any]:
    """Train ``models.classifiers[classifier_training.name]`` (Eq. 8), continuing its checkpoint."""
    from tasks.train_classifier import run_train_classifier

    cfg = as_config(config)
    ct = cfg.classifier_training
    ref = cfg.models.classifiers[ct.name]
    out = Path(ref.path)
    if not ref.task:
        raise ConfigError(
            f"models.classifiers.{ct.name}.task: name the label column the trained classifier predicts"
        )
    report = run_train_classifier(
        cfg.paths.store if ct.data == "store" else cfg.data.manifest, task=ref.task,
        config={**ct.classifier, "name": ct.classifier.get("name") or ct.name}, out=out, source=ct.source,
        generator_path=cfg.models.generator, device=cfg.device, seed=cfg.seed, train=ct.train, views=ct.views,
        align=cfg.align, init_from=ct.init_from, resume=out.with_name(out.name + ".ckpt").is_file(),
        train_split=ct.train_split, val_split=ct.val_split, class_column=cfg.models.class_column,
    )  # fmt: skip
    _logger().info(
        "classifier %s: %d train images, best val acc %s",
        out,
        report["n_train"],
        report["best_val_acc"],
    )
    return {"classifier": str(out), "sha256": report["sha256"], "n_train": report["n_train"]}


def evaluate_key(cfg: PipelineConfig) -> str:
    """What the report depends on: every logits file (size, mtime) and the report config."""
    root = Path(cfg.paths.logits)
    files = (
        sorted(
            (str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*.parquet")
            if not p.name.startswith((".", "_"))
        )
        if root.is_dir()
        else []
    )
    return _digest({"files": files, "report": to_dict(cfg.report), "store": str(cfg.paths.store)})


def evaluate_done(cfg: PipelineConfig) -> bool:
    results = Path(cfg.paths.report) / "results.csv"
    return results.is_file() and _read_json(cfg.state_dir / "evaluate.json").get(
        "key"
    ) == evaluate_key(cfg)


def record_evaluation(cfg: PipelineConfig, outputs: Mapping[str, str]) -> None:
    """Remember which logits the report was built from (the pipeline skips an unchanged report)."""
    _write_json(cfg.state_dir / "evaluate.json", {"key": evaluate_key(cfg), **outputs})
