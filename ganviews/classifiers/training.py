"""Training and fine-tuning classifiers on real images and on GAN views (paper Sec. 3.4, Eq. 8).

Eq. 8 trains C on a mixture: with probability 1 − p a sample is the real image x, with
probability p it is a GAN image of its inverted latent — the reconstruction G(w*)
(``source="recon"``) or a freshly perturbed view G(w̃), w̃ ~ perturb(w*) (``source="views"``).
The official code flips one coin per batch; here every *sample* flips its own (the same
expectation, lower-variance gradients, and BatchNorm statistics see both domains in every
batch). Only the samples that drew "generated" are rendered, on the fly, on the device.

Data is handed in, never read from paths: tensors (uint8 or float images, labels, w+) or
index readers (``reader(indices) → array``, e.g. a Zarr store's ``read_array``), read one
batch ahead in a background thread. Every random choice of an epoch — order, real vs
generated, flip, the perturbation of each view — is drawn from seeds derived from
(seed, epoch, image id), so an epoch is reproducible on its own: a run resumed from its
checkpoint (model, optimiser, scheduler, epoch, RNG state) continues exactly as the
uninterrupted run would have.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from ganviews.classifiers.batches import ArrayLike
from ganviews.classifiers.model import Classifier, classifier_config, head_prefix
from ganviews.core.config import to_dict
from ganviews.core.errors import CheckpointError, ConfigError
from ganviews.core.runtime import item_seed, resolve_device
from ganviews.core.weights_io import (
    load_training_state,
    restore_rng_states,
    rng_states,
    save_training_state,
)

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "ganviews.classifier-training"
CHECKPOINT_VERSION = 1


# ----------------------------------------------------------------------------- configuration


_MIN_LR = 1e-6  # plateau scheduling's lr floor (the authors' ReduceLROnPlateau min_lr)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation hyperparameters (the keyword arguments of :func:`train_classifier`)."""

    epochs: int = 10  # passes over the training set
    lr: float = 1e-3  # learning rate of the head (and of the body unless backbone_lr_scale ≠ 1)
    weight_decay: float = 0.0  # L2 (Adam) / decoupled (AdamW) / L2 (SGD) weight decay
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"  # the official scripts use Adam
    betas: tuple[float, float] = (0.9, 0.999)  # Adam(W) betas
    momentum: float = 0.9  # SGD momentum (Nesterov off)
    backbone_lr_scale: float = (
        1.0  # lr factor for all but the output layer (official ImageNet fine-tuning: 0.1)
    )
    scheduler: Literal["cosine", "constant", "plateau"] = "cosine"  # per-epoch lr schedule
    label_smoothing: float = 0.0  # CE / BCE label smoothing
    select: Literal["last", "best"] = "last"  # keep the last epoch or the best validation accuracy
    # stop once the lr is at the plateau floor (1e-6) and this many epochs have passed since the
    # best validation epoch (the authors' *_latent.py scripts: 50); None: run every epoch
    early_stop: int | None = None
    autocast: bool = False  # bfloat16 autocast on CUDA (ignored on CPU)
    log_every: int = 50  # log running loss every this many steps

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"train.epochs: {self.epochs!r}; expected ≥ 1")
        if not self.lr > 0:
            raise ConfigError(f"train.lr: {self.lr!r}; expected > 0")
        if self.weight_decay < 0 or not 0 <= self.label_smoothing < 1:
            raise ConfigError(
                f"train.weight_decay/label_smoothing: {self.weight_decay!r}/{self.label_smoothing!r}; "
                "expected weight_decay ≥ 0 and label_smoothing in [0, 1)"
            )
        if self.backbone_lr_scale < 0:
            raise ConfigError(f"train.backbone_lr_scale: {self.backbone_lr_scale!r}; expected ≥ 0")
        if self.early_stop is not None and self.early_stop < 0:
            raise ConfigError(f"train.early_stop: {self.early_stop!r}; expected ≥ 0 or null")


@dataclass(frozen=True)
class EpochStats:
    """What one epoch did (one row of the training history)."""

    epoch: int  # 0-based
    train_loss: float  # mean loss over training samples
    train_acc: float  # accuracy over training samples (in train mode)
    n_train: int  # training samples seen
    n_generated: int  # of which GAN images
    lr: float  # learning rate of the head during the epoch
    seconds: float  # wall time of the epoch (training + validation)
    val_loss: float | None = None  # mean validation loss (eval mode)
    val_acc: float | None = None  # validation accuracy


@dataclass
class TrainResult:
    """The outcome of :func:`train_classifier`; the classifier itself is trained in place."""

    history: list[EpochStats] = field(
        default_factory=list
    )  # one row per epoch, resumed ones included
    best_epoch: int | None = None  # epoch of the best validation accuracy (None without validation)
    best_val_acc: float | None = None  # that accuracy
    selected_epoch: int = -1  # the epoch whose weights C holds now
    resumed_from: int = 0  # epochs already done when this call started


# ----------------------------------------------------------------------------- batch sources


# ----------------------------------------------------------------------------- training


def _make_optimizer(C: Classifier, cfg: TrainConfig) -> torch.optim.Optimizer:
    prefix = head_prefix(C)
    head = [p for n, p in C.backbone.named_parameters() if n.startswith(prefix)]
    body = [p for n, p in C.backbone.named_parameters() if not n.startswith(prefix)]
    groups = [{"params": head}, {"params": body, "lr": cfg.lr * cfg.backbone_lr_scale}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


def _make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig) -> Any:
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    if cfg.scheduler == "plateau":  # on validation accuracy, as the official scripts
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="max", patience=10, min_lr=_MIN_LR
        )
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def _loss(
    C: Classifier, logits: torch.Tensor, labels: torch.Tensor, smoothing: float
) -> torch.Tensor:
    if C.num_outputs == 1:
        target = labels.float() * (1 - smoothing) + 0.5 * smoothing  # [B]
        return F.binary_cross_entropy_with_logits(logits[:, 0].float(), target, reduction="sum")
    return F.cross_entropy(logits.float(), labels, label_smoothing=smoothing, reduction="sum")


def _correct(C: Classifier, logits: torch.Tensor, labels: torch.Tensor) -> int:
    pred = (logits[:, 0] > 0).long() if C.num_outputs == 1 else logits.argmax(dim=1)
    return int((pred == labels).sum())


def _check_labels(C: Classifier, labels: torch.Tensor) -> None:
    bad = labels[(labels < 0) | (labels >= C.num_classes)]
    if len(bad):
        raise ValueError(
            f"labels: value {int(bad[0])} is outside 0…{C.num_classes - 1} for classifier "
            f"{C.name!r} with num_outputs={C.num_outputs}"
        )


def _iterate(batches: Any, epoch: int) -> Iterable[Any]:
    if hasattr(batches, "epoch"):
        return batches.epoch(epoch)
    if callable(batches):
        return batches(epoch)
    return batches


def _unpack(item: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int, bool]:
    """(images, labels, number of GAN samples, geometry): a 4th item False means the images are
    already the backbone's input windows (photo source), classified with normalisation only."""
    images, labels = item[0], item[1]
    generated = item[2] if len(item) > 2 and item[2] is not None else None
    n_gen = int(generated.sum()) if generated is not None else 0
    geometry = bool(item[3]) if len(item) > 3 else True
    images = images.to(device, non_blocking=True)
    return images, labels.to(device, non_blocking=True).long(), n_gen, geometry


def _autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(
    C: Classifier,
    batches: Any,
    *,
    device: str | torch.device = "cpu",
    epoch: int = 0,
    label_smoothing: float = 0.0,
    autocast: bool = False,
) -> tuple[float, float]:
    """(mean loss, accuracy) of C in eval mode over a batch source."""
    device = resolve_device(device)
    was_training = C.training
    C.eval()
    total, loss_sum, correct = 0, 0.0, 0
    for item in _iterate(batches, epoch):
        images, labels, _, geometry = _unpack(item, device)
        _check_labels(C, labels)
        with _autocast(device, autocast):
            logits = C(images, geometry=geometry)  # [B, K]
        loss_sum += float(_loss(C, logits, labels, label_smoothing))
        correct += _correct(C, logits, labels)
        total += len(labels)
    C.train(was_training)
    if total == 0:
        raise ValueError("val_batches: yielded no samples")
    return loss_sum / total, correct / total


def train_classifier(
    C: Classifier,
    batches: Any,
    *,
    epochs: int = 10,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    device: str | torch.device = "cpu",
    seed: int = 0,
    checkpoint: str | Path | None = None,
    resume: bool = True,
    val_batches: Any = None,
    optimizer: Literal["adam", "adamw", "sgd"] = "adam",
    betas: tuple[float, float] = (0.9, 0.999),
    momentum: float = 0.9,
    backbone_lr_scale: float = 1.0,
    scheduler: Literal["cosine", "constant", "plateau"] = "cosine",
    label_smoothing: float = 0.0,
    select: Literal["last", "best"] = "last",
    early_stop: int | None = None,
    autocast: bool = False,
    log_every: int = 50,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> TrainResult:
    """Train ``C`` in place on ``batches`` (BCE-with-logits for 1 output, cross-entropy for ≥ 2).

    ``batches`` / ``val_batches``: a batch source with ``.epoch(e)`` (:class:`ImageBatches`,
    :class:`GanBatches`), a callable ``f(e)``, or a re-iterable; each item is
    ``(images [B, 3, H, W] in [-1, 1], labels [B])`` (optionally a third "generated" mask and
    a fourth ``geometry`` flag: False = photo windows, classified with normalisation only).
    For an exact resume the source must yield the same batches for the same epoch, as the
    classes here do. ``checkpoint``: written atomically after every epoch (model, optimiser,
    scheduler, epoch, RNG states, history); with ``resume`` an existing one is continued —
    its classifier and hyperparameters must match (``epochs`` may grow unless the schedule
    is cosine). ``plateau`` scheduling, ``select="best"`` and ``early_stop`` need ``val_batches``;
    ``early_stop=k`` ends training once the lr is at the plateau floor (1e-6) and k epochs have
    passed since the best validation epoch (the authors' rule, k = 50).
    Returns the history; afterwards C is in eval mode with requires_grad off.
    """
    cfg = TrainConfig(
        epochs=epochs,
        lr=lr,
        weight_decay=weight_decay,
        optimizer=optimizer,
        betas=tuple(betas),
        momentum=momentum,
        backbone_lr_scale=backbone_lr_scale,
        scheduler=scheduler,
        label_smoothing=label_smoothing,
        select=select,
        early_stop=early_stop,
        autocast=autocast,
        log_every=log_every,
    )
    if val_batches is None and (scheduler == "plateau" or select == "best"):
        raise ValueError(f"val_batches: required by scheduler={scheduler!r} / select={select!r}")
    device = resolve_device(device)
    C.to(device).train().requires_grad_(True)
    opt = _make_optimizer(C, cfg)
    sched = _make_scheduler(opt, cfg)
    result = TrainResult()
    best_state: dict[str, torch.Tensor] | None = None
    identity = _identity(C, cfg, seed)
    ckpt_path = Path(checkpoint) if checkpoint is not None else None
    if ckpt_path is not None and resume and ckpt_path.is_file():
        best_state = _restore(ckpt_path, C, opt, sched, result, identity, cfg)
        log.info("resuming %s from %s after epoch %d", C.name, ckpt_path, result.resumed_from - 1)

    for epoch in range(result.resumed_from, cfg.epochs):
        stats = _run_epoch(C, batches, opt, cfg, device, seed, epoch)
        if val_batches is not None:
            val_loss, val_acc = evaluate(
                C,
                val_batches,
                device=device,
                epoch=0,
                label_smoothing=cfg.label_smoothing,
                autocast=cfg.autocast,
            )
            stats = EpochStats(**{**asdict(stats), "val_loss": val_loss, "val_acc": val_acc})
            if result.best_val_acc is None or val_acc > result.best_val_acc:
                result.best_epoch, result.best_val_acc = epoch, val_acc
                best_state = (
                    copy.deepcopy(C.backbone.state_dict()) if cfg.select == "best" else None
                )
        if cfg.scheduler == "plateau":
            sched.step(stats.val_acc)
        else:
            sched.step()
        result.history.append(stats)
        log.info("%s epoch %d/%d: %s", C.name, epoch + 1, cfg.epochs, _fmt(stats))
        if ckpt_path is not None:
            _save_checkpoint(ckpt_path, C, opt, sched, result, identity, epoch, best_state)
        if on_epoch is not None:
            on_epoch(stats)
        if _early_stop(cfg, opt, result, epoch):
            log.info("%s: early stop after epoch %d (best %d)", C.name, epoch, result.best_epoch)
            break

    result.selected_epoch = len(result.history) - 1
    if cfg.select == "best" and best_state is not None and result.best_epoch is not None:
        C.backbone.load_state_dict(best_state)
        result.selected_epoch = result.best_epoch
    C._source_sha256 = None  # the weights changed: hash them afresh
    C.eval().requires_grad_(False)
    return result


def _early_stop(cfg: TrainConfig, opt, result: TrainResult, epoch: int) -> bool:
    """The authors' rule: lr at the floor and ``early_stop`` epochs since the best val epoch."""
    if cfg.early_stop is None or result.best_epoch is None:
        return False
    at_floor = float(opt.param_groups[0]["lr"]) <= _MIN_LR
    return at_floor and epoch >= result.best_epoch + cfg.early_stop


def _run_epoch(C, batches, opt, cfg: TrainConfig, device, seed: int, epoch: int) -> EpochStats:
    torch.manual_seed(
        item_seed(seed, "train-global-rng", epoch)
    )  # any global draw (dropout) is per epoch
    C.train()
    start = time.perf_counter()
    total, n_gen, loss_sum, correct = 0, 0, 0.0, 0
    for step, item in enumerate(_iterate(batches, epoch)):
        images, labels, g, geometry = _unpack(item, device)  # [B, 3, H, W], [B]
        _check_labels(C, labels)
        with _autocast(device, cfg.autocast):
            logits = C(images, geometry=geometry)  # [B, K]
        loss = _loss(C, logits, labels, cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        (loss / len(labels)).backward()
        opt.step()
        total += len(labels)
        n_gen += g
        loss_sum += float(loss.detach())
        correct += _correct(C, logits.detach(), labels)
        if cfg.log_every and (step + 1) % cfg.log_every == 0:
            log.info(
                "%s epoch %d step %d: loss %.4f acc %.3f",
                C.name,
                epoch,
                step + 1,
                loss_sum / total,
                correct / total,
            )
    if total == 0:
        raise ValueError(f"batches: yielded no samples in epoch {epoch}")
    return EpochStats(
        epoch=epoch,
        train_loss=loss_sum / total,
        train_acc=correct / total,
        n_train=total,
        n_generated=n_gen,
        lr=float(opt.param_groups[0]["lr"]),
        seconds=time.perf_counter() - start,
    )


def _fmt(s: EpochStats) -> str:
    val = f", val loss {s.val_loss:.4f} acc {s.val_acc:.4f}" if s.val_acc is not None else ""
    return f"loss {s.train_loss:.4f} acc {s.train_acc:.4f} ({s.n_generated}/{s.n_train} GAN){val}, lr {s.lr:.2e}, {s.seconds:.1f}s"


# ----------------------------------------------------------------------------- checkpoints


def _identity(C: Classifier, cfg: TrainConfig, seed: int) -> dict[str, Any]:
    hyper = {k: v for k, v in to_dict(cfg).items() if k not in ("epochs", "log_every")}
    if hyper.get("early_stop") is None:  # checkpoints written before the field still resume
        hyper.pop("early_stop", None)
    return {"classifier": to_dict(C.config), "train": hyper, "seed": seed}


def _save_checkpoint(
    path: Path, C, opt, sched, result: TrainResult, identity, epoch: int, best_state
) -> None:
    state = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "identity": json.dumps(identity, sort_keys=True),
        "epoch": epoch,
        "model": C.backbone.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        **rng_states(),
        "history": json.dumps([asdict(h) for h in result.history]),
        "best": json.dumps({"epoch": result.best_epoch, "val_acc": result.best_val_acc}),
    }
    if best_state is not None:
        state["best_model"] = best_state
    save_training_state(state, path)


def _restore(path: Path, C, opt, sched, result: TrainResult, identity, cfg: TrainConfig):
    state = load_training_state(path, format_name=CHECKPOINT_FORMAT, what="classifier training")
    stored = json.loads(state["identity"])
    problems = _diff(stored, identity)
    if problems:
        raise CheckpointError(
            f"{path}: was written by a different run, cannot resume: {'; '.join(problems[:6])} "
            "(delete it or start without resume)"
        )
    history = [EpochStats(**h) for h in json.loads(state["history"])]
    done = int(state["epoch"]) + 1
    if cfg.scheduler == "cosine" and _stored_tmax(state) != cfg.epochs:
        raise CheckpointError(
            f"{path}: its cosine schedule was planned for {_stored_tmax(state)} epochs, now epochs="
            f"{cfg.epochs}; use the same epochs (or a constant/plateau schedule) to resume"
        )
    C.backbone.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    restore_rng_states(state)
    best = json.loads(state["best"])
    result.history, result.resumed_from = history, done
    result.best_epoch, result.best_val_acc = best["epoch"], best["val_acc"]
    best_state = state.get("best_model")
    return (
        {k: v.to(next(C.parameters()).device) for k, v in best_state.items()}
        if best_state
        else None
    )


def _stored_tmax(state: dict[str, Any]) -> int:
    return int(state["scheduler"].get("T_max", -1))


def _diff(stored: Any, given: Any, prefix: str = "") -> list[str]:
    if isinstance(stored, dict) and isinstance(given, dict):
        out = []
        for key in sorted(set(stored) | set(given)):
            out += _diff(stored.get(key), given.get(key), f"{prefix}.{key}" if prefix else key)
        return out
    return [] if stored == given else [f"{prefix}: checkpoint {stored!r}, now {given!r}"]


def classifier_for_labels(config: Any, labels: ArrayLike) -> Any:
    """A ClassifierConfig whose num_outputs defaults to the label count (2 classes → 1 sigmoid logit)."""
    data = dict(to_dict(config)) if not isinstance(config, dict) else dict(config)
    if "num_outputs" not in data:
        k = int(np.max(np.asarray(labels))) + 1
        data["num_outputs"] = 1 if k <= 2 else k
    return classifier_config(data)


_MOVED_TO_BATCHES = (
    "SourceConfig",
    "make_batches",
    "ImageBatches",
    "GanBatches",
    "Batch",
    "to_signed",
)


def __getattr__(name: str):
    """Names that moved to :mod:`ganviews.classifiers.batches` stay importable from here."""
    if name in _MOVED_TO_BATCHES:
        from ganviews.classifiers import batches

        return getattr(batches, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
