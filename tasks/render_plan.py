"""Which parts of a shard's logits the render stage still has to compute.

A shard's logits are made of parts, one per (classifier × view group): the rows of one
classifier on one (method, setting) group of the shard's inverted images. Each part has a key
(:func:`part_keys`): what its rows depend on — the generator and that classifier (file
hashes, declared config, task), the group and the view settings that change its renders,
the seed and the shard's image ids. The pipeline keeps the keys of the parts it has written
in the shard's render marker (``<state>/render/<shard>.json``, ``{"part_keys": {part: key}}``);
:func:`missing_parts` compares them with the job's, so adding a classifier or a view group to
a config computes only the new parts, and a rerun with nothing missing computes nothing.
Settings that only change speed (``batch_size``) are not part of any key.

Markers written before parts existed hold one key for the whole shard (:func:`shard_key`);
when it still matches, every part of the shard counts as done.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ganviews.core.config import to_dict
from ganviews.core.model_cache import cached_sha256
from ganviews.views.render import view_groups
from storage.latents import LatentStore
from tasks.jobs import RenderJob
from tasks.run_state import digest, read_json, shard_name

# view settings that change the rows of a group (n_views etc. also reach the group's views)
PART_VIEW_KEYS = (
    "n_views",
    "perturbed_views",
    "jitter",
    "pca_components",
    "noise_mode",
    "dtype",
    "precision",
    "combined_renders",
    "persist_views",
    "persist_resolution",
    "original_source",
    "photo_size",
)


def part_name(classifier: str, method: str, setting: str) -> str:
    """One part of a shard's logits: ``"<classifier>|<method>|<setting>"``."""
    return f"{classifier}|{method}|{setting}"


def model_hashes(job: RenderJob) -> dict[str, str]:
    """Content hashes of the generator and every classifier (computed once per file version)."""
    out = {"generator": cached_sha256(job.generator)}
    out.update({f"classifier:{k}": cached_sha256(v) for k, v in job.classifiers.items()})
    return out


def part_keys(job: RenderJob, image_ids: Sequence[str], hashes: dict[str, str]) -> dict[str, str]:
    """Part name → key of every (classifier × view group) part of a shard with ``image_ids``."""
    views = to_dict(job.views)
    base = {
        "generator": hashes["generator"],
        "seed": job.seed,
        "class_column": job.class_column,
        "ids": digest([str(i) for i in image_ids]),
        "views": {k: views[k] for k in PART_VIEW_KEYS if k in views},
    }
    groups = view_groups(job.views)
    out = {}
    for name in job.classifiers:
        classifier = {
            "sha256": hashes[f"classifier:{name}"],
            "config": job.classifier_configs.get(name),
            "task": job.tasks.get(name, ""),
        }
        for g in groups:
            key = digest({**base, "classifier": classifier, "group": dataclasses.asdict(g)})
            out[part_name(name, g.method, g.setting)] = key
    return out


def shard_key(job: RenderJob, image_ids: Sequence[str], hashes: dict[str, str]) -> str:
    """The whole-shard key of markers written before per-part keys (all models, all views;
    ``views.precision`` did not exist yet: its default is left out)."""
    views = to_dict(job.views)
    if views.get("precision") == "exact":
        del views["precision"]
    return digest(
        {
            "models": dict(hashes),
            "views": views,
            "classifier_configs": job.classifier_configs,
            "seed": job.seed,
            "tasks": {k: job.tasks.get(k, "") for k in job.classifiers},
            "class_column": job.class_column,
            "ids": [str(i) for i in image_ids],
        }
    )


def marker_path(job: RenderJob, shard: Sequence[int]) -> Path:
    return Path(job.state_dir) / "render" / f"{shard_name(shard)}.json"


def shard_ids(store: LatentStore, shard: Sequence[int]) -> np.ndarray:
    """Ids of the shard's inverted images."""
    done = store.done()
    return store.image_ids[done[(done >= shard[0]) & (done < shard[1])]]


def missing_parts(
    job: RenderJob, store: LatentStore, shard: Sequence[int], hashes: dict[str, str]
) -> tuple[dict[str, str], list[str]]:
    """(the job's part keys for the shard, the parts whose rows are missing or stale);
    ({}, []) for a shard without inverted images."""
    ids = shard_ids(store, shard)
    if not len(ids):
        return {}, []
    keys = part_keys(job, ids, hashes)
    marker = read_json(marker_path(job, shard))
    if "part_keys" not in marker and marker.get("key") == shard_key(job, ids, hashes):
        return keys, []  # an older whole-shard marker that still matches
    done = marker.get("part_keys", {})
    return keys, [p for p, k in keys.items() if done.get(p) != k]


def done_parts(job: RenderJob, store: LatentStore, shard: Sequence[int], hashes) -> dict[str, str]:
    """The marker's parts with what a whole-shard marker stands for filled in."""
    marker = read_json(marker_path(job, shard))
    if "part_keys" in marker:
        return dict(marker["part_keys"])
    ids = shard_ids(store, shard)
    if len(ids) and marker.get("key") == shard_key(job, ids, hashes):
        return part_keys(job, ids, hashes)
    return {}


def plan_render(job: RenderJob) -> list[tuple[int, int]]:
    """Shards with inverted images some of whose (classifier × group) parts are missing or stale."""
    store = LatentStore.open(job.store, mode="r")
    hashes = model_hashes(job)
    return [shard for shard in store.shards() if missing_parts(job, store, shard, hashes)[1]]
