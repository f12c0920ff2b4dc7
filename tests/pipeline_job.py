"""A small pipeline job for flow and integration tests: generated images, a manifest, a YAML."""

from __future__ import annotations

import pandas as pd
import torch
import yaml
from PIL import Image

from ganviews.classifiers.checkpoints import save_classifier
from ganviews.classifiers.model import build_classifier
from ganviews.stylegan.generator import load_generator

N_IMAGES, SHARD = 24, 8


def make_dataset(root, gen_path, n=N_IMAGES) -> None:
    """n PNGs of the fixture generator, a manifest with val/test splits and a binary label."""
    G = load_generator(gen_path)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        imgs = G.synthesis(G.mapping(torch.randn(n, G.z_dim, generator=gen))).clamp(-1, 1)
    pixels = (
        ((imgs + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    )  # [n, 32, 32, 3]
    (root / "images").mkdir(parents=True)
    for i in range(n):
        Image.fromarray(pixels[i]).save(root / "images" / f"img{i:03d}.png")
    frame = pd.DataFrame({
        "image_id": [f"im{i:03d}" for i in range(n)],
        "path": [f"images/img{i:03d}.png" for i in range(n)],
        "split": ["val" if i % 2 else "test" for i in range(n)],
        "label": [int(pixels[i].mean() > pixels.mean()) for i in range(n)],
    })  # fmt: skip
    from storage.manifest import write_manifest

    frame.attrs["label_columns"] = ["label"]
    write_manifest(frame, root / "manifest.parquet")


def write_config(root, gen_path, **orchestration) -> dict:
    torch.manual_seed(0)
    C = build_classifier({"arch": "smallcnn", "num_outputs": 1, "task": "label", "width": 4})
    save_classifier(C.eval(), root / "models" / "clf.safetensors")
    cfg = {
        "data": {"manifest": "manifest.parquet"},
        "paths": {"store": "out/store", "logits": "out/logits", "report": "out/report"},
        "models": {"generator": str(gen_path), "classifiers": {"clf": {"path": "models/clf.safetensors", "task": "label"}}},
        "align": {"mode": "none", "resolution": 32},
        "invert": {"steps": 2, "lambda_lpips": 0.0, "latent_term": "l2", "latent_weight": 0.01, "batch_size": 4},
        "pca": {"samples": 500},
        "views": {"n_views": 3, "gan": [{"method": "isotropic", "layers": "fine", "settings": [0.3]},
                                        {"method": "pca", "layers": "coarse", "settings": [1.0]}],
                  "image_methods": ["crop"], "batch_size": 16},
        "report": {"plots": False, "html": False, "ensemble": {"bootstrap_draws": 10}},
        "orchestration": {"shard_size": SHARD, "devices": ["cpu"], "retries": 0, **orchestration},
    }  # fmt: skip
    (root / "pipeline.yaml").write_text(yaml.safe_dump(cfg))
    return cfg
