"""Classifier files: save and load the project's format (safetensors + config metadata), the
authors' and torchvision checkpoints (weights-only unpickling, optional YAML sidecar), backbone
initialisation, and the architecture inferred from a state dict.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ganviews.classifiers import external
from ganviews.classifiers.model import (
    ARCHITECTURES,
    FORMAT_NAME,
    FORMAT_VERSION,
    Classifier,
    ClassifierConfig,
    build_backbone,
    classifier_config,
    head_prefix,
)
from ganviews.core.config import load_yaml, to_dict
from ganviews.core.errors import CheckpointError, ConfigError
from ganviews.core.file_limits import check_tensor_extents, check_zip_records, parse_json_config
from ganviews.core.runtime import file_sha256
from ganviews.core.weights_io import read_safetensors, state_mismatch, write_safetensors

log = logging.getLogger(__name__)

_CONTAINER_KEYS = (
    "state_dict",
    "model",
    "model_state_dict",
    "net",
)  # where training scripts keep weights


_SIDECAR_SUFFIXES = (".yaml", ".yml")


def save_classifier(C: Classifier, path: str | Path) -> Path:
    """Write the project's format: safetensors of the backbone + config JSON in its metadata.

    A TorchScript classifier (whose architecture is its code, not a name) is written as a
    TorchScript archive instead, the config JSON inside (:func:`external.save_torchscript`)."""
    config = json.dumps(to_dict(C.config), sort_keys=True)
    if C.arch == external.TORCHSCRIPT:
        path = external.save_torchscript(C.backbone, Path(path), config)
        C._source_sha256 = file_sha256(path)
        log.info("saved TorchScript classifier %s to %s", C.name, path)
        return path
    metadata = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "config": config}
    path = write_safetensors(C.backbone.state_dict(), path, metadata)
    C._source_sha256 = file_sha256(path)
    log.info("saved classifier %s to %s (sha256 %s)", C.name, path, C._source_sha256[:12])
    return path


def load_classifier(
    path: str | Path,
    device: str | torch.device = "cpu",
    *,
    config: ClassifierConfig | Mapping[str, Any] | str | Path | None = None,
) -> Classifier:
    """Load a classifier (eval mode, requires_grad False) from our format or a torchvision checkpoint.

    ``config`` supplies the preprocessing (and optionally task, class names, name) for files
    that do not record it; when omitted, ``<checkpoint>.yaml`` or ``<checkpoint stem>.yaml``
    next to the file is used. For our own files a given config must agree on arch and
    num_outputs and replaces the stored preprocessing/labels.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"classifier checkpoint not found: {path} (put the weights file there, or pass the right path)"
        )
    try:
        return _load_classifier(path, device, config)
    except ConfigError as exc:  # a stored, sidecar or given config: checked before any build
        raise CheckpointError(f"{path}: its classifier config is invalid: {exc}") from exc


def _load_classifier(path: Path, device, config) -> Classifier:
    if external.is_torchscript_file(path):
        return _load_torchscript(path, device, config)
    state, stored = _read_weights(path)
    state = _strip_prefix(state)
    declared = _declared_arch(path, config) or str((stored or {}).get("arch", ""))
    if external.is_external(declared):  # built by name, not inferred
        cfg = classifier_config(_config_data(path, stored, config))
        return _finish(
            Classifier(cfg, backbone=_backbone_from_state(cfg, state, path)), path, device
        )
    arch, num_outputs, width = infer_architecture(state, source=str(path))
    cfg_data = _config_data(path, stored, config)
    cfg = classifier_config(cfg_data, inferred=(arch, num_outputs), source=str(path))
    if arch == "smallcnn" and cfg.width != width:
        cfg = dataclasses.replace(cfg, width=width)
    C = Classifier(cfg, backbone=_backbone_from_state(cfg, state, path))
    C._source_sha256 = file_sha256(path)
    C = C.to(device).eval().requires_grad_(False)
    log.info("loaded classifier %s (%s, %d outputs) from %s", C.name, arch, num_outputs, path)
    return C


def _backbone_from_state(
    config: ClassifierConfig, state: dict[str, torch.Tensor], path: Path
) -> nn.Module:
    """Build the backbone on the meta device (no random init) and adopt the checkpoint's tensors."""
    with torch.device("meta"):
        backbone = build_backbone(config)
    state = {
        k: v.float() if v.is_floating_point() else v for k, v in state.items()
    }  # fp16 files → fp32
    for key, value in backbone.state_dict().items():  # old files lack num_batches_tracked
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros((), dtype=value.dtype)
    try:
        backbone.load_state_dict(state, strict=True, assign=True)
    except (
        RuntimeError
    ) as exc:  # inference already matched keys and shapes; anything else lands here
        raise CheckpointError(f"{path}: weights do not fit {config.arch}: {exc}") from exc
    return backbone


def _config_data(path: Path, stored: dict[str, Any] | None, config) -> Any:
    """The config of a file: the given one (a mapping overrides the recorded config key by
    key), else the one the file records, else its sidecar."""
    if stored is not None and isinstance(config, Mapping):
        return {**stored, **to_dict(config)}
    if config is None:
        return stored if stored is not None else _sidecar_config(path)
    return config


def load_backbone_weights(C: Classifier, path: str | Path) -> list[str]:
    """Initialise ``C`` from another checkpoint for fine-tuning (e.g. ImageNet ResNet weights).

    Every tensor whose name and shape match is copied; a head of another size (``fc.*``, e.g.
    1000 ImageNet classes; the output layer of a by-name architecture, found by
    :func:`head_prefix`) is left at its fresh initialisation. Returns the names left fresh.
    Any other mismatch is a CheckpointError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"initial weights not found: {path}")
    state, _ = _read_weights(path)
    state = _strip_prefix(state)
    own = C.backbone.state_dict()
    head = head_prefix(C)
    fresh = [
        k for k in own if k.startswith(head) and (k not in state or state[k].shape != own[k].shape)
    ]
    body = {k: v for k, v in state.items() if k not in fresh}
    missing, unexpected, wrong = state_mismatch(own, body)
    if wrong:
        bad = [f"{k}: {list(body[k].shape)} vs {list(own[k].shape)}" for k in wrong]
        raise CheckpointError(
            f"{path}: cannot initialise {C.arch} from it: shape mismatches {bad[:5]}"
        )
    missing = [k for k in missing if k not in fresh and not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: cannot initialise {C.arch} from it: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    C.backbone.load_state_dict(body, strict=False)
    log.info("initialised %s from %s (fresh: %s)", C.name, path, fresh or "none")
    return fresh


def _read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """(state dict, stored config mapping or None) from a safetensors or torch.save file."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    if len(head) == 9 and head[8:9] == b"{":
        return _read_safetensors(path)
    return _read_torch(path), None


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    meta, state = read_safetensors(path)
    if meta.get("format") != FORMAT_NAME:
        return state, None
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: classifier format version {meta.get('format_version')!r}; this code reads {FORMAT_VERSION!r}"
        )
    return state, parse_json_config(meta.get("config"), path=path, what="classifier config")


def _read_torch(path: Path) -> dict[str, torch.Tensor]:
    import argparse

    if zipfile.is_zipfile(path):
        check_zip_records(path)
    try:
        # Training scripts often store their args (argparse.Namespace) and numpy scalars (val
        # accuracy) next to the weights: allow exactly those, nothing that runs code.
        with torch.serialization.safe_globals([argparse.Namespace, *_numpy_scalar_globals()]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc)) or re.search(
            r"Unsupported global: ([\w.]+)", str(exc)
        )
        if not found:  # not a pickle at all, or a corrupt one
            raise CheckpointError(
                f"{path}: not a readable torch checkpoint: {_reason(exc)}"
            ) from exc
        raise CheckpointError(
            f"{path}: refused to unpickle an object a weights-only load does not allow (it needs {found.group(1)!r}); "
            "save a plain state_dict (torch.save(model.state_dict(), ...)) or safetensors instead"
        ) from exc
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable torch checkpoint: {_reason(exc)}") from exc
    state = _unwrap_state_dict(obj, path)
    check_tensor_extents(state.items(), path=path, budget=path.stat().st_size)
    return state


def _numpy_scalar_globals() -> list[Any]:
    """numpy scalar reconstruction (numpy 2 and numpy 1.x pickle names) and dtype classes."""
    import numpy as np

    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    dtypes = [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    return [np.dtype, scalar, (scalar, "numpy.core.multiarray.scalar"), *dtypes]


def _reason(exc: BaseException) -> str:
    """The informative line of a torch.load error (its own text is several paragraphs)."""
    text = str(exc)
    found = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return (found.group(1) if found else lines[0] if lines else type(exc).__name__)[:300]


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in _CONTAINER_KEYS:
            if key in obj:
                return _unwrap_state_dict(obj[key], path)
        keys = sorted(map(str, obj))[:10]
        raise CheckpointError(
            f"{path}: no state dict found: top-level keys {keys} are neither tensors nor one of "
            f"{list(_CONTAINER_KEYS)}"
        )
    raise CheckpointError(
        f"{path}: expected a state dict (mapping of tensors), got {type(obj).__name__}"
    )


def _strip_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in ("module.", "backbone."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return dict(state)


def _finish(C: Classifier, path: Path, device: str | torch.device) -> Classifier:
    C._source_sha256 = file_sha256(path)
    log.info("loaded classifier %s (%s, %d outputs) from %s", C.name, C.arch, C.num_outputs, path)
    return C.to(device).eval().requires_grad_(False)


def _load_torchscript(path: Path, device, config) -> Classifier:
    """A TorchScript file: its config (given, recorded in the archive by save_classifier, or the
    sidecar) says arch: torchscript, num_outputs and the preprocessing; one zero batch checks
    the output shape."""
    record = external.stored_torchscript_config(path)
    stored = parse_json_config(record, path=path, what="classifier config") if record else None
    cfg = classifier_config(_config_data(path, stored, config))
    if cfg.arch != external.TORCHSCRIPT:
        raise CheckpointError(
            f"{path}: a TorchScript file, but its config says arch {cfg.arch!r} (use arch: torchscript)"
        )
    backbone = external.load_torchscript(path)
    pre = cfg.preprocessing
    side = pre.crop or (pre.size[0] if pre.size else None) or pre.resize or 64
    external.check_outputs(backbone, cfg.num_outputs, side, path)
    return _finish(Classifier(cfg, backbone=backbone), path, device)


def _declared_arch(path: Path, config) -> str:
    """The arch a given config or the sidecar names ("" when none does)."""
    if isinstance(config, ClassifierConfig):
        return config.arch
    if isinstance(config, (str, Path)):
        config = load_yaml(config)
    if config is None:
        sidecar = _find_sidecar(path)
        config = load_yaml(sidecar) if sidecar is not None else {}
    return str(config.get("arch", "")) if isinstance(config, Mapping) else ""


def sidecar_candidates(path: Path) -> list[Path]:
    candidates = [path.with_name(path.name + s) for s in _SIDECAR_SUFFIXES]
    return list(dict.fromkeys(candidates + [path.with_suffix(s) for s in _SIDECAR_SUFFIXES]))


def _find_sidecar(path: Path) -> Path | None:
    return next((c for c in sidecar_candidates(path) if c.is_file()), None)


def _sidecar_config(path: Path) -> dict[str, Any]:
    sidecar = _find_sidecar(path)
    if sidecar is not None:
        return load_yaml(sidecar)
    candidates = sidecar_candidates(path)
    tried = ", ".join(str(c) for c in dict.fromkeys(candidates))
    raise CheckpointError(
        f"{path}: the checkpoint does not record its preprocessing; put a YAML config next to it "
        f"(looked for {tried}) or, from Python, pass load_classifier(..., config=); see docs/classifiers.md"
    )


def infer_architecture(
    state: Mapping[str, torch.Tensor], *, source: str = "checkpoint"
) -> tuple[str, int, int]:
    """(arch, num_outputs, width) whose state-dict keys and shapes match ``state`` exactly.

    ``num_batches_tracked`` entries are ignored (old checkpoints lack them). When nothing
    matches, the CheckpointError names ``source``, the known architectures and the closest
    one's missing/unexpected/mis-shaped keys.
    """
    heads = {name: a.head_weight for name, a in ARCHITECTURES.items()}
    fc = next(
        (state[k] for k in dict.fromkeys(heads.values()) if isinstance(state.get(k), torch.Tensor)),
        None,
    )
    if fc is None or fc.ndim != 2:
        sample = sorted(state)[:6]
        raise CheckpointError(
            f"{source}: no classifier head ({', '.join(sorted(set(heads.values())))}) [K, features] among "
            f"its keys (first keys: {sample}); known architectures: {', '.join(ARCHITECTURES)}"
        )
    num_outputs = int(fc.shape[0])
    width = int(state["features.0.weight"].shape[0]) if "features.0.weight" in state else 32
    got = {k: tuple(v.shape) for k, v in state.items() if not k.endswith("num_batches_tracked")}
    best: tuple[int, str, list[str], list[str], list[str]] | None = None
    for arch in ARCHITECTURES:
        want = _reference_shapes(arch, num_outputs, width)
        missing, unexpected, wrong = state_mismatch(want, got)
        shapes = [f"{k}: {list(got[k])} vs {list(want[k])}" for k in sorted(wrong)]
        if not (missing or unexpected or shapes):
            return arch, num_outputs, width
        score = len(missing) + len(unexpected) + len(shapes)
        if best is None or score < best[0]:
            best = (score, arch, missing, unexpected, shapes)
    _, arch, missing, unexpected, shapes = best  # type: ignore[misc]  (ARCHITECTURES is not empty)
    raise CheckpointError(
        f"{source}: weights match no known architecture ({', '.join(ARCHITECTURES)}); closest is {arch!r}: "
        f"missing keys {missing[:5]}{'…' if len(missing) > 5 else ''}, "
        f"unexpected keys {unexpected[:5]}{'…' if len(unexpected) > 5 else ''}, "
        f"shape mismatches {shapes[:5]}{'…' if len(shapes) > 5 else ''}"
    )


_SHAPE_CACHE: dict[tuple[str, int, int], dict[str, tuple[int, ...]]] = {}


def _reference_shapes(arch: str, num_outputs: int, width: int) -> dict[str, tuple[int, ...]]:
    key = (arch, num_outputs, width if arch == "smallcnn" else 0)
    if key not in _SHAPE_CACHE:
        with torch.device("meta"):  # shapes only: no memory, no init cost
            model = ARCHITECTURES[arch].build(num_outputs, width)
        _SHAPE_CACHE[key] = {
            k: tuple(v.shape)
            for k, v in model.state_dict().items()
            if not k.endswith("num_batches_tracked")
        }
    return _SHAPE_CACHE[key]
