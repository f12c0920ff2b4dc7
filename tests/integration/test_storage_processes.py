"""Real subprocesses against one latent store: concurrent shard writers, SIGKILL mid-batch, resume.

The child script below is the writer; the parent checks the store afterwards. Nothing is
mocked: the children open the store through the public API; the only instrumentation is a
named point inside ``write`` (``store._hooks``) where a child can announce that it is
mid-batch and wait to be killed.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from storage import DONE, LatentStore

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ATTRS = {"generator_sha256": "f" * 64, "config": {"steps": 500}, "code_version": "test"}

CHILD = r"""
import json, os, sys, time
from pathlib import Path
import numpy as np
from storage import LatentStore

cfg = json.loads(sys.argv[1])
N, L, C, S = cfg["shape"]

def latents(idx, shift=0.0):
    idx = np.asarray(idx, dtype=np.float32)[:, None, None]
    return (idx + np.arange(L, dtype=np.float32)[None, :, None] / 100
            + np.arange(C, dtype=np.float32)[None, None, :] / 10000 + shift).astype(np.float32)

def recon(idx, shift=0):
    return ((np.asarray(idx)[:, None, None, None] * 7 + shift) % 251
            * np.ones((1, 3, 8, 8))).astype(np.uint8)

def touch(path):
    Path(path).write_text(str(os.getpid()))

if cfg.get("go"):
    while not Path(cfg["go"]).exists():
        time.sleep(0.005)
store = LatentStore.open_or_create(cfg["store"], N, L, C, S, attrs=cfg["attrs"])

if cfg["role"] == "shard":
    start, stop = cfg["shard"]
    store.ensure_array("images/recon", (3, 8, 8), np.uint8)
    idx_all = np.arange(start, stop - 1)
    t0 = time.time()
    for rnd in range(cfg["rounds"]):
        shift = cfg["rounds"] - 1 - rnd  # the last round writes the expected values
        for b in range(0, len(idx_all), 3):
            idx = idx_all[b:b + 3]
            store.write(idx, w=latents(idx, shift), w_init=latents(idx, shift) - 0.5,
                        loss=idx.astype(np.float64), arrays={"images/recon": recon(idx, shift)},
                        overwrite=True)
    store.mark_failed([stop - 1], f"failed by writer of shard {start}-{stop}")
    print(json.dumps([t0, time.time()]))

elif cfg["role"] == "resume":
    log = open(cfg["log"], "a")
    batches = [0]
    def stop_here(*args):
        point = cfg.get("kill_at")
        if point and batches[0] == cfg["kill_batch"] and (not args or args[0] == point.split(":")[1]):
            touch(cfg["mid"])
            time.sleep(600)  # the parent kills us here
    if cfg.get("kill_at"):
        store._hooks[cfg["kill_at"].split(":")[0]] = stop_here
    todo = store.todo()
    for b in range(0, len(todo), cfg["batch"]):
        idx = todo[b:b + cfg["batch"]]
        log.write(json.dumps(idx.tolist()) + "\n")
        log.flush()
        os.fsync(log.fileno())
        store.write(idx, w=latents(idx), w_init=latents(idx) - 0.5, loss=idx.astype(np.float64),
                    iterations=np.full(len(idx), 500))
        batches[0] += 1
        if batches[0] == 1 and cfg.get("started"):
            touch(cfg["started"])
"""


def expected_latents(idx, num_ws, w_dim):
    idx = np.asarray(idx, dtype=np.float32)[:, None, None]
    return (
        idx
        + np.arange(num_ws, dtype=np.float32)[None, :, None] / 100
        + np.arange(w_dim, dtype=np.float32)[None, None, :] / 10000
    ).astype(np.float32)


def spawn(tmp_path: Path, cfg: dict) -> subprocess.Popen:
    script = tmp_path / "child.py"
    if not script.exists():
        script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen(
        [sys.executable, str(script), json.dumps(cfg)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"child exited early ({proc.returncode}): {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"child never reached {path.name}")
        time.sleep(0.01)


def finish(proc: subprocess.Popen, timeout: float = 120.0) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{err}"
    return out


def check_done_items_have_their_data(store: LatentStore) -> np.ndarray:
    done = store.done()
    got = store.read(done, fields=["w", "w_init", "loss", "iterations"])
    want = expected_latents(done, store.num_ws, store.w_dim)
    np.testing.assert_array_equal(got["w"], want)
    np.testing.assert_array_equal(got["w_init"], want - 0.5)
    np.testing.assert_array_equal(got["loss"], done.astype(np.float32))
    assert (got["iterations"] == 500).all()
    return done


def test_two_processes_on_different_shards_do_not_corrupt_each_other(tmp_path):
    shape = (24, 6, 16, 12)  # N, num_ws, w_dim, shard_size → shards [0, 12), [12, 24)
    store_path, go = tmp_path / "s.zarr", tmp_path / "go"
    procs = [
        spawn(
            tmp_path,
            {
                "role": "shard",
                "store": str(store_path),
                "shape": shape,
                "attrs": ATTRS,
                "shard": shard,
                "rounds": 12,
                "go": str(go),
            },
        )
        for shard in ([0, 12], [12, 24])
    ]
    go.write_text("go")  # both create-or-open the new store at the same moment, then write
    (a0, a1), (b0, b1) = (json.loads(finish(proc)) for proc in procs)
    assert max(a0, b0) < min(a1, b1), "the two writers did not overlap in time"
    store = LatentStore.open(store_path)
    assert store.failed().tolist() == [11, 23]
    assert store.failures()["reason"].tolist() == [
        "failed by writer of shard 0-12",
        "failed by writer of shard 12-24",
    ]
    done = store.done()
    assert done.tolist() == [i for i in range(24) if i not in (11, 23)]
    got = store.read(done)
    want = expected_latents(done, 6, 16)
    np.testing.assert_array_equal(got["w"], want)
    np.testing.assert_array_equal(got["w_init"], want - 0.5)
    np.testing.assert_array_equal(got["loss"], done.astype(np.float32))
    recon = store.read_array("images/recon", done)
    np.testing.assert_array_equal(recon[:, 0, 0, 0], (done * 7) % 251)
    assert store.read_array("images/recon", [11, 23]).sum() == 0
    assert not list(store_path.rglob("*.partial"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["child.py", "go", "s.zarr"]


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", ["after_data", "after_array:w"])
def test_sigkill_mid_batch_then_resume(tmp_path, kill_at):
    shape = (40, 5, 16, 8)
    store_path, log, mid = tmp_path / "s.zarr", tmp_path / "log.jsonl", tmp_path / "mid"
    LatentStore.create(store_path, *shape, attrs=ATTRS)
    cfg = {
        "role": "resume",
        "store": str(store_path),
        "shape": shape,
        "attrs": ATTRS,
        "log": str(log),
        "batch": 6,
        "kill_at": kill_at,
        "kill_batch": 2,
        "mid": str(mid),
    }
    proc = spawn(tmp_path, cfg)
    wait_for(mid, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    store = LatentStore.open(store_path, mode="a")
    done_before = check_done_items_have_their_data(store)
    assert done_before.tolist() == list(range(12))  # two whole batches, nothing of the third
    killed = np.arange(12, 18)  # the batch in flight: partly written data, no done mark
    partial = store.read(killed, fields=["w", "w_init", "status"])
    assert (partial["status"] != DONE).all()
    np.testing.assert_array_equal(partial["w"], expected_latents(killed, 5, 16))  # w was written …
    if kill_at == "after_array:w":
        assert np.isnan(partial["w_init"]).all()  # … w_init was not yet

    log.write_text("")
    finish(spawn(tmp_path, {**cfg, "kill_at": None}))  # the rerun: no hook, runs to the end
    computed = sorted(i for line in log.read_text().splitlines() for i in json.loads(line))
    assert computed == list(range(12, 40))  # exactly the rest; no done item recomputed
    final = LatentStore.open(store_path)
    assert check_done_items_have_their_data(final).tolist() == list(range(40))
    assert not list(store_path.rglob("*.partial"))


@pytest.mark.slow
def test_sigkill_at_a_random_moment_keeps_done_marks_honest(tmp_path):
    shape = (300, 18, 64, 40)
    store_path, log, started = tmp_path / "s.zarr", tmp_path / "log.jsonl", tmp_path / "started"
    LatentStore.create(store_path, *shape, attrs=ATTRS)
    cfg = {
        "role": "resume",
        "store": str(store_path),
        "shape": shape,
        "attrs": ATTRS,
        "log": str(log),
        "batch": 7,
        "started": str(started),
    }
    proc = spawn(tmp_path, cfg)
    wait_for(started, proc)
    time.sleep(random.Random(os.getpid()).uniform(0.05, 0.4))
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    store = LatentStore.open(store_path, mode="a")
    done_before = set(check_done_items_have_their_data(store).tolist())
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    attempted = {i for batch in logged for i in batch}
    assert done_before <= attempted
    # every batch but the last attempted one completed before the kill
    assert {i for batch in logged[:-1] for i in batch} <= done_before

    log.write_text("")
    finish(spawn(tmp_path, {k: v for k, v in cfg.items() if k != "started"}))
    computed = [i for line in log.read_text().splitlines() for i in json.loads(line)]
    assert not done_before & set(computed)
    assert sorted(computed) == sorted(set(range(300)) - done_before)
    assert check_done_items_have_their_data(LatentStore.open(store_path)).tolist() == list(
        range(300)
    )
