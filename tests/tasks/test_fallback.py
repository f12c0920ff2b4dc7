"""The single-image fallback for images with no views at all (failed inversions).

A readable original gets view-0 rows equal to what the render would have computed; an unreadable
one stays excluded with both reasons; results.csv, exclusions.csv, predictions.parquet and the
report count them honestly.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ganviews.classifiers.checkpoints import load_classifier, save_classifier
from ganviews.classifiers.model import build_classifier
from ganviews.core.config import from_dict
from ganviews.inversion.align import AlignConfig
from ganviews.report.tables import ReportConfig
from ganviews.stylegan.generator import load_generator
from ganviews.views.fallback import classify_originals
from ganviews.views.photo import resize_photo
from ganviews.views.render import GanGroup, ViewConfig, render_and_classify
from storage.latents import LatentStore
from tasks.evaluate import run_evaluate
from tasks.fallback import fallback_rows
from tasks.jobs import RenderJob
from tasks.render import run_render

IDS = ["v0", "v1", "v2", "t0", "t1", "t2", "t3", "tU"]
SPLIT = ["val"] * 3 + ["test"] * 5
LABELS = [0, 1, 1, 1, 0, 1, 0, 1]
FAILED = {4: "LossError: non-finite loss", 7: "ImageError: cannot decode"}  # t1, tU
VIEWS = ViewConfig(n_views=2, gan=(GanGroup("isotropic", "fine", (0.3,)),),
                   image_methods=("crop",), batch_size=8)  # fmt: skip


@pytest.fixture(scope="module")
def job(tmp_path_factory, stylegan2_fixtures) -> RenderJob:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("fallback")
    gen_path = stylegan2_fixtures / "nvidia-ada-res32.pkl"
    G = load_generator(gen_path)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (len(IDS), 32, 32, 3), dtype=np.uint8)
    for i, image_id in enumerate(IDS):
        Image.fromarray(pixels[i]).save(root / f"{image_id}.png")
    (root / "tU.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    manifest = pd.DataFrame({"image_id": IDS, "path": [f"{i}.png" for i in IDS],
                             "split": SPLIT, "label": LABELS})  # fmt: skip
    manifest.attrs["label_columns"] = ["label"]
    store = LatentStore.create(root / "store", len(IDS), G.num_ws, G.w_dim, 4,
                               attrs={"generator_sha256": G.sha256}, manifest=manifest)  # fmt: skip
    done = [i for i in range(len(IDS)) if i not in FAILED]
    w = G.mapping(torch.randn(len(IDS), G.z_dim, generator=torch.Generator().manual_seed(1)))
    store.write(done, w=w.numpy()[done], loss=np.ones(len(done), np.float32))
    for i, reason in FAILED.items():
        store.mark_failed([i], reason)
    store.ensure_array("images/aligned", (3, 32, 32), np.uint8)
    store.write_array("images/aligned", np.arange(len(IDS)), pixels.transpose(0, 3, 1, 2))
    torch.manual_seed(0)
    C = build_classifier({"arch": "smallcnn", "num_outputs": 1, "task": "label", "width": 4})
    save_classifier(C.eval(), root / "clf.safetensors")
    job = RenderJob(store=store.path, generator=gen_path,
                    classifiers={"clf": root / "clf.safetensors"}, logits=root / "logits",
                    views=VIEWS, seed=2, align=AlignConfig(mode="none", resolution=32),
                    image_root=root)  # fmt: skip
    run_render(job, device="cpu")
    return job


def _original(job: RenderJob, image_id: str) -> torch.Tensor:
    pixels = np.asarray(Image.open(job.image_root / f"{image_id}.png"), dtype=np.float32)
    return torch.from_numpy(pixels.transpose(2, 0, 1)[None] / 127.5 - 1.0)  # [1, 3, 32, 32]


def test_failed_images_get_the_view_0_rows_the_render_would_have_written(job):
    out = fallback_rows(job, device="cpu")
    assert out.unusable == {"tU": "truncated or corrupt: Truncated File Read"}
    assert sorted(set(out.rows["image_id"])) == ["t1"]
    assert sorted(zip(out.rows["method"], out.rows["setting"], strict=True)) == [
        ("crop", ""),
        ("isotropic_fine", "0.3"),
    ]
    assert (out.rows["view"] == 0).all() and out.rows["seed"].isna().all()
    assert out.rows["label"].tolist() == [0, 0] and set(out.rows["split"]) == {"test"}
    # the same numbers as view 0 of render_and_classify on that image (with any latent)
    C = {"clf": load_classifier(job.classifiers["clf"])}
    G = load_generator(job.generator)
    image = _original(job, "t1")
    rendered = render_and_classify(G, C, torch.zeros(1, G.num_ws, G.w_dim), image,
                                   image_ids=["t1"], config=VIEWS, device="cpu", seed=0)  # fmt: skip
    view0 = rendered[0].logits["clf"][rendered[0].view == 0]  # [1, 1]
    direct = classify_originals(C, image, config=VIEWS, device="cpu")["clf"]
    np.testing.assert_allclose(direct, view0, rtol=0, atol=1e-6)
    for row in out.rows.itertuples():
        np.testing.assert_allclose(np.asarray(row.logits), view0[0], rtol=0, atol=1e-6)
    # views.original_source: photo — view 0 is the photo's centre window, also in the fallback
    views = dataclasses.replace(VIEWS, original_source="photo", photo_size=16)
    out = fallback_rows(dataclasses.replace(job, views=views), device="cpu")
    assert out.unusable == {"tU": "truncated or corrupt: Truncated File Read"}
    strip = resize_photo(np.asarray(Image.open(job.image_root / "t1.png")), 16)  # [3, 16, 16]
    rendered = render_and_classify(G, C, torch.zeros(1, G.num_ws, G.w_dim), None, image_ids=["t1"],
                                   config=views, device="cpu", seed=0, photos=[strip])  # fmt: skip
    photo0 = rendered[0].logits["clf"][rendered[0].view == 0]  # [1, 1]
    assert np.abs(photo0 - view0).max() > 1e-4  # not the aligned frame's
    assert sorted(set(out.rows["image_id"])) == ["t1"]
    for row in out.rows.itertuples():
        np.testing.assert_allclose(np.asarray(row.logits), photo0[0], rtol=0, atol=1e-6)


def test_report_counts_fallback_and_unusable_images(job, tmp_path):
    single = from_dict(ReportConfig, {"plots": False, "html": False, "gallery_images": 0,
                                      "ensemble": {"on_missing_views": "single", "bootstrap_draws": 5}})  # fmt: skip
    run_evaluate(job.logits, tmp_path / "single", store=job.store, config=single, fallback=job,
                 device="cpu")  # fmt: skip
    results = pd.read_csv(tmp_path / "single" / "results.csv", keep_default_na=False)
    assert len(results) == 3  # isotropic, crop, crop + isotropic
    assert (results["n_test"] == 4).all() and (results["n_test_fallback"] == 1).all()
    assert (results["n_test_excluded"] == 1).all() and (results["n_val_excluded"] == 0).all()
    assert set(results["excluded_reasons"]) == {"test: 1 no logits"}
    excl = pd.read_csv(tmp_path / "single" / "exclusions.csv", keep_default_na=False)
    assert set(excl["image_id"]) == {"tU"}
    assert set(excl["detail"]) == {
        "inversion failed: ImageError: cannot decode; original not classifiable either: "
        "truncated or corrupt: Truncated File Read"
    }
    predictions = pd.read_parquet(tmp_path / "single" / "predictions.parquet")
    fell = predictions[predictions["image_id"] == "t1"]
    assert len(fell) == 3 and fell["fallback"].all()
    logit = classify_originals(
        {"clf": load_classifier(job.classifiers["clf"])}, _original(job, "t1"), config=VIEWS,
        device="cpu",
    )["clf"][0, 0]  # fmt: skip
    assert (fell["prediction"] == int(logit > 0)).all()
    assert (fell["prediction"] == fell["prediction_single"]).all()  # view 0 at every α
    for key, rows in predictions.groupby("method"):
        acc = results.loc[results["method"] == key, "test_acc"].item()
        assert rows["correct"].mean() == pytest.approx(acc)
    md = (tmp_path / "single" / "report.md").read_text()
    assert "1 val/test image(s) whose inversion failed are predicted from their original" in md
    assert "1 val/test image(s) whose inversion failed cannot be read or aligned, so" in md

    # the default policy (error) classifies nothing: both failed images are left out
    default = from_dict(ReportConfig, {"plots": False, "html": False, "gallery_images": 0,
                                       "ensemble": {"bootstrap_draws": 5}})  # fmt: skip
    run_evaluate(job.logits, tmp_path / "error", store=job.store, config=default, fallback=job,
                 device="cpu")  # fmt: skip
    results = pd.read_csv(tmp_path / "error" / "results.csv", keep_default_na=False)
    assert (results["n_test"] == 3).all() and (results["n_test_excluded"] == 2).all()
    assert (results["n_test_fallback"] == 0).all()


def test_the_pipeline_report_is_stale_when_failed_images_or_their_files_change(job, tmp_path):
    """evaluate_key (the evaluate stage's skip marker) follows the store's failed/pending images
    and, under single, the failed images' files: fixing a file gets its original classified."""
    import os
    import shutil

    from tasks.evaluate import evaluate_key
    from tasks.pipeline_config import load_pipeline_config

    store = shutil.copytree(job.store, tmp_path / "store")
    data = {
        "data": {"manifest": "manifest.parquet", "image_root": str(job.image_root)},
        "paths": {"store": str(store), "logits": str(job.logits), "report": "report"},
        "models": {"generator": str(job.generator),
                   "classifiers": {"clf": {"path": str(job.classifiers["clf"]), "task": "label"}}},
        "report": {"ensemble": {"on_missing_views": "single"}},
    }  # fmt: skip
    single = load_pipeline_config(data, base_dir=tmp_path)
    error = load_pipeline_config({**data, "report": {}}, base_dir=tmp_path)
    keys = evaluate_key(single), evaluate_key(error)
    assert evaluate_key(single) == keys[0] and keys[0] != keys[1]
    unreadable = job.image_root / "tU.png"
    stat = unreadable.stat()
    os.utime(unreadable, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the file was replaced
    assert evaluate_key(single) != keys[0] and evaluate_key(error) == keys[1]
    LatentStore.open(store, mode="a").mark_failed([0], "LossError: non-finite", overwrite=True)
    assert evaluate_key(error) != keys[1]  # another failed image: other exclusions
