"""The probe stage's feature pass: one pass over every split, cached per encoder file, threads."""

from __future__ import annotations

import numpy as np
import torch

from ganviews.genrep.contrastive import ContrastiveModel, EncoderConfig, save_encoder
from ganviews.genrep.experiment import MultiviewConfig
from ganviews.genrep.probe import extract_features
from tasks.multiview import cpu_threads, probe_features


def test_features_one_pass_cached_by_encoder_and_images(tmp_path) -> None:
    torch.manual_seed(0)
    enc = EncoderConfig(arch="resnet18", small_input=False, input_size=16)
    path = save_encoder(ContrastiveModel(enc), tmp_path / "e.safetensors")
    rng = np.random.default_rng(0)
    splits = {
        s: (rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), np.arange(n))
        for s, n in (("train", 5), ("val", 3), ("test", 2))
    }
    cfg = MultiviewConfig(cpu_threads=1)
    cpu = torch.device("cpu")
    feats = probe_features(cfg, path, splits, cpu)
    from ganviews.genrep.contrastive import load_encoder

    model = load_encoder(path)
    for s, (x, _) in splits.items():  # one pass over all splits == each split on its own
        assert feats[s].shape == (len(x), 512)
        np.testing.assert_allclose(feats[s], extract_features(model, x), rtol=1e-5, atol=1e-6)
    cache = tmp_path / "e.features.npz"
    mtime = cache.stat().st_mtime_ns
    again = probe_features(cfg, path, splits, cpu)
    assert cache.stat().st_mtime_ns == mtime  # read back, not recomputed
    assert all(np.array_equal(again[s], feats[s]) for s in splits)
    torch.manual_seed(1)  # a retrained encoder (other weights, same path): computed again
    save_encoder(ContrastiveModel(enc), path)
    retrained = probe_features(cfg, path, splits, cpu)
    assert cache.stat().st_mtime_ns != mtime and not np.allclose(retrained["val"], feats["val"])
    other = {**splits, "test": (splits["test"][0][::-1].copy(), splits["test"][1])}
    assert np.allclose(probe_features(cfg, path, other, cpu)["test"], retrained["test"][::-1])


def test_cpu_threads_apply_inside_the_block_only() -> None:
    from threadpoolctl import threadpool_info

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with cpu_threads(MultiviewConfig(cpu_threads=1), torch.device("cpu")):
            assert torch.get_num_threads() == 1
            assert all(p["num_threads"] == 1 for p in threadpool_info())
        assert torch.get_num_threads() == 2
        with cpu_threads(MultiviewConfig(cpu_threads=0), torch.device("cpu")):
            assert torch.get_num_threads() == 2  # 0: the libraries' defaults
    finally:
        torch.set_num_threads(before)
