"""The face identity loss of the authors' FFHQ encoder (chail/latent-composition
``training/train_sgan_encoder.sh``: ``--lambda_id 1.0`` for ffhq only; ``networks/psp/id_loss.py``:
pixel2style2pixel's IR-SE-50 ArcFace on the face crop [35:223, 32:220] of the 256² image pooled to
112², loss 1 − ⟨f(ŷ), f(y)⟩). Its weights are not shipped: the plumbing is tested on randomly
initialised nets of the same architecture."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ganviews.core.errors import CheckpointError, ConfigError
from ganviews.inversion.encoder import EncoderConfig
from ganviews.inversion.encoder_training import train_encoder
from ganviews.inversion.identity import IRSE, UNITS_50, IdentityLoss, load_identity_net
from ganviews.stylegan.generator import load_generator

torch.set_num_threads(1)


def _small(seed: int = 0) -> IRSE:
    torch.manual_seed(seed)
    return IRSE(units=(1, 1, 1, 1)).eval()


def test_ir_se_50_has_the_weights_file_layout():
    """IR-SE-50: 24 units (3 + 4 + 14 + 3), 43.8 M parameters, the pixel2style2pixel key names."""
    state = IRSE(UNITS_50).state_dict()
    assert len([k for k in state if k.endswith("res_layer.0.weight")]) == 24
    params = sum(v.numel() for k, v in state.items() if "running" not in k and "batches" not in k)
    assert params == 43_797_696  # the ≈ 43.8 M quoted for IR-SE-50
    assert state["input_layer.0.weight"].shape == (64, 3, 3, 3)
    assert state["body.0.res_layer.5.fc1.weight"].shape == (4, 64, 1, 1)  # SE reduction 16
    assert state["body.3.shortcut_layer.0.weight"].shape == (128, 64, 1, 1)  # stage 2, stride 2
    assert state["output_layer.3.weight"].shape == (512, 512 * 7 * 7)
    assert "body.1.shortcut_layer.weight" not in state  # same channels: a strided identity


def test_identity_loss_is_one_minus_cosine_of_the_face_crop_embeddings():
    loss = IdentityLoss(_small())
    g = torch.Generator().manual_seed(1)
    target = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1
    recon = (target + 0.3 * torch.randn(2, 3, 64, 64, generator=g)).requires_grad_(True)
    value = loss(recon, target)  # [2]
    big = F.adaptive_avg_pool2d(target, 256)[:, :, 35:223, 32:220]
    f_t = loss.net(F.adaptive_avg_pool2d(big, 112))
    big = F.adaptive_avg_pool2d(recon.detach(), 256)[:, :, 35:223, 32:220]
    f_r = loss.net(F.adaptive_avg_pool2d(big, 112))
    torch.testing.assert_close(value, 1 - F.cosine_similarity(f_r, f_t), atol=1e-5, rtol=0)
    assert torch.allclose(f_t.norm(dim=1), torch.ones(2))  # unit embeddings
    assert float(loss(target, target).abs().max()) < 1e-5  # same face → 0
    value.sum().backward()
    assert recon.grad is not None and float(recon.grad.abs().sum()) > 0
    assert not any(p.requires_grad for p in loss.parameters())  # the ArcFace net is frozen


def test_encoder_training_adds_the_identity_term(stylegan2_fixtures):
    G = load_generator(stylegan2_fixtures / "nvidia-ada-res32.pkl")
    small = {"depth": 18, "width": 16, "resolution": 32}
    kw = dict(steps=2, batch_size=2, config=EncoderConfig(**small), log_every=1, seed=0)
    plain = train_encoder(G, **kw)
    ident = train_encoder(G, identity=IdentityLoss(_small()), lambda_id=2.0, **kw)
    assert all("identity" in h and h["identity"] > 0 for h in ident.history)
    assert "identity" not in plain.history[0]
    first = ident.history[0]  # step 0: same encoder init and batch, the term added with weight 2
    assert first["loss"] == pytest.approx(
        first["l1"] + first["latent"] + 2.0 * first["identity"], rel=1e-5
    )
    assert first["l1"] == pytest.approx(plain.history[0]["l1"], rel=1e-6)


def test_weights_file_loads_and_a_missing_one_says_where_to_put_it(tmp_path):
    net = _small(3)  # a 4-unit IR-SE: the same loader and key check as IR-SE-50's 24 units
    torch.save(net.state_dict(), tmp_path / "model_ir_se50.pth")
    loaded = load_identity_net(tmp_path / "model_ir_se50.pth", units=(1, 1, 1, 1))
    got = loaded.net.state_dict()
    assert all(torch.equal(got[k], v) for k, v in net.state_dict().items())
    with pytest.raises(
        CheckpointError,
        match=r"nowhere.pth: identity-loss weights not found.*model_ir_se50.pth.*identity_weights",
    ):
        load_identity_net(tmp_path / "nowhere.pth")
    torch.save(_small().state_dict(), tmp_path / "small.pth")
    with pytest.raises(
        CheckpointError, match=r"small.pth: not an IR-SE state dict with units \[3, 4, 14, 3\]"
    ):
        load_identity_net(tmp_path / "small.pth")  # IR-SE-50 expected


def test_pipeline_refuses_lambda_id_without_the_weights_file(tmp_path, stylegan2_fixtures):
    from pathlib import Path

    from ganviews.core.config import load_yaml
    from tasks.pipeline_config import EncoderTrainingConfig, check_files, load_pipeline_config
    from tasks.train_encoder import run_train_encoder

    settings = EncoderTrainingConfig(
        lambda_id=1.0, identity_weights=tmp_path / "model_ir_se50.pth", perceptual="none"
    )
    with pytest.raises(CheckpointError, match=r"model_ir_se50.pth: identity-loss weights not"):
        run_train_encoder(
            stylegan2_fixtures / "nvidia-ada-res32.pkl", tmp_path / "E.safetensors", settings,
            device="cpu",
        )  # fmt: skip

    configs = Path(__file__).resolve().parents[2] / "configs"
    data = load_yaml(configs / "celebahq.yaml")
    data["encoder_training"].update(enabled=True, lambda_id=1.0)
    with pytest.raises(
        ConfigError, match=r"encoder_training.identity_weights: lambda_id 1.0 needs"
    ):
        load_pipeline_config(data, base_dir=configs)
    data["encoder_training"]["identity_weights"] = "../checkpoints/model_ir_se50.pth"
    cfg = load_pipeline_config(data, base_dir=configs)
    with pytest.raises(
        ConfigError, match=r"encoder_training.identity_weights: .*model_ir_se50.pth not found"
    ):
        check_files(cfg, ["train_encoder"])
