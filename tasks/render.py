"""Prefect task: render and classify the views of one shard of the latent store.

Chai et al. (CVPR 2021), Sec. 3.3–3.4: for every inverted image of the shard (status done),
the original, the reconstruction G(w*) and the perturbed / augmented views are classified in
one fused pass (:func:`ganviews.views.render.render_and_classify`); the logits go to the Parquet
dataset under ``logits_dir`` with the shard key ``f"{start:08d}-{stop:08d}"`` (re-running a
shard replaces its rows of the same groups), and, when ``view_cfg.persist_views`` is set,
uint8 views go to the store as ``views/<method>/<setting>`` (setting "" → "none"), indexed by
view number (index 0 = the original).

Inputs: ``w`` and the aligned originals ``images/aligned`` from the store (written by the
inversion step); if that array is missing, the originals are loaded from the manifest paths
and aligned again (:func:`tasks.store_io.read_originals`). With ``views.original_source:
photo`` (cars, as the authors) the raw photos are read from the manifest paths instead
(:func:`tasks.store_io.read_photos`) for view 0 and the colour / crop views; the logits
folder's identity records the source, so a folder rendered from one refuses the other.
PCA statistics are read from
``<store>/pca_stats.npz`` (computed there with the job's PCA settings when missing,
:func:`tasks.pca.load_pca`).

:func:`run_render` is the stage's one body (``ganviews render``, the pipeline's shards,
notebooks), configured by a :class:`~tasks.jobs.RenderJob`; it loads the models once for
all its shards (and the process keeps them for later calls, :mod:`ganviews.core.model_cache`).
:data:`render_shard_task` is its typed Prefect task; in the pipeline it computes only the
shard's missing (classifier × view group) parts and records their keys in the shard's render
marker (``<state>/render/<shard>.json``, :mod:`tasks.render_plan`), so adding a classifier or
a group renders only what is new and :func:`tasks.render_plan.plan_render` skips complete shards.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from prefect import task

from ganviews.core.config import to_dict
from ganviews.core.errors import ConfigError, GanviewsError
from ganviews.core.model_cache import MODELS
from ganviews.core.runtime import resolve_device, set_numerics_policy
from ganviews.core.stop import stop_requested
from ganviews.views.config import subset_config
from ganviews.views.perturb import PCAStats
from ganviews.views.render import (
    GroupLogits,
    ViewConfig,
    count_views,
    render_and_classify,
    view_groups,
)
from storage.arrays import view_array
from storage.identity import code_version
from storage.latents import LatentStore
from storage.logits import CLEAN, write_logits
from tasks.jobs import RenderJob
from tasks.pca import load_pca
from tasks.render_plan import (
    done_parts,
    marker_path,
    missing_parts,
    model_hashes,
    part_name,
    shard_ids,
)
from tasks.run_state import shard_name, write_json
from tasks.shard_runner import SHARD_TASK_OPTIONS, run_shard
from tasks.store_io import is_condition_store, read_originals, read_photos, shard_range

log = logging.getLogger(__name__)


def load_models(
    generator_path: str | Path,
    classifier_paths: Mapping[str, str | Path],
    *,
    device: torch.device,
    configs: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """The generator and the classifiers (name → Classifier), on ``device``, in eval mode;
    ``configs[name]`` declares a classifier file's config (else the file's own or its sidecar).

    Loaded once per process (:data:`ganviews.core.model_cache.MODELS`, keyed by resolved path,
    file size + mtime, device, declared config and sidecar state) and shared by every shard
    the process renders; the models are only read."""
    from ganviews.classifiers.checkpoints import load_classifier, sidecar_candidates
    from ganviews.stylegan.generator import load_generator

    if not classifier_paths:
        raise ConfigError("classifier_paths: need at least one NAME → checkpoint path")
    G = MODELS.get(
        "generator", generator_path, device, lambda: load_generator(generator_path, device=device)
    )
    classifiers = {}
    for name, path in classifier_paths.items():
        config = (configs or {}).get(name)
        classifiers[name] = MODELS.get(
            "classifier", path, device,
            lambda path=path, config=config: load_classifier(path, device=device, config=config),
            extra=config, watch=sidecar_candidates(Path(path)),
        )  # fmt: skip
    return G, classifiers


def classifier_tasks(
    classifiers: Mapping[str, Any], tasks: Mapping[str, str] | None, label_columns: Sequence[str]
) -> dict[str, str]:
    """The label column each classifier predicts: ``tasks[name]``, else the classifier's own task."""
    out = {}
    for name, C in classifiers.items():
        col = (tasks or {}).get(name) or getattr(C, "task", "")
        if not col:
            raise ConfigError(
                f"classifier {name!r}: no task (label column) given and its config names none; "
                f"pass NAME=PATH:TASK, one of {list(label_columns)}"
            )
        if col not in label_columns:
            raise ConfigError(
                f"classifier {name!r}: task {col!r} is not a label column of the manifest "
                f"(label columns: {list(label_columns)})"
            )
        out[name] = col
    return out


def logit_frame(
    groups: Sequence[GroupLogits],
    *,
    image_ids: np.ndarray,
    splits: np.ndarray,
    labels: Mapping[str, np.ndarray],
    tasks: Mapping[str, str],
) -> pd.DataFrame:
    """Rows of the logits table (storage.logits schema) for one batch of images."""
    parts = []
    for g in groups:
        rows = g.image_index
        seed = pd.array(np.where(g.has_seed, g.seed, 0), dtype="Int64")
        seed[~g.has_seed] = pd.NA
        for name, logits in g.logits.items():
            parts.append(
                pd.DataFrame(
                    {
                        "image_id": image_ids[rows].astype(str),
                        "split": splits[rows].astype(str),
                        "task": tasks[name],
                        "classifier": name,
                        "method": g.method,
                        "setting": g.setting,
                        "view": g.view.astype(np.int32),
                        "logits": list(logits.astype(np.float32)),
                        "label": labels[tasks[name]][rows].astype(np.int64),
                        "seed": seed,
                    }
                )
            )
    return pd.concat(parts, ignore_index=True)


def render_shard_with(
    store: LatentStore,
    shard: int | Sequence[int],
    G,
    classifiers: Mapping[str, Any],
    *,
    view_cfg: ViewConfig,
    logits_dir: str | Path,
    device: torch.device,
    seed: int,
    tasks: Mapping[str, str] | None = None,
    pca: PCAStats | None = None,
    class_column: str | None = None,
    align: Any = None,
    image_root: Any = None,
    parts: Collection[str] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Render + classify the done images of one shard with loaded models; write logits (+ views).

    ``parts`` (None: all): the (classifier × group) parts to compute (tasks/render_plan.py);
    the rows of other parts already in ``logits_dir`` are left as they are. ``on_batch(n)``
    is called with the number of views each batch classified (a terminal progress bar)."""
    start, stop = shard_range(store, shard)
    if stop_requested():  # first Ctrl-C / SIGTERM: a shard is rendered whole, or not started
        return {
            "shard": shard_name((start, stop)),
            "images": 0,
            "rows": 0,
            "files": 0,
            "stopped": True,
        }
    manifest = store.manifest()
    if manifest is None:
        raise ConfigError(f"{store.path} has no manifest.parquet: splits and labels come from it")
    label_columns = list(manifest.attrs.get("label_columns") or [])
    col_of = classifier_tasks(classifiers, tasks, label_columns)
    done = store.done()
    idx = done[(done >= start) & (done < stop)]  # [k] inverted images of the shard
    summary = {"shard": shard_name((start, stop)), "images": int(len(idx)), "rows": 0, "files": 0}
    if not len(idx):
        log.info("shard %s: no inverted images, nothing to render", summary["shard"])
        return summary
    w = torch.from_numpy(store.read(idx, ["w"])["w"])  # [k, L, C]
    images = photos = None
    if view_cfg.original_source == "photo":
        photos = read_photos(store, idx, manifest, size=view_cfg.photo_size, image_root=image_root)
    else:
        images = read_originals(
            store, idx, manifest, align=align, image_root=image_root, uint8=True
        )
    c = None
    if G.c_dim:
        if class_column is None:
            raise ConfigError(
                f"class_column: G is class-conditional (c_dim={G.c_dim}); name the label column"
            )
        c = torch.nn.functional.one_hot(
            torch.as_tensor(manifest[class_column].to_numpy()[idx]), G.c_dim
        ).float()
    ids = store.image_ids[idx]
    t0 = time.perf_counter()
    plan = render_plan(view_cfg, list(classifiers), parts)
    views = sum(count_views(sub, len(idx)) for sub, _, _ in plan)
    report = _progress_log(summary["shard"], len(classifiers), t0, views, on_batch)
    groups, offset = [], 0
    for sub, names, wanted in plan:
        out = render_and_classify(
            G, {n: classifiers[n] for n in names}, w, images, image_ids=list(ids),
            config=sub, device=device, seed=seed, c=c, pca=pca,
            progress=lambda done, _, offset=offset: report(offset + done), photos=photos,
        )  # fmt: skip
        groups += [g for g in out if (g.method, g.setting) in wanted]
        offset += count_views(sub, len(idx))
    seconds = time.perf_counter() - t0
    labels = {col: manifest[col].to_numpy() for col in set(col_of.values())}
    frame = logit_frame(
        groups,
        image_ids=np.asarray(ids),
        splits=manifest["split"].to_numpy()[idx],
        labels={col: v[idx] for col, v in labels.items()},
        tasks=col_of,
    )
    frame["condition"] = store_condition(store)
    rendered = {n for _, names, _ in plan for n in names}
    metadata = {
        "view_config": to_dict(view_cfg),
        "seed": seed,
        "generator_sha256": G.sha256,
        "classifier_sha256": {
            name: C.sha256 for name, C in classifiers.items() if name in rendered
        },
        "store": str(store.path),
        "code_version": code_version(),
    }
    identity = logits_identity(
        store, G, {n: C for n, C in classifiers.items() if n in rendered}, col_of, view_cfg, seed
    )
    files = write_logits(
        logits_dir, frame, shard=summary["shard"], metadata=metadata, identity=identity
    )
    if view_cfg.persist_views:
        persist_views(store, idx, groups)
    summary.update(
        rows=int(len(frame)),
        files=len(files),
        parts=sum(len(names) * len(wanted) for _, names, wanted in plan),
        views=views,
        seconds=round(seconds, 3),
        views_per_second=round(views / max(seconds, 1e-9), 2),
    )
    return summary


def render_plan(
    view_cfg: ViewConfig, names: Sequence[str], parts: Collection[str] | None
) -> list[tuple[ViewConfig, list[str], set[tuple[str, str]]]]:
    """How to compute ``parts`` (None: every part) → [(view config, classifiers, groups)]:
    groups that miss the same classifiers are rendered together, once, through those only."""
    groups = [(g.method, g.setting) for g in view_groups(view_cfg)]
    if parts is None:
        return [(view_cfg, list(names), set(groups))]
    wanted = set(parts)
    by_names: dict[tuple[str, ...], set[tuple[str, str]]] = {}
    for group in groups:
        who = tuple(n for n in names if part_name(n, *group) in wanted)
        if who:
            by_names.setdefault(who, set()).add(group)
    return [(subset_config(view_cfg, gs), list(who), gs) for who, gs in by_names.items()]


PROGRESS_SECONDS = 10.0  # at most one progress line per this many seconds (and the last batch)


def _progress_log(
    shard: str, n_classifiers: int, t0: float, total: int, on_batch: Callable[[int], None] | None
):
    """``report(done)`` after every batch: a log line with views/s and ETA at most every
    PROGRESS_SECONDS and after the shard's last batch; ``on_batch`` gets each batch's views."""
    last = [t0, 0]

    def report(done: int) -> None:
        if on_batch is not None:
            on_batch(done - last[1])
        last[1] = done
        now = time.perf_counter()
        if done < total and now - last[0] < PROGRESS_SECONDS:
            return
        last[0] = now
        rate = done / max(now - t0, 1e-9)
        log.info(
            "shard %s: %d/%d views, %.1f views/s (%.1f classifier evaluations/s), ETA %.0f s",
            shard, done, total, rate, rate * n_classifiers, (total - done) / rate,
        )  # fmt: skip

    return report


def store_condition(store: LatentStore) -> str:
    """The input condition a store holds: its recorded label, or ``clean``."""
    return store.attrs["condition"]["label"] if is_condition_store(store) else CLEAN


# view settings that change every group's renders (the rest only change speed or outputs kept)
_RENDER_KEYS = ("jitter", "pca_components", "noise_mode", "dtype", "combined_renders")


def logits_identity(
    store: LatentStore, G, classifiers: Mapping[str, Any], tasks: Mapping[str, str], view_cfg, seed
) -> dict[str, Any]:
    """What a logits dataset is made from, one flat key per part: the store and generator, the
    seed, each classifier (file hash, task) and each view group (its views and render
    settings). A render into a folder whose record differs on a key is refused
    (storage.logits.check_identity); new keys — another classifier or group — are added."""
    shared = {k: v for k, v in to_dict(view_cfg).items() if k in _RENDER_KEYS}
    if view_cfg.original_source != "aligned":  # view 0 and the image views come from elsewhere
        shared.update(original_source=view_cfg.original_source, photo_size=view_cfg.photo_size)
    out: dict[str, Any] = {
        "generator_sha256": G.sha256,
        # one store per input condition (clean, or a corruption of it: tasks/corrupt.py)
        f"store/{store_condition(store)}": {
            k: store.attrs.get(k) for k in ("created_at", "config_hash")
        },
        "seed": seed,
    }
    for name, C in classifiers.items():
        out[f"classifier/{name}"] = {"sha256": C.sha256, "task": tasks[name]}
    for g in view_groups(view_cfg):
        spec = {"num_views": g.num_views, "layers": g.layers, "sigma": g.sigma, **shared}
        out[f"group/{g.method}/{g.setting}"] = spec
    return out


def persist_views(store: LatentStore, idx: np.ndarray, groups: Iterable[GroupLogits]) -> list[str]:
    """Write each group's uint8 views to ``views/<method>/<setting or "none">`` → array names."""
    names = []
    for g in groups:
        if g.views is None:
            continue
        name = view_array(g.method, g.setting)
        store.ensure_array(name, g.views.shape[1:], np.uint8)
        store.write_array(name, idx, g.views)
        names.append(name)
    return names


def _check_generator(store: LatentStore, G) -> None:
    stored = store.attrs.get("generator_sha256")
    if stored and stored != G.sha256:
        raise GanviewsError(
            f"{store.path} holds latents of generator sha256 {stored[:16]}…, but the given "
            f"generator is {G.sha256[:16]}…; render with the generator the images were inverted with"
        )


def run_render(
    job: RenderJob,
    shards: Iterable[int | Sequence[int]] | None = None,
    *,
    device: str | torch.device = "auto",
    parts: Collection[str] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """Render and classify ``shards`` of the store (indices into ``store.shards()`` or
    ``(start, stop)``; None: every shard), loading the models once → one summary each.

    ``parts`` (names from :func:`tasks.render_plan.part_name`; None: all) limits the work to
    those (classifier × view group) parts; only the classifiers they name are loaded.
    ``on_batch(n)``: called with the views each batch classified (a terminal progress bar)."""
    device = resolve_device(device)
    set_numerics_policy(device)
    store = LatentStore.open(job.store, mode="a" if job.views.persist_views else "r")
    names = [
        n for n in job.classifiers if parts is None or any(p.startswith(n + "|") for p in parts)
    ]
    G, classifiers = load_models(
        job.generator,
        {n: job.classifiers[n] for n in names},
        device=device,
        configs=job.classifier_configs,
    )
    _check_generator(store, G)
    pca = None
    if any(g.method == "pca" for g in job.views.gan):
        pca = load_pca(store.path, G, job.pca, device=device)
    out = []
    for shard in store.shards() if shards is None else shards:
        out.append(
            render_shard_with(
                store, shard, G, classifiers, view_cfg=job.views, logits_dir=job.logits,
                device=device, seed=job.seed, tasks=job.tasks, pca=pca,
                class_column=job.class_column, align=job.align, image_root=job.image_root,
                parts=parts, on_batch=on_batch,
            )
        )  # fmt: skip
        log.info(
            "rendered shard %s: %d images, %d rows, %.1f views/s",
            out[-1]["shard"], out[-1]["images"], out[-1]["rows"],
            out[-1].get("views_per_second", 0.0),
        )  # fmt: skip
    return out


# ----------------------------------------------------------------------------- pipeline markers


def _render_shard(job: RenderJob, shard: tuple[int, int], device: str) -> dict[str, Any]:
    """With ``job.state_dir``: render only the shard's missing (classifier × group) parts and
    add their keys to the shard's marker (tasks/render_plan.py); without: the whole shard."""
    if job.state_dir is None:
        return run_render(job, [shard], device=device)[0]
    store = LatentStore.open(job.store, mode="r")
    hashes = model_hashes(job)
    keys, missing = missing_parts(job, store, shard, hashes)
    if not missing:  # nothing to compute: no model is loaded
        n = len(shard_ids(store, shard))
        log.info("shard %s: all %d parts current, nothing to render", shard_name(shard), len(keys))
        return {"shard": shard_name(shard), "images": n, "rows": 0, "files": 0, "parts": 0}
    done = done_parts(job, store, shard, hashes)
    summary = run_render(job, [shard], device=device, parts=missing)[0]
    if not summary.get("stopped"):  # the marker says these parts' logits are complete
        parts = {**done, **{p: keys[p] for p in missing}}
        write_json(marker_path(job, shard), {**summary, "part_keys": parts})
    return summary


@task(name="render-shard", task_run_name="render-{shard[0]}-{shard[1]}", **SHARD_TASK_OPTIONS)
def render_shard_task(job: RenderJob, shard: Sequence[int], device: str = "auto") -> dict[str, Any]:
    """Prefect task: render + classify one shard ``(start, stop)``; with ``job.state_dir`` also
    its render marker → the shard's summary."""
    return run_shard("render", _render_shard, job, shard, device)
