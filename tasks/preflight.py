"""Preflight: everything about a job that can be checked cheaply, before any GPU work.

A config error found by the third stage — a view group on layers the generator does not
have, a classifier task that is not a manifest column, a CUDA device on a CPU node — used to
surface only after the whole inversion, once per shard, with advice to resume (which cannot
fix a config). :func:`preflight` collects every such problem for the selected stages, one
line each, and raises one ConfigError; the command line prints them before any flow starts.

Checked: devices exist; model files load (the generator, the encoder — which must predict
the generator's w+ shape — and every classifier, on the CPU; the LPIPS backbone file is
found); each view group's layers exist in the generator; each classifier's
task is a label column of the manifest; no image is in two splits (same image_id or same file); output
locations are writable.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ganviews.core.errors import ConfigError, GanviewsError
from tasks.pipeline_config import PipelineConfig


def preflight(cfg: PipelineConfig, stages: Sequence[str]) -> None:
    """ConfigError with one line per problem the selected ``stages`` would run into."""
    problems = check_devices(cfg) + check_outputs(cfg, stages)
    manifest = None
    if "invert" in stages or "render" in stages:
        manifest, more = _manifest(cfg)
        problems += more
    if manifest is not None:
        problems += check_leakage(manifest)
    G, more = _generator(cfg)
    problems += more
    problems += check_inversion_models(cfg, stages, G)
    if "render" in stages:
        problems += check_view_layers(cfg, G)
        problems += check_classifiers(cfg, manifest, stages)
    if problems:
        raise ConfigError(
            f"preflight: {len(problems)} problem(s) before any work started:\n"
            + "\n".join(f"  {p}" for p in problems)
        )


def check_devices(cfg: PipelineConfig) -> list[str]:
    """Every device of orchestration.devices exists on this node (embedded mode)."""
    import torch

    if cfg.orchestration.mode != "embedded":
        return []  # distributed: the workers' devices, not this node's
    devices = cfg.orchestration.devices
    devices = [devices] if isinstance(devices, str) else list(devices)
    problems = []
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for name in devices:
        if name == "auto":
            continue
        try:
            device = torch.device(name)
        except RuntimeError as exc:
            problems.append(f"orchestration.devices: {name!r} is not a device ({exc})")
            continue
        if device.type == "cuda" and (count == 0 or (device.index or 0) >= count):
            problems.append(
                f"orchestration.devices: {name!r} does not exist here ({count} CUDA device(s) "
                "visible); use cpu, auto or an existing cuda:N"
            )
        elif device.type not in ("cpu", "cuda"):
            problems.append(f"orchestration.devices: {name!r}: only cpu and cuda:N are supported")
    return problems


def check_outputs(cfg: PipelineConfig, stages: Sequence[str]) -> list[str]:
    """Each output location is writable (it, or the nearest folder above it that exists)."""
    wanted = [("paths.store", cfg.paths.store), ("paths.state", cfg.state_dir)]
    if "render" in stages:
        wanted.append(("paths.logits", cfg.paths.logits))
    if "evaluate" in stages:
        wanted.append(("paths.report", cfg.paths.report))
    problems = []
    for key, path in wanted:
        existing = Path(path)
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if existing.exists() and not existing.is_dir() and existing == Path(path):
            if key != "paths.store":  # the store is a folder too; a file there is an error
                problems.append(f"{key}: {path} exists and is not a folder")
            continue
        if not os.access(existing, os.W_OK | os.X_OK):
            problems.append(f"{key}: {path} is not writable (no write permission on {existing})")
    return problems


def _manifest(cfg: PipelineConfig):
    from storage.errors import StoreError
    from storage.manifest import read_manifest

    try:
        return read_manifest(cfg.data.manifest), []
    except (StoreError, OSError) as exc:
        return None, [f"data.manifest: {exc}"]


def check_leakage(manifest) -> list[str]:
    """No image in two splits: by image_id, or by file (the same path under two ids)."""
    problems = []
    for column in ("image_id", "path"):
        splits = manifest.groupby(column)["split"].nunique()
        leaked = splits[splits > 1]
        if len(leaked):
            first = leaked.index[0]
            where = sorted(set(manifest.loc[manifest[column] == first, "split"]))
            problems.append(
                f"data.manifest: {len(leaked)} {column}(s) in more than one split, e.g. "
                f"{first!r} in {where} (split leakage: each image belongs to one split)"
            )
    return problems


def _generator(cfg: PipelineConfig):
    from ganviews.stylegan.generator import load_generator

    try:
        return load_generator(cfg.models.generator, device="cpu"), []
    except (GanviewsError, OSError, ValueError) as exc:
        return None, [f"models.generator: {cfg.models.generator}: {exc}"]


def check_inversion_models(cfg: PipelineConfig, stages: Sequence[str], G) -> list[str]:
    """The encoder loads and predicts the generator's w+ shape; the LPIPS backbone file is on
    this node (embedded mode: distributed workers look on their own nodes)."""
    if "invert" not in stages:
        return []
    problems = []
    trained = cfg.encoder_training.enabled and "train_encoder" in stages  # written later
    if cfg.models.encoder is not None and not trained and Path(cfg.models.encoder).is_file():
        from ganviews.inversion.encoder import load_encoder

        try:
            E = load_encoder(cfg.models.encoder, device="cpu")
        except (GanviewsError, OSError, ValueError) as exc:
            problems.append(f"models.encoder: {exc}")
        else:
            if G is not None and (E.num_ws, E.w_dim) != (G.num_ws, G.w_dim):
                problems.append(
                    f"models.encoder: {cfg.models.encoder} predicts w+ [{E.num_ws}, {E.w_dim}] "
                    f"but the generator needs [{G.num_ws}, {G.w_dim}]"
                )
    inv = cfg.invert
    if (
        cfg.orchestration.mode == "embedded"
        and inv.lambda_lpips > 0
        and inv.lpips_net != "lpips-random"
    ):
        from ganviews.inversion.perceptual import find_backbone_weights

        try:
            find_backbone_weights(inv.lpips_net, cfg.models.lpips_weights_dir)
        except GanviewsError as exc:
            problems.append(f"models.lpips_weights_dir: {exc}")
    return problems


def check_view_layers(cfg: PipelineConfig, G) -> list[str]:
    """Each GAN view group's layers name a non-empty layer group of the generator."""
    if G is None:
        return []
    problems = []
    for k, group in enumerate(cfg.views.gan):
        layers = G.layer_groups.get(group.layers)
        if layers is None:
            problems.append(
                f"views.gan[{k}].layers: {group.layers!r} is not a layer group of the generator "
                f"(allowed: {sorted(G.layer_groups)})"
            )
        elif not len(layers):
            problems.append(f"views.gan[{k}].layers: {group.layers!r} is empty for this generator")
    return problems


def check_classifiers(cfg: PipelineConfig, manifest, stages: Sequence[str]) -> list[str]:
    """Each classifier loads, and its task is a label column of the manifest."""
    from ganviews.classifiers.checkpoints import load_classifier

    trained = cfg.classifier_training.name if cfg.classifier_training.enabled else None
    columns = list(manifest.attrs.get("label_columns") or []) if manifest is not None else None
    problems = []
    for name, ref in cfg.models.classifiers.items():
        own_task = ""
        if not (name == trained and "train_classifier" in stages):  # not yet written otherwise
            try:
                own_task = load_classifier(ref.path, device="cpu", config=ref.config).task
            except (GanviewsError, OSError, ValueError) as exc:
                problems.append(f"models.classifiers.{name}.path: {exc}")
                continue
        task = ref.task or own_task
        if columns is None:
            continue
        if not task:
            problems.append(
                f"models.classifiers.{name}.task: not given and the classifier names none "
                f"(label columns: {columns})"
            )
        elif task not in columns:
            close = [c for c in columns if c.lower() == task.lower()]
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(
                f"models.classifiers.{name}.task: {task!r} is not a label column of the manifest "
                f"(label columns: {columns}){hint}"
            )
    return problems
