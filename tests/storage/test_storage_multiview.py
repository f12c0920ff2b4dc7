"""The multiview store: layout in one place, shard-aligned chunks, data before the done mark, identity."""

from __future__ import annotations

import numpy as np
import pytest

from storage.errors import StoreError
from storage.multiview import DONE, MultiviewStore

LAYOUT = {
    "n_anchors": 10,
    "n_views": 2,
    "latent_dim": 4,
    "channels": 3,
    "resolution": 8,
    "shard_size": 4,
}
ATTRS = {"generator_sha256": "abc", "config": {"sigma": 0.2, "seed": 0}}


def _shard(start: int, stop: int) -> dict[str, np.ndarray]:
    n = stop - start
    return {
        "images": np.full((n, 2, 3, 8, 8), start + 1, np.uint8),
        "latents": np.arange(n * 8, dtype=np.float32).reshape(n, 2, 4) + start,
        "labels": np.arange(start, stop),
        "anchor_seed": np.arange(start, stop) * 10,
    }


def test_shards_write_and_read(tmp_path) -> None:
    store = MultiviewStore.open_or_create(tmp_path / "mv", layout=LAYOUT, attrs=ATTRS)
    assert store.shards() == [(0, 4), (4, 8), (8, 10)]
    assert store.pending_shards() == store.shards() and store.n_done() == 0
    store.write_shard(8, _shard(8, 10))
    store.write_shard(0, _shard(0, 4))
    assert store.pending_shards() == [(4, 8)] and store.n_done() == 6
    data = store.read(4)
    assert data["images"].shape == (4, 2, 3, 8, 8) and (data["images"] == 1).all()
    np.testing.assert_array_equal(data["anchor_seed"], [0, 10, 20, 30])
    with pytest.raises(StoreError, match=r"4 of the first 10 anchors are not sampled yet"):
        store.read()
    # one chunk file per array per shard: shard k writes only chunk k
    chunks = sorted(p.name for p in (tmp_path / "mv" / "images" / "c").iterdir())
    assert chunks == ["0", "2"]
    with pytest.raises(StoreError, match=r"start: 5 is not a shard boundary \(shard_size 4\)"):
        store.write_shard(5, _shard(5, 9))
    with pytest.raises(
        StoreError, match=r"images: expected shape \[4, 2, 3, 8, 8\], got \[2, 2, 3, 8, 8\]"
    ):
        store.write_shard(4, _shard(4, 6))


def test_killed_between_data_and_status_leaves_pending(tmp_path) -> None:
    store = MultiviewStore.open_or_create(tmp_path / "mv", layout=LAYOUT, attrs=ATTRS)

    class Killed(Exception):
        pass

    def die():
        raise Killed

    store._hooks["after_data"] = die
    with pytest.raises(Killed):
        store.write_shard(0, _shard(0, 4))
    again = MultiviewStore.open(tmp_path / "mv", mode="a")
    assert (again.status()[:4] != DONE).all() and again.pending_shards()[0] == (0, 4)


def test_reopen_checks_identity_and_layout(tmp_path) -> None:
    MultiviewStore.open_or_create(tmp_path / "mv", layout=LAYOUT, attrs=ATTRS)
    same = MultiviewStore.open_or_create(tmp_path / "mv", layout=LAYOUT, attrs=ATTRS)
    assert (
        same.attrs["config"] == {"sigma": 0.2, "seed": 0}
        and same.attrs["generator_sha256"] == "abc"
    )
    with pytest.raises(StoreError, match=r"config\.sigma: stored 0\.2, given 0\.5"):
        MultiviewStore.open_or_create(
            tmp_path / "mv", layout=LAYOUT, attrs={**ATTRS, "config": {"sigma": 0.5, "seed": 0}}
        )
    with pytest.raises(StoreError, match=r"shard_size: stored 4, given 5"):
        MultiviewStore.open_or_create(
            tmp_path / "mv", layout={**LAYOUT, "shard_size": 5}, attrs=ATTRS
        )
    with pytest.raises(StoreError, match=r"no multiview store at"):
        MultiviewStore.open(tmp_path / "nothing")


def test_verify_lists_damaged_and_missing_chunks_and_reset_marks_their_shards_pending(
    tmp_path, capsys
) -> None:
    from ganviews.cli import main

    path = tmp_path / "mv"
    store = MultiviewStore.open_or_create(path, layout=LAYOUT, attrs=ATTRS)
    for start, stop in store.shards():
        store.write_shard(start, _shard(start, stop))
    assert main(["verify", str(path)]) == 0
    assert "every chunk of the multiview store is intact" in capsys.readouterr().out
    chunk = path / "images" / "c" / "1" / "0" / "0" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[-5] ^= 0xFF  # one flipped byte: crc32c catches it
    chunk.write_bytes(bytes(data))
    (path / "latents" / "c" / "2" / "0" / "0").unlink()  # would read as NaN latents

    with pytest.raises(StoreError) as err:
        MultiviewStore.open(path).read()
    assert len(str(err.value).splitlines()) == 1
    assert "array 'images' chunk 1 (images/c/1/0/0/0/0) is damaged" in str(err.value)
    assert f"run `ganviews verify {path} --reset`" in str(err.value)

    assert main(["verify", str(path)]) == 1
    out = capsys.readouterr().out
    assert "2 damaged chunk(s)" in out
    assert "images chunk 1 (images/c/1/0/0/0/0, anchors 4-8): does not decode" in out
    assert "latents chunk 2 (latents/c/2/0/0, anchors 8-10): missing, but the shard has" in out
    assert MultiviewStore.open(path).pending_shards() == []  # status alone looks complete

    assert main(["verify", str(path), "--reset"]) == 0
    assert "reset: 6 anchors pending" in capsys.readouterr().out
    store = MultiviewStore.open(path, mode="a")
    assert store.pending_shards() == [(4, 8), (8, 10)] and store.n_done() == 4
    assert main(["verify", str(path)]) == 0
    capsys.readouterr()
    store.write_shard(4, _shard(4, 8))  # sampling again writes into the reset chunks
    store.write_shard(8, _shard(8, 10))
    again = store.read()
    assert (again["images"][4:8] == 5).all() and np.isfinite(again["latents"]).all()
