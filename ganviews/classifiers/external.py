"""Bring your own classifier: a TorchScript file, or any torchvision architecture by name.

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
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch
import torchvision
from torch import nn

from ganviews.core.errors import CheckpointError, ConfigError

TORCHSCRIPT = "torchscript"
TORCHVISION_PREFIX = "torchvision."


def is_external(arch: str) -> bool:
    return arch == TORCHSCRIPT or arch.startswith(TORCHVISION_PREFIX)


def check_external_arch(arch: str) -> None:
    """ConfigError unless ``arch`` is ``torchscript`` or ``torchvision.<a torchvision builder>``."""
    if arch == TORCHSCRIPT:
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
    """A randomly initialised torchvision backbone; a TorchScript one only comes from its file."""
    if arch == TORCHSCRIPT:
        raise ConfigError("arch: torchscript classifiers are loaded from their file, not built")
    name = arch.removeprefix(TORCHVISION_PREFIX)
    return torchvision.models.get_model(name, weights=None, num_classes=num_outputs)


def is_torchscript_file(path: Path) -> bool:
    """A ``torch.jit.save`` archive: a zip whose records include ``<archive>/code/``."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def load_torchscript(path: Path) -> nn.Module:
    try:
        return torch.jit.load(str(path), map_location="cpu")
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
