"""ganviews.core.weights_io: the shared safetensors / training-checkpoint files."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ganviews.core.errors import CheckpointError
from ganviews.core.weights_io import (
    load_training_state,
    read_safetensors,
    restore_rng_states,
    rng_states,
    save_training_state,
    weights_sha256,
    write_safetensors,
)


def test_safetensors_round_trip_with_metadata_and_header_only_read(tmp_path):
    state = {
        "a": torch.arange(6, dtype=torch.float32).reshape(2, 3),
        "b": torch.ones(4, dtype=torch.int64),
    }
    path = write_safetensors(
        state, tmp_path / "sub" / "w.safetensors", {"format": "x", "config": "{}"}
    )
    meta, got = read_safetensors(path)
    assert meta == {"format": "x", "config": "{}"}
    assert torch.equal(got["a"], state["a"]) and torch.equal(got["b"], state["b"])
    assert read_safetensors(path, tensors=False) == (meta, {})
    assert [p.name for p in path.parent.iterdir()] == ["w.safetensors"]  # no temp file left


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = write_safetensors({"a": torch.zeros(2)}, tmp_path / "w.safetensors", {"v": "1"})
    with pytest.raises(Exception):  # noqa: B017 (safetensors' own error type)
        write_safetensors({"a": torch.zeros(2)}, path, {"v": 2})  # metadata values must be str
    assert read_safetensors(path)[0] == {"v": "1"}
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def test_unreadable_safetensors_names_the_file(tmp_path):
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(
        CheckpointError, match=r"cut.safetensors: not a readable safetensors file \("
    ):
        read_safetensors(bad)


def test_weights_hash_sees_values_dtypes_and_names():
    torch.manual_seed(0)
    a = nn.Linear(3, 2)
    b = nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    assert weights_sha256(a) == weights_sha256(b)
    with torch.no_grad():
        b.bias[0] += 1e-6
    assert weights_sha256(a) != weights_sha256(b)
    assert weights_sha256(a) != weights_sha256(a.double())


def test_training_state_round_trip_format_check_and_rng(tmp_path):
    path = tmp_path / "t.ckpt"
    torch.manual_seed(5)
    save_training_state({"format": "ganviews.test-train", "step": 3, **rng_states()}, path)
    expected = torch.rand(3)
    state = load_training_state(path, format_name="ganviews.test-train", what="test training")
    assert state["step"] == 3
    restore_rng_states(state)
    assert torch.equal(torch.rand(3), expected)
    with pytest.raises(CheckpointError, match=r"t.ckpt: not a ganviews other training checkpoint"):
        load_training_state(path, format_name="ganviews.other", what="other training")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(
        CheckpointError, match=r"junk.ckpt: not a readable test training checkpoint"
    ):
        load_training_state(tmp_path / "junk.ckpt", format_name="x", what="test training")


def test_safetensors_whose_header_length_starts_like_a_pickle_is_safetensors(tmp_path):
    """A header length of 128 starts with 0x80 (pickle's PROTO): still read as safetensors."""
    from ganviews.core.weights_io import container_format

    path = tmp_path / "w.safetensors"
    for length in (0x80, 0x28, 0x7D):  # PROTO, MARK, EMPTY_DICT as the first byte
        header = b'{"__metadata__":{}}'.ljust(length)
        path.write_bytes(length.to_bytes(8, "little") + header)
        assert container_format(path, expected="x") == "safetensors"
