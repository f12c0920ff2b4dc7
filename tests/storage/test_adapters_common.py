"""The adapters' shared pieces: the paper's per-class split, the seeded split, the box conversion."""

from __future__ import annotations

import random

import pytest

from storage.adapters import AdapterError, seeded_split
from storage.adapters._common import paper_split, voc_box_to_pixels


@pytest.mark.parametrize("n", range(1, 41))
def test_paper_split_equals_the_official_slices(n):
    v = list(range(n))
    expected = {i: "train" for i in v[: len(v) // 2]}
    expected.update({i: "val" for i in v[len(v) // 2 : -len(v) // 4]})
    expected.update({i: "test" for i in v[-len(v) // 4 :]})
    assert paper_split(n) == [expected[i] for i in v]


def test_seeded_split_counts_and_order_independence():
    ids = [f"img_{i}" for i in range(103)]
    strata = [i % 3 for i in range(103)]  # 35, 34, 34 per class
    out = seeded_split(ids, fractions={"test": 0.1, "val": 0.2}, seed=7, strata=strata)
    per = {(s, k): 0 for s in range(3) for k in ("train", "val", "test")}
    for stratum, split in zip(strata, out, strict=True):
        per[(stratum, split)] += 1
    # round half up per class: 35 -> test 4 (3.5), val 7; 34 -> test 3 (3.4), val 7 (6.8)
    assert per == {
        (0, "test"): 4, (0, "val"): 7, (0, "train"): 24,
        (1, "test"): 3, (1, "val"): 7, (1, "train"): 24,
        (2, "test"): 3, (2, "val"): 7, (2, "train"): 24,
    }  # fmt: skip
    shuffled = list(zip(ids, strata, strict=True))
    random.Random(1).shuffle(shuffled)
    again = seeded_split(
        [i for i, _ in shuffled],
        fractions={"test": 0.1, "val": 0.2},
        seed=7,
        strata=[s for _, s in shuffled],
    )
    assert dict(zip([i for i, _ in shuffled], again, strict=True)) == dict(
        zip(ids, out, strict=True)
    )
    other = seeded_split(ids, fractions={"test": 0.1, "val": 0.2}, seed=8, strata=strata)
    assert sum(a != b for a, b in zip(out, other, strict=True)) > 10


def test_seeded_split_is_stable_when_one_image_is_added():
    ids = [f"x{i}" for i in range(200)]
    before = dict(zip(ids, seeded_split(ids, fractions={"val": 0.25}, seed=0), strict=True))
    grown = [*ids, "x_new"]
    after = dict(zip(grown, seeded_split(grown, fractions={"val": 0.25}, seed=0), strict=True))
    moved = [i for i in ids if before[i] != after[i]]
    assert len(moved) <= 1  # only an image at the boundary can change side


def test_seeded_split_rejects_bad_input():
    with pytest.raises(AdapterError, match="strata has 2 entries for 3 image ids"):
        seeded_split(["a", "b", "c"], fractions={"val": 0.5}, seed=0, strata=[0, 1])
    with pytest.raises(
        AdapterError,
        match=r"split fractions \{'val': 0\.6, 'test': 0\.4\} leave nothing for 'train'",
    ):
        seeded_split(["a"], fractions={"val": 0.6, "test": 0.4}, seed=0)


def test_voc_box_conversion():
    assert voc_box_to_pixels(1, 1, 10, 20, where="x") == [0.0, 0.0, 10.0, 20.0]
    with pytest.raises(
        AdapterError,
        match=r"f\.xml: bounding box \(xmin=0, ymin=1, xmax=5, ymax=5\) is empty, inverted or negative",
    ):
        voc_box_to_pixels(0, 1, 5, 5, where="f.xml")
