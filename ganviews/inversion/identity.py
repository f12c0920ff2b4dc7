"""Face identity loss of encoder training (the authors' FFHQ encoder; off by default).

chail/latent-composition ``training/train_sgan_encoder.sh`` trains the FFHQ encoder with
``--lambda_id 1.0`` (cars, churches, horses: 0; ``train_sgan_encoder.py`` refuses it outside
the face domains). Their ``networks/psp/id_loss.py`` takes pixel2style2pixel's ArcFace network,
an IR-SE-50 (InsightFace's ResNet-50 with "improved residual" units and squeeze-excitation,
512-d embeddings of a 112² face), from a weights file they download (``model_ir_se50.pth``).
Per image: the 256² image (area-resized, as their LPIPS input) is cut to rows 35…222 and
columns 32…219 (the face), average-pooled to 112², embedded and L2-normalised; the loss is
``1 − ⟨f(G(E(x))), f(x)⟩`` with the target's embedding held fixed, averaged over the batch.

:class:`IRSE` is that architecture in plain torch (no package ships it with these weights'
layout; timm and torchvision have none, facenet-pytorch's is another network), with the
weights file's key names, so the file loads as it is. Nothing is downloaded:
:func:`load_identity_net` reads a local file (weights only) and names it, and where to put it,
when it is missing.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ganviews.core.errors import CheckpointError
from ganviews.core.weights_io import state_mismatch

WEIGHTS_NAME = "model_ir_se50.pth"  # pixel2style2pixel's IR-SE-50 ArcFace file
UNITS_50 = (3, 4, 14, 3)  # residual units per stage of IR-SE-50
_DEPTHS = (64, 128, 256, 512)  # channels per stage
_FACE = (35, 223, 32, 220)  # rows / columns of the face in the 256² image (their crop)


class _SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))  # [N, C, 1, 1]
        return x * gate


class _Unit(nn.Module):
    """Improved residual unit with squeeze-excitation: BN → 3×3 → PReLU → 3×3 (stride) → BN → SE,
    plus the shortcut (a strided identity, or a strided 1×1 conv + BN when channels change)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        if cin == cout:
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(cin),
            nn.Conv2d(cin, cout, 3, 1, 1, bias=False),
            nn.PReLU(cout),
            nn.Conv2d(cout, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
            _SqueezeExcite(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class IRSE(nn.Module):
    """IR-SE ArcFace backbone for 112² faces in [-1, 1] → L2-normalised embeddings [N, 512].

    ``units``: residual units per stage (IR-SE-50: ``UNITS_50``; fewer for tests). Key names
    follow the pixel2style2pixel weights file (``input_layer``, ``body.<i>``, ``output_layer``).
    """

    def __init__(self, units: tuple[int, int, int, int] = UNITS_50) -> None:
        super().__init__()
        self.units = tuple(units)
        self.input_layer = nn.Sequential(
            nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64)
        )
        body, cin = [], 64
        for count, depth in zip(self.units, _DEPTHS, strict=True):
            for k in range(count):
                body.append(_Unit(cin, depth, 2 if k == 0 else 1))
                cin = depth
        self.body = nn.Sequential(*body)
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(512),
            nn.Dropout(0.6),
            nn.Flatten(),
            nn.Linear(512 * 7 * 7, 512),
            nn.BatchNorm1d(512),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(self.input_layer(x))  # [N, 512, 7, 7]
        return F.normalize(self.output_layer(h), dim=1)  # [N, 512], unit length


class IdentityLoss(nn.Module):
    """``1 − cos(f(recon), f(target))`` per image [N] with f the ArcFace embedding of the face
    region (see the module docstring); the target's embedding carries no gradient."""

    name = "identity-irse"

    def __init__(self, net: IRSE) -> None:
        super().__init__()
        self.net = net.eval().requires_grad_(False)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Images [N, 3, H, W] in [-1, 1] → embeddings [N, 512]."""
        x = F.adaptive_avg_pool2d(images, 256)  # their LPIPS input size
        top, bottom, left, right = _FACE
        x = F.adaptive_avg_pool2d(x[:, :, top:bottom, left:right], 112)  # [N, 3, 112, 112]
        return self.net(x)

    def forward(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            want = self.embed(target)  # [N, 512]
        return 1.0 - (self.embed(recon) * want).sum(dim=1)  # [N]


def load_identity_net(
    path: str | os.PathLike,
    *,
    units: tuple[int, int, int, int] = UNITS_50,
    device: str | torch.device = "cpu",
) -> IdentityLoss:
    """The identity loss with IR-SE weights from the local file ``path`` (a torch state dict,
    read weights-only, as pixel2style2pixel's ``model_ir_se50.pth``; ``units``: the file's
    residual units per stage, IR-SE-50 by default); CheckpointError naming the file when it is
    missing, unreadable or of another layout."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{path}: identity-loss weights not found. The authors' FFHQ encoder used "
            f"pixel2style2pixel's IR-SE-50 ArcFace ({WEIGHTS_NAME}), which ganviews does not ship "
            "or download: put that file here (encoder_training.identity_weights names it), or "
            "set encoder_training.lambda_id: 0"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one message naming it
        raise CheckpointError(f"{path}: not a readable torch state dict ({exc})") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    net = IRSE(units)
    missing, unexpected, wrong = state_mismatch(net.state_dict(), state)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]  # older torch files
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{path}: not an IR-SE state dict with units {list(units)} ({len(missing)} missing keys, e.g. "
            f"{missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]}; wrong shapes: "
            f"{wrong[:2]})"
        )
    net.load_state_dict(state, strict=False)  # every key checked above
    return IdentityLoss(net).to(device)
