"""White-box adversarial attacks on aligned images (Chai et al. 2021, Sec. 4.1, Fig. 7).

FGSM (Goodfellow et al. 2015), PGD (Madry et al. 2018) and Carlini-Wagner L2 (2017) come from
the Adversarial Robustness Toolbox (ART, ``art.attacks.evasion``), not written here. The
classifier is handed to ART wrapped so that ART sees images in [0, 1] and the project's
:class:`~ganviews.classifiers.model.Classifier` still applies its *own* preprocessing (clamp,
trim, resize, crop, normalisation) inside the differentiated graph: the attack targets
exactly the function the evaluation scores. A single-logit binary classifier is shown to ART
as the two logits (0, z), whose softmax equals (1 − σ(z), σ(z)), so ART's cross-entropy is
the classifier's binary cross-entropy.

Targeted attacks (the paper's setting) push each image towards another class than the
clean prediction: the other class for binary classifiers, the runner-up class for K ≥ 3.
Untargeted attacks push away from the true label. PGD starts at the clean image (no random
restart), so every attack is deterministic. The adversarial images are rounded to 8 bits
(what a saved image holds) before the classifier scores them again; success is measured on
those rounded images.
"""

from __future__ import annotations

import contextlib
import logging

import numpy as np
import torch
from torch import nn

from ganviews.corruptions.conditions import Condition, CorruptionResult

log = logging.getLogger(__name__)


class UnitInput(nn.Module):
    """A classifier on [−1, 1] images seen as one on [0, 1] images with ≥ 2 logits."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(x * 2.0 - 1.0)  # [N, K]
        if logits.shape[1] == 1:  # sigmoid binary → (0, z): softmax = (1 − σ(z), σ(z))
            logits = torch.cat([torch.zeros_like(logits), logits], dim=1)  # [N, 2]
        return logits


def _estimator(classifier: nn.Module, shape: tuple[int, ...], device: torch.device):
    from art.estimators.classification import PyTorchClassifier

    model = UnitInput(classifier).eval()
    num_classes = max(int(getattr(classifier, "num_outputs", 2)), 2)
    return PyTorchClassifier(
        model=model,
        loss=nn.CrossEntropyLoss(),
        input_shape=shape,
        nb_classes=num_classes,
        clip_values=(0.0, 1.0),
        device_type="gpu" if device.type == "cuda" else "cpu",
    )


def _art_attack(condition: Condition, estimator):
    from art.attacks.evasion import (
        CarliniL2Method,
        FastGradientMethod,
        ProjectedGradientDescentPyTorch,
    )

    norm = np.inf if condition.norm == "inf" else 2
    common = {"targeted": condition.targeted, "batch_size": condition.batch_size}
    if condition.kind == "fgsm":
        return FastGradientMethod(
            estimator, norm=norm, eps=condition.epsilon, num_random_init=0, **common
        )
    if condition.kind == "pgd":
        return ProjectedGradientDescentPyTorch(
            estimator,
            norm=norm,
            eps=condition.epsilon,
            eps_step=condition.step_size,
            max_iter=condition.steps,
            num_random_init=0,
            verbose=False,
            **common,
        )
    return CarliniL2Method(
        estimator,
        confidence=condition.confidence,
        learning_rate=condition.learning_rate,
        binary_search_steps=condition.binary_search_steps,
        max_iter=condition.steps,
        initial_const=condition.initial_const,
        verbose=False,
        **common,
    )


def _predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> np.ndarray:
    with torch.no_grad():
        out = [model(x[i : i + batch_size]).argmax(dim=1) for i in range(0, len(x), batch_size)]
    return torch.cat(out).cpu().numpy().astype(np.int64)  # [N]


def attack(
    condition: Condition,
    images: np.ndarray,
    labels: np.ndarray,
    classifier: nn.Module,
    *,
    device: torch.device | str = "cpu",
) -> CorruptionResult:
    """Attack uint8 images ``[N, 3, H, W]`` (true ``labels`` [N]) → 8-bit adversarial images."""
    device = torch.device(device)
    classifier = classifier.to(device).eval()
    model = UnitInput(classifier).eval()
    x = torch.from_numpy(images).to(device=device, dtype=torch.float32) / 255.0  # [N, 3, H, W]
    bs = condition.batch_size
    clean_pred = _predict(model, x, bs)
    labels = np.asarray(labels, dtype=np.int64)
    num_classes = max(int(getattr(classifier, "num_outputs", 2)), 2)
    if condition.targeted:
        if num_classes == 2:
            target = 1 - clean_pred
        else:  # the runner-up class of the clean logits
            with torch.no_grad():
                logits = torch.cat([model(x[i : i + bs]) for i in range(0, len(x), bs)])
            target = logits.topk(2, dim=1).indices[:, 1].cpu().numpy().astype(np.int64)
        goal = target
    else:
        target = np.full(len(images), -1, dtype=np.int64)
        goal = labels
    scope = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    with scope:
        estimator = _estimator(classifier, tuple(images.shape[1:]), device)
        adv = _art_attack(condition, estimator).generate(
            x=x.cpu().numpy(), y=np.eye(num_classes, dtype=np.float32)[goal]
        )  # [N, 3, H, W] float in [0, 1]
    adv8 = (np.clip(adv, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    adv_pred = _predict(model, torch.from_numpy(adv8).to(device, torch.float32) / 255.0, bs)
    success = adv_pred == target if condition.targeted else adv_pred != labels
    log.info(
        "%s: success %.3f on %d images (clean accuracy %.3f, attacked %.3f)",
        condition.label,
        float(success.mean()) if len(success) else float("nan"),
        len(images),
        float((clean_pred == labels).mean()) if len(labels) else float("nan"),
        float((adv_pred == labels).mean()) if len(labels) else float("nan"),
    )
    return CorruptionResult(adv8, clean_pred, adv_pred, target, success)
