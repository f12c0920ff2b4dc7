"""CelebA-HQ with the 40 CelebA attributes and CelebA's official train/val/test partition.

The paper's face domain (Chai et al., CVPR 2021, Sec. 4.1): 40 binary attribute classifiers on
CelebA-HQ, α chosen on the val partition and accuracy reported on the test partition. The images
are already aligned (no bbox).

Files, all under ``root`` (see docs/datasets.md for where they come from):

- ``CelebA-HQ-img/<idx>.jpg`` — the 30,000 CelebAMask-HQ images (``image_dir`` to change);
- ``CelebAMask-HQ-attribute-anno.txt`` — line 1 the image count, line 2 the 40 attribute names,
  then ``<idx>.jpg`` and 40 values of 1/-1 per line;
- ``CelebA-HQ-to-CelebA-mapping.txt`` — header ``idx orig_idx orig_file``, then one row per image;
- ``list_eval_partition.txt`` (from CelebA; also found under ``Eval/``) — ``<celeba file> <0|1|2>``
  with 0 = train, 1 = val, 2 = test.

Manifest: ``image_id`` = the CelebA-HQ index as text (``"0"`` … ``"29999"``), 40 label columns of
0/1 named after the attributes (``Smiling``, ``Young``, …), and ``celeba_file`` (the original CelebA
file name, for joining CelebA's own annotations such as landmarks).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd

from storage.adapters._common import (
    AdapterError,
    check_root,
    finalize,
    find_file,
    handle_missing_images,
)

log = logging.getLogger(__name__)

NUM_ATTRIBUTES = 40
PARTITION_NAMES = {0: "train", 1: "val", 2: "test"}

_MASK_SOURCE = "it ships with CelebAMask-HQ (github.com/switchablenorms/CelebAMask-HQ)"
_PARTITION_SOURCE = (
    "it is CelebA's Eval/list_eval_partition.txt (mmlab.ie.cuhk.edu.hk/projects/CelebA.html); "
    "copy it into the root or pass partition_file (CLI: --partition-file)"
)


def _stem_number(name: str, *, where: str) -> int:
    stem = name.rsplit("/", 1)[-1].split(".", 1)[
        0
    ]  # plain string ops: 200k calls, Path is 10x slower
    if not stem.isdigit():
        raise AdapterError(f"{where}: file name {name!r} is not a number followed by an extension")
    return int(stem)


def read_attributes(path: Path) -> tuple[list[str], pd.DataFrame]:
    """Attribute names and a frame ``file`` + one 0/1 column per attribute, in file order."""
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    if len(lines) < 2:
        raise AdapterError(
            f"{path}: expected an image count on line 1 and attribute names on line 2"
        )
    try:
        expected = int(lines[0].strip())
    except ValueError:
        raise AdapterError(f"{path}:1: expected the image count, got {lines[0][:40]!r}") from None
    names = lines[1].split()
    if len(names) != NUM_ATTRIBUTES or len(set(names)) != len(names):
        raise AdapterError(
            f"{path}:2: expected {NUM_ATTRIBUTES} distinct attribute names, got {len(names)} "
            f"({len(set(names))} distinct)"
        )
    files: list[str] = []
    rows: list[list[int]] = []
    for number, line in enumerate(lines[2:], start=3):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != NUM_ATTRIBUTES + 1:
            raise AdapterError(
                f"{path}:{number}: expected a file name and {NUM_ATTRIBUTES} values, got {len(parts)} fields"
            )
        values = parts[1:]
        bad = [v for v in values if v not in ("1", "-1")]
        if bad:
            raise AdapterError(f"{path}:{number}: attribute values must be 1 or -1, got {bad[0]!r}")
        files.append(parts[0])
        rows.append([1 if v == "1" else 0 for v in values])
    if len(files) != expected:
        raise AdapterError(
            f"{path}: line 1 announces {expected} images but {len(files)} rows follow"
        )
    frame = pd.DataFrame(rows, columns=names, dtype="int64")
    frame.insert(0, "file", files)
    return names, frame


def read_mapping(path: Path) -> dict[int, str]:
    """CelebA-HQ index → original CelebA file name."""
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    header = lines[0].split() if lines else []
    if header[:3] != ["idx", "orig_idx", "orig_file"]:
        raise AdapterError(
            f"{path}:1: expected the header 'idx orig_idx orig_file', got {' '.join(header)!r}"
        )
    mapping: dict[int, str] = {}
    for number, line in enumerate(lines[1:], start=2):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3 or not parts[0].isdigit():
            raise AdapterError(
                f"{path}:{number}: expected 'idx orig_idx orig_file', got {line.strip()!r}"
            )
        mapping[int(parts[0])] = parts[2]
    return mapping


def read_partition(path: Path) -> dict[int, str]:
    """CelebA image number (file stem as an integer) → ``train`` / ``val`` / ``test``."""
    partition: dict[int, str] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise AdapterError(
                    f"{path}:{number}: expected '<file> <0|1|2>', got {line.strip()!r}"
                )
            key = _stem_number(parts[0], where=f"{path}:{number}")
            partition[key] = PARTITION_NAMES[int(parts[1])]
    return partition


def build_celebahq(
    root: str | Path,
    *,
    image_dir: str = "CelebA-HQ-img",
    partition_file: str | Path | None = None,
    on_missing_image: str = "error",
) -> pd.DataFrame:
    """The CelebA-HQ manifest: 40 attribute label columns, CelebA's official partition.

    ``partition_file`` overrides where CelebA's ``list_eval_partition.txt`` is read from (default:
    ``root/list_eval_partition.txt`` or ``root/Eval/list_eval_partition.txt``).
    """
    root = check_root(root, "celebahq")
    attr_path = find_file(
        root,
        ["CelebAMask-HQ-attribute-anno.txt"],
        what="CelebA-HQ attribute file",
        source=_MASK_SOURCE,
    )
    map_path = find_file(
        root,
        ["CelebA-HQ-to-CelebA-mapping.txt"],
        what="CelebA-HQ to CelebA mapping",
        source=_MASK_SOURCE,
    )
    if partition_file is not None:
        part_path = Path(partition_file).expanduser().resolve()
        if not part_path.is_file():
            raise AdapterError(
                f"partition_file {str(partition_file)!r} is not a file; {_PARTITION_SOURCE}"
            )
    else:
        part_path = find_file(
            root,
            ["list_eval_partition.txt", "Eval/list_eval_partition.txt"],
            what="CelebA partition file",
            source=_PARTITION_SOURCE,
        )
    names, attributes = read_attributes(attr_path)
    mapping = read_mapping(map_path)
    partition = read_partition(part_path)

    image_ids: list[str] = []
    celeba_files: list[str] = []
    splits: list[str] = []
    for number, file in enumerate(attributes["file"], start=3):
        idx = _stem_number(file, where=f"{attr_path}:{number}")
        if idx not in mapping:
            raise AdapterError(
                f"{attr_path}:{number}: image {file!r} has no row in {map_path.name}"
            )
        orig = mapping[idx]
        key = _stem_number(orig, where=f"{map_path} (idx {idx})")
        if key not in partition:
            raise AdapterError(
                f"{map_path.name}: CelebA file {orig!r} (idx {idx}) is not listed in {part_path}"
            )
        image_ids.append(str(idx))
        celeba_files.append(orig)
        splits.append(partition[key])
    image_root = str(root / image_dir)
    df = pd.DataFrame(
        {
            "image_id": image_ids,
            "path": [os.path.join(image_root, f) for f in attributes["file"]],
            "split": splits,
        }
    )
    df = pd.concat([df, attributes[names]], axis=1)
    df["celeba_file"] = celeba_files
    df = handle_missing_images(df, on_missing=on_missing_image, dataset="celebahq")
    log.info("celebahq: %d images, splits %s", len(df), df["split"].value_counts().to_dict())
    options = {
        "image_dir": image_dir,
        "partition_file": str(part_path),
        "on_missing_image": on_missing_image,
    }
    return finalize(df, dataset="celebahq", label_columns=names, root=root, options=options)
