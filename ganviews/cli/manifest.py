"""``ganviews manifest DATASET ROOT --out manifest.parquet``: build a dataset manifest from its own files.

One sub-command per adapter in ``storage.adapters.ADAPTERS`` (celebahq, cars, cats, folder,
digits: scikit-learn's bundled digits rendered as PNGs under ROOT, the demo's domain). Prints
the number of images per split and per label; see docs/datasets.md for the files each one reads.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

_DATASETS = {
    "celebahq": "CelebA-HQ, 40 attributes (CelebAMask-HQ files + CelebA's partition)",
    "cars": "Stanford Cars as SUV / Sedan / Cab with boxes (devkit .mat files)",
    "cats": "Oxford-IIIT Pet cats, 12 breeds, head boxes (list/trainval/test + VOC XML)",
    "folder": "any image folder with a CSV or Parquet labels file",
    "digits": "scikit-learn's bundled 8×8 digits rendered as PNGs under ROOT (the demo domain)",
}
_GENERATED = {"digits"}  # adapters that write their images: no annotated image can be missing
_MAX_LEVELS = 20  # a label column with more distinct values is summarised, not tabulated


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "manifest",
        help="build a dataset manifest (Parquet) from a dataset's annotation files",
        description="Read a dataset's own annotation files and write the manifest Parquet file.",
    )
    datasets = parser.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    for name, summary in _DATASETS.items():
        sub = datasets.add_parser(
            name, help=summary, description=f"{summary}. Files and rules: docs/datasets.md."
        )
        sub.add_argument("root", type=Path, metavar="ROOT", help="the dataset's root folder")
        sub.add_argument("--out", type=Path, required=True, help="manifest Parquet file to write")
        if name not in _GENERATED:
            sub.add_argument(
                "--on-missing-image",
                choices=("error", "drop"),
                default="error",
                help="annotated images absent on disk: fail (default) or leave them out",
            )
        _DATASET_OPTIONS[name](sub)
        sub.set_defaults(func=run)


def _celebahq_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--image-dir",
        default="CelebA-HQ-img",
        help="image folder under ROOT (default: %(default)s)",
    )
    p.add_argument(
        "--partition-file",
        type=Path,
        help="CelebA's list_eval_partition.txt if not in ROOT or ROOT/Eval",
    )


def _split_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--scheme",
        choices=("official", "paper"),
        default="official",
        help="official: train/val from the official training part, official test; "
        "paper: the official code's per-class 1/2, 1/4, 1/4 split (default: %(default)s)",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.25,
        help="official scheme: val share per class (default: %(default)s)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="official scheme: split seed (default: %(default)s)"
    )


def _cars_options(p: argparse.ArgumentParser) -> None:
    _split_options(p)
    p.add_argument(
        "--body-types",
        nargs="+",
        default=["SUV", "Sedan", "Cab"],
        help="body-type tokens kept, labelled 0.. in this order (default: %(default)s)",
    )


def _cats_options(p: argparse.ArgumentParser) -> None:
    _split_options(p)


def _folder_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--labels",
        help="labels CSV/Parquet: absolute, or relative to ROOT, else to the current directory (default: ROOT/labels.csv or ROOT/labels.parquet)",
    )
    p.add_argument(
        "--image-column", help="column holding image paths (default: image, file, filename, …)"
    )
    p.add_argument(
        "--split-column", help="column holding train/val/test (default: 'split' when present)"
    )
    p.add_argument("--label-columns", nargs="+", help="label columns (default: every other column)")
    p.add_argument(
        "--fractions",
        nargs=3,
        type=float,
        default=[0.8, 0.1, 0.1],
        metavar=("TRAIN", "VAL", "TEST"),
        help="seeded split when there is no split column (default: 0.8 0.1 0.1)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of that split (default: %(default)s)")
    p.add_argument("--stratify", help="label column to stratify that split by")


def _digits_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--resolution",
        type=int,
        default=32,
        help="side of the PNGs in pixels (default: %(default)s)",
    )
    p.add_argument("--val-fraction", type=float, default=0.2, help="default: %(default)s")
    p.add_argument("--test-fraction", type=float, default=0.2, help="default: %(default)s")
    p.add_argument("--seed", type=int, default=0, help="split seed (default: %(default)s)")


_DATASET_OPTIONS = {
    "celebahq": _celebahq_options,
    "cars": _cars_options,
    "cats": _cats_options,
    "folder": _folder_options,
    "digits": _digits_options,
}


def _options(args: argparse.Namespace) -> dict[str, object]:
    if args.dataset == "digits":
        return {
            "resolution": args.resolution,
            "val_fraction": args.val_fraction,
            "test_fraction": args.test_fraction,
            "seed": args.seed,
        }
    common = {"on_missing_image": args.on_missing_image}
    if args.dataset == "celebahq":
        return {**common, "image_dir": args.image_dir, "partition_file": args.partition_file}
    if args.dataset in ("cars", "cats"):
        extra = {"body_types": tuple(args.body_types)} if args.dataset == "cars" else {}
        return {
            **common,
            "scheme": args.scheme,
            "val_fraction": args.val_fraction,
            "seed": args.seed,
            **extra,
        }
    return {
        **common,
        "labels": args.labels,
        "image_column": args.image_column,
        "split_column": args.split_column,
        "label_columns": args.label_columns,
        "fractions": tuple(args.fractions),
        "seed": args.seed,
        "stratify": args.stratify,
    }


def run(args: argparse.Namespace) -> int:
    from storage.adapters import build_manifest
    from storage.manifest import write_manifest

    df = build_manifest(args.dataset, args.root, **_options(args))
    labels = list(df.attrs["label_columns"])
    out = write_manifest(df, args.out, label_columns=labels)
    print(f"wrote {out} ({len(df)} images, {len(labels)} label column(s))")
    print(format_counts(df, labels))
    return 0


def format_counts(df: pd.DataFrame, labels: list[str]) -> str:
    """Per-split image counts, then per-label counts per split (text tables)."""
    import pandas as pd

    splits = [s for s in ("train", "val", "test") if s in set(df["split"])]
    lines = [
        "images per split: " + ", ".join(f"{s} {int((df['split'] == s).sum())}" for s in splits)
    ]
    if "has_bbox" in df.columns:
        missing = df.loc[~df["has_bbox"].astype(bool), "split"].value_counts()
        if len(missing):
            lines.append(
                "without bbox: " + ", ".join(f"{s} {int(missing.get(s, 0))}" for s in splits)
            )
    for column in labels:
        values = df[column]
        if values.nunique() > _MAX_LEVELS:
            lines.append(f"{column}: {values.nunique()} distinct values")
            continue
        table = pd.crosstab(values, df["split"]).reindex(columns=splits, fill_value=0)
        names = _names_column(df, column)
        if names is None and len(labels) > 1 and set(values.unique()) <= {0, 1}:
            positives = table.loc[1] if 1 in table.index else pd.Series(0, index=splits)
            counts = ", ".join(f"{s} {int(positives[s])}/{int(table[s].sum())}" for s in splits)
            lines.append(f"{column + ' (positives):':<32} {counts}")
            continue
        if names is not None:
            mapping = df.drop_duplicates(column).set_index(column)[names]
            table.index = [f"{v} {mapping[v]}" for v in table.index]
        table.index.name = column
        lines.append(table.to_string())
    return "\n".join(lines)


def _names_column(df: pd.DataFrame, column: str) -> str | None:
    """The text names of a label column: ``<column>_name``, or ``label_name`` for ``label``."""
    for candidate in (f"{column}_name", "label_name" if column == "label" else None):
        if candidate and candidate in df.columns:
            return candidate
    return None
