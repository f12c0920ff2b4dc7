"""Prefect task: invert one shard of the latent store (Chai et al. 2021, Sec. 3.2).

For the shard's pending (and failed, to retry) items: read their manifest rows from the
store, load (:func:`ganviews.core.images.load_image`) and align
(:func:`ganviews.inversion.align.align_image`) each image — one that cannot be used is marked failed
with its reason and the others go on — then encode and invert them :data:`CALL_BATCHES` batches of
``inversion_cfg.batch_size`` at a time (:func:`ganviews.inversion.invert.invert`, which
refills a finished image's slot with the next image) and write each image as soon as it
stops (a SIGKILL loses only the images still being optimised), ``w``,
``w_init``, the loss terms, PSNR, LPIPS and iterations plus the uint8 arrays
``images/aligned`` (the target actually inverted), ``images/mask`` (255 = known pixel) and
``images/recon`` (G(w*)) through :meth:`storage.LatentStore.write`, which marks the items
done only after their data is on disk.

The aligned image is quantised to uint8 *before* inversion, so ``images/aligned`` is
exactly the target that w* reconstructs (later steps read it back as the original).

:func:`run_invert` is the stage's one body (``ganviews invert``, the pipeline's shards,
notebooks), configured by an :class:`~tasks.jobs.InvertJob`; :data:`invert_shard_task` is its
typed Prefect task (one shard through :func:`tasks.shard_runner.run_shard`).
:func:`prepare_store` creates or reopens the store for both. Models are loaded once per
process (cache keyed by file path and content hash).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from ganviews.core.config import to_dict
from ganviews.core.errors import ConfigError, GanviewsError
from ganviews.core.images import signed_to_uint8, uint8_to_signed
from ganviews.core.runtime import file_sha256, resolve_device, set_numerics_policy
from ganviews.core.stop import stop_requested
from ganviews.inversion.lbfgs import Status
from storage.arrays import ALIGNED, MASK, RECON
from storage.errors import StoreError
from storage.latents import LatentStore
from storage.lease import shard_lease
from tasks.jobs import InvertJob
from tasks.shard_runner import SHARD_TASK_OPTIONS, run_logger, run_shard
from tasks.store_io import (
    corrupted,
    is_condition_store,
    load_aligned,
    select_splits,
    shard_range,
    stored_targets,
)

log = logging.getLogger(__name__)

# batch_size: checked as run numerics instead (check_run_numerics); the synthesis kernels,
# memory format and compile change how G computes, not the objective (rounding only).
NOT_IDENTITY = ("batch_size", "synthesis_kernels", "memory_format", "compile")


# ---------------------------------------------------------------- configs and identity


def check_align_resolution(align_cfg, G) -> None:
    """ConfigError unless images are aligned at the generator's resolution."""
    if align_cfg.resolution != G.resolution:
        raise ConfigError(
            f"align.resolution: {align_cfg.resolution}, but the generator makes "
            f"{G.resolution} px images; set align.resolution: {G.resolution}"
        )


def identity_config(align_cfg, inversion_cfg) -> dict[str, Any]:
    """The configs recorded in (and checked against) the store.

    ``batch_size`` is left out here and recorded with the thread count and device type as
    the store's ``numerics`` (:func:`check_run_numerics`): they change results only at the
    float32 rounding level, so mixing them is refused unless a resume asks for it.
    """
    inv = {k: v for k, v in to_dict(inversion_cfg).items() if k not in NOT_IDENTITY}
    return {"align": to_dict(align_cfg), "invert": inv}


def store_attrs(G, E, align_cfg, inversion_cfg) -> dict[str, Any]:
    """The store identity of an inversion run: model hashes and the resolved configs."""
    return {
        "generator_sha256": G.sha256,
        "encoder_sha256": None if E is None else E.sha256,
        "config": identity_config(align_cfg, inversion_cfg),
    }


def run_numerics(job: InvertJob, device: torch.device) -> dict[str, Any]:
    """Settings that change float32 results without changing the objective (docs/inversion.md
    measures by how much): batch size, torch's CPU thread count, device type, and how G
    computes (kernels, memory format, compile)."""
    return {
        "batch_size": job.invert.batch_size,
        "cpu_threads": torch.get_num_threads() if device.type == "cpu" else None,
        "device_type": device.type,
        "synthesis_kernels": job.invert.synthesis_kernels,
        "memory_format": job.invert.memory_format,
        "compile": job.invert.compile,
    }


# What a record written before a setting existed means: G ran the reference kernels, NCHW, eager.
NUMERICS_BEFORE_RECORDED = {
    "synthesis_kernels": "reference",
    "memory_format": "contiguous",
    "compile": False,
}


def check_run_numerics(store: LatentStore, numerics: dict[str, Any], *, allow_mixed: bool) -> None:
    """Record ``numerics`` in a store that has none; refuse other values unless
    ``allow_mixed`` (then the store lists every mix under ``numerics_mixed``)."""
    stored = store.attrs.get("numerics")
    if stored is None:
        store.record_attrs({"numerics": numerics})
        return
    stored = {**NUMERICS_BEFORE_RECORDED, **stored}
    differ = {k: (stored.get(k), v) for k, v in numerics.items() if stored.get(k) != v}
    if not differ:
        return
    what = ", ".join(f"{k} {a!r} → {b!r}" for k, (a, b) in differ.items())
    if not allow_mixed:
        raise StoreError(
            f"{store.path} was inverted with other numerics ({what}); in float32 these change "
            "w slightly (docs/inversion.md), so a resume would mix both: use the same settings, "
            "or pass --allow-mixed-numerics (InvertJob.allow_mixed_numerics) to accept the mix"
        )
    log.warning("%s: mixing numerics (%s), as allowed", store.path, what)
    store.record_attrs({"numerics_mixed": [*store.attrs.get("numerics_mixed", []), numerics]})


def check_store_models(store: LatentStore, G, E) -> None:
    """GanviewsError when the store was inverted with another generator or encoder."""
    attrs = store.attrs
    for what, stored, given in (
        ("generator", attrs.get("generator_sha256"), G.sha256),
        ("encoder", attrs.get("encoder_sha256"), None if E is None else E.sha256),
    ):
        if stored != given:
            raise GanviewsError(
                f"{store.path} holds latents made with {what} sha256 {str(stored)[:16]}…, but the "
                f"given {what} is {str(given)[:16]}…; use the same {what}, another store path, "
                "or --overwrite to start this store again"
            )


# ---------------------------------------------------------------- models (one load per process)


@functools.lru_cache(maxsize=4)
def _generator(path: str, sha256: str, device: str):
    from ganviews.stylegan.generator import load_generator

    return load_generator(path, device=device)


@functools.lru_cache(maxsize=4)
def _encoder(path: str, sha256: str, device: str):
    from ganviews.inversion.encoder import load_encoder

    return load_encoder(path, device=device)


@functools.lru_cache(maxsize=4)
def _perceptual(name: str, device: str, weights_dir: str | None, resolution: int | None):
    from ganviews.inversion.perceptual import load_perceptual

    return load_perceptual(name, device=device, weights_dir=weights_dir, resolution=resolution)


def load_inversion_models(
    generator_path,
    encoder_path,
    inversion_cfg,
    *,
    device: torch.device,
    lpips_weights_dir: str | Path | None = None,
):
    """(G, E or None, LPIPS module or None when λ = 0), cached per process by path + sha256."""
    path = str(Path(generator_path).resolve())
    G = _generator(path, file_sha256(path), str(device))
    E = None
    if encoder_path is not None:
        epath = str(Path(encoder_path).resolve())
        E = _encoder(epath, file_sha256(epath), str(device))
        if (E.num_ws, E.w_dim) != (G.num_ws, G.w_dim):
            raise ConfigError(
                f"encoder {encoder_path} predicts w+ [{E.num_ws}, {E.w_dim}] but the generator "
                f"needs [{G.num_ws}, {G.w_dim}]"
            )
    P = None
    if inversion_cfg.lambda_lpips > 0:
        weights = None if lpips_weights_dir is None else str(lpips_weights_dir)
        P = _perceptual(
            inversion_cfg.lpips_net, str(device), weights, inversion_cfg.lpips_resolution
        )
    return G, E, P


# ---------------------------------------------------------------- the work


# Finished images are written at most this often: a store write costs ~10 fsyncs (~80 ms on
# the CI VM) whatever its size, and at 32 px images finish every few milliseconds.
FLUSH_SECONDS = 2.0


def invert_batch_into(
    store: LatentStore,
    idx: np.ndarray,
    rows: pd.DataFrame,
    G,
    E,
    P,
    *,
    align_cfg,
    inversion_cfg,
    image_root: Path,
    flush_seconds: float = FLUSH_SECONDS,
) -> dict[str, float]:
    """Load, align and invert store indices ``idx`` (manifest ``rows``); images are written
    as they finish, collected for at most ``flush_seconds`` (0: each as it stops), and the
    rest when the call ends — a kill loses the running images and those of the last
    ``flush_seconds``."""
    from ganviews.inversion.invert import invert

    if is_condition_store(store):  # corrupted copies: fit the stored 8-bit image as it is
        ok, failed = list(range(len(idx))), {}
        aligned, masks = stored_targets(store, idx)  # [k, 3, R, R] uint8, [k, 1, R, R]
    else:
        ok, pairs, failed = load_aligned(rows, align_cfg, image_root=image_root)
        if failed:
            store.mark_failed(idx[list(failed)], list(failed.values()))
            for pos, reason in failed.items():
                log.warning("image %s failed: %s", store.image_ids[idx[pos]], reason)
        if not ok:
            return {"done": 0, "failed": len(failed), "loss": 0.0, "psnr": 0.0}
        aligned = signed_to_uint8(np.stack([p[0] for p in pairs]))  # [k, 3, R, R]
        masks = np.stack([p[1] for p in pairs]).astype(np.float32)  # [k, 1, R, R]
    device, dtype = G.mean_w.device, G.mean_w.dtype
    x = uint8_to_signed(torch.from_numpy(aligned).to(device=device), dtype)  # the stored target
    m = torch.from_numpy(masks).to(device=device, dtype=dtype)
    ok_idx = idx[np.asarray(ok)]  # store index of each image handed to invert
    totals = {"done": 0, "failed": len(failed), "loss": 0.0, "psnr": 0.0}
    finished: list[tuple[np.ndarray, Any]] = []  # (positions, their InversionResult)
    last_write = time.monotonic()

    def save(rows: torch.Tensor, res) -> None:
        """Collect images as they stop; store them at most every ``flush_seconds``."""
        nonlocal last_write
        finished.append((rows.cpu().numpy(), res))
        if time.monotonic() - last_write >= flush_seconds:
            write_finished(store, finished, ok_idx, aligned, masks, totals)
            last_write = time.monotonic()

    invert(G, x, m, encoder=E, perceptual=P, on_finished=save, **dataclasses.asdict(inversion_cfg))
    write_finished(store, finished, ok_idx, aligned, masks, totals)
    return totals


def write_finished(store, finished, ok_idx, aligned, masks, totals) -> None:
    """Write the collected finished images in one store write (non-finite ones marked
    failed), add them to ``totals`` and empty ``finished``."""
    if not finished:
        return
    pos = np.concatenate([p for p, _ in finished])
    fields = ("w", "w_init", "loss", "loss_l1", "loss_lpips", "loss_latent", "psnr", "lpips")
    values = {
        name: np.concatenate([getattr(r, name).detach().cpu().numpy() for _, r in finished])
        for name in (*fields, "iterations", "status")
    }
    recon = np.concatenate([signed_to_uint8(r.recon.float()).cpu().numpy() for _, r in finished])
    finished.clear()
    good = (values.pop("status") != Status.NONFINITE) & np.isfinite(values["loss"])
    sel = np.flatnonzero(good)
    if len(sel) < len(pos):
        store.mark_failed(ok_idx[pos[~good]], "inversion: non-finite loss or gradient")
        totals["failed"] += len(pos) - len(sel)
    if not len(sel):
        return
    store.write(
        ok_idx[pos[sel]],
        **{name: values[name][sel].astype(np.float32) for name in fields},
        iterations=values["iterations"][sel].astype(np.int32),
        arrays={
            ALIGNED: aligned[pos[sel]],
            MASK: (masks[pos[sel]] * 255).round().astype(np.uint8),
            RECON: recon[sel],
        },
    )
    totals["done"] += len(sel)
    totals["loss"] += float(values["loss"][sel].astype(np.float64).sum())
    totals["psnr"] += float(values["psnr"][sel].astype(np.float64).sum())


def invert_shard_with(
    store: LatentStore,
    shard: int | Sequence[int],
    G,
    E,
    P,
    *,
    align_cfg,
    inversion_cfg,
    image_root: str | Path | None = None,
    max_attempts: int | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Invert the pending items of one shard, and its failed ones that failed fewer than
    ``max_attempts`` times (None: all), with loaded models → summary dict.

    Each batch logs the shard's progress (items, images/s, evaluations/s = images/s × L-BFGS
    steps, ETA); ``on_batch(n)`` is called with the batch's size (a terminal progress bar)."""
    start, stop = shard_range(store, shard)
    check_align_resolution(align_cfg, G)
    manifest = store.manifest()
    if manifest is None:
        raise ConfigError(f"{store.path} has no manifest.parquet: image paths come from it")
    R = G.resolution
    for name, channels in ((ALIGNED, G.img_channels), (MASK, 1), (RECON, G.img_channels)):
        store.ensure_array(name, (channels, R, R), np.uint8)
    todo = items_to_invert(store, (start, stop), max_attempts=max_attempts)
    summary = {
        "shard": f"{start:08d}-{stop:08d}",
        "todo": int(len(todo)),
        "done": 0,
        "failed": 0,
        "mean_loss": float("nan"),
        "mean_psnr": float("nan"),
        "seconds": 0.0,
    }
    t0, loss_sum, psnr_sum = time.perf_counter(), 0.0, 0.0
    root = Path(image_root) if image_root is not None else store.path
    per_call = images_per_call(inversion_cfg)
    for b in range(0, len(todo), per_call):
        if stop_requested():  # first Ctrl-C / SIGTERM: end between written batches
            summary["stopped"] = True
            break
        idx = todo[b : b + per_call]
        out = invert_batch_into(
            store,
            idx,
            manifest.iloc[idx],
            G,
            E,
            P,
            align_cfg=align_cfg,
            inversion_cfg=inversion_cfg,
            image_root=root,
        )
        summary["done"] += out["done"]
        summary["failed"] += out["failed"]
        loss_sum, psnr_sum = loss_sum + out["loss"], psnr_sum + out["psnr"]
        handled, elapsed = b + len(idx), time.perf_counter() - t0
        rate = handled / elapsed if elapsed > 0 else float("nan")
        log.info(
            "shard %s: %d/%d items handled, %.2f images/s, %.0f evaluations/s, ETA %.0f s",
            summary["shard"], handled, len(todo), rate, rate * inversion_cfg.steps,
            (len(todo) - handled) / rate if rate > 0 else float("nan"),
        )  # fmt: skip
        if on_batch is not None:
            on_batch(len(idx))
    if summary["done"]:
        summary.update(mean_loss=loss_sum / summary["done"], mean_psnr=psnr_sum / summary["done"])
    summary["seconds"] = time.perf_counter() - t0
    summary["images_per_second"] = (summary["done"] + summary["failed"]) / max(
        summary["seconds"], 1e-9
    )
    return summary


def prepare_store(
    job: InvertJob,
    manifest: pd.DataFrame,
    G,
    E,
    *,
    shard_size: int,
    overwrite: bool = False,
) -> LatentStore:
    """Create ``job.store`` from the selected ``manifest`` rows, replace it (``overwrite``), or
    reopen it checking that it was inverted with the same generator, encoder and configs."""
    if not len(manifest):
        raise ConfigError(f"{job.store}: no manifest rows selected to invert")
    check_align_resolution(job.align, G)  # before the store exists, not once per shard
    attrs = store_attrs(G, E, job.align, job.invert)
    layout = dict(n_images=len(manifest), num_ws=G.num_ws, w_dim=G.w_dim, shard_size=shard_size)
    if overwrite:
        return LatentStore.create(
            job.store, **layout, attrs=attrs, manifest=manifest, overwrite=True
        )
    if (Path(job.store) / "zarr.json").is_file():
        check_store_models(LatentStore.open(job.store, mode="r"), G, E)
    return LatentStore.open_or_create(job.store, **layout, attrs=attrs, manifest=manifest)


CALL_BATCHES = 4  # batches per invert() call: continuous batching keeps its slots full
# (images are stored as they finish, so the call's size bounds memory, not what a kill loses)
AUTO_CALL_IMAGES = 128  # images per call when batch_size is "auto"


def images_per_call(inversion_cfg) -> int:
    """Images handed to one ``invert`` call (each stored as soon as it finishes)."""
    if inversion_cfg.batch_size == "auto":
        return AUTO_CALL_IMAGES
    return CALL_BATCHES * inversion_cfg.batch_size


def items_to_invert(
    store: LatentStore, shard: tuple[int, int], *, max_attempts: int | None = None
) -> np.ndarray:
    """Pending items of a shard and failed ones below ``max_attempts`` failures (None: all); in a
    condition store only those already corrupted."""
    todo = store.todo(shard=shard, max_attempts=max_attempts)
    return corrupted(store, todo) if is_condition_store(store) else todo


def failed_images(job: InvertJob) -> dict[str, int]:
    """Images of the store whose inversion failed (kept with their reason): ``failed``, and
    ``given_up``, those that reached ``job.attempt_limit`` failures and are no longer retried."""
    store = LatentStore.open(job.store, mode="r")
    return {"failed": len(store.failed()), "given_up": len(store.given_up(job.attempt_limit))}


def plan_invert(job: InvertJob) -> list[tuple[int, int]]:
    """Shards of the store with pending items or failed ones not given up on."""
    store = LatentStore.open(job.store, mode="r")
    limit = job.attempt_limit
    return [s for s in store.shards() if len(items_to_invert(store, s, max_attempts=limit))]


def run_invert(
    job: InvertJob,
    shards: Sequence[int | Sequence[int]] | None = None,
    *,
    device: str | torch.device = "auto",
    on_batch: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """Invert the pending items and the failed ones not given up on (``job.attempt_limit``) of
    ``shards`` (indices into ``store.shards()`` or ``(start, stop)``; None: every shard) → one
    summary each.

    The store must have been created with the job's generator, encoder and configs
    (:func:`prepare_store`). The objective is deterministic (noise "const"): ``job.seed`` is
    only recorded. Models are loaded once per process.
    """
    device = resolve_device(device)
    set_numerics_policy(device)
    G, E, P = load_inversion_models(
        job.generator,
        job.encoder,
        job.invert,
        device=device,
        lpips_weights_dir=job.lpips_weights_dir,
    )
    expect = store_attrs(G, E, job.align, job.invert)
    store = LatentStore.open(job.store, mode="a")
    check_store_models(store, G, E)
    store.check_identity({"config": expect["config"]})
    check_run_numerics(store, run_numerics(job, device), allow_mixed=job.allow_mixed_numerics)
    out = []
    for shard in store.shards() if shards is None else shards:
        start, _ = shard_range(store, shard)
        with shard_lease(store.path, start // store.shard_size):  # one writer per shard
            summary = invert_shard_with(
                store, shard, G, E, P, align_cfg=job.align, inversion_cfg=job.invert,
                image_root=job.image_root, max_attempts=job.attempt_limit, on_batch=on_batch,
            )  # fmt: skip
        out.append({**summary, "seed": job.seed})
    return out


def _invert_shard(job: InvertJob, shard: tuple[int, int], device: str) -> dict[str, Any]:
    return run_invert(job, [shard], device=device)[0]


@task(name="invert-shard", task_run_name="invert-{shard[0]}-{shard[1]}", **SHARD_TASK_OPTIONS)
def invert_shard_task(job: InvertJob, shard: Sequence[int], device: str = "auto") -> dict[str, Any]:
    """Prefect task: invert one shard ``(start, stop)`` of ``job.store`` → the shard's summary."""
    return run_shard("invert", _invert_shard, job, shard, device)


@task(name="prepare-store", cache_policy=NO_CACHE)
def prepare_store_task(
    job: InvertJob, manifest: Path, splits: Sequence[str], shard_size: int
) -> dict[str, Any]:
    """Prefect task: create the store from the manifest's ``splits`` (or reopen it) → its counts."""
    from ganviews.stylegan.generator import load_generator
    from storage.manifest import read_manifest

    rows = select_splits(read_manifest(manifest), splits, key="data.splits", source=manifest)
    G = load_generator(job.generator, device="cpu")
    E = None
    if job.encoder is not None:
        from ganviews.inversion.encoder import load_encoder

        E = load_encoder(job.encoder, device="cpu")
    store = prepare_store(job, rows, G, E, shard_size=shard_size)
    out = {
        "store": str(store.path),
        "n_images": store.n_images,
        "shards": len(store.shards()),
        "todo": int(len(store.todo(max_attempts=job.attempt_limit))),
    }
    run_logger().info(
        "store %s: %d images in %d shards, %d to do",
        out["store"],
        out["n_images"],
        out["shards"],
        out["todo"],
    )
    return out
