"""Masked spatial LPIPS, the perceptual term of the inversion objective (paper Sec. 3.2).

The paper (and its official code) reconstructs an image with (1−λ)·L1 + λ·LPIPS, where
LPIPS is the `lpips` package's AlexNet variant in *spatial* mode and the per-pixel distance
map is averaged over the known pixels only (mask 1). This module wraps the real `lpips`
package and adds what an offline batch pipeline needs:

* The backbone's ImageNet weights (torchvision's ``alexnet-owt-7be5be79.pth`` /
  ``vgg16-397923af.pth``) are read from a local file — ``weights_dir``, then the torch hub
  cache — never downloaded; a missing file raises :class:`CheckpointError` naming the file,
  the folders searched and where to get it. The file name's hash prefix is checked.
* The LPIPS linear calibration layers ship inside the `lpips` wheel (``lpips/weights/v0.1``).
* ``"lpips-random"``: the same network with a randomly initialised backbone from a fixed
  seed. It exercises the mechanics (shapes, masking, gradients) only; its distances mean
  nothing perceptually. For tests and the offline demo.
* Unknown pixels are zeroed in *both* images before the network (so they cannot leak into
  the known region through the receptive field — the official code only weights the map),
  then the spatial map is averaged with the mask as weights.
* ``resolution``: optionally area-downsample both images (and the mask) to at most this size
  first, as NVIDIA's StyleGAN2-ADA projector does at 256 px. Faster on large generators,
  not the paper's setting, hence not the default.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ganviews.core.errors import CheckpointError
from ganviews.core.runtime import file_sha256

log = logging.getLogger(__name__)

#: name → (lpips trunk, torchvision weights file or None for a random trunk, download URL)
PERCEPTUAL_NETS: dict[str, tuple[str, str | None, str | None]] = {
    "lpips-alex": (
        "alex",
        "alexnet-owt-7be5be79.pth",
        "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    ),
    "lpips-vgg": (
        "vgg",
        "vgg16-397923af.pth",
        "https://download.pytorch.org/models/vgg16-397923af.pth",
    ),
    "lpips-random": ("alex", None, None),
}


def weights_search_dirs(weights_dir: str | Path | None = None) -> list[Path]:
    """Folders searched for a torchvision backbone file, in order."""
    dirs: list[Path] = []
    if weights_dir is not None:
        dirs.append(Path(weights_dir))
    dirs.append(Path(torch.hub.get_dir()) / "checkpoints")  # $TORCH_HOME/hub or XDG cache
    if os.environ.get("TORCH_HOME"):
        dirs.append(Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints")
    dirs.append(Path.home() / ".cache" / "torch" / "hub" / "checkpoints")
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def find_backbone_weights(name: str, weights_dir: str | Path | None = None) -> Path:
    """The local path of the backbone file of perceptual net ``name``, or CheckpointError."""
    _, file_name, url = _lookup(name)
    if file_name is None:
        raise ValueError(f"perceptual net {name!r} has a random backbone and no weights file")
    dirs = weights_search_dirs(weights_dir)
    for folder in dirs:
        if (folder / file_name).is_file():
            return folder / file_name
    searched = ", ".join(str(d) for d in dirs)
    raise CheckpointError(
        f"LPIPS backbone weights {file_name} not found (searched: {searched}). "
        f"Download {url} on a machine with internet access and copy it into one of those "
        f"folders (or pass weights_dir= / --lpips-weights-dir); nothing is downloaded at run time."
    )


def _lookup(name: str) -> tuple[str, str | None, str | None]:
    if name not in PERCEPTUAL_NETS:
        raise ValueError(
            f"perceptual net name={name!r}: unknown; allowed: {sorted(PERCEPTUAL_NETS)}"
        )
    return PERCEPTUAL_NETS[name]


def _check_hash_prefix(path: Path) -> None:
    """torchvision file names end in the first 8 hex digits of the file's SHA-256."""
    prefix = path.stem.rsplit("-", 1)[-1]
    digest = file_sha256(path)
    if not digest.startswith(prefix):
        raise CheckpointError(
            f"{path}: SHA-256 {digest[:16]}… does not start with {prefix!r} as its "
            "name promises; the file is corrupt or not the torchvision release "
            "(pass check_hash=False to load it anyway)"
        )


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    """The torchvision state dict in ``path`` (tensors only: ``weights_only=True``)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file becomes one clear error
        raise CheckpointError(f"{path}: not a readable torch weights file ({exc})") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


def _load_backbone(trunk: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Copy torchvision ``features.{i}.*`` tensors into the lpips trunk's slices."""
    for slice_module in trunk.children():
        for index, layer in slice_module.named_children():
            for pname, param in layer.named_parameters(recurse=False):
                key = f"features.{index}.{pname}"
                if key not in state:
                    raise CheckpointError(
                        f"{path}: missing tensor {key!r}; is this the right backbone file?"
                    )
                if tuple(state[key].shape) != tuple(param.shape):
                    raise CheckpointError(
                        f"{path}: tensor {key!r} has shape {list(state[key].shape)}, "
                        f"expected {list(param.shape)}; is this the right backbone file?"
                    )
                with torch.no_grad():
                    param.copy_(state[key])


@dataclass
class TargetFeatures:
    """The target side of :class:`MaskedLPIPS`, reusable across evaluations (:meth:`target`)."""

    feats: list[torch.Tensor]  # per trunk layer [N, C_k, h_k, w_k], unit-normalised
    mask: torch.Tensor | None  # [N, 1, H, W] applied to renders before the trunk
    weight: torch.Tensor  # [N, 1, h, w] weights of the distance map
    input_size: tuple[int, int]  # (H, W) of the images compared
    size: tuple[int, int]  # (h, w) at which the trunk sees both images

    @staticmethod
    def cat(parts: list[TargetFeatures]) -> TargetFeatures:
        """The targets of several batches as one (computed in chunks to bound memory)."""
        if len(parts) == 1:
            return parts[0]
        masks = [p.mask for p in parts]
        return TargetFeatures(
            feats=[torch.cat(layer) for layer in zip(*(p.feats for p in parts), strict=True)],
            mask=None if masks[0] is None else torch.cat(masks),
            weight=torch.cat([p.weight for p in parts]),
            input_size=parts[0].input_size,
            size=parts[0].size,
        )


class MaskedLPIPS(nn.Module):
    """``P(x, y, mask=None) -> [N]``: mask-weighted mean of the spatial LPIPS map per image."""

    def __init__(self, lpips_model: nn.Module, *, name: str, resolution: int | None = None) -> None:
        super().__init__()
        if resolution is not None and (not isinstance(resolution, int) or resolution < 16):
            raise ValueError(f"resolution={resolution!r}: must be None or an integer ≥ 16")
        self.model = lpips_model
        self.name = name
        self.resolution = resolution

    def extra_repr(self) -> str:
        return f"name={self.name!r}, resolution={self.resolution}"

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.distance(x, self.target(y, mask))

    def target(self, y: torch.Tensor, mask: torch.Tensor | None = None) -> TargetFeatures:
        """The fixed side of the distance, computed once: masked, resized, unit-normalised.

        An inversion compares many renders with the same targets; its objective keeps this and
        calls :meth:`distance` per evaluation, so the target's trunk pass is not repeated
        (the same numbers as ``forward(x, y, mask)``, which is ``distance(x, target(y, mask))``).
        """
        if y.ndim != 4 or y.shape[1] != 3:
            raise ValueError(f"y: expected an [N, 3, H, W] tensor, got {list(y.shape)}")
        if mask is not None:
            if mask.shape != (y.shape[0], 1, *y.shape[2:]):
                raise ValueError(
                    f"mask: expected shape {[y.shape[0], 1, *y.shape[2:]]}, got {list(mask.shape)}"
                )
            y = y * mask  # [N, 3, H, W] unknown pixels → 0 (the render gets the same mask)
        input_size = tuple(y.shape[2:])
        weight = mask if mask is not None else y.new_ones(y.shape[0], 1, *input_size)
        if self.resolution is not None and max(y.shape[2:]) > self.resolution:
            y = F.interpolate(y, size=(self.resolution,) * 2, mode="area")  # [N, 3, r, r]
            weight = F.interpolate(weight, size=y.shape[2:], mode="area")  # fractional weights
        return TargetFeatures(
            feats=self._features(y),
            mask=mask,
            weight=weight,
            input_size=input_size,
            size=tuple(y.shape[2:]),
        )

    def distance(
        self, x: torch.Tensor, target: TargetFeatures, index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Masked LPIPS of renders ``x`` [M, 3, H, W] against rows ``index`` of ``target`` → [M]."""
        feats, mask, weight = target.feats, target.mask, target.weight
        if index is not None:
            feats = [f[index] for f in feats]
            mask = None if mask is None else mask[index]
            weight = weight[index]
        want = [feats[0].shape[0], 3, *target.input_size]
        if list(x.shape) != want:
            raise ValueError(f"x: expected shape {want} (as the target), got {list(x.shape)}")
        if mask is not None:
            x = x * mask  # [M, 3, H, W]
        if tuple(x.shape[2:]) != target.size:
            x = F.interpolate(x, size=target.size, mode="area")  # [M, 3, r, r]
        lin = self.model.lins
        dist = 0.0
        for k, fx in enumerate(self._features(x)):
            layer = lin[k]((fx - feats[k]) ** 2)  # [M, 1, h_k, w_k]
            dist = dist + F.interpolate(
                layer, size=target.size, mode="bilinear", align_corners=False
            )
        total = weight.sum(dim=(1, 2, 3)).clamp_min(torch.finfo(weight.dtype).tiny)  # [M]
        return (dist * weight).sum(dim=(1, 2, 3)) / total  # [M]

    def _features(self, img: torch.Tensor) -> list[torch.Tensor]:
        """The trunk's unit-normalised feature maps, as ``lpips.LPIPS.forward`` computes them."""
        import lpips

        outs = self.model.net(self.model.scaling_layer(img))
        return [lpips.normalize_tensor(out) for out in outs]


def load_perceptual(
    name: str = "lpips-alex",
    *,
    device: torch.device | str = "cpu",
    weights_dir: str | Path | None = None,
    resolution: int | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    check_hash: bool = True,
) -> MaskedLPIPS:
    """Build the masked spatial LPIPS loss ``name`` ("lpips-alex", "lpips-vgg", "lpips-random").

    ``weights_dir`` is searched before the torch hub cache for the torchvision backbone
    file; ``resolution`` area-downsamples larger inputs first; ``seed`` fixes the random
    backbone of "lpips-random" (mechanics only, not a perceptual metric); ``check_hash``
    verifies the file's SHA-256 against the prefix in its torchvision name.
    Returns an eval-mode module without trainable parameters.
    """
    import lpips  # heavy import kept local: loading torchvision models on module import is slow

    trunk_name, file_name, _ = _lookup(name)
    path = find_backbone_weights(name, weights_dir) if file_name is not None else None
    if path is not None and check_hash:
        _check_hash_prefix(path)
    state = _read_state(path) if path is not None else None
    lin_path = Path(lpips.__file__).parent / "weights" / "v0.1" / f"{trunk_name}.pth"
    if not lin_path.is_file():
        raise CheckpointError(
            f"LPIPS linear-layer weights {lin_path} are missing: reinstall the `lpips` package "
            "(the wheel ships them under lpips/weights/v0.1/)"
        )
    # A random trunk is drawn from the global RNG: fork it so the caller's stream is untouched
    # and seed it so "lpips-random" is the same network in every process.
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torchvision's `pretrained=` deprecation
        torch.manual_seed(seed)
        model = lpips.LPIPS(
            net=trunk_name,
            spatial=True,
            pretrained=True,
            pnet_rand=True,
            model_path=str(lin_path),
            verbose=False,
        )
    if path is not None and state is not None:
        _load_backbone(model.net, state, path)
        log.info("LPIPS %s: backbone weights from %s", name, path)
    else:
        log.info(
            "LPIPS %s: random backbone (seed %d) — mechanics only, not a perceptual metric",
            name,
            seed,
        )
    model = model.eval().requires_grad_(False)
    return (
        MaskedLPIPS(model, name=name, resolution=resolution).to(device=device, dtype=dtype).eval()
    )
