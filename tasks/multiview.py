"""Prefect tasks of the GenRep stage (Jahanian et al., ICLR 2022): sample, train, probe.

- :func:`run_sample_shard`: one shard of a multiview store — anchors and their views drawn
  and rendered by :func:`ganviews.genrep.sampling.sample_multiview`, written by
  :class:`storage.multiview.MultiviewStore` (data first, then the done mark). The sampling is
  the ``multiview`` entry of the shard registry :data:`tasks.stages.SHARD_STAGES`: one
  :class:`MultiviewJob` per store (:func:`multiview_jobs`), :func:`plan_multiview` and the
  typed task :func:`multiview_shard_task`, so it fans out like invert and render (embedded
  or as runs of the shard deployment);
- :func:`run_train_variant`: one encoder (a Table 1/2 row), resumable from its checkpoint;
- :func:`run_probe`: the linear probe of every trained encoder on the real splits, and the report.

Each ``run_*`` is a plain function (a notebook or a test calls it directly); the ``*_task``
objects are their Prefect wrappers. Outputs live under ``multiview.out``: ``stores/<name>``,
``encoders/<variant>.safetensors`` (+ ``.ckpt`` while training), ``report/``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger

from ganviews.core.config import from_dict, load_yaml, to_dict
from ganviews.core.errors import ConfigError
from ganviews.core.runtime import item_seed, resolve_device, set_numerics_policy
from ganviews.genrep.experiment import MultiviewConfig, Variant, all_variants, dataset_for, datasets
from ganviews.genrep.sampling import SamplingConfig, sample_multiview
from storage.atomic import atomic_write_bytes, atomic_write_json
from storage.multiview import MultiviewStore
from tasks.pipeline_config import PipelineConfig, load_pipeline_config, pipeline_config_dict
from tasks.shard_runner import SHARD_TASK_OPTIONS, run_shard

PATH_KEYS = ("generator", "manifest", "image_root", "out")
PIPELINE_SECTIONS = ("data", "paths", "models")  # a YAML with all three is a pipeline config
PIPELINE_FOLDERS = {"store": "stores", "logits": "logits", "report": "report"}  # under out/


def _log() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


# ------------------------------------------------------------------------------ config


def load_multiview_config(
    source: str | Path | Mapping[str, Any] | MultiviewConfig, *, base_dir: str | Path | None = None
) -> MultiviewConfig:
    """The ``multiview`` section of a YAML (or a mapping holding it) as a MultiviewConfig.

    ``generator`` / ``manifest`` default to the pipeline's ``models.generator`` /
    ``data.manifest`` of the same file; relative paths resolve against the YAML's folder.
    """
    if isinstance(source, MultiviewConfig):
        return source
    if isinstance(source, PipelineConfig):
        source = pipeline_config_dict(source)
    if isinstance(source, (str, Path)):
        data, base = load_yaml(source), Path(source).resolve().parent
    else:
        data, base = dict(source), Path(base_dir or Path.cwd()).resolve()
    if "multiview" not in data:
        raise ConfigError("multiview: section missing from the config (see configs/example.yaml)")
    section = dict(data["multiview"] or {})
    if section.get("generator") is None:
        section["generator"] = (data.get("models") or {}).get("generator")
    if section.get("manifest") is None:
        section["manifest"] = (data.get("data") or {}).get("manifest")
    cfg = from_dict(MultiviewConfig, section, key="multiview")
    changes = {}
    for key in PATH_KEYS:
        value = getattr(cfg, key)
        if value is not None and not value.is_absolute():
            changes[key] = (base / value).resolve()
    cfg = dataclasses.replace(cfg, **changes)
    for key in ("generator", "manifest"):
        if getattr(cfg, key) is None:
            raise ConfigError(f"multiview.{key}: required (or set the pipeline's own)")
    return cfg


@contextlib.contextmanager
def cpu_threads(cfg: MultiviewConfig, device) -> Iterator[None]:
    """torch's and the BLAS/OpenMP pools' threads = ``cfg.cpu_threads`` for CPU work in the
    block (0 or a GPU device: unchanged). On a shared 2-core machine two threads per pool spin
    against other processes: one thread trained 5× faster there (docs/genrep.md)."""
    if not cfg.cpu_threads or device.type != "cpu":
        yield
        return
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(cfg.cpu_threads)
    try:
        with threadpool_limits(limits=cfg.cpu_threads):
            yield
    finally:
        torch.set_num_threads(before)


def multiview_pipeline(
    source: str | Path | Mapping[str, Any] | MultiviewConfig | PipelineConfig,
) -> PipelineConfig:
    """The PipelineConfig the multiview flows run under, its ``multiview`` section resolved
    (:func:`load_multiview_config`) and its ``orchestration`` scheduling the sampling shards.

    A pipeline YAML (``data``, ``paths`` and ``models`` sections) gives its own; a YAML with
    only ``multiview`` (and optionally ``orchestration``) gets one made around the section:
    latent store path ``<out>/stores``, logits and report under ``<out>`` (never written).
    """
    if isinstance(source, PipelineConfig):
        return dataclasses.replace(source, multiview=load_multiview_config(source))
    if isinstance(source, MultiviewConfig):
        source = {"multiview": json.loads(json.dumps(to_dict(source)))}
    if isinstance(source, (str, Path)):
        data, base = load_yaml(source), Path(source).resolve().parent
    else:
        data, base = dict(source), Path.cwd().resolve()
    mv = load_multiview_config(data, base_dir=base)
    if all(data.get(k) for k in PIPELINE_SECTIONS):
        cfg = load_pipeline_config(data, base_dir=base)
    else:
        cfg = load_pipeline_config(
            {
                "data": {"manifest": str(mv.manifest)},
                "paths": {k: str(mv.out / d) for k, d in PIPELINE_FOLDERS.items()},
                "models": {"generator": str(mv.generator)},
                "orchestration": data.get("orchestration") or {},
            },
            base_dir=base,
        )
    return dataclasses.replace(cfg, multiview=mv)


def plain(cfg: MultiviewConfig | PipelineConfig) -> dict[str, Any]:
    """The config as JSON-safe data (flow parameters): :func:`multiview_pipeline`'s, which
    :func:`load_multiview_config` and :func:`multiview_pipeline` read back."""
    return json.loads(json.dumps(pipeline_config_dict(multiview_pipeline(cfg))))


def store_path(cfg: MultiviewConfig, name: str) -> Path:
    return cfg.out / "stores" / name


def encoder_path(cfg: MultiviewConfig, variant: Variant) -> Path:
    return cfg.out / "encoders" / f"{variant.name(cfg.sampling.sigma)}.safetensors"


# ------------------------------------------------------------------------------ sampling


def open_store(cfg: MultiviewConfig, name: str, G, sampling: SamplingConfig) -> MultiviewStore:
    """Create or reopen store ``name`` for ``sampling`` (identity: generator hash + config)."""
    dim = G.w_dim if sampling.space == "w" and sampling.t_z == "gauss" else G.z_dim
    layout = {
        "n_anchors": sampling.n_anchors,
        "n_views": sampling.n_views,
        "latent_dim": dim,
        "channels": G.img_channels,
        "resolution": G.resolution,
        "shard_size": cfg.shard_size,
    }
    config = {k: v for k, v in to_dict(sampling).items() if k != "batch_size"}
    attrs = {"generator_sha256": G.sha256, "config": config, "generator": str(cfg.generator)}
    return MultiviewStore.open_or_create(store_path(cfg, name), layout=layout, attrs=attrs)


@dataclass(frozen=True)
class MultiviewJob:
    """Sample one multiview store: the ``multiview`` job of :data:`tasks.stages.SHARD_STAGES`."""

    config: MultiviewConfig  # the resolved multiview section (generator, manifest, out absolute)
    store: str  # dataset name: <out>/stores/<store> (ganviews.genrep.experiment.datasets)
    state_dir: Path | None = None  # progress records of the shard runner (None: none)
    cpu_threads: int = 0  # torch threads of a CPU shard (0: torch's default)


def multiview_jobs(cfg: PipelineConfig) -> list[MultiviewJob]:
    """One job per multiview store the variants need (the registry's ``build``)."""
    mv = load_multiview_config(cfg)
    return [
        MultiviewJob(mv, name, state_dir=mv.out / "state" / name, cpu_threads=mv.cpu_threads)
        for name in datasets(mv)
    ]


def plan_multiview(job: MultiviewJob) -> list[tuple[int, int]]:
    """Shards of the job's store with pending anchors; the store is created (all pending) on
    first use, and reopening it checks its generator, sampling config and layout."""
    from ganviews.stylegan.generator import load_generator

    G = load_generator(job.config.generator)
    sampling = datasets(job.config)[job.store]
    return open_store(job.config, job.store, G, sampling).pending_shards()


def run_sample_shard(config, name: str, shard: tuple[int, int], device: str = "auto") -> dict:
    """Sample, render and write anchors ``shard = (start, stop)`` of store ``name``."""
    from ganviews.stylegan.generator import load_generator

    cfg = load_multiview_config(config)
    sampling = datasets(cfg)[name]
    dev = resolve_device(device if device != "auto" else cfg.device)
    set_numerics_policy(dev)
    G = load_generator(cfg.generator, device=dev)
    store = open_store(cfg, name, G, sampling)
    start, stop = int(shard[0]), int(shard[1])
    t0 = time.perf_counter()
    with cpu_threads(cfg, dev):
        data = sample_multiview(G, sampling, range(start, stop))
    seeds = [item_seed(sampling.seed, "anchor", i) for i in range(start, stop)]
    store.write_shard(start, {**data, "anchor_seed": np.asarray(seeds, dtype=np.int64)})
    seconds = round(time.perf_counter() - t0, 2)
    _log().info("multiview %s: anchors %d-%d written (%.1f s)", name, start, stop, seconds)
    return {"store": name, "shard": f"{start}-{stop}", "anchors": stop - start, "seconds": seconds}


def _sample_shard(job: MultiviewJob, shard: tuple[int, int], device: str) -> dict[str, Any]:
    return run_sample_shard(job.config, job.store, shard, device)


@task(
    name="multiview-shard",
    task_run_name="multiview-{job.store}-{shard[0]}-{shard[1]}",
    **SHARD_TASK_OPTIONS,
)
def multiview_shard_task(
    job: MultiviewJob, shard: Sequence[int], device: str = "auto"
) -> dict[str, Any]:
    """Prefect task: sample one shard ``(start, stop)`` of ``job.store`` → the shard's summary."""
    return run_shard("multiview", _sample_shard, job, shard, device)


# ------------------------------------------------------------------------------ data


def load_real(cfg: MultiviewConfig, split: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [N, C, H, W] and integer labels [N] of a manifest split."""
    from ganviews.core.images import load_image
    from storage.manifest import read_manifest

    frame = read_manifest(cfg.manifest)
    if cfg.label not in frame.columns:
        raise ConfigError(f"multiview.label: {cfg.label!r} is not a manifest column")
    rows = frame[frame["split"] == split]
    if rows.empty:
        raise ConfigError(f"multiview: the manifest has no {split!r} rows")
    root = cfg.image_root or cfg.manifest.parent
    images = np.stack(
        [
            load_image(p if Path(p).is_absolute() else root / p).transpose(2, 0, 1)
            for p in rows["path"]
        ]
    )
    return images, rows[cfg.label].to_numpy(dtype=np.int64)


def training_data(cfg: MultiviewConfig, variant: Variant) -> tuple[np.ndarray, np.ndarray]:
    """(views [N, V, C, H, W] uint8, labels [N]) a variant trains on."""
    if variant.data == "real":
        images, labels = load_real(cfg, cfg.train_split)
        views = images[:, None]
    else:
        name, sampling = dataset_for(cfg, variant)
        store = MultiviewStore.open(store_path(cfg, name))
        data = store.read(variant.n_samples or sampling.n_anchors)
        views, labels = data["images"], data["labels"]
        if variant.t_z == "none":
            views = views[:, :1]  # the anchors only: pixel views make the pairs
    if variant.n_samples:
        views, labels = views[: variant.n_samples], labels[: variant.n_samples]
    return views, labels


# ------------------------------------------------------------------------------ train


def run_train_variant(config, variant: Mapping[str, Any] | Variant, device: str = "auto") -> dict:
    """Train (or resume, or skip when done) one variant's encoder into ``encoders/``.

    Done = the encoder file and its ``.json`` sidecar exist and the sidecar's training and
    sampling settings equal the current ones (other settings: trained again)."""
    from ganviews.genrep.contrastive import ContrastiveModel, save_encoder, train_contrastive

    cfg = load_multiview_config(config)
    variant = variant if isinstance(variant, Variant) else from_dict(Variant, variant)
    name = variant.name(cfg.sampling.sigma)
    out = encoder_path(cfg, variant)
    made_by = {"train": to_dict(cfg.train), "sampling": to_dict(cfg.sampling)}
    sidecar = out.with_suffix(".json")
    if out.is_file() and sidecar.is_file():
        if json.loads(sidecar.read_text()).get("made_by") == json.loads(json.dumps(made_by)):
            return {"variant": name, "skipped": f"{out.name} exists"}
        _log().info("multiview: %s was trained with other settings; training again", out.name)
    dev = resolve_device(device if device != "auto" else cfg.device)
    set_numerics_policy(dev)
    t0 = time.perf_counter()
    if variant.data == "none":
        import torch

        torch.manual_seed(cfg.train.seed)
        model, n = ContrastiveModel(cfg.train.encoder), 0
    else:
        views, labels = training_data(cfg, variant)
        n = len(views)
        with cpu_threads(cfg, dev):
            model = train_contrastive(
                views,
                cfg=cfg.train,
                t_x=variant.t_x == "simclr",
                objective=variant.objective,
                labels=labels,
                device=dev,
                checkpoint=out.with_suffix(".ckpt"),
            )
    save_encoder(model, out)
    out.with_suffix(".ckpt").unlink(missing_ok=True)
    seconds = round(time.perf_counter() - t0, 2)
    atomic_write_json(
        sidecar, {"n_samples": n, "train_seconds": seconds, "made_by": made_by}, indent=None
    )
    _log().info("multiview: trained %s on %d samples (%.1f s)", name, n, seconds)
    return {"variant": name, "n_samples": n, "seconds": seconds}


train_variant_task = task(run_train_variant, name="multiview-train-variant")


# ------------------------------------------------------------------------------ probe


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).data)
    return h.hexdigest()


def probe_features(
    cfg: MultiviewConfig, path: Path, splits: Mapping[str, tuple[np.ndarray, np.ndarray]], device
) -> dict[str, np.ndarray]:
    """The frozen features of every split for the encoder at ``path``: one no-grad pass over
    all splits' images, kept in ``<encoder>.features.npz`` under a key of the encoder file's
    and the splits' sha256 (a rerun probes only new or retrained encoders)."""
    from ganviews.genrep.contrastive import load_encoder
    from ganviews.genrep.probe import extract_features

    names = list(splits)
    key = _digest(
        np.frombuffer(path.read_bytes(), np.uint8), *(a for s in names for a in splits[s])
    )
    cache = path.with_name(path.stem + ".features.npz")
    if cache.is_file():
        with np.load(cache) as stored:
            if str(stored["key"]) == key:
                return {s: stored[s] for s in names}
    import torch

    # channels_last weights: inference of the demo's resnet18 on 1,797 digits took 0.53 s CPU
    # instead of 1.9 s (one thread; features equal to 3e-7); training is faster without it
    model = load_encoder(path, device=device).to(memory_format=torch.channels_last)
    images = np.concatenate([splits[s][0] for s in names])
    with cpu_threads(cfg, device):
        feats = extract_features(model, images, device=device, batch_size=cfg.probe.batch_size)
    bounds = np.cumsum([0] + [len(splits[s][0]) for s in names])
    out = {s: feats[bounds[k] : bounds[k + 1]] for k, s in enumerate(names)}
    buf = io.BytesIO()
    np.savez(buf, key=np.asarray(key), **out)
    atomic_write_bytes(cache, buf.getbuffer())
    return out


def run_probe(config, device: str = "auto") -> dict:
    """Probe every trained variant on the real splits; write ``report/`` (results.csv, plots)."""
    from ganviews.genrep.experiment import write_report
    from ganviews.genrep.probe import linear_probe

    cfg = load_multiview_config(config)
    dev = resolve_device(device if device != "auto" else cfg.device)
    splits = {s: load_real(cfg, s) for s in (cfg.train_split, cfg.val_split, cfg.test_split)}
    rows = []
    for variant in all_variants(cfg):
        path = encoder_path(cfg, variant)
        if not path.is_file():
            _log().warning("multiview probe: %s not trained yet, left out", path.name)
            continue
        feats = probe_features(cfg, path, splits, dev)
        with cpu_threads(cfg, dev):
            result = linear_probe(
                *(
                    (feats[s], splits[s][1])
                    for s in (cfg.train_split, cfg.val_split, cfg.test_split)
                ),
                cfg=cfg.probe,
            )
        info = json.loads(path.with_suffix(".json").read_text())
        rows.append(
            {
                "variant": variant.name(cfg.sampling.sigma),
                **{k: getattr(variant, k) for k in ("data", "t_z", "t_x", "objective")},
                "sigma": variant.sigma if variant.sigma is not None else cfg.sampling.sigma,
                "n_samples": info["n_samples"],
                "probe_acc": result.accuracy,
                "probe_stderr": result.stderr,
                "probe_c": result.c,
                "val_acc": result.val_accuracy,
                "train_seconds": info["train_seconds"],
            }
        )
    outputs = write_report(rows, cfg.out / "report", default_sigma=cfg.sampling.sigma)
    return {"rows": len(rows), **{k: str(v) for k, v in outputs.items()}}


probe_task = task(run_probe, name="multiview-probe")
