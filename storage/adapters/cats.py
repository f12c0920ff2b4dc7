"""Oxford-IIIT Pet, cats only: the 12 cat breeds, with head bounding boxes for alignment.

The paper's cat domain (Chai et al., CVPR 2021, Sec. 4.1): a 12-way breed classifier on aligned
cat faces; α chosen on val, accuracy reported on test.

Files under ``root`` (the two archives of the Oxford-IIIT Pet page, unpacked side by side):

- ``images/<Image>.jpg``;
- ``annotations/list.txt`` — ``#`` comment lines, then ``<Image> <CLASS-ID> <SPECIES> <BREED ID>``
  with SPECIES 1 = cat, 2 = dog and BREED ID 1..12 for cats (the file's own header comment has
  the two breed ranges swapped; 12 cat breeds is what the data holds);
- ``annotations/trainval.txt`` and ``annotations/test.txt`` — the same four columns, the official
  partition;
- ``annotations/xmls/<Image>.xml`` — Pascal VOC XML with the head box
  (``<object><bndbox><xmin>…``); the dataset ships these for the trainval images only.

Labels: ``label`` = BREED ID − 1 (0 = Abyssinian … 11 = Sphynx, alphabetical — the same order as the
official code's labels) and ``label_name`` = the breed part of the image name
(``British_Shorthair_12`` → ``British_Shorthair``).

Head boxes: ``bbox`` = the first ``<object>``'s box (converted as described in
:mod:`storage.adapters._common`), ``has_bbox`` = whether one was found. Images without an XML
file (in practice the whole official test partition) are kept with a null ``bbox`` and
``has_bbox = False``; alignment must fall back for them (whole image or a detector).

Splits (``scheme``):

- ``"official"`` (default): trainval.txt is split per breed into train and val with
  :func:`storage.adapters._common.seeded_split` (``val_fraction``, ``seed``); test.txt is test.
- ``"paper"``: the official code's split of all cat images: per breed, image names sorted as
  strings, the first ``n // 2`` are train, the last ``ceil(n / 4)`` are test, the rest val. (The
  paper applied it to its own set of aligned face crops, so memberships can differ slightly.)
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd

from storage.adapters._common import (
    AdapterError,
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
CAT_SPECIES = 1
NUM_CAT_BREEDS = 12

_PET_SOURCE = "it is in annotations.tar.gz from the Oxford-IIIT Pet page (www.robots.ox.ac.uk/~vgg/data/pets/)"
_NAME = re.compile(r"^(?P<breed>.+)_(?P<number>\d+)$")


def read_pet_list(path: Path) -> pd.DataFrame:
    """One Pet list file (``list.txt``, ``trainval.txt`` or ``test.txt``) as a frame of its 4 columns."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            parts = text.split()
            if len(parts) != 4 or not all(p.isdigit() for p in parts[1:]):
                raise AdapterError(
                    f"{path}:{number}: expected '<Image> <CLASS-ID> <SPECIES> <BREED ID>', got {text!r}"
                )
            rows.append((parts[0], int(parts[1]), int(parts[2]), int(parts[3])))
    return pd.DataFrame(rows, columns=["image", "class_id", "species", "breed_id"])


def breed_name(image: str, *, where: str) -> str:
    """``"British_Shorthair_12"`` → ``"British_Shorthair"``."""
    match = _NAME.match(image)
    if not match:
        raise AdapterError(f"{where}: image name {image!r} is not '<Breed>_<number>'")
    return match.group("breed")


def read_head_box(path: Path) -> list[float] | None:
    """The first object's box of a VOC XML file, or None when the file has no object with a box."""
    try:
        tree = ET.parse(path)
    except ET.ParseError as exc:
        raise AdapterError(f"{path}: malformed XML ({exc})") from exc
    for obj in tree.getroot().iter("object"):
        box = obj.find("bndbox")
        if box is None:
            continue
        values = []
        for tag in ("xmin", "ymin", "xmax", "ymax"):
            node = box.find(tag)
            try:
                values.append(float(node.text))  # type: ignore[union-attr,arg-type]
            except (AttributeError, TypeError, ValueError):
                raise AdapterError(f"{path}: <bndbox> has no numeric <{tag}>") from None
        return voc_box_to_pixels(*values, where=str(path))
    return None


def build_cats(
    root: str | Path,
    *,
    scheme: str = "official",
    val_fraction: float = 0.25,
    seed: int = 0,
    image_dir: str = "images",
    on_missing_image: str = "error",
) -> pd.DataFrame:
    """The cats-only Oxford-IIIT Pet manifest: 12 breeds, head boxes where annotated."""
    check_choice("scheme", scheme, SCHEMES)
    val_fraction = check_fraction("val_fraction", val_fraction)
    root = check_root(root, "cats")
    listing_path = find_file(
        root, ["annotations/list.txt"], what="Oxford-IIIT Pet list", source=_PET_SOURCE
    )
    listing = read_pet_list(listing_path)
    cats = listing[listing["species"] == CAT_SPECIES].reset_index(drop=True)
    if cats["image"].duplicated().any():
        raise AdapterError(
            f"{listing_path}: images listed twice, e.g. {cats.loc[cats['image'].duplicated(), 'image'].iloc[0]!r}"
        )
    bad = cats[(cats["breed_id"] < 1) | (cats["breed_id"] > NUM_CAT_BREEDS)]
    if not bad.empty:
        row = bad.iloc[0]
        raise AdapterError(
            f"{listing_path}: cat image {row['image']!r} has BREED ID {row['breed_id']}, "
            f"outside the {NUM_CAT_BREEDS} cat breeds 1..{NUM_CAT_BREEDS}"
        )
    cats["label"] = cats["breed_id"] - 1
    cats["label_name"] = [breed_name(i, where=str(listing_path)) for i in cats["image"]]
    names_per_label = cats.groupby("label")["label_name"].unique()
    for label, names in names_per_label.items():
        if len(names) != 1:
            raise AdapterError(
                f"{listing_path}: BREED ID {label + 1} is used by several breeds {sorted(names)}"
            )

    if scheme == "paper":
        cats["split"] = paper_split_per_class(cats, "label", order_column="image")
    else:
        cats["split"] = _official_split(
            root, cats, listing_path, val_fraction=val_fraction, seed=seed
        )
        cats = cats[cats["split"] != ""].reset_index(drop=True)

    xml_dir = root / "annotations" / "xmls"
    boxes = [
        read_head_box(xml_dir / f"{i}.xml") if (xml_dir / f"{i}.xml").is_file() else None
        for i in cats["image"]
    ]
    df = pd.DataFrame(
        {
            "image_id": cats["image"],
            "path": [str(root / image_dir / f"{i}.jpg") for i in cats["image"]],
            "split": cats["split"],
            "label": cats["label"].astype("int64"),
            "label_name": cats["label_name"],
            "bbox": boxes,
            "has_bbox": [b is not None for b in boxes],
        }
    )
    df = handle_missing_images(df, on_missing=on_missing_image, dataset="cats")
    without = df.loc[~df["has_bbox"], "split"].value_counts().to_dict()
    if without:
        log.warning("cats: images without a head box (kept, has_bbox=False) per split: %s", without)
    options = {
        "scheme": scheme,
        "val_fraction": val_fraction,
        "seed": seed,
        "image_dir": image_dir,
        "on_missing_image": on_missing_image,
    }
    return finalize(df, dataset="cats", label_columns=["label"], root=root, options=options)


def _official_split(
    root: Path, cats: pd.DataFrame, listing_path: Path, *, val_fraction: float, seed: int
) -> list[str]:
    """trainval.txt → train/val (seeded, per breed), test.txt → test; '' for cats in neither file."""
    member: dict[str, str] = {}
    known = cats.set_index("image")
    for part in ("trainval", "test"):
        path = find_file(
            root,
            [f"annotations/{part}.txt"],
            what=f"Oxford-IIIT Pet {part}.txt",
            source=_PET_SOURCE,
        )
        table = read_pet_list(path)
        for image, breed in zip(table["image"], table["breed_id"], strict=True):
            if image in member:
                raise AdapterError(f"{path}: image {image!r} is also listed in {member[image]}.txt")
            member[image] = part
            if image in known.index and known.at[image, "breed_id"] != breed:
                raise AdapterError(
                    f"{path}: image {image!r} has BREED ID {breed} but {listing_path.name} says "
                    f"{known.at[image, 'breed_id']}"
                )
    parts = [member.get(i, "") for i in cats["image"]]
    orphans = [i for i, p in zip(cats["image"], parts, strict=True) if not p]
    if orphans:
        log.warning(
            "cats: %d cat images are in neither trainval.txt nor test.txt; left out (e.g. %s)",
            len(orphans),
            orphans[0],
        )
    trainval = [i for i, p in enumerate(parts) if p == "trainval"]
    assigned = seeded_split(
        [cats.at[i, "image"] for i in trainval],
        fractions={"val": val_fraction},
        seed=seed,
        strata=[cats.at[i, "label"] for i in trainval],
    )
    out = ["test" if p == "test" else "" for p in parts]
    for i, split in zip(trainval, assigned, strict=True):
        out[i] = split
    return out
