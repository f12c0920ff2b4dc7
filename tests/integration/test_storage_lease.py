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


LOGITS_WRITER = r"""
import sys, time
from pathlib import Path
import numpy as np, pandas as pd
from storage.logits import write_logits
from storage.multiview import MultiviewStore
root, who, go = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
mv = MultiviewStore.open(sys.argv[4], mode="a")
def shard(a, b):  # what a sampler writes: the same bytes whoever samples the shard
    n = b - a
    return {"images": np.full((n, 2, 3, 8, 8), a + 1, np.uint8),
            "latents": np.arange(n * 8, dtype=np.float32).reshape(n, 2, 4) + a,
            "labels": np.arange(a, b), "anchor_seed": np.arange(a, b) * 10}
while not go.exists():
    time.sleep(0.002)
for i in range(12):  # one setting per write into the same shard file: read-merge-writes
    mv.write_shard(0, shard(0, 4))  # two samplers of the same multiview shards, interleaved
    mv.write_shard(8, shard(8, 10))  # the last, partial shard too
    rows = pd.DataFrame({"image_id": ["a", "b"], "split": "val", "task": "Smiling",
                         "classifier": "r18", "method": "isotropic_fine",
                         "setting": f"{who}{i}", "view": 0, "label": [0, 1],
                         "logits": [np.zeros(2, np.float32)] * 2, "seed": None})
    write_logits(root, rows, shard="s0", identity={f"group.{who}{i}": i})
"""


def test_two_renders_or_samplers_of_one_shard_lose_nothing(tmp_path):
    """Two processes add settings to the same logits shard file (as two renders of one shard
    with different view groups would): every row and identity key of both is kept (before the
    file lock, each read-merge-write could replace the file with a merge lacking the other's;
    it failed 3 of 3 runs). Both also write the same multiview shards over and over: each
    write replaces whole shard chunks with the same bytes, data before status, so the store
    ends complete and exact without a lock (docs/storage.md)."""
    from storage.logits import read_identity, read_logits
    from storage.multiview import DONE as MV_DONE
    from storage.multiview import MultiviewStore

    layout = {"n_anchors": 10, "n_views": 2, "latent_dim": 4, "channels": 3, "resolution": 8,
              "shard_size": 4}  # fmt: skip
    mv = MultiviewStore.open_or_create(
        tmp_path / "mv", layout=layout, attrs={"generator_sha256": "abc", "config": {}}
    )
    root, go = tmp_path / "logits", tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", LOGITS_WRITER, str(root), who, str(go), str(mv.path)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for who in ("p", "q")
    ]
    time.sleep(0.5)
    go.write_text("go")
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    want = sorted(f"{who}{i}" for who in "pq" for i in range(12))
    table = read_logits(root)
    assert sorted(table["setting"].unique()) == want and len(table) == 2 * len(want)
    assert sorted(k.removeprefix("group.") for k in read_identity(root)) == want
    mv = MultiviewStore.open(tmp_path / "mv")
    status = mv.status()
    assert (status[:4] == MV_DONE).all() and (status[8:] == MV_DONE).all()
    assert not (status[4:8] == MV_DONE).any()
    images = np.asarray(mv._group["images"][:])
    assert (images[:4] == 1).all() and (images[8:] == 9).all()
    np.testing.assert_array_equal(np.asarray(mv._group["anchor_seed"][8:]), [80, 90])
