"""LatentStore: layout, write/read round trips, status bookkeeping, identity, bad input."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pandas as pd
import pytest

from storage import DONE, FAILED, PENDING, LatentStore, StoreError
from storage.identity import config_hash

GEN = "a" * 64
ATTRS = {
    "generator_sha256": GEN,
    "encoder_sha256": "e" * 64,
    "config": {"inversion": {"steps": 500, "lpips_weight": 1.0}},
    "code_version": "test",
}


def latents(indices, num_ws=4, w_dim=8):
    """Deterministic per-index latents: w[i, l, c] = i + l / 100 + c / 10000."""
    idx = np.asarray(indices, dtype=np.float32)[:, None, None]
    layer = np.arange(num_ws, dtype=np.float32)[None, :, None] / 100
    chan = np.arange(w_dim, dtype=np.float32)[None, None, :] / 10000
    return (idx + layer + chan).astype(np.float32)  # [k, num_ws, w_dim]


@pytest.fixture
def store(tmp_path):
    return LatentStore.create(tmp_path / "s.zarr", 10, 4, 8, 4, attrs=ATTRS)


def test_create_layout_attrs_and_shards(store, tmp_path):
    assert store.shards() == [(0, 4), (4, 8), (8, 10)]
    assert [store.shard_of(i) for i in (0, 3, 4, 9)] == [0, 0, 1, 2]
    attrs = store.attrs
    assert attrs["generator_sha256"] == GEN and attrs["encoder_sha256"] == "e" * 64
    assert attrs["config"] == ATTRS["config"]
    assert attrs["config_hash"] == config_hash(ATTRS["config"])
    assert attrs["code_version"] == "test" and attrs["created_at"].endswith("+00:00")
    assert (attrs["n_images"], attrs["num_ws"], attrs["w_dim"], attrs["shard_size"]) == (
        10,
        4,
        8,
        4,
    )
    assert set(store.array_names()) == {
        "w",
        "w_init",
        "loss",
        "loss_l1",
        "loss_lpips",
        "loss_latent",
        "psnr",
        "lpips",
        "iterations",
        "status",
        "reason",
        "image_id",
    }
    assert list(store.image_ids) == [str(i) for i in range(10)]
    assert store.pending().tolist() == list(range(10)) and len(store.done()) == 0
    # one chunk per shard along axis 0, for every array
    meta = json.loads((tmp_path / "s.zarr" / "w" / "zarr.json").read_text())
    assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [4, 4, 8]
    assert [c["name"] for c in meta["codecs"]] == ["bytes", "blosc", "crc32c"]
    # nothing is written for untouched items: reads give the "not written" fill values
    empty = store.read([2])
    assert (
        np.isnan(empty["w"]).all() and np.isnan(empty["loss"][0]) and empty["iterations"][0] == -1
    )
    assert empty["status"][0] == PENDING and empty["reason"][0] == ""


def test_write_marks_done_and_read_round_trips(store):
    idx = np.array([5, 1, 8])
    w, w_init = latents(idx), latents(idx) - 0.5
    store.write(
        idx,
        w=w,
        w_init=w_init,
        loss=np.array([0.5, 0.1, 0.8]),
        psnr=np.array([30.0, 31.0, 32.0]),
        iterations=np.array([500, 500, 499]),
    )
    assert store.done().tolist() == [1, 5, 8]
    out = store.read([8, 5, 1, 5])  # any order, repeats allowed
    np.testing.assert_array_equal(out["w"], latents([8, 5, 1, 5]))
    np.testing.assert_array_equal(out["w_init"], latents([8, 5, 1, 5]) - 0.5)
    np.testing.assert_allclose(out["loss"], [0.8, 0.5, 0.1, 0.5], rtol=1e-6)
    assert (
        out["iterations"].tolist() == [499, 500, 500, 500] and out["iterations"].dtype == np.int32
    )
    assert out["image_id"].tolist() == ["8", "5", "1", "5"]
    assert np.isnan(out["lpips"]).all()  # not given → stays "not written"
    assert out["w"].dtype == np.float32 and out["status"].tolist() == [DONE] * 4
    table = store.status_table()
    assert table[["pending", "done", "failed"]].values.tolist() == [[3, 1, 0], [3, 1, 0], [1, 1, 0]]


def test_done_items_are_not_overwritten_by_accident(store):
    store.write([0], w=latents([0]))
    with pytest.raises(StoreError, match=r"indices \[0\] are already done"):
        store.write([0, 1], w=latents([7, 7]))
    np.testing.assert_array_equal(store.read([0])["w"], latents([0]))
    assert store.done().tolist() == [0]  # the refused batch wrote nothing, index 1 included
    assert np.isnan(store.read([1])["w"]).all()
    store.write([0], w=latents([9]), overwrite=True)
    np.testing.assert_array_equal(store.read([0])["w"], latents([9]))


def test_failures_reasons_and_retry(store):
    store.mark_failed([3, 6], ["CUDA out of memory", "image unreadable: truncated JPEG"])
    store.mark_failed([9], "no face found")
    assert store.failed().tolist() == [3, 6, 9]
    fails = store.failures()
    assert fails.columns.tolist() == ["index", "image_id", "reason", "shard", "attempts"]
    assert fails["attempts"].tolist() == [1, 1, 1]
    assert fails["reason"].tolist() == [
        "CUDA out of memory",
        "image unreadable: truncated JPEG",
        "no face found",
    ]
    assert fails["shard"].tolist() == [0, 1, 2]
    assert store.todo().tolist() == list(range(10))
    assert 3 not in store.todo(retry_failed=False)
    assert store.todo(shard=(4, 8)).tolist() == [4, 5, 6, 7]
    store.write([3], w=latents([3]))  # a retry succeeds: done, and the old reason is gone
    assert store.read([3])["status"][0] == DONE and store.read([3])["reason"][0] == ""
    assert store.failures()["index"].tolist() == [6, 9]
    with pytest.raises(StoreError, match="are done"):
        store.mark_failed([3], "late failure")
    store.reset([6])
    assert store.read([6])["status"][0] == PENDING and store.read([6])["reason"][0] == ""
    assert store.read([9])["status"][0] == FAILED


def test_failed_attempts_are_counted_and_a_limit_gives_up(store, tmp_path):
    """max_attempts: failed items are retried until they failed that often; retry_failed=False
    is max_attempts=1; a store made before the count (no attempts array) reads failures as 1."""
    assert store.attempts().tolist() == [0] * 10 and "attempts" not in store.array_names()
    store.mark_failed([3, 6], "unreadable")
    store.mark_failed([3], "unreadable again")
    assert store.attempts()[[3, 6]].tolist() == [2, 1]
    assert store.failures()["attempts"].tolist() == [2, 1]
    assert store.todo(max_attempts=None).tolist() == list(range(10))
    assert store.todo(max_attempts=2).tolist() == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    assert store.todo(max_attempts=3).tolist() == list(range(10))
    assert store.todo(max_attempts=1).tolist() == store.todo(retry_failed=False).tolist()
    assert store.todo(max_attempts=1).tolist() == [0, 1, 2, 4, 5, 7, 8, 9]
    assert store.given_up(2).tolist() == [3] and store.given_up(None).tolist() == []
    assert store.todo(max_attempts=2, shard=(4, 8)).tolist() == [4, 5, 6, 7]
    with pytest.raises(StoreError, match="max_attempts must be ≥ 1"):
        store.todo(max_attempts=0)
    store.write([3], w=latents([3]))  # a later success: done; the count stays as history
    assert store.given_up(1).tolist() == [6] and store.attempts()[3] == 2
    shutil.rmtree(tmp_path / "s.zarr" / "attempts")  # as a store made before the count
    old = LatentStore.open(tmp_path / "s.zarr", mode="r")
    assert old.attempts()[6] == 0 and old.failures()["attempts"].tolist() == [1]
    assert old.given_up(1).tolist() == [6] and old.given_up(2).tolist() == []


def test_reopen_read_only_and_identity(store, tmp_path):
    path = tmp_path / "s.zarr"
    store.write([2], w=latents([2]))
    ro = LatentStore.open(path)  # default mode "r"
    np.testing.assert_array_equal(ro.read([2])["w"], latents([2]))
    with pytest.raises(StoreError, match="read-only"):
        ro.write([3], w=latents([3]))
    with pytest.raises(StoreError, match="read-only"):
        ro.mark_failed([3], "x")
    LatentStore.open(
        path,
        mode="a",
        expect_attrs={"generator_sha256": GEN, "config_hash": config_hash(ATTRS["config"])},
    )
    with pytest.raises(StoreError) as err:
        LatentStore.open(path, mode="a", expect_attrs={"generator_sha256": "b" * 64})
    assert (
        "generator_sha256" in str(err.value)
        and "a" * 64 in str(err.value)
        and "b" * 64 in str(err.value)
    )
    with pytest.raises(StoreError, match=r"config\.inversion\.steps: stored 500, given 100"):
        LatentStore.open(
            path,
            mode="a",
            expect_attrs={"config": {"inversion": {"steps": 100, "lpips_weight": 1.0}}},
        )
    with pytest.raises(StoreError, match="mode must be"):
        LatentStore.open(path, mode="w")


def test_open_or_create_first_run_rerun_and_mismatch(tmp_path):
    path = tmp_path / "job.zarr"
    first = LatentStore.open_or_create(path, 6, 4, 8, 3, attrs=ATTRS)
    first.write([0, 1], w=latents([0, 1]))
    again = LatentStore.open_or_create(path, 6, 4, 8, 3, attrs={**ATTRS, "code_version": "newer"})
    assert again.done().tolist() == [0, 1] and again.attrs["code_version"] == "test"
    with pytest.raises(StoreError, match="generator_sha256: stored"):
        LatentStore.open_or_create(path, 6, 4, 8, 3, attrs={**ATTRS, "generator_sha256": "c" * 64})
    with pytest.raises(
        StoreError,
        match=r"config\.inversion\.steps: stored 500, given 1 \(use another store.*CLI --overwrite\)$",
    ) as err:
        LatentStore.open_or_create(
            path, 6, 4, 8, 3, attrs={**ATTRS, "config": {"inversion": {"steps": 1}}}
        )
    assert "config_hash" not in str(
        err.value
    )  # the differing keys say it; the hash would only repeat it
    with pytest.raises(StoreError, match="n_images: stored 6, given 7"):
        LatentStore.open_or_create(path, 7, 4, 8, 3, attrs=ATTRS)
    with pytest.raises(StoreError, match="shard_size: stored 3, given 2"):
        LatentStore.open_or_create(path, 6, 4, 8, 2, attrs=ATTRS)
    with pytest.raises(StoreError, match="image ids differ"):
        LatentStore.open_or_create(path, 6, 4, 8, 3, attrs=ATTRS, image_ids=list("abcdef"))


def test_create_refuses_existing_paths_without_overwrite(tmp_path):
    path = tmp_path / "s.zarr"
    s = LatentStore.create(path, 4, 2, 3, 2, attrs=ATTRS)
    s.write([0], w=np.ones((1, 2, 3), np.float32))
    with pytest.raises(StoreError, match="already exists; pass overwrite=True"):
        LatentStore.create(path, 4, 2, 3, 2, attrs=ATTRS)
    assert LatentStore.open(path).done().tolist() == [0]  # untouched
    fresh = LatentStore.create(path, 5, 2, 3, 2, attrs=ATTRS, overwrite=True)
    assert fresh.n_images == 5 and len(fresh.done()) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]  # no leftovers
    other = tmp_path / "precious"
    other.mkdir()
    (other / "thesis.tex").write_text("do not delete")
    with pytest.raises(StoreError, match="not a latent store"):
        LatentStore.create(other, 4, 2, 3, 2, attrs=ATTRS, overwrite=True)
    assert (other / "thesis.tex").read_text() == "do not delete"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"attrs": {}}, "must name generator_sha256"),
        ({"attrs": {**ATTRS, "n_images": 3}}, "'n_images' is set by the store itself"),
        ({"attrs": {**ATTRS, "config": [1, 2]}}, r"attrs\['config'\] must be a mapping"),
        ({"image_ids": ["a", "b"]}, "image_ids has 2 entries but n_images=4"),
        ({"image_ids": ["a", "b", "a", "c"]}, "'a' appears twice"),
    ],
)
def test_create_bad_arguments(tmp_path, kwargs, message):
    args = {"attrs": ATTRS, **kwargs}
    with pytest.raises(StoreError, match=message):
        LatentStore.create(tmp_path / "s.zarr", 4, 2, 3, 2, **args)
    assert not (tmp_path / "s.zarr").exists()


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_create_rejects_bad_sizes(tmp_path, bad):
    with pytest.raises(StoreError, match=f"shard_size must be a positive integer, got {bad!r}"):
        LatentStore.create(tmp_path / "s.zarr", 4, 2, 3, bad, attrs=ATTRS)


@pytest.mark.parametrize(
    ("indices", "kwargs", "message"),
    [
        ([10], {}, r"index 10 out of range for a store of 10 images \(valid: 0…9\)"),
        ([-1], {}, "index -1 out of range"),
        ([1, 1], {}, r"indices must be unique; \[1\] repeat"),
        ([1.0], {}, "indices must be integers"),
        ([[1]], {}, "indices must be 1-D"),
        (
            [1],
            {"w": np.zeros((1, 4, 7), np.float32)},
            r"w has shape \(1, 4, 7\), expected \(1, 4, 8\)",
        ),
        ([1], {"w": np.zeros((1, 4, 8), np.float64)}, "w has dtype float64, expected float32"),
        ([1], {"w": [[0.0] * 8] * 4}, "w must be a numpy array, got list"),
        ([1], {"w_init": np.zeros((2, 4, 8), np.float32)}, r"w_init has shape \(2, 4, 8\)"),
        ([1], {"loss": np.zeros(2)}, r"loss has shape \(2,\), expected \(1,\)"),
        ([1], {"iterations": np.array([1.5])}, "iterations has dtype float64, expected integers"),
        ([1], {"psnr": np.array(["x"])}, "psnr has dtype <U1, expected a real number type"),
        ([1], {"ssim": np.zeros(1)}, r"unknown metric\(s\) \['ssim'\]"),
        (
            [1],
            {"arrays": {"images/recon": np.zeros((1, 3, 4, 4), np.uint8)}},
            "no array named 'images/recon'",
        ),
    ],
)
def test_write_rejects_bad_input_and_writes_nothing(store, indices, kwargs, message):
    args = {"w": latents(np.zeros(len(np.asarray(indices).reshape(-1)), int)), **kwargs}
    with pytest.raises(StoreError, match=message):
        store.write(indices, **args)
    assert len(store.done()) == 0
    assert np.isnan(store.read(np.arange(10))["w"]).all()


def test_read_and_mark_failed_bad_input(store):
    with pytest.raises(StoreError, match="index 12 out of range"):
        store.read([12])
    with pytest.raises(StoreError, match=r"unknown field\(s\) \['z'\]"):
        store.read([1], fields=["z"])
    with pytest.raises(StoreError, match="reasons has 1 entries for 2 indices"):
        store.mark_failed([1, 2], ["only one"])
    with pytest.raises(StoreError, match="reasons must be strings"):
        store.mark_failed([1], [RuntimeError("x")])
    assert len(store.failed()) == 0


def test_extra_arrays_images_and_views(store):
    store.ensure_array("images/aligned", (3, 64, 64), np.uint8)  # 12 KiB/item: chunk per shard
    store.ensure_array("views/isotropic_fine/0.3", (2, 3, 48, 48), "uint8")  # ≥16 KiB: inner chunks
    store.ensure_array("images/aligned", (3, 64, 64), np.uint8)  # idempotent
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (3, 3, 64, 64), dtype=np.uint8)
    store.write_array("images/aligned", [9, 2, 4], imgs)
    np.testing.assert_array_equal(store.read_array("images/aligned", [2, 4, 9]), imgs[[1, 2, 0]])
    assert (store.read_array("images/aligned", [3]) == 0).all()
    views = rng.integers(0, 256, (3, 2, 3, 48, 48), dtype=np.uint8)
    store.write_array(
        "views/isotropic_fine/0.3", [0, 2, 3], views
    )  # non-contiguous within one shard
    np.testing.assert_array_equal(
        store.read_array("views/isotropic_fine/0.3", [3, 0, 2]), views[[2, 0, 1]]
    )
    assert store.read_array("views/isotropic_fine/0.3", [1]).sum() == 0
    assert {"images/aligned", "views/isotropic_fine/0.3"} <= set(store.array_names())
    # extra data written together with the latents, before the done mark
    recon = rng.integers(0, 256, (2, 3, 64, 64), dtype=np.uint8)
    store.ensure_array("images/recon", (3, 64, 64), np.uint8)
    store.write([6, 7], w=latents([6, 7]), arrays={"images/recon": recon})
    np.testing.assert_array_equal(store.read_array("images/recon", [6, 7]), recon)
    with pytest.raises(
        StoreError, match=r"exists with shape \(10, 3, 64, 64\) and dtype uint8; asked for"
    ):
        store.ensure_array("images/aligned", (3, 32, 32), np.uint8)
    with pytest.raises(StoreError, match="collides with core array 'w'"):
        store.ensure_array("w/extra", (2,), np.float32)
    with pytest.raises(StoreError, match="array name 'bad name'"):
        store.ensure_array("bad name", (2,), np.float32)
    with pytest.raises(StoreError, match="dtype <U3 not supported"):
        store.ensure_array("labels/text", (2,), "<U3")
    with pytest.raises(StoreError, match=r"images/aligned has dtype float32, expected uint8"):
        store.write_array("images/aligned", [1], np.zeros((1, 3, 64, 64), np.float32))
    with pytest.raises(StoreError, match="is a core array"):
        store.write_array("w", [1], latents([1]))


def test_float_extra_array_and_scalar_metric(store):
    store.ensure_array("metrics/ssim", (), np.float32, fill_value=np.nan)
    store.write(
        [1, 2], w=latents([1, 2]), arrays={"metrics/ssim": np.array([0.9, 0.8], np.float32)}
    )
    got = store.read_array("metrics/ssim", [0, 1, 2])
    assert np.isnan(got[0]) and got[1:].tolist() == pytest.approx([0.9, 0.8])


def test_manifest_is_stored_and_hashed(tmp_path):
    from storage.manifest import manifest_sha256

    frame = pd.DataFrame(
        {
            "image_id": ["x0", "x1", "x2"],
            "path": ["/d/0.png", "/d/1.png", "/d/2.png"],
            "split": ["train", "val", "test"],
            "Smiling": [1, 0, 1],
        }
    )
    s = LatentStore.create(tmp_path / "m.zarr", 3, 2, 3, 2, attrs=ATTRS, manifest=frame)
    assert list(s.image_ids) == ["x0", "x1", "x2"]
    assert s.attrs["manifest_sha256"] == manifest_sha256(frame)
    back = s.manifest()
    assert back["Smiling"].tolist() == [1, 0, 1] and back.attrs["label_columns"] == ["Smiling"]
    assert s.indices_of(["x2", "x0"]).tolist() == [2, 0]
    with pytest.raises(StoreError, match=r"unknown image_id\(s\) \['nope'\]"):
        s.indices_of(["nope"])
    LatentStore.open_or_create(tmp_path / "m.zarr", 3, 2, 3, 2, attrs=ATTRS, manifest=frame)
    changed = frame.assign(Smiling=[0, 0, 1])
    with pytest.raises(StoreError, match="manifest_sha256: stored"):
        LatentStore.open_or_create(tmp_path / "m.zarr", 3, 2, 3, 2, attrs=ATTRS, manifest=changed)
    with pytest.raises(StoreError, match="manifest has 3 rows but n_images=4"):
        LatentStore.create(tmp_path / "n.zarr", 4, 2, 3, 2, attrs=ATTRS, manifest=frame)


def test_not_a_store_and_missing_arrays(tmp_path):
    with pytest.raises(StoreError, match="the path does not exist"):
        LatentStore.open(tmp_path / "nothing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreError, match=r"is not a latent store \(no zarr.json\)"):
        LatentStore.open(tmp_path / "plain")
    import zarr

    zarr.create_group(str(tmp_path / "foreign.zarr"), attributes={"hello": 1})
    with pytest.raises(StoreError, match="not a ganviews latent store"):
        LatentStore.open(tmp_path / "foreign.zarr")
    s = LatentStore.create(tmp_path / "s.zarr", 4, 2, 3, 2, attrs=ATTRS)
    del s
    import shutil

    shutil.rmtree(tmp_path / "s.zarr" / "status")
    with pytest.raises(StoreError, match=r"missing array\(s\) \['status'\]"):
        LatentStore.open(tmp_path / "s.zarr")


def test_storage_does_not_import_torch():
    import subprocess

    code = "import sys, storage, storage.query; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
