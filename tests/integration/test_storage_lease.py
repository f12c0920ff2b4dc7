"""Issue 18.3: two writers of one shard, as real processes; the writer lease and its holder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from storage import DONE, LatentStore, StoreError
from storage.lease import shard_lease

pytestmark = pytest.mark.integration

ATTRS = {"generator_sha256": "e" * 64, "config": {"steps": 1}, "code_version": "test"}
N, L, C = 32, 2, 4  # one shard of 32 items

WRITER = r"""
import sys, time
from pathlib import Path
import numpy as np
from storage import LatentStore
store, parity, go = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
s = LatentStore.open(store, mode="a")
while not go.exists():
    time.sleep(0.002)
for i in range(parity, s.n_images, 2):  # one item per write: many read-modify-writes
    w = np.full((1, s.num_ws, s.w_dim), i, np.float32)
    s.write([i], w=w, w_init=w - 1, loss=np.array([i / 10]), psnr=np.array([float(i)]))
"""


@pytest.mark.slow  # 3 s idle, 15 s on a loaded 2-core box: 32 serialised fsynced writes
def test_two_library_writers_of_one_shard_lose_nothing(tmp_path):
    """Each process writes every other item of the same shard, one write per item: every
    item ends done with its own w (before the lock: NaN w on done items, lost done marks)."""
    store = tmp_path / "s.zarr"
    LatentStore.create(store, N, L, C, N, attrs=ATTRS)
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(store), str(parity), str(go)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for parity in (0, 1)
    ]
    time.sleep(0.5)
    go.write_text("go")
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    s = LatentStore.open(store)
    got = s.read(np.arange(N), fields=["status", "w", "w_init", "loss", "psnr"])
    assert (got["status"] == DONE).all(), np.flatnonzero(got["status"] != DONE)
    want = np.broadcast_to(np.arange(N, dtype=np.float32)[:, None, None], (N, L, C))
    np.testing.assert_array_equal(got["w"], want)
    np.testing.assert_array_equal(got["w_init"], want - 1)
    np.testing.assert_array_equal(got["psnr"], np.arange(N, dtype=np.float32))


HOLDER = r"""
import sys, time
from pathlib import Path
from storage.lease import shard_lease
with shard_lease(sys.argv[1], 3):
    Path(sys.argv[2]).write_text("held")
    time.sleep(600)
"""


def test_a_second_writer_is_told_the_holder_and_a_killed_holder_releases(tmp_path):
    store, ready = tmp_path / "s.zarr", tmp_path / "ready"
    store.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(store), str(ready)])
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        with pytest.raises(StoreError) as info:
            with shard_lease(store, 3):
                pass
        message = str(info.value)
        assert f"shard 3 is being written by pid {holder.pid} on " in message
        assert "a killed holder releases the lease" in message and "\n" not in message
        with shard_lease(store, 4):  # other shards are free
            pass
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
        start = time.monotonic()
        with shard_lease(store, 3, wait=10):  # the kernel dropped the dead holder's lock
            info = json.loads((store / ".leases" / "shard-3.lease").read_text())
            assert info["pid"] == os.getpid()
        assert time.monotonic() - start < 2
    finally:
        holder.kill()
        holder.wait(timeout=30)
