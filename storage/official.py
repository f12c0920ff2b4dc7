"""The authors' precomputed evaluations (``precomputed_evaluations.zip``) as a logits table.

Chai et al., CVPR 2021, Sec. 4: the authors released the classifier outputs behind their
figures. Their ``scripts/eval_ensemble/evaluate_{gan,image}_ensemble.py`` write, per domain,
classifier and split, ``<domain>/output/<classifier>_<split>/<file>.npz`` with *probabilities*
(one image per row, in the dataset's order):

- ``gan_ensemble_<aug>_<layer>[_tensortransform].npz``: ``original`` (the image),
  ``reconstructed`` (G(w*)), ``label``, ``random_seed`` and one key per perturbation setting
  (``isotropic_fine_0.30``, ``pca_coarse_2.00``, ``stylemix_fine``) holding the perturbed views;
  ``_tensortransform`` files jitter the rendered views (ganviews' ``combined_`` groups);
- ``image_ensemble_<aug>.npz``: ``original``, ``label``, ``random_seed`` and the augmented
  copies under ``imcrop`` / ``imcolor``.

Binary classifiers store P(attribute) as ``[N, V]``, multi-class ones a softmax ``[N, V, K]``;
``label`` is ``[N, 1]``. :func:`evaluation_rows` turns one file into logits-table rows
(storage/logits.py): view 0 = ``original``, view 1 = ``reconstructed`` (GAN files), then the
stored views in order; binary P → the logit log P − log(1 − P) (one output, sigmoid),
multi-class p → log p (softmax of it is p again). A probability of exactly 0 (or 1) becomes
the log of the smallest positive float64, so it stays finite; the prediction is unchanged.
``ganviews report`` on the result reproduces the authors' notebook arithmetic
(``notebooks/evaluate_ensemble.ipynb``, ``get_accuracy_from_npz``: α grid 0:0.05:1, mean of
probabilities; binary P > 0.5, multi-class argmax), docs/quickstart.md.

Names: for ``celebahq`` task = the attribute (the classifier folder's name before ``__``) and
classifier = ``celebahq`` (``celebahq__<variant>`` for a folder ``<attribute>__<variant>``), so
the report's per-classifier summaries average over the attributes as the paper's Fig. 4–5 do;
elsewhere task = the domain (``car``, ``cat``, ``cifar10``) and classifier = the authors' name;
condition = the authors' corruption / attack folder prefix (``corruption_jpeg_Smiling_val`` →
``corruption_jpeg``, task ``Smiling``; Fig. 7), else ``clean``;
method = the key without its setting (``combined_`` prefixed for ``_tensortransform``; image
augmentations ``imcrop`` → ``crop``, ``imcolor`` → ``color``); setting = the number as
ganviews writes it (``0.30`` → ``"0.3"``); image ids ``<split>-<row:06d>`` (the files carry
no names: rows follow the authors' dataset order, the same in every file of a split).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from storage.errors import StoreError
from storage.logits import CLEAN, LOGITS_SCHEMA, SPLITS, write_logits

log = logging.getLogger(__name__)

IMAGE_METHODS = {"imcrop": "crop", "imcolor": "color"}  # the authors' image-ensemble keys
# the authors' CelebA-HQ folders of corrupted / attacked test images: <prefix><attribute>_<split>
CONDITION_PREFIXES = ("corruption_jpeg_", "corruption_gaussian_blur_", "corruption_gaussian_noise_",
                      "fgsm_", "pgd_", "cw_")  # fmt: skip
RESERVED_KEYS = ("original", "reconstructed", "label", "random_seed")
_TINY = np.finfo(np.float64).tiny  # stands in for a probability of exactly 0
_FOLDER = re.compile(r"^(?P<classifier>.+)_(?P<split>train|val|test)$")
_GAN_FILE = re.compile(r"^gan_ensemble_(?P<aug>.+?)(?P<tt>_tensortransform)?$")
_IMAGE_FILE = re.compile(r"^image_ensemble_(?P<aug>.+)$")
_SETTING = re.compile(r"^(?P<method>.+)_(?P<setting>\d+(?:\.\d+)?)$")


@dataclass(frozen=True)
class EvaluationFile:
    """One of the authors' npz files and what its path says."""

    path: Path
    domain: str  # celebahq | car | cat | cifar10 | …
    classifier: str  # the authors' classifier name (folder name without _<split>)
    split: str  # train | val | test
    kind: str  # "gan" | "image"
    combined: bool  # a _tensortransform file: jittered GAN views

    @property
    def condition(self) -> str:
        """The input condition: the authors' corruption / attack folder prefix (``fgsm``,
        ``corruption_jpeg``, …; CelebA-HQ, Fig. 7) or ``clean``."""
        if self.domain == "celebahq":
            for prefix in CONDITION_PREFIXES:
                if self.classifier.startswith(prefix):
                    return prefix.rstrip("_")
        return CLEAN

    @property
    def task(self) -> str:
        if self.domain != "celebahq":
            return self.domain
        name = self.classifier.partition("__")[0]
        return name.removeprefix(self.condition + "_") if self.condition != CLEAN else name

    @property
    def classifier_name(self) -> str:
        """The logits table's classifier: one name for all 40 attribute classifiers (so the
        report averages over attributes, as the paper's Fig. 4–5), the authors' name elsewhere."""
        if self.domain != "celebahq":
            return self.classifier
        variant = self.classifier.partition("__")[2]
        return f"celebahq__{variant}" if variant else "celebahq"


def evaluation_files(root: str | Path) -> list[EvaluationFile]:
    """Every ``<domain>/output/<classifier>_<split>/{gan,image}_ensemble_*.npz`` under ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise StoreError(
            f"evaluations folder {root} not found (unzip the authors' precomputed_evaluations.zip there)"
        )
    found = []
    for path in sorted(root.rglob("*.npz")):
        folder = _FOLDER.match(path.parent.name)
        if folder is None or path.parent.parent.name != "output":
            continue
        gan, image = _GAN_FILE.match(path.stem), _IMAGE_FILE.match(path.stem)
        if gan is None and image is None:
            continue
        found.append(
            EvaluationFile(
                path=path,
                domain=path.parent.parent.parent.name,
                classifier=folder["classifier"],
                split=folder["split"],
                kind="gan" if gan else "image",
                combined=bool(gan and gan["tt"]),
            )
        )
    if not found:
        raise StoreError(
            f"{root}: no <domain>/output/<classifier>_<split>/gan_ensemble_*.npz or "
            "image_ensemble_*.npz files (the layout of the authors' precomputed_evaluations.zip)"
        )
    return found


def method_and_setting(key: str, *, kind: str, combined: bool) -> tuple[str, str]:
    """The logits table's (method, setting) of one npz key: ``isotropic_fine_0.30`` →
    (``isotropic_fine``, ``"0.3"``); ``stylemix_fine`` → (``stylemix_fine``, ``""``)."""
    if kind == "image":
        return IMAGE_METHODS.get(key, key), ""
    m = _SETTING.match(key)
    method, setting = (m["method"], repr(float(m["setting"]))) if m else (key, "")
    return ("combined_" + method if combined else method), setting


def to_logits(probs: np.ndarray) -> np.ndarray:
    """Probabilities → logits ``[N, V, L]``: binary ``[N, V]`` P → log P − log(1 − P) (L = 1);
    multi-class ``[N, V, K]`` p → log p (L = K)."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim == 2:
        logit = np.log(np.maximum(p, _TINY)) - np.log(np.maximum(1.0 - p, _TINY))
        return logit[:, :, None]
    if p.ndim == 3:
        return np.log(np.maximum(p, _TINY))
    raise StoreError(f"probabilities of shape {list(p.shape)}: expected [N, V] or [N, V, K]")


def _check_probs(name: str, key: str, p: np.ndarray, n: int) -> None:
    if p.ndim not in (2, 3) or p.shape[0] != n:
        raise StoreError(
            f"{name}: key {key!r} has shape {list(p.shape)}; expected [{n}, V] (binary) or "
            f"[{n}, V, K] (multi-class)"
        )
    if not np.isfinite(p).all() or p.min() < 0 or p.max() > 1:
        raise StoreError(f"{name}: key {key!r} holds values outside [0, 1] (not probabilities)")


def evaluation_rows(entry: EvaluationFile, *, gan_views: int | None = None) -> Iterator[pa.Table]:
    """Logits-table rows of one npz file, one table per (method, setting) key.

    ``gan_views``: keep only the first that many GAN views (the reconstruction first, then the
    perturbed ones in order) — the notebook's ``ens_size`` without a seed (the paper's figures
    use 31); None keeps them all. Image-ensemble files keep every view.
    """
    name = str(entry.path)
    with np.load(entry.path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    missing = [k for k in ("original", "label") if k not in arrays]
    if entry.kind == "gan" and "reconstructed" not in arrays:
        missing.append("reconstructed")
    if missing:
        raise StoreError(f"{name}: lacks key(s) {missing}; has {sorted(arrays)}")
    labels = np.asarray(arrays["label"]).reshape(len(arrays["label"]), -1)
    if labels.shape[1] != 1 or not np.issubdtype(labels.dtype, np.number):
        raise StoreError(
            f"{name}: 'label' has shape {list(arrays['label'].shape)}, expected [N, 1]"
        )
    labels = labels[:, 0].astype(np.int64)  # [N]
    n = len(labels)
    heads = ["original", "reconstructed"] if entry.kind == "gan" else ["original"]
    for key in heads:
        _check_probs(name, key, arrays[key], n)
    keys = [k for k in arrays if k not in RESERVED_KEYS]
    if not keys:
        raise StoreError(f"{name}: no ensemble key besides {list(RESERVED_KEYS)}")
    ids = np.asarray([f"{entry.split}-{i:06d}" for i in range(n)], dtype=object)
    for key in keys:
        _check_probs(name, key, arrays[key], n)
        probs = np.concatenate([arrays[k] for k in heads] + [arrays[key]], axis=1)  # [N, V(, K)]
        if entry.kind == "gan" and gan_views is not None:
            if not 1 <= gan_views <= probs.shape[1] - 1:
                raise StoreError(
                    f"gan_views={gan_views}: {name} key {key!r} has {probs.shape[1] - 1} GAN views"
                )
            probs = probs[:, : 1 + gan_views]
        logits = to_logits(probs).astype(np.float32)  # [N, V, L]
        method, setting = method_and_setting(key, kind=entry.kind, combined=entry.combined)
        _, v, width = logits.shape
        rows = n * v
        offsets = pa.array(np.arange(0, rows * width + 1, width, dtype=np.int32))
        columns = {
            "image_id": pa.array(np.repeat(ids, v), pa.string()),
            "split": pa.array([entry.split] * rows, pa.string()),
            "task": pa.array([entry.task] * rows, pa.string()),
            "classifier": pa.array([entry.classifier_name] * rows, pa.string()),
            "method": pa.array([method] * rows, pa.string()),
            "setting": pa.array([setting] * rows, pa.string()),
            "view": pa.array(np.tile(np.arange(v, dtype=np.int32), n)),
            "logits": pa.ListArray.from_arrays(offsets, pa.array(logits.reshape(-1))),
            "label": pa.array(np.repeat(labels, v)),
            "seed": pa.nulls(rows, pa.int64()),
            "condition": pa.array([entry.condition] * rows, pa.string()),
        }
        yield pa.table(columns, schema=LOGITS_SCHEMA)  # [N·V rows], view-major per image


def import_official_evaluations(
    root: str | Path,
    logits_dir: str | Path,
    *,
    splits: tuple[str, ...] = SPLITS,
    gan_views: int | None = None,
) -> dict[str, int]:
    """Convert every evaluation file under ``root`` (of ``splits``) into the logits table at
    ``logits_dir`` (``gan_views``: see :func:`evaluation_rows`); returns counts (files, groups,
    rows). Rerunning replaces the same rows."""
    files = [f for f in evaluation_files(root) if f.split in splits]
    counts = {"files": len(files), "groups": 0, "rows": 0}
    for entry in files:
        for frame in evaluation_rows(entry, gan_views=gan_views):
            write_logits(
                logits_dir,
                frame,
                shard=f"official-{entry.split}",
                metadata={"source": "official-evaluations", "file": str(entry.path)},
            )
            counts["groups"] += 1
            counts["rows"] += frame.num_rows
    log.info("imported %d evaluation files into %s: %s", len(files), logits_dir, counts)
    return counts
