"""Batch sources of classifier training (Eq. 8): real images, or a mixture of real images and GAN
images G(w*) / G(w̃) rendered on the fly from their latents (:class:`SourceConfig`,
:func:`make_batches`), one batch read ahead, reproducible per (seed, epoch).

Real images are the aligned frames, or with ``real_source: photo`` (the authors' cars,
chail/gan-ensembling ``data/data_cars.py`` ``imtrain`` / ``imval`` and
``TensorCombinedTransformTrain``) the raw photos: every sample is then a ``photo_size``² window
the classifier only normalises (``Batch.geometry`` False).
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from ganviews.classifiers.augment import (
    crop_seeds,
    photo_center_windows,
    photo_resized_crops,
    resized_crops,
)
from ganviews.core.errors import ConfigError
from ganviews.core.images import uint8_to_signed
from ganviews.core.runtime import item_seed

log = logging.getLogger(__name__)


ArrayLike = torch.Tensor | np.ndarray
Reader = Callable[[np.ndarray], ArrayLike]  # sorted int64 indices → rows, in that order


@dataclass(frozen=True)
class SourceConfig:
    """What each training sample is (paper Eq. 8): a real image, G(w*) or a perturbed view G(w̃)."""

    source: Literal["real", "recon", "views"] = (
        "real"  # real images only, reconstructions, or perturbed views
    )
    p_generated: float = (
        0.5  # chance a sample is its GAN image instead of the real one (1 without real images)
    )
    method: Literal["isotropic", "pca", "stylemix"] = "isotropic"  # views: perturbation family
    layers: str = "fine"  # views: layer group of w+ perturbed ("coarse" / "fine" / "middle")
    setting: float | None = (
        None  # views: σ for isotropic / pca (official picks: docs/classifiers.md)
    )
    batch_size: int = 32  # samples per optimisation step
    flip: bool = True  # random horizontal flip of every training sample (p = 0.5)
    resized_crop: tuple[float, float] | None = (
        None  # RandomResizedCrop area scale bounds of every sample (the authors: [0.8, 1.0]); None = off
    )
    crop_ratio: tuple[float, float] = (0.75, 4 / 3)  # RandomResizedCrop aspect-ratio bounds
    crop_region: tuple[float, float] = (
        1.0,
        1.0,
    )  # centred fraction of (H, W) the box is drawn in (cars: [0.75, 1.0], inside the bands)
    crop_window: tuple[float, float] = (
        1.0,
        1.0,
    )  # centred fraction of (H, W) the classifier keeps; the box is resized into it (cats: 0.875)
    noise_mode: Literal["const", "none"] = "const"  # synthesis noise (both reproducible)
    # real images: "aligned" frames, or the raw "photo" (the authors' cars): RandomResizedCrop
    # (photo_size) of the full photo with PIL's Lanczos, or without resized_crop Resize +
    # CenterCrop (imval); GAN images: the box inside crop_region, bilinear to photo_size²; the
    # classifier only normalises these windows. None: "aligned" (the pipeline: views.original_source)
    real_source: Literal["aligned", "photo"] | None = None
    photo_size: int | None = (
        None  # side of the photo windows (None: 256; pipeline: views.photo_size)
    )

    def __post_init__(self) -> None:
        if not 0.0 <= self.p_generated <= 1.0:
            raise ConfigError(
                f"views.p_generated: {self.p_generated!r}; expected a probability in [0, 1]"
            )
        if self.batch_size < 1:
            raise ConfigError(f"views.batch_size: {self.batch_size!r}; expected ≥ 1")
        if self.resized_crop is not None:
            lo, hi = self.resized_crop
            if not 0.0 < lo <= hi <= 1.0:
                raise ConfigError(
                    f"views.resized_crop: {list(self.resized_crop)!r}; expected [lo, hi] with 0 < lo ≤ hi ≤ 1"
                )
        if not 0.0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ConfigError(
                f"views.crop_ratio: {list(self.crop_ratio)!r}; expected [lo, hi] with 0 < lo ≤ hi"
            )
        for key in ("crop_region", "crop_window"):
            value = getattr(self, key)
            if len(value) != 2 or any(not 0.0 < v <= 1.0 for v in value):
                raise ConfigError(f"views.{key}: {list(value)!r}; expected 2 fractions in (0, 1]")
        if self.real_source not in (None, "aligned", "photo"):
            raise ConfigError(
                f"views.real_source: {self.real_source!r}; allowed: 'aligned', 'photo' (or null)"
            )
        if self.photo_size is not None and self.photo_size < 1:
            raise ConfigError(f"views.photo_size: {self.photo_size!r}; expected ≥ 1")
        if self.photo is not None and tuple(self.crop_window) != (1.0, 1.0):
            raise ConfigError(
                f"views.crop_window: {list(self.crop_window)!r} with real_source 'photo'; the "
                "photo windows are the classifier's input (drop crop_window)"
            )
        if self.photo is not None and self.source != "real" and self.resized_crop is None:
            raise ConfigError(
                f"views.resized_crop: null with real_source 'photo' and source {self.source!r}; "
                "GAN images become photo-sized windows by the RandomResizedCrop (the authors: "
                "[0.8, 1.0]), or set real_source: aligned"
            )
        if self.source == "views" and self.method != "stylemix" and self.setting is None:
            raise ConfigError(
                f"views.setting: method {self.method!r} needs σ; see docs/classifiers.md for the official values"
            )

    @property
    def photo(self) -> int | None:
        """The side of the photo windows with ``real_source: photo``, else None."""
        return (self.photo_size or 256) if self.real_source == "photo" else None


def make_batches(
    cfg: SourceConfig,
    *,
    labels: ArrayLike,
    image_ids: Sequence[str] | None = None,
    images: ArrayLike | Reader | None = None,
    ws: ArrayLike | Reader | None = None,
    G: torch.nn.Module | None = None,
    pca: Any = None,
    c: torch.Tensor | None = None,
    seed: int = 0,
    shuffle: bool = True,
) -> ImageBatches | GanBatches:
    """The batch source ``cfg`` describes: :class:`ImageBatches` for "real", else :class:`GanBatches`."""
    if cfg.source == "real":
        if images is None:
            raise ValueError("images: source 'real' needs the real images")
        return ImageBatches(
            images,
            labels,
            image_ids=image_ids,
            batch_size=cfg.batch_size,
            seed=seed,
            shuffle=shuffle,
            flip=cfg.flip,
            crop=_crop_options(cfg),
            photo_size=cfg.photo,
        )
    if G is None or ws is None:
        raise ValueError(
            f"G, ws: source {cfg.source!r} renders G(w) and needs the generator and the latents"
        )
    return GanBatches(
        G,
        ws,
        labels,
        image_ids=image_ids,
        images=images,
        source=cfg.source,
        p_generated=cfg.p_generated,
        method=cfg.method,
        layers=cfg.layers,
        setting=cfg.setting,
        pca=pca,
        c=c,
        noise_mode=cfg.noise_mode,
        batch_size=cfg.batch_size,
        seed=seed,
        shuffle=shuffle,
        flip=cfg.flip,
        crop=_crop_options(cfg),
        photo_size=cfg.photo,
    )


def _crop_options(cfg: SourceConfig) -> dict[str, Any] | None:
    if cfg.resized_crop is None:
        return None
    return {
        "scale": tuple(cfg.resized_crop),
        "ratio": tuple(cfg.crop_ratio),
        "region": tuple(cfg.crop_region),
        "window": tuple(cfg.crop_window),
    }


class Batch(NamedTuple):
    """One training batch as the batch sources yield it."""

    images: torch.Tensor  # [B, 3, H, W] float in [-1, 1]
    labels: torch.Tensor  # [B] int64
    generated: torch.Tensor | None = None  # [B] bool: which samples are GAN images
    geometry: bool = True  # False: the images are the backbone's input windows (photo source)


class _Rows:
    """Row access to a tensor/array or a reader function, with a length."""

    def __init__(self, data: ArrayLike | Reader, n: int, name: str) -> None:
        if isinstance(data, (torch.Tensor, np.ndarray)):
            if data.shape[0] != n:
                raise ValueError(f"{name}: {data.shape[0]} rows, expected {n} (one per label)")
        elif not callable(data):
            raise TypeError(
                f"{name}: expected a tensor, an array or a reader(indices), got {type(data).__name__}"
            )
        self.data, self.n, self.name = data, n, name

    def __call__(self, idx: np.ndarray) -> torch.Tensor:
        if isinstance(self.data, torch.Tensor):
            return self.data[torch.as_tensor(idx, dtype=torch.long)]
        if isinstance(self.data, np.ndarray):
            return torch.from_numpy(np.ascontiguousarray(self.data[idx]))
        order = np.argsort(idx, kind="stable")  # readers (Zarr) like sorted indices
        rows = torch.as_tensor(np.asarray(self.data(idx[order])))
        if rows.shape[0] != len(idx):
            raise ValueError(
                f"{self.name}: reader returned {rows.shape[0]} rows for {len(idx)} indices"
            )
        out = torch.empty_like(rows)
        out[torch.as_tensor(order)] = rows
        return out


class _PhotoRows:
    """Row access to full-size photos (uint8 ``[3, H, W]`` of any sizes): a sequence of them or
    a reader(sorted indices) → such a list; rows come back as a list in the order asked."""

    def __init__(self, data: Sequence[torch.Tensor] | Reader, n: int) -> None:
        if not callable(data) and len(data) != n:
            raise ValueError(f"images: {len(data)} photos, expected {n} (one per label)")
        self.data = data

    def __call__(self, idx: np.ndarray) -> list[torch.Tensor]:
        if not callable(self.data):
            return [self.data[int(i)] for i in idx]
        order = np.argsort(idx, kind="stable")
        photos = list(self.data(idx[order]))
        if len(photos) != len(idx):
            raise ValueError(f"images: reader returned {len(photos)} photos for {len(idx)} indices")
        out: list[torch.Tensor] = [photos[0]] * len(idx)
        for pos, photo in zip(order, photos, strict=True):
            out[pos] = photo
        return out


def to_signed(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] → float [-1, 1]; float images pass through as float32."""
    if images.dtype == torch.uint8:
        return uint8_to_signed(images)
    if not images.is_floating_point():
        raise TypeError(f"images: expected uint8 or float, got {images.dtype}")
    return images.float()


class _Source:
    """Shared bookkeeping: labels, ids, per-epoch order and per-sample coins."""

    def __init__(
        self,
        labels: ArrayLike,
        image_ids: Sequence[str] | None,
        *,
        batch_size: int,
        seed: int,
        shuffle: bool,
        flip: bool,
        drop_last: bool,
        crop: dict[str, Any] | None = None,
        photo_size: int | None = None,
    ) -> None:
        self.labels = torch.as_tensor(np.asarray(labels)).long()  # [N]
        if self.labels.ndim != 1 or len(self.labels) == 0:
            raise ValueError(
                f"labels: expected a non-empty 1-D array, got shape {list(self.labels.shape)}"
            )
        n = len(self.labels)
        self.image_ids = (
            [str(i) for i in image_ids] if image_ids is not None else [str(i) for i in range(n)]
        )
        if len(self.image_ids) != n:
            raise ValueError(f"image_ids: {len(self.image_ids)} ids for {n} labels")
        if batch_size < 1:
            raise ValueError(f"batch_size: {batch_size!r}; expected ≥ 1")
        self.batch_size, self.seed, self.shuffle, self.flip, self.drop_last = (
            batch_size,
            seed,
            shuffle,
            flip,
            drop_last,
        )
        self.crop = crop  # resized_crops() options (scale, ratio, region, window) or None
        self.photo_size = photo_size  # real images are full-size photos → windows of this side

    def _augment(
        self, images: torch.Tensor, sel: torch.Tensor, epoch: int, generated: torch.Tensor
    ) -> torch.Tensor:
        """The RandomResizedCrop of every sample (when enabled), each from its own seed;
        real photos antialiased like PIL, GAN images plain bilinear (the authors' two paths)."""
        if self.crop is None:
            return images
        ids = [self.image_ids[int(i)] for i in sel]
        return resized_crops(
            images, crop_seeds(self.seed, ids, epoch), antialias=~generated.cpu(), **self.crop
        )

    def _photo_windows(self, photos: list[torch.Tensor], sel: torch.Tensor, epoch: int):
        """Real side of ``real_source: photo``: the authors' ``imtrain`` (RandomResizedCrop of
        the photo) with a crop, else their ``imval`` (Resize + CenterCrop) → [b, 3, S, S] in [-1, 1]."""
        size = self.photo_size
        if self.crop is None:
            return to_signed(photo_center_windows(photos, size))
        seeds = crop_seeds(self.seed, [self.image_ids[int(i)] for i in sel], epoch)
        crop = {k: self.crop[k] for k in ("scale", "ratio")}
        return to_signed(photo_resized_crops(photos, seeds, size, **crop))

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    def _plan(
        self, epoch: int, p_generated: float
    ) -> tuple[list[np.ndarray], torch.Tensor, torch.Tensor]:
        """Index batches, per-sample 'generated' coin [N] and flip coin [N] of one epoch."""
        n = len(self.labels)
        gen = torch.Generator().manual_seed(item_seed(self.seed, "train-epoch", epoch))
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        use_gen = torch.rand(n, generator=gen) < p_generated  # [N], by dataset index
        flips = (torch.rand(n, generator=gen) < 0.5) & self.flip  # [N]
        stop = (n // self.batch_size) * self.batch_size if self.drop_last else n
        batches = [
            order[i : min(i + self.batch_size, stop)].numpy()
            for i in range(0, stop, self.batch_size)
        ]
        return batches, use_gen, flips


def _read_ahead(
    fn: Callable[[np.ndarray], Any], items: Sequence[np.ndarray], depth: int = 2
) -> Iterator[Any]:
    """``fn(item)`` for each item in order, computed ``depth`` items ahead in one worker thread."""
    if not items:
        return
    with concurrent.futures.ThreadPoolExecutor(
        max_workers=1, thread_name_prefix="read-ahead"
    ) as pool:
        pending = [pool.submit(fn, items[i]) for i in range(min(depth, len(items)))]
        for i in range(len(items)):
            result = pending.pop(0).result()
            if i + depth < len(items):
                pending.append(pool.submit(fn, items[i + depth]))
            yield result


def _flip(images: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    if not bool(flips.any()):
        return images
    flips = flips.to(images.device)[:, None, None, None]
    return torch.where(flips, images.flip(-1), images)


class ImageBatches(_Source):
    """Real images with labels: ``images`` [N, 3, H, W] (uint8 or float in [-1, 1]) or a reader."""

    def __init__(
        self,
        images: ArrayLike | Reader,
        labels: ArrayLike,
        *,
        image_ids: Sequence[str] | None = None,
        batch_size: int = 32,
        seed: int = 0,
        shuffle: bool = True,
        flip: bool = True,
        drop_last: bool = False,
        crop: dict[str, Any] | None = None,
        photo_size: int | None = None,
    ) -> None:
        super().__init__(
            labels,
            image_ids,
            batch_size=batch_size,
            seed=seed,
            shuffle=shuffle,
            flip=flip,
            drop_last=drop_last,
            crop=crop,
            photo_size=photo_size,
        )
        n = len(self.labels)
        self.images = _Rows(images, n, "images") if photo_size is None else _PhotoRows(images, n)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        batches, _, flips = self._plan(epoch, 0.0)
        for idx, raw in zip(batches, _read_ahead(self.images, batches), strict=True):
            t = torch.as_tensor(idx)
            real = torch.zeros(len(idx), dtype=torch.bool)
            if self.photo_size is None:
                images = self._augment(to_signed(raw), t, epoch, real)
            else:
                images = self._photo_windows(raw, t, epoch)
            geometry = self.photo_size is None
            yield Batch(_flip(images, flips[t]), self.labels[t], real, geometry)


class GanBatches(_Source):
    """Eq. 8 mixture: each sample is its real image or G(w*) / G(w̃) of its latent, rendered on the fly.

    ``source="recon"`` renders G(w*); ``"views"`` renders G(w̃) with w̃ drawn by
    :func:`ganviews.views.perturb.perturb_from_seeds` (``method`` on the ``layers`` group with
    ``setting`` σ), a fresh view per image and epoch with seed (seed, "train-view", image id,
    epoch). ``images=None`` trains on GAN images only (p_generated is then 1).
    """

    def __init__(
        self,
        G: torch.nn.Module,
        ws: ArrayLike | Reader,
        labels: ArrayLike,
        *,
        image_ids: Sequence[str] | None = None,
        images: ArrayLike | Reader | None = None,
        source: Literal["recon", "views"] = "views",
        p_generated: float = 0.5,
        method: str = "isotropic",
        layers: str = "fine",
        setting: float | None = None,
        pca: Any = None,
        c: torch.Tensor | None = None,
        noise_mode: str = "const",
        batch_size: int = 32,
        seed: int = 0,
        shuffle: bool = True,
        flip: bool = True,
        drop_last: bool = False,
        crop: dict[str, Any] | None = None,
        photo_size: int | None = None,
    ) -> None:
        super().__init__(
            labels,
            image_ids,
            batch_size=batch_size,
            seed=seed,
            shuffle=shuffle,
            flip=flip,
            drop_last=drop_last,
            crop=crop,
            photo_size=photo_size,
        )
        if photo_size is not None and crop is None:
            raise ValueError(
                "crop: photo windows of GAN images are the RandomResizedCrop's output; give a crop"
            )
        if source not in ("recon", "views"):
            raise ValueError(
                f"source: {source!r}; allowed: 'recon', 'views' (real images: ImageBatches)"
            )
        if not 0.0 <= p_generated <= 1.0:
            raise ValueError(f"p_generated: {p_generated!r}; expected a probability in [0, 1]")
        if images is None:
            p_generated = 1.0
        if source == "views":
            from ganviews.views.perturb import PERTURBATIONS, check_pca_stats

            if method not in PERTURBATIONS:
                raise ValueError(f"method: {method!r}; allowed: {sorted(PERTURBATIONS)}")
            if layers not in G.layer_groups:
                raise ValueError(f"layers: {layers!r}; allowed: {sorted(G.layer_groups)}")
            if method in ("isotropic", "pca") and setting is None:
                raise ValueError(
                    f"setting: method {method!r} needs σ (official: see docs/classifiers.md)"
                )
            if method == "pca":
                if pca is None:
                    raise ValueError("pca: method 'pca' needs the generator's PCA statistics")
                check_pca_stats(G, pca)
        n = len(self.labels)
        if c is not None and c.shape[0] != n:
            raise ValueError(f"c: {c.shape[0]} rows, expected {n}")
        self.G, self.source, self.p_generated = G, source, p_generated
        self.method, self.layers, self.setting, self.c = method, layers, setting, c
        self.noise_mode = noise_mode
        self.pca = None if pca is None else pca.to(self.device)
        self.ws = _Rows(ws, n, "ws")
        self.images: Any = None
        if images is not None:
            self.images = (
                _Rows(images, n, "images") if photo_size is None else _PhotoRows(images, n)
            )

    @property
    def device(self) -> torch.device:
        return next(self.G.parameters()).device

    def view_seeds(self, idx: np.ndarray, epoch: int) -> list[int]:
        """The perturbation seed of each sample's training view in this epoch."""
        return [item_seed(self.seed, "train-view", self.image_ids[i], epoch) for i in idx]

    def _read(
        self, task: tuple[np.ndarray, np.ndarray]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        gen_idx, real_idx = task
        ws = self.ws(gen_idx) if len(gen_idx) else torch.empty(0)
        real = self.images(real_idx) if (self.images is not None and len(real_idx)) else None
        return ws, real

    @torch.no_grad()
    def render(self, ws: torch.Tensor, idx: np.ndarray, epoch: int) -> torch.Tensor:
        """GAN images [B, 3, R, R] of the latents ``ws`` [B, L, C] of samples ``idx`` (no grad)."""
        dev = self.device
        w = ws.to(dev, torch.float32)  # [B, L, C]
        if self.source == "views":
            from ganviews.views.perturb import perturb_from_seeds

            c = None if self.c is None else self.c[torch.as_tensor(idx)].to(dev)
            w = perturb_from_seeds(
                self.G,
                w,
                self.view_seeds(idx, epoch),
                method=self.method,
                layers=self.layers,
                setting=self.setting,
                pca=self.pca,
                c=c,
            )  # [B, L, C]
        return self.G.synthesis(w, noise_mode=self.noise_mode)  # [B, 3, R, R]

    def epoch(self, epoch: int) -> Iterator[Batch]:
        batches, use_gen, flips = self._plan(epoch, self.p_generated)
        splits = [(idx[use_gen[idx].numpy()], idx[~use_gen[idx].numpy()]) for idx in batches]
        dev = self.device
        for (gen_idx, real_idx), (ws, real) in zip(
            splits, _read_ahead(self._read, splits), strict=True
        ):
            parts, order = [], []
            photo = self.photo_size is not None
            if len(gen_idx):
                fake = self.render(ws, gen_idx, epoch).float()  # [g, 3, R, R]
                if photo:
                    fake = self._gan_windows(fake, gen_idx, epoch)  # [g, 3, S, S]
                elif real is not None and fake.shape[-2:] != real.shape[-2:]:
                    fake = F.interpolate(
                        fake,
                        size=tuple(real.shape[-2:]),
                        mode="bilinear",
                        antialias=True,
                        align_corners=False,
                    )
                parts.append(fake)
                order.append(gen_idx)
            if real is not None:
                rt = torch.as_tensor(real_idx)
                real = self._photo_windows(real, rt, epoch) if photo else to_signed(real)
                parts.append(real.to(dev))
                order.append(real_idx)
            images = torch.cat(parts)  # [B, 3, H, W], generated first
            sel = torch.as_tensor(np.concatenate(order))
            if not photo:
                images = self._augment(images, sel, epoch, use_gen[sel])
            yield Batch(
                _flip(images, flips[sel]),
                self.labels[sel].to(dev),
                use_gen[sel].to(dev),
                not photo,
            )

    def _gan_windows(self, fake: torch.Tensor, idx: np.ndarray, epoch: int) -> torch.Tensor:
        """GAN side of ``real_source: photo``: the box inside ``crop_region`` (cars: the 512×384
        area between the bands), bilinear without antialias to photo_size² (the authors'
        ``TensorCombinedTransformTrain``) → [g, 3, S, S]."""
        crop = {k: self.crop[k] for k in ("scale", "ratio", "region")}
        seeds = crop_seeds(self.seed, [self.image_ids[int(i)] for i in idx], epoch)
        return resized_crops(fake, seeds, size=(self.photo_size,) * 2, **crop)
