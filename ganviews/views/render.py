"""Render and classify views in one pass: GAN views, image views and "combined" views.

Chai et al., "Ensembling with Deep Generative Views" (CVPR 2021), Sec. 3.3–3.4: for each
image x with inverted latent w*, the classifier sees x (view 0), the reconstruction G(w*)
(view 1) and N−1 perturbed views G(w̃_n) (views 2..N) per perturbation method and setting;
the ensemble (1−α)·C(x) + α/N·Σ C(G(·)) is formed later from the logits table.

Groups (one per (method, setting); every group carries its own views 0 and 1, so it can be
evaluated alone — the logits of views 0/1 are computed once and shared):

- GAN group ``f"{method}_{layers}"`` (e.g. "isotropic_fine"), setting = repr(σ) or "" for
  style-mixing: views 0, 1, 2..P+1 → P+2 rows per image and classifier, P =
  ``perturbed_views`` (default N−1; the authors' 32 → 33 GAN columns with view 1).
- ``f"combined_{method}_{layers}"``: the same renders as its GAN group (same view seeds) with
  image jitter on top (:func:`ganviews.views.augment.combined_jitter`, seeded by
  ``jitter_seed(view seed)``): views 0, 1, 2..P+1.
- image groups "color" / "crop": view 0 = x, views 1..N−1 = augmented copies of x → N rows.

Work is flattened into jobs (image, group, view) and run in batches of ``batch_size`` across
images, groups and views: perturb (CPU-seeded draws) → G.synthesis → classifier (which applies
its own preprocessing on the device). Logits are gathered on the device and copied to the
host once at the end; nothing goes through disk. Optional uint8 copies of the views are
returned for persistence.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ganviews.core.images import signed_to_uint8, uint8_to_signed
from ganviews.core.runtime import NumericsPolicy, assert_shape
from ganviews.views.augment import augment, image_view_seed, jitter_seed
from ganviews.views.config import (
    DTYPES,
    IMAGE_METHODS,
    PRESETS,
    GanGroup,
    ViewConfig,
    ViewGroup,
    view_config,
    view_groups,
    with_preset,
)
from ganviews.views.perturb import (
    FIRST_VIEW,
    PCAStats,
    check_pca_stats,
    perturb_from_seeds,
    view_seed,
)
from ganviews.views.photo import center_windows, random_windows

# the settings moved to ganviews.views.config; importable from here as before
__all__ = [
    "IMAGE_METHODS", "PRESETS", "GanGroup", "GroupLogits", "ViewConfig", "ViewGroup",
    "render_and_classify", "to_uint8", "view_config", "view_groups", "with_preset",
]  # fmt: skip

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# results


@dataclass
class GroupLogits:
    """Logits of one group for a batch of images, rows ordered by (image, view)."""

    group: ViewGroup
    image_index: np.ndarray  # [M] int64 row of the input batch
    view: np.ndarray  # [M] int32 view index (0 original, 1 reconstruction / first copy, …)
    seed: np.ndarray  # [M] int64 the view's seed (0 where has_seed is False)
    has_seed: (
        np.ndarray
    )  # [M] bool — False for views 0 and 1 of GAN groups and view 0 of image groups
    logits: dict[str, np.ndarray]  # classifier name → [M, K] float32 raw outputs
    views: np.ndarray | None = None  # [N_images, num_views, 3, R, R] uint8 when persisting

    @property
    def method(self) -> str:
        return self.group.method

    @property
    def setting(self) -> str:
        return self.group.setting


def to_uint8(images: torch.Tensor, resolution: int = 0) -> torch.Tensor:
    """[-1, 1] float images → uint8 [N, C, R, R] (area-resized when ``resolution`` differs)."""
    x = images.float()
    if resolution and x.shape[-1] != resolution:
        mode = "area" if x.shape[-1] > resolution else "bilinear"
        x = F.interpolate(x, size=(resolution, resolution), mode=mode)
    return signed_to_uint8(x)


# ---------------------------------------------------------------------------------------------
# the fused render → classify pass


@dataclass(frozen=True)
class _Job:
    image: int  # row of the batch
    group: int  # index into view_groups(config), or ORIGINAL / RECONSTRUCTION (shared views)
    view: int  # table view index
    seed: int  # the view's seed


class _Counter:
    """Images classified so far, reported to ``callback(done, total)`` after every batch."""

    def __init__(self, total: int, callback: Callable[[int, int], None] | None):
        self.total, self.done, self.callback = total, 0, callback

    def add(self, count: int) -> None:
        self.done += count
        if self.callback is not None:
            self.callback(self.done, self.total)


def count_views(config: ViewConfig, n_images: int) -> int:
    """Images the classifiers see for ``n_images`` inputs: originals, reconstructions, GAN views,
    their combined copies and the image groups' copies (what :func:`render_and_classify` feeds)."""
    groups = view_groups(config)
    perturbed = range(FIRST_VIEW, FIRST_VIEW + config.num_perturbed)
    plain = sum(g.kind == "gan" for g in groups)
    gan = (1 + plain * config.num_perturbed) if plain else 0
    combined = len(_twins(groups)) * sum(len(_combined_views(v, config)) for v in perturbed)
    image = 1 + sum(g.kind == "image" for g in groups) * (config.n_views - 1)
    return n_images * (gan + combined + image)


class _Sink:
    """Device-side accumulators, one flat table per classifier: row ``offset[g] + image · V_g +
    view`` holds view ``view`` of ``image`` in group ``g``. Each batch scatters its logits with
    one index upload and one ``index_copy_`` per classifier — no host read until
    :meth:`results`; seeds, fill marks and persisted views are kept on the host."""

    def __init__(
        self, groups: list[ViewGroup], n_images: int, names: Sequence[str], device, counter
    ):
        self.groups, self.n, self.names, self.device = groups, n_images, list(names), device
        self.counter = counter
        sizes = [n_images * g.num_views for g in groups]
        self.offset = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)  # [G + 1]
        rows = int(self.offset[-1])
        self.logits: dict[str, torch.Tensor] = {}  # name → [rows, K] on the device
        self.filled = np.zeros(rows, bool)  # which rows were written
        self.seed = np.zeros(rows, np.int64)
        self.has_seed = np.zeros(rows, bool)
        self.views: np.ndarray | None = None  # [rows, 3, r, r] uint8 when persisting

    def rows(self, batch: Sequence[_Job]) -> tuple[np.ndarray, np.ndarray]:
        """(position in the batch, table row) of every job and every group it goes to."""
        src, dst = [], []
        for k, j in enumerate(batch):
            for gt in _targets(self.groups, j.group):
                src.append(k)
                dst.append(self.offset[gt] + j.image * self.groups[gt].num_views + j.view)
        return np.asarray(src, np.int64), np.asarray(dst, np.int64)

    def put(self, batch: Sequence[_Job], logits: Mapping[str, torch.Tensor], small) -> None:
        src, dst = self.rows(batch)
        index = torch.from_numpy(np.stack([src, dst]))  # [2, M]
        if self.device.type == "cuda":
            index = index.pin_memory().to(self.device, non_blocking=True)
        for name, out in logits.items():
            if name not in self.logits:
                shape = (int(self.offset[-1]), out.shape[1])
                self.logits[name] = torch.zeros(shape, device=self.device)
            self.logits[name].index_copy_(0, index[1], out.float().index_select(0, index[0]))
        self.filled[dst] = True
        perturbed = np.asarray([j.group >= 0 for j in batch])[src]  # views 0/1 have no seed
        self.seed[dst[perturbed]] = np.asarray([j.seed for j in batch], np.int64)[src[perturbed]]
        self.has_seed[dst[perturbed]] = True
        if small is not None:
            pixels = small.cpu().numpy()  # [B, 3, r, r] uint8
            if self.views is None:
                self.views = np.zeros((int(self.offset[-1]), *pixels.shape[1:]), np.uint8)
            self.views[dst] = pixels[src]

    def results(self) -> list[GroupLogits]:
        if not self.filled.all():
            gi = int(np.searchsorted(self.offset, np.flatnonzero(~self.filled)[0], "right")) - 1
            g = self.groups[gi]
            raise RuntimeError(f"internal: group {g.method}/{g.setting}: rows never written")
        host = {
            name: t.cpu().numpy() for name, t in self.logits.items()
        }  # the one copy to the host
        out = []
        for gi, g in enumerate(self.groups):
            v, a, b = g.num_views, int(self.offset[gi]), int(self.offset[gi + 1])
            views = None
            if self.views is not None:
                views = self.views[a:b].reshape(self.n, v, *self.views.shape[1:])
            out.append(
                GroupLogits(
                    g,
                    np.repeat(np.arange(self.n, dtype=np.int64), v),
                    np.tile(np.arange(v, dtype=np.int32), self.n),
                    self.seed[a:b],
                    self.has_seed[a:b],
                    {name: host[name][a:b] for name in self.names},
                    views,
                )
            )
        return out


def _segments(batch: Sequence[_Job]) -> list[tuple[int, int, int]]:
    """(group, start, stop): the batch's runs of jobs of one group (jobs are listed group by
    group, so each group is one slice of the batch — no index tensors)."""
    out = []
    for k, j in enumerate(batch):
        if out and out[-1][0] == j.group:
            out[-1] = (j.group, out[-1][1], k + 1)
        else:
            out.append((j.group, k, k + 1))
    return out


def _index(rows: Sequence[int], device: torch.device) -> torch.Tensor:
    """``rows`` as an index tensor on ``device`` (one pinned, asynchronous upload to a GPU)."""
    index = torch.tensor(rows, dtype=torch.long)
    if device.type == "cuda":
        return index.pin_memory().to(device, non_blocking=True)
    return index


def _rows(batch: Sequence[_Job], device: torch.device) -> torch.Tensor:
    """The batch's image rows as an index on ``device``."""
    return _index([j.image for j in batch], device)


def _chunks(items: Sequence, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _classify(
    classifiers: Mapping[str, Any], images: torch.Tensor, numerics, *, geometry: bool = True
) -> dict[str, torch.Tensor]:
    """Every classifier's logits for one batch. Classifiers with the same geometric
    preprocessing (``resample_key``) share one resampled batch; ``numerics()`` opens the
    context they run in (the view config's precision); ``geometry=False``: the images are
    already the classifiers' input windows (photo views: clamp and normalise only)."""
    out = {}
    images = images.float()  # renders may be half under autocast; preprocessing runs in fp32
    resampled: dict[Any, torch.Tensor] = {}
    with numerics():
        for name, C in classifiers.items():
            key = getattr(C, "resample_key", None)
            if key is None:  # any module with its own preprocessing
                logits = C(images) if geometry else C(images, geometry=False)
            else:
                if (key, geometry) not in resampled:
                    resampled[key, geometry] = C.resample(images, geometry=geometry)
                logits = C.from_resampled(resampled[key, geometry])
            if logits.ndim != 2 or logits.shape[0] != images.shape[0]:
                raise ValueError(
                    f"classifier {name!r}: expected logits [N, K], got {list(logits.shape)}"
                )
            out[name] = logits
    return out


@torch.no_grad()
def render_and_classify(
    G,
    classifiers: Mapping[str, Any],
    w: torch.Tensor,
    images: torch.Tensor | None,
    *,
    image_ids: Sequence[str],
    config: ViewConfig,
    device: torch.device | str,
    seed: int,
    c: torch.Tensor | None = None,
    pca: PCAStats | None = None,
    progress: Callable[[int, int], None] | None = None,
    photos: Sequence[torch.Tensor] | None = None,
) -> list[GroupLogits]:
    """Classify views 0, 1, 2..P+1 of every group for a batch of images (see the module doc).

    w [N, num_ws, w_dim] (the inverted w*), images [N, 3, H, W] in [-1, 1] (the aligned
    originals), image_ids [N] (seed keys), classifiers: name → module mapping [B, 3, h, w] in
    [-1, 1] to logits [B, K] (its own preprocessing). c [N, c_dim]: classes for a conditional
    G (style-mixing). ``progress(done, total)`` is called after every batch with the
    number of images classified so far and in all (each goes through every classifier).
    With ``config.original_source == "photo"``, ``photos`` replaces ``images`` (which may be
    None): N resized photos, uint8 [3, h, w] with the shorter side ``config.photo_size``
    (:func:`ganviews.views.photo.resize_photo`), the source of view 0 and the colour / crop
    views, classified with the classifiers' normalisation only (``geometry=False``).
    Returns one :class:`GroupLogits` per :func:`view_groups` entry.
    """
    device = torch.device(device)
    n = w.shape[0]
    assert_shape(w, [None, G.num_ws, G.w_dim], "w")
    originals = _originals(images, photos, n, config, device)
    if n == 0:
        raise ValueError("w: got 0 images; render_and_classify needs at least one")
    image_ids = [str(i) for i in image_ids]
    if len(image_ids) != n:
        raise ValueError(f"image_ids: expected {n} ids (one per row of w), got {len(image_ids)}")
    if len(set(image_ids)) != n:
        raise ValueError("image_ids: ids must be unique within a call (they key the view seeds)")
    if not classifiers:
        raise ValueError("classifiers: need at least one classifier")
    groups = view_groups(config)
    for g in groups:
        if g.kind != "image" and g.layers not in G.layer_groups:
            raise ValueError(
                f"layers: group {g.method} needs {g.layers!r}, G has {sorted(G.layer_groups)}"
            )
    pca = pca if pca is not None else getattr(G, "pca_stats", None)
    if pca is None and any(g.base == "pca" for g in groups if g.kind == "gan"):
        raise ValueError("pca: the config has PCA groups but no PCA statistics were given")
    check_pca_stats(G, pca)
    pca = None if pca is None else pca.to(device)
    w = w.to(device=device, dtype=torch.float32)
    c = None if c is None else c.to(device=device, dtype=torch.float32)
    res = config.persist_resolution or G.resolution
    autocast = (
        torch.autocast(device.type, dtype=DTYPES[config.dtype])
        if DTYPES[config.dtype] is not None
        else contextlib.nullcontext()
    )
    sink = _Sink(groups, n, list(classifiers), device, _Counter(count_views(config, n), progress))
    # classifiers under the config's numerics policy; a legacy `dtype` autocast covers both
    policy = NumericsPolicy(config.precision)
    numerics = (
        functools.partial(policy.networks, device)
        if DTYPES[config.dtype] is None
        else contextlib.nullcontext
    )
    classify = functools.partial(_classify, classifiers, numerics=numerics)
    with autocast:
        _gan_views(G, classify, w, groups, sink, config, image_ids, seed, c, pca, res)
        _image_views(classify, originals, groups, sink, config, image_ids, seed, res)
    return sink.results()


ORIGINAL, RECONSTRUCTION = -1, -2  # pseudo-groups of views 0 and 1, shared by every group


def _targets(groups: Sequence[ViewGroup], gi: int) -> list[int]:
    """The groups a job's logits go to: itself, or every group sharing view 0 / view 1."""
    if gi == ORIGINAL:
        return list(range(len(groups)))
    if gi == RECONSTRUCTION:
        return [gj for gj, g in enumerate(groups) if g.kind != "image"]
    return [gi]


def _twins(groups: Sequence[ViewGroup]) -> dict[int, int]:
    """GAN group index → its "combined_" twin's index, where the config asks for one."""
    out = {}
    for gi, g in enumerate(groups):
        for gj, h in enumerate(groups):
            if (
                g.kind == "gan"
                and h.kind == "combined"
                and h.method == "combined_" + g.method
                and h.setting == g.setting
            ):
                out[gi] = gj
    return out


def _gan_views(G, classify, w, groups, sink, config, image_ids, seed, c, pca, res):
    """View 1 (G(w*)) and views 2..N of every GAN group and its combined twin, in batches
    that mix images, groups and views; the combined copies join the same classifier call."""
    plain = [gi for gi, g in enumerate(groups) if g.kind == "gan"]
    if not plain:
        return
    twin = _twins(groups)
    jobs = [_Job(i, RECONSTRUCTION, 1, 0) for i in range(w.shape[0])] + [
        _Job(i, gi, v, view_seed(seed, image_ids[i], g.base, g.layers, g.sigma, v))
        for gi in plain
        for g in [groups[gi]]
        for i in range(w.shape[0])
        for v in range(FIRST_VIEW, FIRST_VIEW + config.num_perturbed)
    ]
    for batch in _chunks(jobs, config.batch_size):
        rows = _rows(batch, w.device)
        w_rows = w.index_select(0, rows)  # [B, L, C]
        c_rows = None if c is None else c.index_select(0, rows)
        ws = torch.empty_like(w_rows)  # [B, L, C]
        for gi, a, b in _segments(batch):
            if gi == RECONSTRUCTION:
                ws[a:b] = w_rows[a:b]
                continue
            g = groups[gi]
            with torch.autocast(w.device.type, enabled=False):  # w-space maths stays in fp32
                ws[a:b] = perturb_from_seeds(
                    G, w_rows[a:b], [j.seed for j in batch[a:b]], method=g.base,
                    layers=g.layers, setting=g.sigma, pca=pca,
                    pca_components=config.pca_components,
                    c=None if c_rows is None else c_rows[a:b],
                )  # fmt: skip
        pixels = G.synthesis(ws, noise_mode=config.noise_mode)  # [B, 3, R, R]
        combo = [  # (render k, combined view, jitter index)
            (k, v, p)
            for k, j in enumerate(batch)
            if j.group in twin
            for v, p in _combined_views(j.view, config)
        ]
        if combo:
            seeds = [jitter_seed(batch[k].seed, p) for k, _, p in combo]
            picked = _index([k for k, _, _ in combo], pixels.device)
            jittered = augment(
                pixels.index_select(0, picked), seeds, "combined", config=config.jitter
            )  # [B', 3, R, R]
            pixels = torch.cat([pixels, jittered.to(pixels.dtype)])  # [B + B', 3, R, R]
            batch = [
                *batch,
                *(
                    dataclasses.replace(batch[k], group=twin[batch[k].group], view=v)
                    for k, v, _ in combo
                ),
            ]
        _emit(classify, pixels, batch, sink, config, res)


def _combined_views(view: int, config: ViewConfig) -> list[tuple[int, int]]:
    """(combined view, jitter index) pairs made from the render of GAN view ``view``.

    combined_renders R = 0: the same view, jitter 0. R > 0: render r = view − FIRST_VIEW < R
    feeds the combined views FIRST_VIEW + r + p·R (p = 0, 1, …) with jitter p; later renders
    feed none."""
    r = view - FIRST_VIEW
    step = config.combined_renders
    if step == 0:
        return [(view, 0)]
    if r >= step:
        return []
    return [
        (FIRST_VIEW + r + p * step, p) for p in range((config.num_perturbed - r + step - 1) // step)
    ]


class _Aligned:
    """View 0 = the aligned frame; image views = its augmentations; the classifier's own geometry."""

    geometry = True

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images  # [N, 3, H, W] in [-1, 1]
        self.shape = tuple(images.shape[1:])

    def original(self, rows: list[int]) -> torch.Tensor:
        return self.images.index_select(0, _index(rows, self.images.device))

    def augmented(self, rows: list[int], seeds: list[int], method: str, jitter) -> torch.Tensor:
        return augment(self.original(rows), seeds, method, config=jitter).float()


class _Photos:
    """``original_source: photo``: view 0 = CenterCrop(size) of the resized photo, crop views =
    RandomCrop(size) + flip, colour views = colour jitter of the centre window; the windows are
    the classifier's input (normalisation only)."""

    geometry = False

    def __init__(self, photos: list[torch.Tensor], size: int) -> None:
        self.photos, self.size = photos, size  # each [3, h, w] in [-1, 1]
        self.shape = (3, size, size)

    def original(self, rows: list[int]) -> torch.Tensor:
        return center_windows([self.photos[r] for r in rows], self.size)

    def augmented(self, rows: list[int], seeds: list[int], method: str, jitter) -> torch.Tensor:
        strips = [self.photos[r] for r in rows]
        if method == "crop":
            return random_windows(strips, seeds, self.size, flip=jitter.flip)
        return augment(center_windows(strips, self.size), seeds, method, config=jitter).float()


def _originals(images, photos, n: int, config: ViewConfig, device) -> _Aligned | _Photos:
    """The source of view 0 and the image views that ``config.original_source`` names."""
    if config.original_source == "aligned":
        if photos is not None:
            raise ValueError("photos: given, but views.original_source is 'aligned' (set 'photo')")
        if images is None:
            raise ValueError("images: None, but views.original_source 'aligned' needs them")
        assert_shape(images, [n, 3, None, None], "images")
        if images.dtype == torch.uint8:  # stored originals: upload 8 bits, convert on the device
            return _Aligned(uint8_to_signed(images.to(device)))
        return _Aligned(images.to(device=device, dtype=torch.float32))
    if photos is None or len(photos) != n:
        got = "none" if photos is None else len(photos)
        raise ValueError(
            f"photos: views.original_source is 'photo': expected {n} photos (one per row of w), "
            f"got {got}"
        )
    signed = [
        uint8_to_signed(p.to(device)) if p.dtype == torch.uint8 else p.to(device) for p in photos
    ]
    return _Photos([p.float() for p in signed], config.photo_size)


def _image_views(classify, originals, groups, sink, config, image_ids, seed, res):
    """View 0 (the original) of every group and views 1..N−1 of the image groups."""
    n = len(image_ids)
    jobs = [_Job(i, ORIGINAL, 0, 0) for i in range(n)] + [
        _Job(i, gi, v, image_view_seed(seed, image_ids[i], g.base, v))
        for gi, g in enumerate(groups)
        if g.kind == "image"
        for i in range(n)
        for v in range(1, config.n_views)
    ]
    for batch in _chunks(jobs, config.batch_size):
        out = torch.empty(len(batch), *originals.shape, device=sink.device)  # [B, 3, H, W]
        for gi, a, b in _segments(batch):
            rows = [j.image for j in batch[a:b]]
            if gi == ORIGINAL:
                out[a:b] = originals.original(rows)
                continue
            seeds = [j.seed for j in batch[a:b]]
            out[a:b] = originals.augmented(rows, seeds, groups[gi].base, config.jitter)
        _emit(classify, out, batch, sink, config, res, geometry=originals.geometry)


def _emit(
    classify,
    pixels,
    batch: Sequence[_Job],
    sink: _Sink,
    config: ViewConfig,
    res: int,
    *,
    geometry: bool = True,
):
    """Classify one batch and scatter its logits (and uint8 copies) into the groups' tables."""
    logits = classify(pixels, geometry=geometry)
    sink.counter.add(len(batch))
    sink.put(batch, logits, to_uint8(pixels, res) if config.persist_views else None)
