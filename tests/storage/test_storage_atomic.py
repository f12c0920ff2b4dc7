"""Crash-safe writes: temp file + rename, exclusive creation, stale temp clean-up, Zarr store."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import zarr

from storage.atomic import (
    PARTIAL_SUFFIX,
    DurableLocalStore,
    atomic_write_bytes,
    remove_stale_partials,
)


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "f.bin"
    assert atomic_write_bytes(target, b"first") == 5
    atomic_write_bytes(target, b"second", durable=False)
    assert target.read_bytes() == b"second"
    assert [p.name for p in target.parent.iterdir()] == ["f.bin"]


def test_exclusive_write_refuses_existing_file(tmp_path):
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"mine", exclusive=True)
    with pytest.raises(FileExistsError):
        atomic_write_bytes(target, b"theirs", exclusive=True)
    assert target.read_bytes() == b"mine"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_failed_write_removes_its_temp_file(tmp_path):
    class Boom:
        def __buffer__(self, flags):
            raise RuntimeError("disk on fire")

    with pytest.raises((RuntimeError, TypeError)):
        atomic_write_bytes(tmp_path / "f.bin", Boom())
    assert list(tmp_path.iterdir()) == []


def test_remove_stale_partials_keeps_young_ones(tmp_path):
    old, young = tmp_path / f"a.x{PARTIAL_SUFFIX}", tmp_path / "deep" / f"b.y{PARTIAL_SUFFIX}"
    young.parent.mkdir()
    old.write_bytes(b"1")
    young.write_bytes(b"2")
    hour_ago = time.time() - 7200
    os.utime(old, (hour_ago, hour_ago))
    assert remove_stale_partials(tmp_path, min_age_s=3600) == 1
    assert not old.exists() and young.exists()


def test_durable_store_round_trips_through_zarr(tmp_path):
    store = DurableLocalStore(tmp_path / "z")
    arr = zarr.create_array(store, shape=(6, 3), chunks=(2, 3), dtype="float32", fill_value=0.0)
    arr[1:5] = np.arange(12, dtype=np.float32).reshape(4, 3)
    ro = zarr.open_array(DurableLocalStore(tmp_path / "z", read_only=True), mode="r")
    np.testing.assert_array_equal(ro[1:5], np.arange(12, dtype=np.float32).reshape(4, 3))
    assert ro.store.read_only and ro.store.durable
    assert not list((tmp_path / "z").rglob(f"*{PARTIAL_SUFFIX}"))
    with pytest.raises(ValueError, match="read-only"):
        ro.store.set_sync("c/0/0", ro.store.get_sync("c/0/0"))
