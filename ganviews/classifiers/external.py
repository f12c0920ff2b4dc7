"""Bring your own classifier: a TorchScript file, or any torchvision or timm architecture by name.

The views of Chai et al. (CVPR 2021) are evaluated with whatever classifier a study uses. Besides
the architectures ganviews recognises from a state dict's keys (:data:`ARCHITECTURES` in
:mod:`ganviews.classifiers.model`), two more kinds load, each with its preprocessing declared
in a config (``load_classifier(path, config=…)``, the sidecar ``<file>.yaml`` next to the
weights, or ``models.classifiers.<name>.config`` in the pipeline YAML):

- ``arch: torchscript``: a ``torch.jit.save``d module taking the preprocessed ``[N, 3, h, w]``
  batch and returning logits ``[N, K]``; ``num_outputs`` says K. Nothing of its code is
  trusted beyond what TorchScript itself runs.
- ``arch: torchvision.<builder>`` (e.g. ``torchvision.efficientnet_b0``, any name of
  ``torchvision.models.list_models()``): built with ``weights=None`` and
  ``num_classes=num_outputs``, then the local weights file is loaded into it (strict).
  Nothing is downloaded.
- ``arch: timm.<name>`` (e.g. ``timm.convnext_tiny``, ``timm.vit_small_patch16_224``, any name
  ``timm.is_model`` knows, pretrained tags included): ``timm.create_model(name,
  pretrained=False, num_classes=num_outputs)``, then the local weights (strict). timm is
  imported only for such a classifier (it takes seconds to import).

Every kind can be fine-tuned with the classifier trainer (Eq. 8): :func:`head_prefix` finds the
output layer (the one whose learning rate ``backbone_lr_scale`` leaves alone and which
``init_from`` weights with another class count leave fresh); a fine-tuned TorchScript module is
saved as a TorchScript archive with its config inside (:func:`save_torchscript`).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch
import torchvision
from torch import nn

from ganviews.core.atomic import write_atomically
from ganviews.core.errors import CheckpointError, ConfigError

TORCHSCRIPT = "torchscript"
TORCHVISION_PREFIX = "torchvision."
TIMM_PREFIX = "timm."
CONFIG_RECORD = "ganviews_classifier.json"  # a saved TorchScript archive's extra file: the config
MAX_CONFIG_BYTES = 1 << 20


def is_external(arch: str) -> bool:
    return arch == TORCHSCRIPT or arch.startswith((TORCHVISION_PREFIX, TIMM_PREFIX))


def check_external_arch(arch: str) -> None:
    """ConfigError unless ``arch`` is ``torchscript``, ``torchvision.<builder>`` or ``timm.<model>``."""
    if arch == TORCHSCRIPT:
        return
    if arch.startswith(TIMM_PREFIX):
        timm, name = _timm(arch), arch.removeprefix(TIMM_PREFIX)
        if not timm.is_model(name):
            close = timm.list_models(f"{name[:6]}*")[:5]
            raise ConfigError(
                f"arch: {arch!r}: timm has no model {name!r}"
                + (f" (similar: {', '.join(close)})" if close else "")
            )
        return
    name = arch.removeprefix(TORCHVISION_PREFIX)
    known = torchvision.models.list_models()
    if name not in known:
        close = [k for k in known if k.startswith(name[:6])][:5]
        raise ConfigError(
            f"arch: {arch!r}: torchvision has no model {name!r}"
            + (f" (similar: {', '.join(close)})" if close else "")
        )


def build_external(arch: str, num_outputs: int) -> nn.Module:
    """A randomly initialised torchvision / timm backbone; a TorchScript one only comes from its file."""
    if arch == TORCHSCRIPT:
        raise ConfigError("arch: torchscript classifiers are loaded from their file, not built")
    if arch.startswith(TIMM_PREFIX):
        name = arch.removeprefix(TIMM_PREFIX)
        return _timm(arch).create_model(name, pretrained=False, num_classes=num_outputs)
    name = arch.removeprefix(TORCHVISION_PREFIX)
    return torchvision.models.get_model(name, weights=None, num_classes=num_outputs)


def _timm(arch: str):
    try:
        import timm
    except ImportError as exc:  # a dependency, but an environment may lack it
        raise ConfigError(f"arch: {arch!r} needs the timm package (pip install timm)") from exc
    return timm


def head_prefix(backbone: nn.Module, num_outputs: int) -> str:
    """Name prefix of the output layer: the last layer whose weight has ``num_outputs`` rows
    (a Linear ``[K, F]`` or a 1×1 conv ``[K, F, 1, 1]``), e.g. ``fc.``, ``classifier.1.``, ``head.fc.``."""
    heads = [
        name.removesuffix("weight")
        for name, p in backbone.named_parameters()
        if name.endswith("weight") and p.ndim in (2, 4) and p.shape[0] == num_outputs
    ]
    if not heads:
        raise CheckpointError(
            f"no output layer with {num_outputs} outputs (a weight [{num_outputs}, …]) among the "
            "module's parameters; num_outputs in its config must match its last layer"
        )
    return heads[-1]


def save_torchscript(backbone: nn.Module, path: Path, config_json: str) -> Path:
    """A (fine-tuned) TorchScript module with its ClassifierConfig as an extra file (atomic)."""
    extra = {CONFIG_RECORD: config_json}
    return write_atomically(
        path, lambda tmp: torch.jit.save(backbone, str(tmp), _extra_files=extra)
    )


def stored_torchscript_config(path: Path) -> str | None:
    """The config a :func:`save_torchscript` archive records, else None."""
    with zipfile.ZipFile(path) as archive:
        info = next(
            (i for i in archive.infolist() if i.filename.endswith(f"extra/{CONFIG_RECORD}")), None
        )
        if info is None:
            return None
        if info.file_size > MAX_CONFIG_BYTES:
            raise CheckpointError(
                f"{path}: its {CONFIG_RECORD} holds {info.file_size} bytes (a config is < 1 MB)"
            )
        return archive.read(info).decode()


def is_torchscript_file(path: Path) -> bool:
    """A ``torch.jit.save`` archive: a zip whose records include ``<archive>/code/``."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def load_torchscript(path: Path) -> nn.Module:
    try:
        return torch.jit.load(str(path), map_location="cpu").eval()
    except (RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a loadable TorchScript file ({exc})") from exc


def check_outputs(backbone: nn.Module, num_outputs: int, size: int, path: Path) -> None:
    """One zero batch through the module: its logits must be ``[1, num_outputs]``."""
    with torch.no_grad():
        out = backbone(torch.zeros(1, 3, size, size))
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, num_outputs):
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise CheckpointError(
            f"{path}: the module returns {got} for one image, expected [1, {num_outputs}] logits "
            "(num_outputs in its config)"
        )
