"""Issue 18.4: damaged chunks are detected, named in one line, listed by verify and reset."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ganviews.cli import main
from storage import DONE, PENDING, LatentStore

ATTRS = {"generator_sha256": "d" * 64, "config": {"steps": 1}, "code_version": "test"}
N, L, C, S = 12, 2, 4, 4  # three shards of four


def _store(path):
    ids = [f"i{i}" for i in range(N)]
    manifest = pd.DataFrame(
        {"image_id": ids, "path": ["x.png"] * N, "split": ["val"] * N, "Smiling": [0, 1] * (N // 2)}
    )
    s = LatentStore.create(path, N, L, C, S, attrs=ATTRS, manifest=manifest)
    w = np.broadcast_to(np.arange(N, dtype=np.float32)[:, None, None], (N, L, C)).copy()
    s.write(np.arange(N), w=w, loss=np.arange(N) / 10)
    return s


def _flip(path, offset=-5):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_new_stores_checksum_every_array(tmp_path):
    s = _store(tmp_path / "s.zarr")
    for name in s.array_names():
        codecs = [type(c).__name__ for c in s._array(name).metadata.codecs]
        assert "Crc32cCodec" in str(codecs), (name, codecs)


def test_damage_is_one_line_naming_array_and_chunk_then_verify_and_reset(tmp_path, capsys):
    path = tmp_path / "s.zarr"
    _store(path)
    status_chunk = path / "status" / "c" / "1"
    status_chunk.write_bytes(status_chunk.read_bytes()[:7])  # truncated
    _flip(path / "w" / "c" / "2" / "0" / "0")  # one flipped byte: crc32c catches it

    for argv in (["status", str(path)], ["query", "latents", str(path)]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err  # was an 86-line zstd traceback
        assert "array 'status' chunk 1 (status/c/1) is damaged" in err, err
        assert f"run `ganviews verify {path} --reset`" in err
    s = LatentStore.open(path)
    assert np.array_equal(s.read([0, 1], fields=["status"])["status"], [DONE, DONE])
    try:
        s.read([9], fields=["w"])
    except Exception as exc:  # noqa: BLE001 - the message is what is checked
        assert "array 'w' chunk 2 (w/c/2/0/0) is damaged: ValueError: Stored and computed" in str(
            exc
        )
    else:
        raise AssertionError("a flipped byte in w was read without error")

    assert main(["verify", str(path)]) == 1
    out = capsys.readouterr().out
    assert "2 damaged chunk(s)" in out
    assert "w chunk 2 (w/c/2/0/0, images 8-12): does not decode" in out
    assert "status chunk 1 (status/c/1, images 4-8): does not decode" in out

    assert main(["verify", str(path), "--reset"]) == 0
    assert "reset: 8 images pending" in capsys.readouterr().out
    s = LatentStore.open(path)
    assert s.pending().tolist() == list(range(4, 12)) and s.done().tolist() == [0, 1, 2, 3]
    assert np.isnan(s.read([9], fields=["w"])["w"]).all()
    assert main(["verify", str(path)]) == 0
    assert "is intact" in capsys.readouterr().out
    s = LatentStore.open(path, mode="a")  # recomputation writes into the reset chunks
    s.write([9], w=np.full((1, L, C), 9, np.float32))
    assert s.read([9], fields=["status"])["status"].tolist() == [DONE]


def test_a_deleted_w_chunk_of_done_images_is_found(tmp_path, capsys):
    """A deleted chunk reads as NaN: once noticed only when rendering failed."""
    path = tmp_path / "s.zarr"
    _store(path)
    (path / "w" / "c" / "0" / "0" / "0").unlink()
    assert main(["verify", str(path)]) == 1
    assert "w chunk 0 (w/c/0/0/0, images 0-4): missing, but the shard has done images" in (
        capsys.readouterr().out
    )
    assert main(["verify", str(path), "--reset"]) == 0
    s = LatentStore.open(path)
    assert (s.read(np.arange(4), fields=["status"])["status"] == PENDING).all()


def test_disk_full_is_one_line_naming_the_path(tmp_path, capsys):
    """Issue 18.6: a full disk printed a 27-frame OSError; /dev/full fails every write."""
    path = tmp_path / "s.zarr"
    _store(path)
    full = tmp_path / "full.npy"
    full.symlink_to("/dev/full")
    assert main(["query", "latents", str(path), "--out", str(full)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "error: no space left on the device of" in err and "No space left" in err
    assert "rerun the same command to resume" in err


DISK_FULL_WRITER = r"""
import json, os, sys
from pathlib import Path
import numpy as np, pandas as pd
from ganviews.cli.query import save_rows
from ganviews.core.atomic import write_atomically
from storage.atomic import atomic_write_json
from storage.logits import write_logits
from storage.results import write_results

root = Path(sys.argv[1])
(root / "logits").mkdir()
(root / "report").mkdir()
fd = os.open(root / "filler", os.O_WRONLY | os.O_CREAT)  # fill the file system to the last byte
try:
    while os.write(fd, bytes(4096)):
        pass
except OSError:
    pass
os.close(fd)
rows = pd.DataFrame({"image_id": ["a", "b"], "split": "val", "task": "Smiling", "classifier": "r18",
                     "method": "isotropic_fine", "setting": "0.3", "view": 0, "label": [0, 1],
                     "logits": [np.zeros(2, np.float32)] * 2, "seed": None})
table = pd.DataFrame({"method": ["crop"], "acc": [0.5]})
writes = {
    "logits": lambda: write_logits(root / "logits", rows, shard="s0"),
    "results": lambda: write_results(table, root / "report"),
    "report table": lambda: write_atomically(
        root / "report" / "curves.parquet", lambda p: table.to_parquet(p, index=False)
    ),
    "json sidecar": lambda: atomic_write_json(root / "report" / "timings.json", {"total": 1.5}),
    "query rows": lambda: save_rows(
        root / "w.npz", "w", np.zeros((64, 512), np.float32), np.arange(64), ["a"] * 64
    ),
}
out = {}
for name, write in writes.items():
    try:
        write()
        out[name] = "written"
    except OSError as exc:
        out[name] = [exc.errno, exc.strerror, exc.filename]
out["partials"] = sorted(str(p) for p in root.rglob("*.partial"))
print(json.dumps(out))
"""


def test_disk_full_names_the_parquet_file_on_logits_and_report_writes(tmp_path):
    """Issue 18.6: pyarrow and Parquet writes on a full disk said "the output"; each names the
    file it was writing (the CLI turns that into its one line), also the JSON sidecars and
    timings (atomic_write_json) and ``query --out`` (write_output), which were plain writes. A real full file system: a
    64 KiB tmpfs in a private mount namespace, filled before the writes."""
    import json
    import shutil
    import subprocess
    import sys

    import pytest

    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) to mount a private tmpfs")
    mount = tmp_path / "small"
    mount.mkdir()
    script = tmp_path / "writer.py"
    script.write_text(DISK_FULL_WRITER)
    command = f"mount -t tmpfs -o size=64k tmpfs {mount} && exec {sys.executable} {script} {mount}"
    proc = subprocess.run(
        ["unshare", "-rm", "sh", "-c", command], capture_output=True, text=True, timeout=120
    )
    if proc.returncode != 0 and "mount" in proc.stderr and "Operation not permitted" in proc.stderr:
        pytest.skip(f"no private mounts here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    logits = mount / "logits" / "task=Smiling" / "classifier=r18" / "method=isotropic_fine"
    expected = {
        "logits": logits / "shard-s0.parquet",
        "results": mount / "report" / "results.csv",
        "report table": mount / "report" / "curves.parquet",
        "json sidecar": mount / "report" / "timings.json",
        "query rows": mount / "w.npz",
    }
    for name, path in expected.items():
        assert result[name] == [28, "No space left on device", str(path)], (name, result)
    assert result["partials"] == []  # no temporary file is left behind
