"""Dataset adapters: each reads one dataset's own annotation files and returns a manifest DataFrame.

The manifest (DESIGN.md, "Dataset manifest"; conventions in :mod:`storage.adapters._common`) is
what alignment, inversion and evaluation read: ``image_id``, absolute ``path``, ``split``, label
columns (listed in ``df.attrs["label_columns"]``), optional ``bbox`` / ``landmarks``. The paper's
three domains (Chai et al., CVPR 2021, Sec. 4.1) have one adapter each, plus a generic folder one.

    from storage.adapters import build_manifest
    df = build_manifest("cars", "/data/stanford_cars", scheme="paper")

No torch here: pandas, pyarrow, scipy.io and the standard library's XML parser only.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from storage.adapters._common import SPLITS, AdapterError, AnnotationFileMissing, seeded_split
from storage.adapters.cars import build_cars
from storage.adapters.cats import build_cats
from storage.adapters.celebahq import build_celebahq
from storage.adapters.digits import build_digits
from storage.adapters.folder import build_folder

ADAPTERS: dict[str, Callable[..., pd.DataFrame]] = {
    "celebahq": build_celebahq,
    "cars": build_cars,
    "cats": build_cats,
    "folder": build_folder,
    "digits": build_digits,
}


def build_manifest(name: str, root: str | Path, **options: object) -> pd.DataFrame:
    """Run the adapter registered as ``name`` on ``root`` with its keyword options."""
    if name not in ADAPTERS:
        raise AdapterError(f"unknown dataset adapter {name!r}; available: {sorted(ADAPTERS)}")
    return ADAPTERS[name](root, **options)


__all__ = [
    "ADAPTERS",
    "SPLITS",
    "AdapterError",
    "AnnotationFileMissing",
    "build_cars",
    "build_cats",
    "build_celebahq",
    "build_digits",
    "build_folder",
    "build_manifest",
    "seeded_split",
]
