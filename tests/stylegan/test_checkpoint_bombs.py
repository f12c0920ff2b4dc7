"""Issue 18.2: crafted checkpoints that once cost gigabytes or left the process changed.

Each file is made here. The memory-bound ones load in one child process whose address space
is capped (``RLIMIT_AS``) and whose peak resident size (``VmHWM``) is reported: each must
fail with a CheckpointError naming the file and the reason, within a small budget.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import warnings
import zipfile

import pytest
import torch
from safetensors.torch import save_file

from ganviews.core.errors import CheckpointError
from ganviews.stylegan import checkpoints
from ganviews.stylegan.checkpoints import EasyDict
from ganviews.stylegan.generator import (
    Generator,
    GeneratorConfig,
    load_generator,
    weight_bytes_bound,
)

RSS_BUDGET_MB = 48  # growth of the child's peak RSS over all bombs together (measured: 5)
AS_HEADROOM_MB = 1024  # address space the child may add after its imports


def _memo_bomb() -> bytes:
    """11 bytes: PROTO 4, None, LONG_BINPUT 2**31-1 (the C unpickler sizes its memo to that)."""
    return b"\x80\x04N" + b"r" + (2**31 - 1).to_bytes(4, "little") + b"."


def _storage_blob(n: int) -> bytes:
    import io

    buf = io.BytesIO()
    with warnings.catch_warnings():  # a TypedStorage is what the legacy blob format holds
        warnings.simplefilter("ignore", UserWarning)
        torch.save(torch.zeros(n).storage(), buf, _use_new_zipfile_serialization=False)
    return buf.getvalue()


def _zero_stride_pickle() -> bytes:
    """A 4-element storage rebuilt as a [2**18, 2**19] float tensor with stride 0 (512 GiB)."""
    blob = _storage_blob(4)
    return (
        b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n("
        + b"ctorch.storage\n_load_from_bytes\n(B"
        + len(blob).to_bytes(4, "little")
        + blob
        + b"tRK\x00(J"
        + (2**18).to_bytes(4, "little")
        + b"J"
        + (2**19).to_bytes(4, "little")
        + b"tK\x00K\x00\x86\x89tR."
    )


def _frame_bomb() -> bytes:
    """PROTO 4 and a FRAME declaring 2**40 bytes (the C unpickler reads a frame in one go)."""
    return b"\x80\x04\x95" + (2**40).to_bytes(8, "little") + b"N."


def _own_safetensors(path, config, tensors=None) -> None:
    meta = {"format": "ganviews.generator", "format_version": "1", "config": config}
    save_file(tensors or {"x": torch.zeros(1)}, str(path), metadata=meta)


def _zip_bomb(path, fixtures) -> None:
    """The rosinality fixture, with its records deflated and a 64 MiB deflated extra record."""
    with zipfile.ZipFile(fixtures / "rosinality-res32.pt") as src:
        records = [(info.filename, src.read(info)) for info in src.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as out:
        for name, data in records:
            out.writestr(name, data)
        with out.open(f"{records[0][0].split('/')[0]}/data/999", "w") as fh:
            for _ in range(4):
                fh.write(bytes(1 << 24))


CHILD = """
import json, resource, sys
from ganviews.classifiers.checkpoints import load_classifier
from ganviews.core.errors import CheckpointError
from ganviews.inversion.encoder import load_encoder
from ganviews.stylegan.generator import load_generator
LOADERS = {{"classifier": load_classifier, "encoder": load_encoder}}
vm = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + {headroom} * 2**20, resource.RLIM_INFINITY))
def peak_kib():  # VmHWM: ru_maxrss of an exec'd child starts at its parent's peak
    return int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0])
open("/proc/self/clear_refs", "w").write("5")  # peak RSS := current RSS (Linux)
base = peak_kib()
out = {{}}
for path in sys.argv[1:]:
    try:
        LOADERS.get(path.rsplit("/", 1)[-1].split("-")[0], load_generator)(path)
        out[path] = "loaded"
    except CheckpointError as exc:
        out[path] = str(exc)
    except BaseException as exc:
        out[path] = "RAW " + type(exc).__name__ + ": " + str(exc)
out["rss_growth_mb"] = (peak_kib() - base) / 1024
print(json.dumps(out))
"""


def test_checkpoint_bombs_fail_named_within_a_memory_budget(tmp_path, stylegan2_fixtures):
    files = {
        "memo.pkl": ("memo index 2147483647", _memo_bomb()),
        "stride.pkl": ("addresses more elements than its 16-byte storage", _zero_stride_pickle()),
        "frame.pkl": ("FRAME declares 1099511627776 bytes", _frame_bomb()),
    }
    for name, (_, data) in files.items():
        (tmp_path / name).write_bytes(data)
    wide = {"img_resolution": 256, "channels": [2200] * 7, "z_dim": 4096, "w_dim": 4096}
    _own_safetensors(tmp_path / "wide.safetensors", json.dumps(wide))
    files["wide.safetensors"] = (
        "declares a generator of up to 3867.3 MiB of weights, the 268-byte",
        None,
    )
    _own_safetensors(tmp_path / "deep.safetensors", "[" * 200_000 + "]" * 200_000)
    files["deep.safetensors"] = ("nests 200000 levels deep (at most 16)", None)
    _zip_bomb(tmp_path / "zip.pt", stylegan2_fixtures)
    files["zip.pt"] = ("record 'rosinality-res32/data.pkl' is compressed", None)
    files.update(_encoder_and_classifier_bombs(tmp_path))  # loaded by the prefix of their name

    paths = [str(tmp_path / name) for name in files]
    proc = subprocess.run(
        [sys.executable, "-c", CHILD.format(headroom=AS_HEADROOM_MB), *paths],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, (reason, _) in files.items():
        message = result[str(tmp_path / name)]
        assert message.startswith(str(tmp_path / name)), message
        assert reason in message, message
    assert result["rss_growth_mb"] < RSS_BUDGET_MB, result


def _encoder_and_classifier_bombs(root) -> dict[str, tuple[str, None]]:
    """Small files whose config declares sizes that building or checking them would allocate
    without bound: a 26 GiB encoder, a classifier whose sidecar crop makes the check batch
    3 × 20000² floats (4.8 GB), and one whose sidecar declares 10**9 classes."""
    wide = {"num_ws": 64, "w_dim": 4096, "depth": 50, "resolution": 256, "width": 512}
    meta = {"format": "ganviews.encoder", "format_version": "1", "config": json.dumps(wide)}
    save_file({"x": torch.zeros(1)}, str(root / "encoder-wide.safetensors"), metadata=meta)
    with warnings.catch_warnings():  # torch.jit.script is deprecated; files of it still load
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(torch.nn.Linear(2, 2)).save(str(root / "classifier-crop.pt"))
    (root / "classifier-crop.pt.yaml").write_text(
        "arch: torchscript\nnum_outputs: 2\npreprocessing: {crop: 20000}\n"
    )
    torch.save({"fc.weight": torch.zeros(2, 2)}, root / "classifier-classes.pth")
    (root / "classifier-classes.pth.yaml").write_text(
        "arch: torchvision.resnet18\nnum_outputs: 1000000000\n"
    )
    return {
        "encoder-wide.safetensors": (
            "refused to load: its config declares an encoder of up to 26523.8 MiB",
            None,
        ),
        "classifier-crop.pt": ("preprocessing.crop: 20000; expected an integer in [1, 4096]", None),
        "classifier-classes.pth": (
            "num_outputs: 1000000000; expected an integer in [1, 100000]",
            None,
        ),
    }


def _build_pickle(target: bytes, state: bytes) -> bytes:
    """PROTO 2, ``target``, BUILD with (None, {state}) — slot state is applied with setattr."""
    return b"\x80\x02" + target + b"N}" + state + b"s\x86b."


@pytest.mark.parametrize(
    "target",
    [
        b"cdnnlib.util\nEasyDict\n",
        b"ctorch._utils\n_rebuild_parameter\n",
        b"cnumpy\ndtype\n",
        b"ctorch_utils.persistence\n_reconstruct_persistent_obj\n",
    ],
)
def test_build_cannot_change_allow_listed_objects(tmp_path, target):
    """A refused file used to leave ``EasyDict.__repr__`` replaced for the whole process."""
    path = tmp_path / "build.pkl"
    for attribute in (b"__repr__", b"__defaults__", b"_fn"):
        path.write_bytes(
            _build_pickle(target, b"X" + len(attribute).to_bytes(4, "little") + attribute + b")")
        )
        with pytest.raises(CheckpointError, match=str(path)):
            load_generator(path)
    assert repr(EasyDict(a=1)) == "{'a': 1}" and "__repr__" not in vars(EasyDict)
    assert checkpoints._rebuild_parameter.__defaults__ == (False, None)
    g = checkpoints.ALLOWED_GLOBALS[("torch._utils", "_rebuild_parameter")]
    assert g._fn is checkpoints._rebuild_parameter


def test_build_with_dict_state_and_malformed_records_are_checkpoint_errors(tmp_path):
    """BUILD with a dict state on a sealed callable, and a Generator record whose state is not
    what a persistent object holds: both CheckpointError naming the file, never raw errors."""
    path = tmp_path / "dictbuild.pkl"
    path.write_bytes(b"\x80\x02ctorch._utils\n_rebuild_parameter\n}X\x01\x00\x00\x00aK\x01sb.")
    with pytest.raises(CheckpointError, match=f"{path}.*not a readable NVIDIA network pickle"):
        load_generator(path)
    meta = {
        "type": "class",
        "class_name": "Generator",
        "state": {
            "_init_kwargs": {
                "z_dim": 8,
                "w_dim": 8,
                "img_resolution": "x",
                "img_channels": 3,
                "synthesis_kwargs": [1, 2],
            }
        },
    }
    blob = pickle.dumps(meta, protocol=2)
    path.write_bytes(
        b"\x80\x02}X\x04\x00\x00\x00G_emactorch_utils.persistence\n"
        b"_reconstruct_persistent_obj\n" + blob[2:-1] + b"\x85Rs."
    )
    with pytest.raises(CheckpointError, match=str(path)):
        load_generator(path)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"img_resolution": 32, "channels": [16, 16, 16, 8]},
        {"img_resolution": 256},
        {"img_resolution": 32, "c_dim": 10, "channels": [16, 16, 16, 8], "z_dim": 64, "w_dim": 32},
        {"img_resolution": 64, "z_dim": 512, "w_dim": 32, "channels": [8] * 5, "mapping_layers": 2},
        {"img_resolution": 8, "z_dim": 4, "w_dim": 8, "layer_features": 300, "channels": [4, 4]},
    ],
)
def test_weight_bytes_bound_is_an_upper_bound_within_3x(kwargs):
    """The size check before building must never refuse a real network, nor be vacuous."""
    config = GeneratorConfig(**kwargs)
    G = Generator(config)
    tensors = {id(t): t for t in [*G.parameters(), *G.buffers()]}.values()
    actual = sum(t.numel() * t.element_size() for t in tensors)
    assert actual <= weight_bytes_bound(config) <= 3 * actual


def test_deep_json_and_zip_bombs_in_encoder_and_classifier_files(tmp_path, stylegan2_fixtures):
    """The same caps guard the encoder's and classifier's loaders (one line naming the file)."""
    from ganviews.classifiers.checkpoints import load_classifier
    from ganviews.inversion.encoder import load_encoder

    deep = "[" * 50_000 + "]" * 50_000
    for fmt, load in (("ganviews.encoder", load_encoder), ("ganviews.classifier", load_classifier)):
        path = tmp_path / f"{fmt}.safetensors"
        meta = {"format": fmt, "format_version": "1", "config": deep}
        save_file({"x": torch.zeros(1)}, str(path), metadata=meta)
        with pytest.raises(CheckpointError, match=f"{path}: the .* nests 50000 levels deep"):
            load(path)
    _zip_bomb(tmp_path / "zip.pt", stylegan2_fixtures)
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'zip.pt'}: refused.*is compressed"):
        load_classifier(tmp_path / "zip.pt")
