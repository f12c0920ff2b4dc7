"""Bad and hostile checkpoints: one CheckpointError naming the file, and nothing executed."""

from __future__ import annotations

import pickle
import sys
import types

import pytest
import torch
from safetensors.torch import save_file

from ganviews.core.errors import CheckpointError
from ganviews.stylegan.checkpoints import ALLOWED_GLOBALS, detect_format, load_nvidia_snapshot
from ganviews.stylegan.generator import Generator, GeneratorConfig, load_generator, save_generator


def _global_call_pickle(module: str, name: str, arg: str) -> bytes:
    """Protocol-0 pickle that calls module.name(arg) when loaded by a plain unpickler."""
    return f"c{module}\n{name}\n(V{arg}\ntR.".encode()


@pytest.mark.parametrize(
    "module,name",
    [
        ("os", "system"),
        ("posix", "system"),
        ("builtins", "eval"),
        ("builtins", "exec"),
        ("subprocess", "Popen"),
    ],
)
def test_pickle_with_forbidden_global_is_refused_and_not_executed(tmp_path, module, name):
    marker = tmp_path / "pwned"
    payload = {
        "system": f"touch {marker}",
        "eval": f"open({str(marker)!r}, 'w')",
        "exec": f"open({str(marker)!r}, 'w')",
        "Popen": f"touch {marker}",
    }[name]
    bad = tmp_path / "evil.pkl"
    data = _global_call_pickle(module, name, payload)
    if name == "Popen":  # Popen(["touch", marker]) as a list argument
        data = f"c{module}\n{name}\n((lVtouch\naV{marker}\natR.".encode()
    bad.write_bytes(data)
    with pytest.raises(CheckpointError) as err:
        load_generator(bad)
    msg = str(err.value)
    assert str(bad) in msg and f"'{module}.{name}'" in msg and "not on the allow-list" in msg
    assert not marker.exists()


def test_forbidden_global_nested_in_a_snapshot_dict(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os

            return os.system, (f"touch {marker}",)

    bad = tmp_path / "snapshot.pkl"
    bad.write_bytes(pickle.dumps({"G": 1, "G_ema": Evil()}, protocol=4))
    with pytest.raises(
        CheckpointError, match=r"'(posix|os)\.system', which is not on the allow-list"
    ):
        load_generator(bad)
    assert not marker.exists()


def test_storage_blob_with_forbidden_global_is_refused(tmp_path):
    """The inner storage blob goes through torch's weights-only unpickler, not _load_from_bytes."""
    marker = tmp_path / "pwned"
    inner = _global_call_pickle("os", "system", f"touch {marker}")

    class FakeStorage:
        def __reduce__(self):
            return torch.storage._load_from_bytes, (inner,)

    bad = tmp_path / "blob.pkl"
    bad.write_bytes(pickle.dumps({"G_ema": FakeStorage()}, protocol=4))
    with pytest.raises(CheckpointError, match="not a readable NVIDIA network pickle") as err:
        load_generator(bad)
    assert str(bad) in str(err.value)
    assert not marker.exists()


def test_embedded_module_source_is_never_executed(tmp_path, monkeypatch):
    """A persistent object whose module_src would create a file: only its data is read."""
    marker = tmp_path / "pwned"
    fake_pkg = types.ModuleType("torch_utils")
    fake_mod = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):  # the name NVIDIA pickles reference
        raise AssertionError("never called by the loader")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    fake_mod._reconstruct_persistent_obj = _reconstruct_persistent_obj
    monkeypatch.setitem(sys.modules, "torch_utils", fake_pkg)
    monkeypatch.setitem(sys.modules, "torch_utils.persistence", fake_mod)

    class Persistent:
        def __reduce__(self):
            meta = {
                "type": "class",
                "version": 6,
                "module_src": f"open({str(marker)!r}, 'w').write('x')\nclass Generator: pass\n",
                "class_name": "Generator",
                "state": {
                    "_parameters": {},
                    "_buffers": {},
                    "_modules": {},
                    "_init_kwargs": {"z_dim": 4},
                },
            }
            return _reconstruct_persistent_obj, (meta,)

    bad = tmp_path / "src.pkl"
    bad.write_bytes(pickle.dumps({"G_ema": Persistent()}, protocol=4))
    monkeypatch.delitem(sys.modules, "torch_utils.persistence")
    monkeypatch.delitem(sys.modules, "torch_utils")
    with pytest.raises(
        CheckpointError, match=r"init kwargs lack \['w_dim', 'img_resolution', 'img_channels'\]"
    ):
        load_generator(bad)
    assert not marker.exists()


def test_pickle_of_something_else(tmp_path):
    lst = tmp_path / "list.pkl"
    lst.write_bytes(pickle.dumps([1, 2, 3], protocol=4))
    with pytest.raises(
        CheckpointError, match=r"list.pkl: the pickle holds list, not an NVIDIA network snapshot"
    ):
        load_generator(lst)
    dct = tmp_path / "dict.pkl"
    dct.write_bytes(pickle.dumps({"G": 1, "D": 2}, protocol=4))
    with pytest.raises(
        CheckpointError,
        match=r"holds a dict with keys \['D', 'G'\], not an NVIDIA network snapshot",
    ):
        load_generator(dct)
    ema = tmp_path / "ema.pkl"
    ema.write_bytes(pickle.dumps({"G_ema": {"weights": 1}}, protocol=4))
    with pytest.raises(
        CheckpointError, match="'G_ema' is a dict, expected a StyleGAN2 'Generator'"
    ):
        load_generator(ema)


@pytest.mark.parametrize("name", ["nvidia-ada-res32.pkl", "rosinality-res32.pt"])
def test_truncated_checkpoint(stylegan2_fixtures, tmp_path, name):
    data = (stylegan2_fixtures / name).read_bytes()
    bad = tmp_path / name
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as err:
        load_generator(bad)
    assert str(bad) in str(err.value)


def test_truncated_own_format(tmp_path):
    G = Generator(
        GeneratorConfig(
            z_dim=8, w_dim=8, img_resolution=8, channel_base=64, channel_max=8, mapping_layers=1
        )
    )
    data = save_generator(G, tmp_path / "g.safetensors").read_bytes()
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match="cut.safetensors: not a readable safetensors file"):
        load_generator(bad)


def test_missing_and_empty_and_unknown_files(tmp_path):
    with pytest.raises(CheckpointError, match=r"generator checkpoint not found: .*nope.pkl"):
        load_generator(tmp_path / "nope.pkl")
    (tmp_path / "empty.pkl").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.pkl: the file is empty"):
        load_generator(tmp_path / "empty.pkl")
    (tmp_path / "text.pkl").write_text("hello world, not weights")
    with pytest.raises(CheckpointError, match="text.pkl: unknown file format"):
        load_generator(tmp_path / "text.pkl")


def _rosinality(stylegan2_fixtures):
    import argparse

    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(
            stylegan2_fixtures / "rosinality-res32.pt", map_location="cpu", weights_only=True
        )


def test_rosinality_shape_mismatch_and_missing_key(stylegan2_fixtures, tmp_path):
    ckpt = _rosinality(stylegan2_fixtures)
    ckpt["g_ema"]["convs.3.conv.modulation.weight"] = torch.zeros(32, 63)
    bad = tmp_path / "shape.pt"
    torch.save(ckpt, bad)
    with pytest.raises(
        CheckpointError,
        match=r"shape.pt: weights do not fit .*synthesis.b16.conv1.affine.weight: file \[32, 63\] vs model \[32, 64\]",
    ):
        load_generator(bad)
    ckpt = _rosinality(stylegan2_fixtures)
    del ckpt["g_ema"]["to_rgbs.1.bias"]
    torch.save(ckpt, tmp_path / "missing.pt")
    with pytest.raises(
        CheckpointError, match=r"missing.pt: rosinality g_ema lacks 'to_rgbs.1.bias'"
    ):
        load_generator(tmp_path / "missing.pt")
    ckpt = _rosinality(stylegan2_fixtures)
    ckpt["g_ema"]["convs.0.conv.blur.kernel"] = ckpt["g_ema"]["convs.0.conv.blur.kernel"] / 4
    torch.save(ckpt, tmp_path / "kernel.pt")
    with pytest.raises(CheckpointError, match=r"'convs.0.conv.blur.kernel' is not 4·outer"):
        load_generator(tmp_path / "kernel.pt")
    torch.save({"model": ckpt["g_ema"]}, tmp_path / "other.pt")
    with pytest.raises(
        CheckpointError,
        match=r"other.pt: holds a dict with keys \['model'\], not a rosinality checkpoint",
    ):
        load_generator(tmp_path / "other.pt")


def test_rosinality_with_foreign_global_is_refused(stylegan2_fixtures, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os

            return os.system, (f"touch {marker}",)

    ckpt = _rosinality(stylegan2_fixtures)
    ckpt["extra"] = Evil()
    bad = tmp_path / "evil.pt"
    torch.save(ckpt, bad)
    with pytest.raises(CheckpointError, match=r"evil.pt: torch.load\(weights_only=True\) refused"):
        load_generator(bad)
    assert not marker.exists()


def test_rosinality_legacy_container_and_missing_latent_avg(stylegan2_fixtures, tmp_path):
    ckpt = _rosinality(stylegan2_fixtures)
    legacy = tmp_path / "legacy.pt"
    torch.save(ckpt, legacy, _use_new_zipfile_serialization=False)
    assert detect_format(legacy) == "torch-legacy"
    G = load_generator(legacy)
    H = load_generator(stylegan2_fixtures / "rosinality-res32.pt")
    ws = H.mapping(torch.randn(2, 64))
    assert torch.equal(G.synthesis(ws), H.synthesis(ws))
    del ckpt["latent_avg"]
    torch.save(ckpt, tmp_path / "noavg.pt")
    G = load_generator(tmp_path / "noavg.pt")
    # estimated from 4096 seeded z: close to the mapping mean, deterministic
    assert torch.equal(G.mean_w, load_generator(tmp_path / "noavg.pt").mean_w)
    approx = G.mapping(torch.randn(4096, 64, generator=torch.Generator().manual_seed(5)))[
        :, 0
    ].mean(0)
    assert (G.mean_w - approx).abs().max() < 0.1 * approx.abs().max()


def test_own_format_shape_mismatch_and_foreign_safetensors(tmp_path):
    small = GeneratorConfig(
        z_dim=8, w_dim=8, img_resolution=8, channel_base=64, channel_max=8, mapping_layers=1
    )
    G = Generator(small)
    path = save_generator(G, tmp_path / "g.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
        state = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    meta["config"] = meta["config"].replace('"channel_max": 8', '"channel_max": 4')
    save_file(state, str(tmp_path / "mismatch.safetensors"), metadata=meta)
    with pytest.raises(
        CheckpointError,
        match=r"mismatch.safetensors: weights do not fit the inferred architecture: shape mismatches",
    ) as err:
        load_generator(tmp_path / "mismatch.safetensors")
    assert "synthesis.b4.const: file [8, 4, 4] vs model [4, 4, 4]" in str(err.value)
    del state["synthesis.b4.const"]
    save_file(state | {"extra": torch.zeros(1)}, str(tmp_path / "keys.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError) as err:
        load_generator(tmp_path / "keys.safetensors")
    assert "missing keys ['synthesis.b4.const']; unexpected keys ['extra']" in str(err.value)
    save_file(state, str(tmp_path / "plain.safetensors"))
    with pytest.raises(
        CheckpointError,
        match="plain.safetensors: safetensors file without a ganviews generator config",
    ):
        load_generator(tmp_path / "plain.safetensors")
    meta2 = dict(meta, config='{"z_dim": 8, "bogus": 1}')
    save_file(state, str(tmp_path / "badcfg.safetensors"), metadata=meta2)
    with pytest.raises(
        CheckpointError,
        match=r"badcfg.safetensors: inferred generator config is invalid: bogus: unknown key",
    ):
        load_generator(tmp_path / "badcfg.safetensors")


def test_whole_snapshot_loads_with_allow_list_only(stylegan2_fixtures):
    data = load_nvidia_snapshot(stylegan2_fixtures / "nvidia-ada-res32-cond.pkl")
    assert list(data) == ["training_set_kwargs", "G", "D", "G_ema", "augment_pipe"]
    assert (
        data["D"].class_name == "Discriminator" and data["augment_pipe"].class_name == "AugmentPipe"
    )
    assert abs(float(data["augment_pipe"].tensors["p"]) - 0.2323) < 1e-4
    g = data["G_ema"]
    assert len(g.tensors) == 77 and g.init_kwargs["c_dim"] == 10
    assert type(g.init_kwargs["mapping_kwargs"]).__name__ == "EasyDict"
    assert len(ALLOWED_GLOBALS) == 9


def test_picks_g_ema_not_g(stylegan2_fixtures):
    data = load_nvidia_snapshot(stylegan2_fixtures / "nvidia-ada-res32.pkl")
    G = load_generator(stylegan2_fixtures / "nvidia-ada-res32.pkl")
    key = "synthesis.b32.torgb.weight"
    assert torch.equal(G.state_dict()[key], data["G_ema"].tensors[key])
    assert not torch.equal(G.state_dict()[key], data["G"].tensors[key])


def test_numpy2_scalar_module_is_accepted(tmp_path):
    """numpy 1 pickles name numpy.core.multiarray.scalar, numpy 2 ones numpy._core.multiarray."""
    import numpy as np

    raw = pickle.dumps({"gain": np.float64(1.5)}, protocol=3)  # GLOBAL opcodes: plain text
    assert b"numpy._core.multiarray" in raw or b"numpy.core.multiarray" in raw
    for module in (b"numpy._core.multiarray", b"numpy.core.multiarray"):
        data = raw.replace(b"numpy._core.multiarray", module).replace(
            b"numpy.core.multiarray", module
        )
        p = tmp_path / "np.pkl"
        p.write_bytes(data)
        assert float(load_nvidia_snapshot(p)["gain"]) == 1.5
    p.write_bytes(raw.replace(b"scalar", b"fromstring"[:6]))
    with pytest.raises(CheckpointError, match="multiarray.fromst', which is not on the allow-list"):
        load_nvidia_snapshot(p)


def test_tensorflow_era_pickle_is_named(tmp_path):
    bad = tmp_path / "karras2019stylegan-ffhq-1024x1024.pkl"
    bad.write_bytes(b"\x80\x03cdnnlib.tflib.network\nNetwork\n)\x81}b.")
    with pytest.raises(CheckpointError, match="TensorFlow-era StyleGAN pickle .*legacy.py"):
        load_generator(bad)
