"""The authors' released RGBM encoders (``sgan_encoders_{ffhq,car,cat}_RGBM_model_initial.pth.tar``).

Chai et al., CVPR 2021, Sec. 3.2: inversion starts from an encoder's guess, refined by
L-BFGS. The authors released one encoder per generator; loading it saves training one
(``ganviews train-encoder``: days of GPU time per domain). Their network, as their code
builds it (chail/gan-ensembling ``networks/stylegan2/stylegan2_networks.py``,
``utils/customnet.py``; facts only, no code taken):

- input: the image in [-1, 1] *concatenated* with the known-pixel mask in [0, 1]
  (4 channels, "RGBM"; the image is not multiplied by the mask), resized with ``area``
  interpolation to 256 × 256 first, whatever its size;
- a torchvision ResNet trunk (``conv1`` with 4 input channels, ``bn1``, ``layer1``–``layer4``;
  depth 34 for the released files), whose average pool and fc are replaced by a 1 × 1
  convolution ``layer5.conv5`` to ``num_ws · 512`` channels, a global average pool and a
  reshape to ``[N, num_ws, 512]``;
- the output is the absolute w+ (no mean-w offset).

Their file is ``torch.save({"state_dict": ..., "epoch": ...})`` (a bare state dict is
accepted too); it is read with ``torch.load(weights_only=True)``, so nothing stored in it
runs. Depth, block type and ``num_ws`` come from the tensor shapes.
"""

from __future__ import annotations

import logging
import os
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from ganviews.core.errors import CheckpointError
from ganviews.core.file_limits import check_tensor_extents, check_zip_records
from ganviews.core.runtime import assert_shape, file_sha256
from ganviews.core.weights_io import state_mismatch

log = logging.getLogger(__name__)

W_DIM = 512  # the authors' reshape to w+ uses 512 channels per style
RESOLUTION = 256  # their encoders' internal input side (``area`` resize)
_DEPTHS = {
    (BasicBlock, (2, 2, 2, 2)): 18,
    (BasicBlock, (3, 4, 6, 3)): 34,
    (Bottleneck, (3, 4, 6, 3)): 50,
    (Bottleneck, (3, 4, 23, 3)): 101,
    (Bottleneck, (3, 8, 36, 3)): 152,
}


class OfficialEncoder(ResNet):
    """``E(images [N, 3, H, W] in [-1, 1], masks [N, 1, H, W] in [0, 1] or None) → w+ [N, num_ws, 512]``.

    A torchvision ResNet whose module names are the authors' (``conv1`` … ``layer5.conv5``),
    so their state dict loads as it is.
    """

    def __init__(self, *, block: type = BasicBlock, layers: tuple[int, ...] = (3, 4, 6, 3),
                 num_ws: int = 18) -> None:  # fmt: skip
        if (block, tuple(layers)) not in _DEPTHS:
            raise ValueError(
                f"block, layers: {block.__name__} {list(layers)} is not a standard ResNet"
            )
        super().__init__(block, list(layers))
        self.conv1 = nn.Conv2d(4, 64, kernel_size=7, stride=2, padding=3, bias=False)  # RGB + mask
        del self.avgpool, self.fc
        channels = 512 * block.expansion
        self.layer5 = nn.Sequential(OrderedDict(conv5=nn.Conv2d(channels, num_ws * W_DIM, 1)))
        self.depth = _DEPTHS[(block, tuple(layers))]
        self.num_ws, self.w_dim, self.resolution = num_ws, W_DIM, RESOLUTION
        self.generator_sha256 = ""  # the authors' files do not say which generator they fit
        self._file_sha256: str | None = None

    @property
    def sha256(self) -> str:
        """sha256 of the file this encoder was loaded from ("" when built in memory)."""
        return self._file_sha256 or ""

    def forward(self, images: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        N, _, H, W = images.shape if images.ndim == 4 else (None,) * 4
        assert_shape(images, [None, 3, None, None], "images")
        if masks is None:
            masks = images.new_ones(N, 1, H, W)  # [N, 1, H, W]
        assert_shape(masks, [N, 1, H, W], "masks")
        x = torch.cat([images, masks.to(images.dtype)], dim=1)  # [N, 4, H, W] not multiplied
        x = F.interpolate(
            x, size=(self.resolution, self.resolution), mode="area"
        )  # [N, 4, 256, 256]
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # [N, 512·e, 8, 8]
        x = self.layer5(x).mean(dim=(2, 3))  # [N, num_ws · 512]
        return x.view(N, self.num_ws, self.w_dim)  # [N, L, C] absolute w+

    def extra_repr(self) -> str:
        return (
            f"depth={self.depth}, resolution={self.resolution}, out=[{self.num_ws}, {self.w_dim}]"
        )


def official_encoder_from_state(state: dict[str, torch.Tensor], *, name: str) -> OfficialEncoder:
    """An :class:`OfficialEncoder` holding ``state`` (the authors' key layout); its depth, block
    type and num_ws are read from the shapes. CheckpointError naming ``name`` if it does not fit."""
    stages = []
    for index in range(1, 5):
        blocks = {k.split(".")[1] for k in state if k.startswith(f"layer{index}.")}
        stages.append(len(blocks))
    block = Bottleneck if "layer1.0.conv3.weight" in state else BasicBlock
    conv1, conv5 = state.get("conv1.weight"), state.get("layer5.conv5.weight")
    if conv1 is None or conv5 is None or 0 in stages:
        raise CheckpointError(
            f"{name}: not the authors' RGBM encoder layout (need conv1, layer1…layer4 and "
            f"layer5.conv5; got keys {sorted(state)[:6]}…)"
        )
    if conv1.ndim != 4 or conv1.shape[1] != 4:
        raise CheckpointError(
            f"{name}: conv1.weight has shape {list(conv1.shape)}; the RGBM encoder takes 4 input "
            "channels (image + mask)"
        )
    if conv5.shape[0] % W_DIM:
        raise CheckpointError(
            f"{name}: layer5.conv5 has {conv5.shape[0]} output channels, not a multiple of {W_DIM}"
        )
    if (block, tuple(stages)) not in _DEPTHS:
        raise CheckpointError(
            f"{name}: ResNet stages {stages} of {block.__name__} are not a standard depth "
            "(18, 34, 50, 101, 152)"
        )
    with torch.device("meta"):  # no random init: every tensor comes from ``state``
        E = OfficialEncoder(block=block, layers=tuple(stages), num_ws=conv5.shape[0] // W_DIM)
    expected = E.state_dict()
    missing, unexpected, wrong = state_mismatch(expected, state)
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{name}: tensors do not fit a ResNet-{E.depth} RGBM encoder with {E.num_ws} styles "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shape {wrong[:5]})"
        )
    E.load_state_dict(state, assign=True)
    return E


def load_official_encoder(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> OfficialEncoder:
    """The authors' encoder file at ``path`` (torch.save, read weights-only): eval, no gradients."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        check_zip_records(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file becomes one clear error
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise CheckpointError(
            f"{path}: torch.load(weights_only=True) refused or failed ({type(exc).__name__}: "
            f"{first}); an encoder file holds tensors only"
        ) from exc
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"{path}: holds {type(payload).__name__}, not a state dict of tensors (or a dict with "
            "one under 'state_dict') as the authors' encoder files do"
        )
    check_tensor_extents(state.items(), path=path, budget=path.stat().st_size)
    E = official_encoder_from_state(state, name=str(path))
    E._file_sha256 = file_sha256(path)
    log.info("loaded the authors' RGBM encoder %s (ResNet-%d, %d styles)", path, E.depth, E.num_ws)
    return E.to(device).eval().requires_grad_(False)
