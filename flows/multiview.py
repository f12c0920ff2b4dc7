"""The GenRep stage as Prefect flows (Jahanian et al., ICLR 2022): sample → train → probe.

``multiview-sample`` creates or reopens every multiview store the variants need and runs one
task per shard that still has pending anchors; a rerun after a crash or a kill writes only
those shards (the store's status is the source of truth). ``worker="i/n"`` takes every n-th
pending shard, so n processes (one per GPU) can share a job without ever writing the same
chunk. ``multiview-train`` trains each variant (resumable from its checkpoint, skipped when
its encoder exists); ``multiview-probe`` probes them and writes the report; ``multiview``
runs the three in order.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from ganviews.core.errors import ConfigError
from ganviews.genrep.experiment import all_variants
from tasks.multiview import (
    load_multiview_config,
    plain,
    plan_sample,
    probe_task,
    sample_shard_task,
    train_variant_task,
)

Config = str | dict[str, Any]


def worker_slice(worker: str | None) -> tuple[int, int]:
    """``"i/n"`` → (i, n) with 0 ≤ i < n; None → (0, 1)."""
    if worker is None:
        return 0, 1
    try:
        i, n = (int(p) for p in str(worker).split("/"))
    except ValueError:
        i, n = -1, 0
    if not 0 <= i < n:
        raise ConfigError(f"worker: expected 'i/n' with 0 ≤ i < n, got {worker!r}")
    return i, n


@flow(name="multiview-sample")
def multiview_sample(config: Config, worker: str | None = None) -> dict[str, Any]:
    """Write every pending shard of every store the variants need (this worker's share)."""
    params = plain(load_multiview_config(config))
    results = [
        sample_shard_task(params, name, shard)
        for name, shard in plan_sample(params, worker_slice(worker))
    ]
    return {
        "stage": "multiview-sample",
        "shards_run": len(results),
        "anchors": sum(r["anchors"] for r in results),
    }


@flow(name="multiview-train")
def multiview_train(config: Config) -> dict[str, Any]:
    """Train every variant's encoder (skips finished ones, resumes interrupted ones)."""
    cfg = load_multiview_config(config)
    params = plain(cfg)
    runs = [
        train_variant_task(params, {k: v for k, v in vars(v).items()}) for v in all_variants(cfg)
    ]
    return {"stage": "multiview-train", "variants": runs}


@flow(name="multiview-probe")
def multiview_probe(config: Config) -> dict[str, Any]:
    """Linear probe of every trained encoder on the real splits; the report."""
    return {"stage": "multiview-probe", **probe_task(plain(load_multiview_config(config)))}


@flow(name="multiview")
def multiview(config: Config) -> dict[str, Any]:
    """Sample, train and probe in one run; each step skips what is complete."""
    params = plain(load_multiview_config(config))
    return {
        "sample": multiview_sample(params),
        "train": multiview_train(params),
        "probe": multiview_probe(params),
    }
