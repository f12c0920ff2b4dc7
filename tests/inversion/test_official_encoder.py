"""The authors' released RGBM encoders: parity with their code, their three real layouts, errors.

Spec: ../shared/fixtures/encoder/ (README.md there): a ResNet-18 / 8-style encoder file made
by the authors' code (chail/gan-ensembling ``networks/stylegan2/stylegan2_networks.py``,
``utils/customnet.py``) with its outputs at 256, 128 and 512 px, and the key/shape layouts of
the released ffhq/car/cat files (ResNet-34; 18, 16, 14 styles).
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

import ganviews
from ganviews.core.errors import CheckpointError
from ganviews.core.runtime import file_sha256
from ganviews.inversion.encoder import load_encoder
from ganviews.inversion.official_encoder import OfficialEncoder, official_encoder_from_state

FILE = "official-rgbm-encoder-r18-ws8.pth.tar"


@pytest.fixture(scope="module")
def encoder_dir(shared_fixtures):
    return shared_fixtures / "encoder"


@pytest.fixture(scope="module")
def E(encoder_dir):
    return ganviews.load_encoder(encoder_dir / FILE)


@pytest.fixture(scope="module")
def ref(encoder_dir):
    return dict(np.load(encoder_dir / f"{FILE.removesuffix('.pth.tar')}.ref.npz"))


def _rel_err(out: torch.Tensor, ref: np.ndarray) -> float:
    ref_t = torch.from_numpy(ref)
    return float((out - ref_t).abs().max() / ref_t.abs().max())


def test_fixture_loads_as_the_authors_encoder(E, encoder_dir):
    assert isinstance(E, OfficialEncoder)
    assert (E.depth, E.num_ws, E.w_dim, E.resolution) == (18, 8, 512, 256)
    assert not E.training and not any(p.requires_grad for p in E.parameters())
    assert E.sha256 == file_sha256(encoder_dir / FILE)
    assert E.sha256.startswith("1614e01f6ced")  # README's checksum: the file is the spec


@pytest.mark.parametrize("size", [256, 128, 512])
def test_outputs_match_the_authors_code(E, ref, size):
    """Area resize to 256 (down from 512, up from 128), image ⊕ mask, absolute w+."""
    with torch.no_grad():
        out = E(torch.from_numpy(ref[f"image_{size}"]), torch.from_numpy(ref[f"mask_{size}"]))
    assert out.shape == (3, 8, 512)
    assert _rel_err(out, ref[f"wplus_{size}"]) <= 1e-5


def test_mask_is_concatenated_not_multiplied(E, ref):
    """ganviews' own encoder multiplies the image by the mask; the authors' does not: doing so
    here moves the output far from their reference (so the parity test can tell them apart)."""
    image, mask = torch.from_numpy(ref["image_128"]), torch.from_numpy(ref["mask_128"])
    assert 0 < float(mask.mean()) < 1
    with torch.no_grad():
        out = E(image * mask, mask)
    assert _rel_err(out, ref["wplus_128"]) > 1e-2


def _layout_state(layout: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """Tensors of the layout's shapes; distinct values per key, positive variances."""
    return {
        k: torch.tensor(i)
        if k.endswith("num_batches_tracked")
        else torch.full(shape, 1.0 + i / len(layout) if k.endswith("running_var") else 0.001 * i)
        for i, (k, shape) in enumerate(layout.items())
    }


@pytest.mark.parametrize(
    ("name", "num_ws"),
    [
        ("sgan_encoders_ffhq_RGBM_model_initial.pth.tar", 18),
        ("sgan_encoders_car_RGBM_model_initial.pth.tar", 16),
        ("sgan_encoders_cat_RGBM_model_initial.pth.tar", 14),
    ],
)
def test_the_three_released_layouts_load(encoder_dir, name, num_ws):
    layouts = json.loads((encoder_dir / "official-encoder-layouts.json").read_text())
    state = _layout_state(layouts[name])
    E = official_encoder_from_state(state, name=name)
    assert (E.depth, E.num_ws) == (34, num_ws)
    loaded = E.state_dict()
    assert {k: list(v.shape) for k, v in loaded.items()} == layouts[name]
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_legacy_torch_format_and_a_bare_state_dict_load_too(tmp_path, E):
    """Files written before torch 1.6 (non-zip) and a state dict saved without the wrapper."""
    legacy, bare = tmp_path / "legacy.pth.tar", tmp_path / "bare.pth"
    torch.save(
        {"state_dict": E.state_dict(), "epoch": 3}, legacy, _use_new_zipfile_serialization=False
    )
    torch.save(E.state_dict(), bare)
    for path in (legacy, bare):
        E2 = load_encoder(path)
        assert (E2.depth, E2.num_ws) == (18, 8) and E2.sha256 == file_sha256(path)
        assert all(torch.equal(v, E.state_dict()[k]) for k, v in E2.state_dict().items())
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():  # no mask = every pixel known
        assert torch.equal(E2(x), E(x, torch.ones(1, 1, 32, 32)))


class _NotAllowed:
    """A pickled object: weights-only reading must refuse it (no code runs)."""


def test_errors_name_the_file(tmp_path, E):
    missing = tmp_path / "sgan_encoders_car_RGBM_model_initial.pth.tar"
    with pytest.raises(CheckpointError, match="not found: train one with") as err:
        load_encoder(missing)
    assert str(missing) in str(err.value) and "RGBM_model_initial.pth.tar" in str(err.value)

    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match=r"junk.bin: unknown file format .*authors' RGBM"):
        load_encoder(junk)

    # files that fail before the network is built hold key names with tiny tensors only
    skeleton = {k: torch.zeros(1) for k in E.state_dict()}
    skeleton["conv1.weight"] = torch.zeros(64, 4, 7, 7)
    skeleton["layer5.conv5.weight"] = torch.zeros(4096, 1, 1, 1)
    code = tmp_path / "code.pth"
    torch.save({"state_dict": skeleton, "obj": _NotAllowed()}, code)
    with pytest.raises(CheckpointError, match=r"code.pth: torch.load\(weights_only=True\) refused"):
        load_encoder(code)

    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    with pytest.raises(CheckpointError, match=r"plain.pkl: .*refused or failed"):
        load_encoder(plain)

    rgb = {**skeleton, "conv1.weight": torch.zeros(64, 3, 7, 7)}
    torch.save({"state_dict": rgb}, tmp_path / "rgb.pth")
    with pytest.raises(CheckpointError, match=r"rgb.pth: conv1.weight has shape \[64, 3, 7, 7\]"):
        load_encoder(tmp_path / "rgb.pth")

    cut = {k: v for k, v in skeleton.items() if not k.startswith("layer3.1.")}
    torch.save({"state_dict": cut}, tmp_path / "cut.pth")
    with pytest.raises(CheckpointError, match=r"cut.pth: ResNet stages \[2, 2, 1, 2\]"):
        load_encoder(tmp_path / "cut.pth")

    odd = {**skeleton, "layer5.conv5.weight": torch.zeros(4000, 1, 1, 1)}
    torch.save({"state_dict": odd}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match=r"odd.pth: layer5.conv5 has 4000 output channels"):
        load_encoder(tmp_path / "odd.pth")

    wrong = dict(E.state_dict())  # the one case that needs the whole network
    wrong["layer2.0.bn1.weight"] = torch.ones(7)
    torch.save({"state_dict": wrong}, tmp_path / "wrong.pth")
    with pytest.raises(
        CheckpointError, match=r"wrong.pth: .*wrong shape \['layer2.0.bn1.weight'\]"
    ):
        load_encoder(tmp_path / "wrong.pth")

    torch.save({"state_dict": {"a": 1}}, tmp_path / "nontensor.pth")
    with pytest.raises(CheckpointError, match="nontensor.pth: holds dict, not a state dict"):
        load_encoder(tmp_path / "nontensor.pth")


@pytest.mark.slow  # ~8 s: the encoder runs at 256 px in every objective evaluation
def test_inversion_starts_from_the_authors_encoder(E):
    """``invert`` takes the authors' encoder as it is: w_init = E(x, m) (absolute w+) and the
    encoder-consistency term re-runs it on G(w) (a 32-px generator with 8 styles of 512)."""
    from ganviews.inversion.invert import invert
    from ganviews.stylegan.generator import Generator, GeneratorConfig

    torch.manual_seed(0)
    G = Generator(
        GeneratorConfig(z_dim=16, w_dim=512, img_resolution=32, channel_base=256, channel_max=8)
    )
    G = G.eval().requires_grad_(False)
    assert G.num_ws == E.num_ws == 8
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    m = torch.ones(1, 1, 32, 32)
    m[..., :, :8] = 0
    result = invert(G, x, m, encoder=E, steps=2, lbfgs_max_evals=2)
    with torch.no_grad():
        start = E(x, m)
    torch.testing.assert_close(result.w_init, start)
    assert result.w.shape == (1, 8, 512) and float(result.loss[0]) < float(result.loss_init[0])
