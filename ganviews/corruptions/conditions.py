"""Named input conditions: adversarial attacks and common corruptions of aligned images.

Chai et al., "Ensembling with Deep Generative Views" (CVPR 2021), Sec. 4.1 and Fig. 7: the
classifier's accuracy on corrupted images, on their GAN reconstructions and on ensembles of
their GAN views. A :class:`Condition` names one corruption and its settings; the logits
table carries its :attr:`Condition.label` in its ``condition`` column (``clean`` for the
untouched images). :func:`corrupt_images` applies a condition to a batch of aligned uint8
images and returns uint8 images again (what a saved image would hold), so every stage
downstream (inversion, views, classification) reads a corrupted image exactly as it would
read a clean one.

Kinds (:data:`CONDITION_KINDS`):

- ``fgsm``, ``pgd``, ``cw``: white-box attacks against one classifier, run through its own
  preprocessing (:mod:`ganviews.corruptions.attacks`, Adversarial Robustness Toolbox);
  ``targeted`` (default, as in the paper's Fig. 7) pushes each image towards another class
  than the classifier's clean prediction, untargeted away from the true label. ``epsilon``
  and ``step_size`` are in [0, 1] pixel units (8/255 ≈ 0.0314) for ``norm: inf``, L2 norms of
  the [0, 1] image for ``norm: "2"``.
- ``jpeg`` (``quality`` 1–100), ``blur`` (Gaussian, ``sigma`` in pixels) and ``noise``
  (additive Gaussian, ``sigma`` in [0, 1] pixel units, drawn from a generator seeded per
  image by (seed, image id, condition label), so an image's noise does not depend on its
  batch, device count or a retry).

Every kind is deterministic given its inputs: the attacks start from the clean image (no
random restart), JPEG and blur have no randomness, noise is seeded per image.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torchvision.transforms.functional as TF

from ganviews.core.errors import ConfigError
from ganviews.core.runtime import item_generator

CLEAN = "clean"  # the condition label of the untouched images
ATTACKS = ("fgsm", "pgd", "cw")
CORRUPTIONS = ("jpeg", "blur", "noise")
CONDITION_KINDS: dict[str, str] = {
    "fgsm": "fast gradient sign method (Goodfellow et al. 2015): one step of size epsilon",
    "pgd": "projected gradient descent (Madry et al. 2018): `steps` steps of `step_size` within epsilon",
    "cw": "Carlini-Wagner (2017) L2 optimisation attack (`norm` is ignored)",
    "jpeg": "JPEG compression at `quality` (1-100, lower is harsher)",
    "blur": "Gaussian blur with standard deviation `sigma` pixels",
    "noise": "additive Gaussian noise, standard deviation `sigma` in [0, 1] pixel units, seeded per image",
}
_SAFE_LABEL = re.compile(r"^[A-Za-z0-9_.\-]+$")  # labels name files and folders


@dataclass(frozen=True)
class Condition:
    """One input condition: a corruption kind and its settings (irrelevant fields are ignored)."""

    kind: str  # a key of CONDITION_KINDS: fgsm | pgd | cw | jpeg | blur | noise
    name: str = ""  # label in the logits table and store folder; default derived (see label)
    targeted: bool = True  # attacks: target another class than the clean prediction (paper Fig. 7)
    norm: Literal["inf", "2"] = "inf"  # attacks: the threat model's norm
    epsilon: float = 8 / 255  # fgsm / pgd: perturbation budget ([0, 1] units; L2 norm for "2")
    step_size: float = 2 / 255  # pgd: step per iteration (same units as epsilon)
    steps: int = 10  # pgd: iterations; cw: optimiser iterations per binary-search step
    confidence: float = 0.0  # cw: margin κ the adversarial class must win by
    learning_rate: float = 0.1  # cw: optimiser step size
    binary_search_steps: int = 3  # cw: searches over the trade-off constant c
    initial_const: float = 1.0  # cw: the trade-off constant c the search starts from
    quality: int = 75  # jpeg: encoder quality 1-100
    sigma: float = 1.0  # blur: σ in pixels; noise: σ in [0, 1] pixel units
    batch_size: int = 64  # attacks: images per attack batch (does not change results)

    def __post_init__(self) -> None:
        if self.kind not in CONDITION_KINDS:
            raise ConfigError(
                f"corruptions.kind: {self.kind!r} is not known (allowed: {', '.join(CONDITION_KINDS)})"
            )
        if self.norm not in ("inf", "2"):
            raise ConfigError(f"corruptions.norm: {self.norm!r}; allowed: 'inf', '2'")
        if self.kind == "fgsm" or self.kind == "pgd":
            _positive("epsilon", self.epsilon)
        if self.kind == "pgd":
            _positive("step_size", self.step_size)
        if self.kind in ("pgd", "cw"):
            _positive("steps", self.steps)
        if self.kind == "cw":
            _positive("learning_rate", self.learning_rate)
            _positive("binary_search_steps", self.binary_search_steps)
            _positive("initial_const", self.initial_const)
            if self.confidence < 0:
                raise ConfigError(f"corruptions.confidence: {self.confidence!r}; expected ≥ 0")
        if self.kind == "jpeg" and not (isinstance(self.quality, int) and 1 <= self.quality <= 100):
            raise ConfigError(f"corruptions.quality: {self.quality!r}; expected an integer 1-100")
        if self.kind in ("blur", "noise"):
            _positive("sigma", self.sigma)
        _positive("batch_size", self.batch_size)
        if self.name and (not _SAFE_LABEL.match(self.name) or self.name == CLEAN):
            raise ConfigError(
                f"corruptions.name: {self.name!r}; use letters, digits, '_', '.', '-' "
                f"(and not {CLEAN!r})"
            )

    @property
    def is_attack(self) -> bool:
        return self.kind in ATTACKS

    @property
    def label(self) -> str:
        """The name, else one derived from the settings: ``pgd-8_255``, ``fgsm-untargeted-8_255``,
        ``cw-l2``, ``jpeg-20``, ``blur-1.5``, ``noise-0.08``."""
        if self.name:
            return self.name
        if self.kind in CORRUPTIONS:
            value = self.quality if self.kind == "jpeg" else self.sigma
            return f"{self.kind}-{value:g}"
        parts = [self.kind] + ([] if self.targeted else ["untargeted"])
        if self.kind == "cw":
            return "-".join([*parts, "l2"])
        eps = _budget_text(self.epsilon) if self.norm == "inf" else f"l2-{self.epsilon:g}"
        return "-".join([*parts, eps])


def _positive(key: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ConfigError(f"corruptions.{key}: {value!r}; expected a positive number")


def _budget_text(eps: float) -> str:
    """8/255 → ``8_255`` (a whole number of grey levels), else the number itself (``0.05``)."""
    levels = eps * 255
    return f"{round(levels)}_255" if abs(levels - round(levels)) < 1e-6 else f"{eps:g}"


def check_labels(conditions: Sequence[Condition]) -> None:
    """ConfigError when two conditions share a label (their rows and stores would collide)."""
    seen: dict[str, int] = {}
    for i, cond in enumerate(conditions):
        if cond.label in seen:
            raise ConfigError(
                f"corruptions[{i}]: label {cond.label!r} is also corruptions[{seen[cond.label]}]'s; "
                "give one of them another `name`"
            )
        seen[cond.label] = i


# ---------------------------------------------------------------------------------------------
# common corruptions (no classifier involved)


def jpeg(images: torch.Tensor, quality: int) -> torch.Tensor:
    """uint8 [N, 3, H, W] → the same images after a JPEG round trip at ``quality`` (Pillow,
    4:2:0 chroma subsampling: what a saved JPEG holds)."""
    from PIL import Image

    out = []
    for img in images.cpu().permute(0, 2, 3, 1).numpy():  # [H, W, 3]
        buf = io.BytesIO()
        Image.fromarray(img, mode="RGB").save(buf, format="JPEG", quality=quality)
        out.append(np.asarray(Image.open(buf).convert("RGB")))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous().to(images.device)


def blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """uint8 [N, 3, H, W] → Gaussian-blurred (kernel ±3σ, reflect padding), rounded to uint8."""
    size = 2 * math.ceil(3 * sigma) + 1
    x = TF.gaussian_blur(images.float(), kernel_size=[size, size], sigma=[sigma, sigma])
    return x.round().clamp(0, 255).to(torch.uint8)


def gaussian_noise(
    images: torch.Tensor, sigma: float, *, seed: int, image_ids: Sequence[str], label: str
) -> torch.Tensor:
    """uint8 [N, 3, H, W] + N(0, σ²) per pixel ([0, 1] units), one generator per image."""
    noise = torch.stack(
        [
            torch.randn(images.shape[1:], generator=item_generator(seed, "noise", label, str(i)))
            for i in image_ids
        ]
    )  # [N, 3, H, W]
    x = images.float().cpu() / 255.0 + sigma * noise
    return (x * 255.0).round().clamp(0, 255).to(torch.uint8).to(images.device)


@dataclass(frozen=True)
class CorruptionResult:
    """Corrupted images and, for attacks, what the classifier made of them (else all −1)."""

    images: np.ndarray  # [N, 3, H, W] uint8
    clean_pred: np.ndarray  # [N] int64: prediction on the clean image
    adv_pred: np.ndarray  # [N] int64: prediction on the corrupted (8-bit) image
    target: np.ndarray  # [N] int64: targeted attacks' target class, else −1
    success: np.ndarray  # [N] bool: targeted: adv_pred == target; untargeted: adv_pred != label


def corrupt_images(
    condition: Condition,
    images: np.ndarray,
    *,
    image_ids: Sequence[str],
    labels: np.ndarray | None = None,
    classifier: torch.nn.Module | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> CorruptionResult:
    """Apply ``condition`` to aligned uint8 images ``[N, 3, H, W]``.

    Attacks need ``classifier`` (a :class:`ganviews.classifiers.model.Classifier`: images in
    [−1, 1] → logits) and ``labels`` (true class per image); corruptions need neither, and
    record no predictions.
    """
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ConfigError(
            f"images: expected uint8 [N, 3, H, W], got {images.dtype} {list(images.shape)}"
        )
    if len(image_ids) != len(images):
        raise ConfigError(f"image_ids: {len(image_ids)} ids for {len(images)} images")
    n = len(images)
    if condition.is_attack:
        if classifier is None or labels is None:
            raise ConfigError(
                f"condition {condition.label!r}: an attack needs the classifier and the labels"
            )
        from ganviews.corruptions.attacks import attack

        return attack(condition, images, np.asarray(labels), classifier, device=device)
    x = torch.from_numpy(images)
    if condition.kind == "jpeg":
        out = jpeg(x, condition.quality)
    elif condition.kind == "blur":
        out = blur(x, condition.sigma)
    else:
        out = gaussian_noise(
            x, condition.sigma, seed=seed, image_ids=image_ids, label=condition.label
        )
    none = np.full(n, -1, dtype=np.int64)
    return CorruptionResult(out.numpy(), none, none.copy(), none.copy(), np.zeros(n, dtype=bool))
