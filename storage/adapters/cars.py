"""Stanford Cars reduced to the paper's three body-type super-classes SUV / Sedan / Cab.

The paper's car domain (Chai et al., CVPR 2021, Sec. 4.1): a 3-way car-type classifier; α chosen
on val, accuracy reported on test; images aligned from the devkit's bounding boxes.

Super-class rule (the one the official code applies): the body type of a class is the
second-to-last whitespace token of its name in ``cars_meta.mat`` — the token just before the model
year (``"AM General Hummer SUV 2000"`` → ``SUV``, ``"Ford F-150 Regular Cab 2012"`` → ``Cab``).
Classes whose token is in ``body_types`` (default ``("SUV", "Sedan", "Cab")``, labels 0, 1, 2 in
that order) are kept; all others are left out. On the real 196 names this keeps 34 SUV, 46 Sedan
and 17 Cab classes. The token must match exactly, so ``"Ford Ranger SuperCab 2011"`` and sedans
named by trim (``"Acura TL Type-S 2008"``, ``"Dodge Challenger SRT8 2011"``) are left out, as in
the paper. See docs/datasets.md for the resulting image counts.

Splits (``scheme``):

- ``"official"`` (default): the devkit's train annotations are split per fine class into train and
  val with :func:`storage.adapters._common.seeded_split` (``val_fraction`` of each class, by
  ``seed``); the devkit's test annotations are the test split. The test annotations must carry the
  class: ``cars_test_annos_withlabels.mat`` (or a ``cars_test_annos.mat`` that has a ``class`` field).
- ``"paper"``: the official code's split, which uses the train annotations only: per fine class, in
  annotation order, the first ``n // 2`` images are train, the last ``ceil(n / 4)`` are test and the
  rest are val. Needs no test annotations.

Caveat: the paper's released car classifiers were trained on the first half of every class of
the train annotations; with ``scheme="official"`` the val split overlaps those training images.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.io

from storage.adapters._common import (
    AdapterError,
    AnnotationFileMissing,
    check_choice,
    check_fraction,
    check_root,
    finalize,
    find_file,
    handle_missing_images,
    paper_split_per_class,
    seeded_split,
    voc_box_to_pixels,
)

log = logging.getLogger(__name__)

SCHEMES = ("official", "paper")
BODY_TYPES = ("SUV", "Sedan", "Cab")
BOX_FIELDS = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")

_DEVKIT_SOURCE = "it is in car_devkit.tgz from the Stanford Cars page (ai.stanford.edu/~jkrause/cars/car_dataset.html)"
_TEST_LABELS_SOURCE = (
    "the devkit's cars_test_annos.mat has no class field; the labelled version "
    "cars_test_annos_withlabels.mat was released separately on the same page. Put it in the root or "
    "devkit/ folder, or use scheme='paper' (CLI: --scheme paper), which needs the train annotations only"
)


def body_type(class_name: str) -> str | None:
    """The paper's body-type token: the second-to-last whitespace token of the class name."""
    tokens = class_name.split()
    return tokens[-2] if len(tokens) >= 2 else None


def _scalar(value: object, *, where: str) -> object:
    """One value of a loadmat struct field (a nested array, or already a scalar) as a Python scalar."""
    array = np.asarray(value)
    if array.size != 1:
        raise AdapterError(f"{where}: expected one value, got an array of shape {array.shape}")
    item = array.reshape(-1)[0]
    return item.item() if isinstance(item, np.generic) else item


def _load_mat(path: Path) -> dict[str, object]:
    try:
        return scipy.io.loadmat(path, squeeze_me=True, struct_as_record=True)
    except (
        scipy.io.matlab.MatReadError,
        ValueError,
        TypeError,
        OSError,
        NotImplementedError,
    ) as exc:
        raise AdapterError(f"{path}: not a readable MATLAB .mat file ({exc})") from exc


def read_class_names(path: Path) -> list[str]:
    """``class_names`` of ``cars_meta.mat``, in class-index order (class ``k`` is ``names[k - 1]``)."""
    data = _load_mat(path)
    if "class_names" not in data:
        raise AdapterError(
            f"{path}: no 'class_names' variable (found {sorted(k for k in data if not k.startswith('__'))})"
        )
    names = np.atleast_1d(data["class_names"]).reshape(-1)
    return [str(_scalar(n, where=f"{path} class_names[{i}]")) for i, n in enumerate(names)]


def read_annotations(path: Path, *, need_class: bool) -> pd.DataFrame:
    """The ``annotations`` struct array as a frame: fname, class (or absent), bbox_x1 … bbox_y2."""
    data = _load_mat(path)
    if "annotations" not in data:
        raise AdapterError(
            f"{path}: no 'annotations' variable (found {sorted(k for k in data if not k.startswith('__'))})"
        )
    annotations = np.atleast_1d(data["annotations"]).reshape(-1)
    fields = annotations.dtype.names or ()
    needed = ("fname", *BOX_FIELDS) + (("class",) if need_class else ())
    missing = [f for f in needed if f not in fields]
    if missing:
        hint = f"; {_TEST_LABELS_SOURCE}" if missing == ["class"] else ""
        raise AdapterError(f"{path}: annotations lack fields {missing} (have {list(fields)}){hint}")
    columns: dict[str, list[object]] = {f: [] for f in needed}
    for i, record in enumerate(annotations):
        for f in needed:
            columns[f].append(_scalar(record[f], where=f"{path} annotations[{i}].{f}"))
    frame = pd.DataFrame(columns)
    frame["fname"] = frame["fname"].astype(str)
    return frame


def _is_index(value: object, count: int) -> bool:
    """Whether ``value`` is a whole number in 1..count (MATLAB may store it as an integer or a double)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (int, float, np.integer, np.floating)
    ):
        return False
    return float(value).is_integer() and 1 <= int(value) <= count


def _frame(
    annos: pd.DataFrame,
    *,
    path: Path,
    image_dir: Path,
    class_names: list[str],
    body_types: tuple[str, ...],
) -> pd.DataFrame:
    """Attach labels and boxes to one annotation file's rows; drop classes outside ``body_types``."""
    rows = []
    for i in range(len(annos)):
        fname = annos.at[i, "fname"]
        where = f"{path} annotations[{i}] ({fname})"
        cls = annos.at[i, "class"]
        cls = cls.item() if isinstance(cls, np.generic) else cls
        if not _is_index(cls, len(class_names)):
            raise AdapterError(
                f"{where}: class {cls!r} is not a class index in 1..{len(class_names)} "
                f"(cars_meta.mat lists {len(class_names)} class names)"
            )
        name = class_names[int(cls) - 1]
        kind = body_type(name)
        if kind not in body_types:
            continue
        box = voc_box_to_pixels(*(annos.at[i, f] for f in BOX_FIELDS), where=where)
        rows.append(
            {
                "fname": fname,
                "path": str(image_dir / fname),
                "label": body_types.index(kind),
                "label_name": kind,
                "fine_label": int(cls) - 1,
                "fine_label_name": name,
                "bbox": box,
            }
        )
    return pd.DataFrame(
        rows,
        columns=["fname", "path", "label", "label_name", "fine_label", "fine_label_name", "bbox"],
    )


def build_cars(
    root: str | Path,
    *,
    scheme: str = "official",
    val_fraction: float = 0.25,
    seed: int = 0,
    body_types: tuple[str, ...] | list[str] = BODY_TYPES,
    train_dir: str = "cars_train",
    test_dir: str = "cars_test",
    on_missing_image: str = "error",
) -> pd.DataFrame:
    """The Stanford Cars manifest: label 0..len(body_types)-1 by body type, bbox, fine class.

    Looks for the devkit files in ``root/devkit/`` and then ``root/``; images in
    ``root/<train_dir>/`` and ``root/<test_dir>/``. ``val_fraction`` and ``seed`` apply to
    ``scheme="official"`` only. ``image_id`` is ``"train/<fname stem>"`` or ``"test/<fname stem>"``
    (the two image folders reuse the same file names).
    """
    check_choice("scheme", scheme, SCHEMES)
    val_fraction = check_fraction("val_fraction", val_fraction)
    body_types = tuple(body_types)
    if not body_types or len(set(body_types)) != len(body_types):
        raise AdapterError(
            f"body_types={list(body_types)!r} must be a non-empty list of distinct tokens"
        )
    root = check_root(root, "cars")

    def devkit(name: str) -> Path:
        return find_file(
            root, [f"devkit/{name}", name], what=f"Stanford Cars {name}", source=_DEVKIT_SOURCE
        )

    class_names = read_class_names(devkit("cars_meta.mat"))
    unknown = [t for t in body_types if t not in {body_type(n) for n in class_names}]
    if unknown:
        raise AdapterError(f"body_types {unknown} match no class name in cars_meta.mat")
    train_path = devkit("cars_train_annos.mat")
    train = _frame(
        read_annotations(train_path, need_class=True),
        path=train_path,
        image_dir=root / train_dir,
        class_names=class_names,
        body_types=body_types,
    )
    train["image_id"] = "train/" + train["fname"].map(lambda f: Path(f).stem)
    if scheme == "paper":
        train["split"] = paper_split_per_class(train, "fine_label")
        df = train
    else:
        train["split"] = seeded_split(
            train["image_id"].tolist(),
            fractions={"val": val_fraction},
            seed=seed,
            strata=train["fine_label"].tolist(),
        )
        test_path = _find_test_annotations(root)
        test = _frame(
            read_annotations(test_path, need_class=True),
            path=test_path,
            image_dir=root / test_dir,
            class_names=class_names,
            body_types=body_types,
        )
        test["image_id"] = "test/" + test["fname"].map(lambda f: Path(f).stem)
        test["split"] = "test"
        df = pd.concat([train, test], ignore_index=True)
    df = df.drop(columns=["fname"])
    df = handle_missing_images(df, on_missing=on_missing_image, dataset="cars")
    log.info("cars: %d images, splits %s", len(df), df["split"].value_counts().to_dict())
    options = {
        "scheme": scheme,
        "val_fraction": val_fraction,
        "seed": seed,
        "body_types": body_types,
        "train_dir": train_dir,
        "test_dir": test_dir,
        "on_missing_image": on_missing_image,
    }
    return finalize(df, dataset="cars", label_columns=["label"], root=root, options=options)


def _find_test_annotations(root: Path) -> Path:
    """The labelled test annotations: the ``_withlabels`` file, else a ``cars_test_annos.mat`` with classes."""
    for rel in ("cars_test_annos_withlabels.mat", "devkit/cars_test_annos_withlabels.mat"):
        if (root / rel).is_file():
            return root / rel
    for rel in ("devkit/cars_test_annos.mat", "cars_test_annos.mat"):
        path = root / rel
        if path.is_file():
            fields = (
                np.atleast_1d(_load_mat(path).get("annotations", np.array([]))).dtype.names or ()
            )
            if "class" in fields:
                return path
            raise AnnotationFileMissing(f"{path} has no class labels; {_TEST_LABELS_SOURCE}")
    raise AnnotationFileMissing(
        f"Stanford Cars test annotations not found in {root} or {root / 'devkit'}; {_TEST_LABELS_SOURCE}"
    )
