"""``ganviews import-official latents``: the authors' per-image latents → a latent store.

Files as chail/gan-ensembling ``scripts/optimize_latent/optimize_*.py`` write them:
``<image file name without extension>.pth`` = ``torch.save({"w": w})``, ``w`` [1, num_ws, w_dim].
The store's w* must equal them bit for bit, and views/logits must run on it without inverting.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ganviews.classifiers.checkpoints import save_classifier
from ganviews.classifiers.model import build_classifier
from ganviews.cli import main as cli_main
from ganviews.stylegan.generator import load_generator
from ganviews.views.render import GanGroup, ViewConfig
from storage import LatentStore, read_logits, write_manifest
from storage.latents import DONE, FAILED
from tasks.jobs import RenderJob
from tasks.pipeline_config import PCAConfig
from tasks.render import run_render

N = 6


@pytest.fixture(scope="module")
def gen_path(stylegan2_fixtures):
    return stylegan2_fixtures / "nvidia-ada-res32.pkl"


@pytest.fixture(scope="module")
def G(gen_path):
    return load_generator(gen_path)


def _setup(tmp_path, G):
    """A manifest of N images (nested folders, .png/.jpg) and the authors' .pth files for some."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(N):
        path = tmp_path / "images" / f"class{i % 2}" / f"{1000 + i}.{'png' if i % 3 else 'jpg'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
        rows.append({"image_id": f"im{i}", "path": str(path), "split": ["val", "test"][i % 2],
                     "label": i % 2})  # fmt: skip
    manifest = tmp_path / "manifest.parquet"
    write_manifest(pd.DataFrame(rows), manifest, label_columns=["label"])
    latents = tmp_path / "latents"
    gen = torch.Generator().manual_seed(1)
    w = G.mapping(torch.randn(N, G.z_dim, generator=gen))[:, None]  # [N, 1, L, C]
    for i in (0, 1, 3, 5):  # image 2 has no file; image 4's file has the wrong shape
        folder = latents / ("val" if i % 2 == 0 else "test")
        folder.mkdir(parents=True, exist_ok=True)
        torch.save({"w": w[i].clone()}, folder / f"{1000 + i}.pth")
    torch.save({"w": torch.zeros(1, G.num_ws + 2, G.w_dim)}, latents / "1004.pth")
    torch.save({"w": torch.zeros(1, G.num_ws, G.w_dim)}, latents / "9999.pth")  # no such image
    return manifest, latents, w[:, 0].numpy()


def test_latents_round_trip_exactly_and_every_missing_image_has_a_reason(
    tmp_path, G, gen_path, capsys
):
    manifest, latents, w = _setup(tmp_path, G)
    store_path = tmp_path / "store"
    argv = ["import-official", "latents", str(latents), "--manifest", str(manifest),
            "--generator", str(gen_path), "--store", str(store_path), "--shard-size", "4"]  # fmt: skip
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert "4 latents imported, 2 images failed, 0 already done kept; 1 .pth files match no" in out
    store = LatentStore.open(store_path, mode="r")
    got = store.read(np.arange(N), ["w", "status", "reason", "image_id"])
    assert got["status"].tolist() == [DONE, DONE, FAILED, DONE, FAILED, DONE]
    for i in (0, 1, 3, 5):
        assert got["w"][i].dtype == np.float32 and np.array_equal(got["w"][i], w[i])  # bit-exact
    assert got["reason"][2] == f"no official latent 1002.pth under {latents}"
    assert got["reason"][4] == (
        f"official latent 1004.pth: w has shape [1, {G.num_ws + 2}, {G.w_dim}], the generator "
        f"needs [1, {G.num_ws}, {G.w_dim}]"
    )
    assert store.attrs["generator_sha256"] == G.sha256
    assert store.attrs["config"]["source"] == "official-latents"

    # the missing file arrives: a rerun adds it and keeps the done ones
    torch.save({"w": torch.from_numpy(w[2])[None]}, latents / "1002.pth")
    assert cli_main(argv) == 0
    assert "1 latents imported, 1 images failed, 4 already done kept" in capsys.readouterr().out
    store = LatentStore.open(store_path, mode="r")
    assert np.array_equal(store.read([2], ["w"])["w"][0], w[2])
    assert store.read([2], ["reason"])["reason"][0] == ""


@pytest.mark.slow  # ~6 s: renders and classifies (the render task's imports dominate)
def test_views_and_logits_run_on_imported_latents(tmp_path, G, gen_path):
    """No inversion: the render stage re-aligns the originals with the recorded align config."""
    manifest, latents, w = _setup(tmp_path, G)
    (tmp_path / "align.yaml").write_text("align: {mode: none}\n")
    store_path = tmp_path / "store"
    argv = ["import-official", "latents", str(latents), "--manifest", str(manifest), "--generator",
            str(gen_path), "--store", str(store_path), "--config", str(tmp_path / "align.yaml")]  # fmt: skip
    assert cli_main(argv) == 0
    assert LatentStore.open(store_path, mode="r").attrs["config"]["align"]["resolution"] == 32
    torch.manual_seed(0)
    C = build_classifier({"arch": "smallcnn", "num_outputs": 2, "task": "label", "width": 4})
    clf = save_classifier(C.eval(), tmp_path / "c.safetensors")
    views = ViewConfig(
        n_views=2, gan=(GanGroup("stylemix", "fine"),), image_methods=(), batch_size=8
    )
    job = RenderJob(
        store=store_path, generator=gen_path, classifiers={"c": clf}, views=views,
        logits=tmp_path / "logits", seed=0, pca=PCAConfig(samples=100),
    )  # fmt: skip
    (summary,) = run_render(job, [0], device="cpu")
    assert summary["images"] == 4
    rows = read_logits(tmp_path / "logits")
    assert set(rows["image_id"]) == {"im0", "im1", "im3", "im5"}
    assert sorted(set(rows["view"])) == [0, 1, 2]  # image, G(w*), one style-mixed view


def test_errors(tmp_path, G, gen_path, capsys):
    manifest, latents, _ = _setup(tmp_path, G)
    (latents / "val" / "1003.pth").write_bytes((latents / "test" / "1003.pth").read_bytes())
    argv = ["import-official", "latents", str(latents), "--manifest", str(manifest),
            "--generator", str(gen_path), "--store", str(tmp_path / "s")]  # fmt: skip
    assert cli_main(argv) == 2
    assert "two latent files for image '1003'" in capsys.readouterr().err
    argv[2] = str(tmp_path / "nowhere")
    assert cli_main(argv) == 2
    assert f"latents folder {tmp_path / 'nowhere'} not found" in capsys.readouterr().err


class _Payload:
    """A pickled object: the weights-only reader must refuse it (nothing runs)."""


def test_unusable_latent_files_become_reasons(tmp_path):
    from tasks.import_official import read_official_latent

    cases = {
        "code": ({"w": torch.zeros(1, 8, 64), "x": _Payload()}, r"torch.load\(weights_only=True\) failed"),
        "nokey": ({"z": torch.zeros(1, 8, 64)}, "holds no tensor under 'w'"),
        "stride": ({"w": torch.zeros(1, 1, 1).expand(1, 8, 64)}, "zero, negative or overlapping"),
        "nan": ({"w": torch.full((1, 8, 64), float("nan"))}, "NaN or infinite"),
    }  # fmt: skip
    for name, (payload, message) in cases.items():
        torch.save(payload, tmp_path / f"{name}.pth")
        with pytest.raises(ValueError, match=message):
            read_official_latent(tmp_path / f"{name}.pth", num_ws=8, w_dim=64)
    torch.save({"w": torch.ones(1, 8, 64)}, tmp_path / "ok.pth")
    assert read_official_latent(tmp_path / "ok.pth", num_ws=8, w_dim=64).shape == (8, 64)
