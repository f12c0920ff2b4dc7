"""The render shard task end to end: store → fused views → Parquet logits (+ views in the store)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ganviews.classifiers.checkpoints import load_classifier, save_classifier
from ganviews.classifiers.model import build_classifier
from ganviews.cli import main
from ganviews.core.errors import ConfigError, GanviewsError
from ganviews.inversion.align import AlignConfig
from ganviews.stylegan.generator import load_generator
from ganviews.views.perturb import PCAStats
from ganviews.views.render import GanGroup, ViewConfig, render_and_classify
from storage.latents import LatentStore
from storage.logits import read_logits, read_logits_metadata
from storage.pca_stats import load_pca_stats
from tasks.jobs import RenderJob
from tasks.pipeline_config import PCAConfig
from tasks.render import render_shard_task, run_render
from tasks.store_io import read_originals, read_photos

N_IMAGES, SHARD = 6, 4
CFG = ViewConfig(
    n_views=2,
    gan=(
        GanGroup("isotropic", "fine", (0.3,)),
        GanGroup("pca", "coarse", (1.0,)),
        GanGroup("stylemix", "fine"),
    ),
    image_methods=("crop",),
    batch_size=8,
)


@pytest.fixture(scope="module")
def gen_path(stylegan2_fixtures):
    return stylegan2_fixtures / "nvidia-ada-res32.pkl"


@pytest.fixture(scope="module")
def G(gen_path):
    return load_generator(gen_path)


@pytest.fixture(scope="module")
def classifier_paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("classifiers")
    torch.manual_seed(0)
    paths = {}
    for name, k, task in (("smile", 1, "smiling"), ("kind", 3, "")):
        C = build_classifier({"arch": "smallcnn", "num_outputs": k, "task": task, "width": 4})
        paths[name] = save_classifier(C.eval(), root / f"{name}.safetensors")
    return paths


def _manifest(root) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(N_IMAGES):
        p = root / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    frame = pd.DataFrame({
        "image_id": [f"im{i}" for i in range(N_IMAGES)],
        "path": paths,
        "split": ["val", "val", "test", "test", "val", "test"],
        "smiling": [0, 1, 1, 0, 1, 0],
        "kind": [2, 0, 1, 1, 0, 2],
    })  # fmt: skip
    frame.attrs["label_columns"] = ["smiling", "kind"]
    return frame


def _make_store(tmp_path, G, *, aligned: bool = True, shard: int = SHARD) -> LatentStore:
    manifest = _manifest(tmp_path)
    store = LatentStore.create(
        tmp_path / "store", N_IMAGES, G.num_ws, G.w_dim, shard,
        attrs={"generator_sha256": G.sha256}, manifest=manifest,
    )  # fmt: skip
    gen = torch.Generator().manual_seed(3)
    w = G.mapping(torch.randn(N_IMAGES, G.z_dim, generator=gen)).numpy()
    done = [0, 1, 3, 4, 5]
    store.write(done, w=w[done], loss=np.ones(len(done), np.float32))
    store.mark_failed([2], "no face found")
    if aligned:
        store.ensure_array("images/aligned", (3, 32, 32), np.uint8)
        pixels = np.stack([np.asarray(Image.open(p)).transpose(2, 0, 1) for p in manifest["path"]])
        store.write_array("images/aligned", np.arange(N_IMAGES), pixels)
    return store


def _job(store, gen_path, classifier_paths, logits, **changes) -> RenderJob:
    job = RenderJob(
        store=store, generator=gen_path, classifiers=classifier_paths, tasks={"kind": "kind"},
        views=CFG, logits=logits, seed=4, pca=PCAConfig(samples=2000),
    )  # fmt: skip
    return dataclasses.replace(job, **changes)


def run_render_shard(job: RenderJob, shard) -> dict:
    return run_render(job, [shard], device="cpu")[0]


def test_shard_end_to_end(tmp_path, G, gen_path, classifier_paths):
    store = _make_store(tmp_path, G)
    logits = tmp_path / "logits"
    job = _job(store.path, gen_path, classifier_paths, logits)
    summary = run_render_shard(job, 0)
    # images 0, 1, 3 are done in shard [0, 4); image 2 failed and is skipped
    per_image = 3 * (CFG.n_views + 1) + CFG.n_views  # three GAN groups + crop
    timing = {k: summary.pop(k) for k in ("seconds", "views_per_second")}
    assert summary == {
        "shard": "00000000-00000004",
        "images": 3,
        "rows": 2 * 3 * per_image,
        "files": 8,
        "parts": 2 * 4,  # classifiers × groups
        # classified images: original + reconstruction + 3 GAN views + 1 crop copy per image
        "views": 3 * 6,
    }
    assert timing["seconds"] > 0
    assert timing["views_per_second"] == pytest.approx(18 / timing["seconds"], rel=0.01)
    rows = read_logits(logits)
    assert len(rows) == summary["rows"]
    assert set(rows["image_id"]) == {"im0", "im1", "im3"}
    counts = rows.groupby(["classifier", "method", "setting"]).size().to_dict()
    assert counts == {
        (c, m, s): 3 * (CFG.n_views + (m != "crop"))
        for c in ("smile", "kind")
        for m, s in (
            ("isotropic_fine", "0.3"),
            ("pca_coarse", "1.0"),
            ("stylemix_fine", ""),
            ("crop", ""),
        )
    }
    assert dict(zip(rows["classifier"], rows["task"], strict=True)) == {
        "smile": "smiling",
        "kind": "kind",
    }
    labels = {"im0": (0, 2, "val"), "im1": (1, 0, "val"), "im3": (0, 1, "test")}
    for _, r in rows.iterrows():
        smile, kind, split = labels[r["image_id"]]
        assert r["label"] == (smile if r["task"] == "smiling" else kind) and r["split"] == split
        assert len(r["logits"]) == (1 if r["classifier"] == "smile" else 3)
    gan = rows["method"] != "crop"
    assert rows.loc[gan & (rows["view"] <= 1), "seed"].isna().all()
    assert rows.loc[gan & (rows["view"] >= 2), "seed"].notna().all()
    assert rows.loc[~gan & (rows["view"] == 0), "seed"].isna().all()
    # PCA statistics were computed once and cached next to the store, for this generator
    cached = load_pca_stats(store.path / "pca_stats.npz", generator_sha256=G.sha256)
    assert cached["n_samples"] == 2000
    meta = read_logits_metadata(logits)["metadata"].iloc[0]
    assert (
        meta["seed"] == 4
        and meta["generator_sha256"] == G.sha256
        and meta["view_config"]["n_views"] == CFG.n_views
    )

    # the rows are exactly what the library computes for those images
    classifiers = {n: load_classifier(p) for n, p in classifier_paths.items()}
    idx = [0, 1, 3]
    pca = PCAStats.from_arrays(cached["mean"], cached["components"], cached["stdevs"])
    images = torch.from_numpy(
        store.read_array("images/aligned", idx).astype(np.float32) / 127.5 - 1
    )
    direct = render_and_classify(
        G, classifiers, torch.from_numpy(store.read(idx, ["w"])["w"]), images,
        image_ids=["im0", "im1", "im3"], config=CFG, device="cpu", seed=4, pca=pca,
    )  # fmt: skip
    g = direct[1]  # pca_coarse
    sel = rows[(rows["classifier"] == "kind") & (rows["method"] == "pca_coarse")].sort_values(
        ["image_id", "view"]
    )
    np.testing.assert_allclose(np.stack(sel["logits"]), g.logits["kind"], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(
        sel["seed"].fillna(0).to_numpy(np.int64), np.where(g.has_seed, g.seed, 0)
    )

    # re-running the shard replaces its rows (no duplicates, same values); the other shard adds its own
    seen: list[int] = []  # views per batch, for a terminal progress bar
    run_render(job, [(0, 4)], device="cpu", on_batch=seen.append)
    assert sum(seen) == 3 * 6 and len(seen) == 3  # batches of 8: 12 GAN jobs → 8 + 4; 6 image jobs
    again = read_logits(logits)
    assert len(again) == len(rows)
    key = ["classifier", "method", "setting", "image_id", "view"]
    a, b = rows.sort_values(key), again.sort_values(key)
    np.testing.assert_array_equal(
        np.concatenate(list(a["logits"])), np.concatenate(list(b["logits"]))
    )
    second = render_shard_task.fn(job, store.shards()[1], "cpu")
    assert second["images"] == 2 and len(read_logits(logits)) == len(rows) + second["rows"]


def test_models_loaded_once_per_process_and_progress_lines(
    tmp_path, G, gen_path, classifier_paths, caplog
):
    """The pipeline renders shard after shard in one worker: the generator and each classifier
    are loaded on the first shard only; each shard logs its progress with views/s and ETA."""
    import logging

    from ganviews.core.model_cache import MODELS

    store = _make_store(tmp_path, G, shard=2)
    job = _job(store.path, gen_path, classifier_paths, tmp_path / "logits",
               state_dir=tmp_path / "state")  # fmt: skip
    MODELS.clear()
    with caplog.at_level(logging.INFO):
        summaries = [render_shard_task.fn(job, shard, "cpu") for shard in store.shards()]
    assert [s["images"] for s in summaries] == [2, 1, 2]  # image 2 failed
    messages = [r.getMessage() for r in caplog.records]
    loaded = [m for m in messages if m.startswith("loaded ")]
    assert len(loaded) == 3 and MODELS.loads == 3, loaded  # G + 2 classifiers, once each
    assert sum("generator" in m for m in loaded) == 1
    for s in summaries:  # the last batch of every shard reports the whole shard
        views = s["views"]
        line = next(
            m for m in messages if m.startswith(f"shard {s['shard']}: {views}/{views} views")
        )
        assert "views/s" in line and "classifier evaluations/s" in line and line.endswith("ETA 0 s")
    # a classifier file replaced on disk is loaded again; the others come from the cache
    C = load_classifier(classifier_paths["smile"])
    torch.nn.init.zeros_(next(C.backbone.parameters()))
    replaced = save_classifier(C, tmp_path / "smile2.safetensors")
    job = dataclasses.replace(
        job, classifiers={**classifier_paths, "smile": replaced}, logits=tmp_path / "logits2"
    )
    render_shard_task.fn(job, store.shards()[0], "cpu")
    assert MODELS.loads == 4


def _file_bytes(root) -> dict:
    """Each logits file → (modification time, bytes): a rewrite with equal bytes shows too."""
    return {
        p.relative_to(root): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(root.rglob("shard-*.parquet"))
    }


def test_only_missing_classifier_and_group_parts_are_rendered(
    tmp_path, G, gen_path, classifier_paths
):
    """The pipeline's render stage (plan + shard task with a state dir): adding a classifier or
    a view group to a job whose logits exist computes only the new (classifier × group × shard)
    parts; the rows already written stay byte-identical; a rerun computes nothing."""
    from ganviews.core.model_cache import MODELS
    from tasks.render_plan import plan_render

    store = _make_store(tmp_path, G)
    logits, state = tmp_path / "logits", tmp_path / "state"
    base = _job(store.path, gen_path, {"smile": classifier_paths["smile"]}, logits,
                state_dir=state, tasks={})  # fmt: skip

    def render(job):
        return [render_shard_task.fn(job, shard, "cpu") for shard in plan_render(job)]

    first = render(base)
    assert [s["parts"] for s in first] == [4, 4]  # 1 classifier × 4 groups, both shards
    before = _file_bytes(logits)

    # + a classifier: only its parts; smile's files are not rewritten
    both = dataclasses.replace(base, classifiers=classifier_paths, tasks={"kind": "kind"})
    added = render(both)
    assert [s["parts"] for s in added] == [4, 4]
    assert [s["views"] for s in added] == [s["views"] for s in first]  # all groups rendered again
    after = _file_bytes(logits)
    assert {k: v for k, v in after.items() if k in before} == before
    assert {str(k).split("/")[1] for k in set(after) - set(before)} == {"classifier=kind"}
    # the new rows equal a render of both classifiers from scratch (same batches: bit for bit)
    full = dataclasses.replace(both, logits=tmp_path / "full", state_dir=None)
    run_render(full, device="cpu")
    key = ["classifier", "method", "setting", "image_id", "view"]
    got, ref = (
        read_logits(p).sort_values(key).reset_index(drop=True) for p in (logits, full.logits)
    )
    assert got[key].equals(ref[key])
    np.testing.assert_array_equal(
        np.concatenate(list(got["logits"])), np.concatenate(list(ref["logits"]))
    )

    # + a σ of an existing group and a new image group: only those groups, for both classifiers
    views = dataclasses.replace(
        CFG,
        gan=(GanGroup("isotropic", "fine", (0.3, 0.5)), *CFG.gan[1:]),
        image_methods=("crop", "color"),
    )
    more = dataclasses.replace(both, views=views)
    grown = render(more)
    assert [s["parts"] for s in grown] == [2 * 2, 2 * 2]  # (smile, kind) × (iso 0.5, color)
    # per image: the original (view 0 of both), the reconstruction, one σ=0.5 view, one colour copy
    assert [s["views"] for s in grown] == [3 * 4, 2 * 4]
    now = _file_bytes(logits)
    unchanged = {k: v for k, v in now.items() if "method=isotropic_fine" not in str(k)}
    assert {k: v for k, v in after.items() if k in unchanged} == {
        k: v for k, v in unchanged.items() if k in after
    }
    rows = read_logits(logits).sort_values(key).reset_index(drop=True)
    old = rows[rows["setting"].ne("0.5") & rows["method"].ne("color")].reset_index(drop=True)
    assert old[key].equals(got[key])  # every earlier row kept, with the same logits
    np.testing.assert_array_equal(
        np.concatenate(list(old["logits"])), np.concatenate(list(got["logits"]))
    )
    run_render(dataclasses.replace(more, logits=tmp_path / "full2", state_dir=None), device="cpu")
    ref = read_logits(tmp_path / "full2").sort_values(key).reset_index(drop=True)
    assert rows[key].equals(ref[key])
    np.testing.assert_allclose(
        np.concatenate(list(rows["logits"])), np.concatenate(list(ref["logits"])), rtol=0, atol=1e-5
    )

    # nothing missing: no shard planned, and a shard run anyway loads and writes nothing
    MODELS.clear()
    assert plan_render(more) == []
    again = render_shard_task.fn(more, store.shards()[0], "cpu")
    assert again["parts"] == 0 and again["rows"] == 0 and MODELS.loads == 0
    assert _file_bytes(logits) == now
    # a marker from before per-part keys (one key for the whole shard) still counts when it matches
    from tasks.render_plan import marker_path, model_hashes, shard_ids, shard_key

    shard = store.shards()[0]
    ids = shard_ids(LatentStore.open(store.path), shard)
    marker_path(more, shard).write_text(f'{{"key": "{shard_key(more, ids, model_hashes(more))}"}}')
    assert plan_render(more) == []
    marker_path(more, shard).write_text('{"key": "other"}')
    assert plan_render(more) == [shard]


def test_persisted_views_go_to_the_store(tmp_path, G, gen_path, classifier_paths):
    store = _make_store(tmp_path, G)
    cfg = ViewConfig(n_views=2, gan=(GanGroup("stylemix", "coarse"),), image_methods=("crop",), persist_views=True,
                     persist_resolution=16)  # fmt: skip
    run_render_shard(
        _job(store.path, gen_path, classifier_paths, tmp_path / "logits", views=cfg), 1
    )
    store = LatentStore.open(store.path)
    assert {"views/stylemix_coarse/none", "views/crop/none"} <= set(store.array_names())
    views = store.read_array("views/stylemix_coarse/none", [4, 5, 0])
    assert views.shape == (3, 3, 3, 16, 16) and views.dtype == np.uint8
    assert views[:2].any() and not views[2].any()  # shard 1 written, shard 0 untouched
    assert not (store.path / "pca_stats.npz").exists()  # no PCA group, no statistics


def test_originals_realigned_from_the_manifest_when_not_stored(
    tmp_path, G, gen_path, classifier_paths
):
    store = _make_store(tmp_path, G, aligned=False)
    job = _job(store.path, gen_path, classifier_paths, tmp_path / "logits")
    with pytest.raises(ConfigError, match="has no 'images/aligned' array and no align config"):
        run_render_shard(job, 1)
    align = AlignConfig(mode="none", resolution=32)
    summary = run_render_shard(dataclasses.replace(job, align=align), 1)
    assert summary["images"] == 2 and summary["rows"] > 0
    # the re-aligned originals are the stored ones (align mode "none" at the same size)
    (tmp_path / "b").mkdir()
    other = _make_store(tmp_path / "b", G)
    manifest = store.manifest()
    again = read_originals(store, np.array([4, 5]), manifest, align=align)
    stored = read_originals(other, np.array([4, 5]), manifest)
    assert again.shape == stored.shape == (2, 3, 32, 32)
    torch.testing.assert_close(again, stored, rtol=0, atol=1 / 127.5 + 1e-6)


def test_task_errors(tmp_path, G, gen_path, classifier_paths, stylegan2_fixtures):
    store = _make_store(tmp_path, G)
    job = _job(store.path, gen_path, classifier_paths, tmp_path / "logits")
    with pytest.raises(
        GanviewsError, match="holds latents of generator sha256 .* render with the generator"
    ):
        other = stylegan2_fixtures / "rosinality-res32.pt"
        run_render_shard(dataclasses.replace(job, generator=other), 0)
    with pytest.raises(ConfigError, match=r"classifier 'kind': no task \(label column\) given"):
        run_render_shard(dataclasses.replace(job, tasks={}), 0)
    with pytest.raises(
        ConfigError,
        match=r"task 'age' is not a label column of the manifest \(label columns: \['smiling', 'kind'\]\)",
    ):
        run_render_shard(dataclasses.replace(job, tasks={"kind": "age"}), 0)
    with pytest.raises(
        ConfigError, match=r"shard: index 7 out of range \(the store has 2 shards\)"
    ):
        run_render_shard(job, 7)
    with pytest.raises(ConfigError, match=r"shard: \(1, 3\) is not a shard"):
        run_render_shard(job, (1, 3))
    assert not (tmp_path / "logits").exists()


def test_cli_pca_stats_and_render(tmp_path, G, gen_path, classifier_paths, capsys):
    store = _make_store(tmp_path, G)
    out = tmp_path / "stats.npz"
    assert (
        main(
            [
                "pca-stats",
                "--generator",
                str(gen_path),
                "--out",
                str(out),
                "--samples",
                "500",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert load_pca_stats(out, generator_sha256=G.sha256)["components"].shape == (G.w_dim, G.w_dim)
    (tmp_path / "views.yaml").write_text(
        "preset: cats\nn_views: 2\nimage_methods: [color]\n"
        "gan:\n  - {method: isotropic, layers: coarse, settings: [0.5]}\n"
    )
    args = ["render", str(store.path), "--generator", str(gen_path), "--logits", str(tmp_path / "logits"),
            "--classifier", f"smile={classifier_paths['smile']}",
            "--classifier", f"k3={classifier_paths['kind']}:kind",
            "--config", str(tmp_path / "views.yaml"), "--shards", "1", "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "shard 00000004-00000006: 2 images → 20 rows" in printed
    rows = read_logits(tmp_path / "logits")
    assert set(rows["classifier"]) == {"smile", "k3"} and set(rows["task"]) == {"smiling", "kind"}
    assert set(rows["method"]) == {"isotropic_coarse", "color"}
    assert main([*args[:-4], "--shards", "0-5", "--device", "cpu"]) == 2
    assert "--shards: '0-5' outside 0…1" in capsys.readouterr().err
    bad = [a if not a.startswith("smile=") else "smile" for a in args]
    assert main(bad) == 2
    assert "--classifier: expected NAME=PATH[:TASK], got 'smile'" in capsys.readouterr().err


def test_cli_render_refuses_other_view_settings_in_the_same_folder(
    tmp_path, G, gen_path, classifier_paths, capsys
):
    """A logits folder records what it was made from; re-rendering a shard with another n_views
    into it used to merge two experiments into one file. Adding a classifier is allowed."""
    from storage.logits import read_identity

    store = _make_store(tmp_path, G)
    logits = tmp_path / "logits"
    views = tmp_path / "views.yaml"
    views.write_text(
        "n_views: 2\nimage_methods: []\ngan:\n  - {method: isotropic, layers: coarse, settings: [0.5]}\n"
    )
    args = ["render", str(store.path), "--generator", str(gen_path), "--logits", str(logits),
            "--classifier", f"smile={classifier_paths['smile']}",
            "--config", str(views), "--shards", "1", "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    record = read_identity(logits)
    assert record["group/isotropic_coarse/0.5"]["num_views"] == 3
    assert (
        record["classifier/smile"]["task"] == "smiling" and record["generator_sha256"] == G.sha256
    )
    files_before = {p: p.stat().st_mtime_ns for p in logits.rglob("*.parquet")}
    views.write_text(
        "n_views: 4\nimage_methods: []\ngan:\n  - {method: isotropic, layers: coarse, settings: [0.5]}\n"
    )
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "was made with other settings: group/isotropic_coarse/0.5: stored {" in err
    assert (
        "'num_views': 3" in err
        and "'num_views': 5" in err
        and "write to a new logits folder" in err
    )
    assert {p: p.stat().st_mtime_ns for p in logits.rglob("*.parquet")} == files_before
    # another classifier into the same folder, same views: a new key, accepted
    views.write_text(
        "n_views: 2\nimage_methods: []\ngan:\n  - {method: isotropic, layers: coarse, settings: [0.5]}\n"
    )
    more = [*args[:6], "--classifier", f"k3={classifier_paths['kind']}:kind", *args[8:]]
    assert main(more) == 0
    assert "classifier/k3" in read_identity(logits)
    assert set(read_logits(logits)["classifier"]) == {"smile", "k3"}


def test_bring_your_own_classifier_from_the_cli_and_the_pipeline_yaml(
    tmp_path, G, gen_path, capsys
):
    """A TorchScript file with a sidecar through `ganviews render`, and the same file with its
    config declared in the pipeline YAML (models.classifiers.<name>.config) through the
    pipeline's render job: equal logits, from the declared preprocessing."""
    import yaml

    from tasks.jobs import render_job
    from tasks.pipeline_config import load_pipeline_config

    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 3),
    )
    ts = tmp_path / "byo.pt"
    torch.jit.save(torch.jit.script(module.eval()), str(ts))
    declared = {"arch": "torchscript", "num_outputs": 3, "preprocessing": {"resize": 24}}
    (tmp_path / "byo.pt.yaml").write_text(yaml.safe_dump(declared))
    store = _make_store(tmp_path, G)
    (tmp_path / "views.yaml").write_text("n_views: 2\nimage_methods: [crop]\ngan: []\n")
    args = ["render", str(store.path), "--generator", str(gen_path), "--logits", str(tmp_path / "cli"),
            "--classifier", f"byo={ts}:kind", "--config", str(tmp_path / "views.yaml"),
            "--shards", "0", "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    cli = read_logits(tmp_path / "cli").sort_values(["image_id", "view"])
    assert set(cli["classifier"]) == {"byo"} and np.stack(cli["logits"]).shape[1] == 3

    (tmp_path / "byo.pt.yaml").unlink()  # now only the pipeline YAML declares it
    pipeline = {
        "data": {"manifest": str(tmp_path / "m.parquet")},
        "paths": {"store": str(store.path), "logits": str(tmp_path / "yaml"), "report": str(tmp_path / "r")},
        "models": {"generator": str(gen_path),
                   "classifiers": {"byo": {"path": str(ts), "task": "kind", "config": declared}}},
        "views": {"n_views": 2, "image_methods": ["crop"], "gan": []},
    }  # fmt: skip
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(pipeline))
    job = dataclasses.replace(render_job(load_pipeline_config(tmp_path / "p.yaml")), state_dir=None)
    assert job.classifier_configs == {"byo": declared}
    run_render(job, [0], device="cpu")
    from_yaml = read_logits(tmp_path / "yaml").sort_values(["image_id", "view"])
    np.testing.assert_allclose(np.stack(from_yaml["logits"]), np.stack(cli["logits"]), rtol=1e-5)


def test_photo_source_classifies_the_raw_photo_and_the_folder_refuses_the_aligned_frame(
    tmp_path, G, gen_path, classifier_paths
):
    """views.original_source: photo (the authors' cars, data_cars.py imval / imcrop): view 0 and
    the crop views come from the manifest's photo resized to photo_size, not from the stored
    aligned frame, and reach the classifier without its resize (normalisation only); the GAN
    views are unchanged. A folder rendered from the photo refuses a render from the frame."""
    from ganviews.views.augment import image_view_seed
    from ganviews.views.photo import random_windows, resize_photo
    from storage.errors import StoreError
    from storage.logits import check_identity
    from tasks.render import logits_identity

    torch.set_num_threads(1)
    store = _make_store(tmp_path, G)
    rng = np.random.default_rng(5)
    for p in store.manifest()["path"]:  # landscape 48×36 photos; images/aligned stays 32×32
        Image.fromarray(rng.integers(0, 256, (36, 48, 3), dtype=np.uint8)).save(p)
    C = build_classifier(
        {"arch": "smallcnn", "num_outputs": 3, "task": "kind", "width": 4,
         "preprocessing": {"resize": 16}}
    ).eval()  # fmt: skip
    paths = {"kind": save_classifier(C, tmp_path / "kind16.safetensors")}
    views = ViewConfig(
        n_views=3, gan=(GanGroup("stylemix", "fine"),), image_methods=("crop",),
        original_source="photo", photo_size=24,
    )  # fmt: skip
    job = _job(store.path, gen_path, paths, tmp_path / "logits", views=views, tasks={})
    run_render_shard(job, 1)  # images 4, 5
    rows = read_logits(tmp_path / "logits").sort_values(["image_id", "method", "view"])
    C = load_classifier(paths["kind"])
    for i, image_id in ((4, "im4"), (5, "im5")):
        strip = resize_photo(np.asarray(Image.open(store.manifest()["path"][i])), 24)
        assert strip.shape == (3, 24, 32)  # int(24 · 48 / 36) = 32 → centre offset 4
        photo = torch.from_numpy(strip.numpy().astype(np.float32) / 127.5 - 1)  # [3, 24, 32]
        mine = rows[rows["image_id"] == image_id]
        view0 = np.stack(mine[mine["view"] == 0]["logits"])  # every group's view 0
        direct = C(photo[None, :, :, 4:28], geometry=False)[0].detach().numpy()
        np.testing.assert_allclose(view0, np.broadcast_to(direct, view0.shape), atol=1e-5)
        aligned = torch.from_numpy(store.read_array("images/aligned", [i]) / 127.5 - 1).float()
        assert np.abs(C(aligned)[0].detach().numpy() - direct).max() > 1e-3  # not the frame
        with_resize = C(photo[None, :, :, 4:28])[0].detach().numpy()  # the classifier's resize
        assert np.abs(with_resize - direct).max() > 1e-4
        crop = mine[mine["method"] == "crop"].set_index("view")["logits"]
        for v in (1, 2):
            window = random_windows(
                [photo], [image_view_seed(4, image_id, "crop", v)], 24, flip=True
            )
            np.testing.assert_allclose(
                crop[v], C(window, geometry=False)[0].detach().numpy(), atol=1e-5
            )
    aligned_job = dataclasses.replace(
        job, views=dataclasses.replace(views, original_source="aligned"), logits=tmp_path / "frame"
    )
    gan = rows[rows["method"] == "stylemix_fine"]
    run_render_shard(aligned_job, 1)
    frame = read_logits(tmp_path / "frame").sort_values(["image_id", "method", "view"])
    frame_gan = frame[(frame["method"] == "stylemix_fine") & (frame["view"] >= 1)]
    np.testing.assert_array_equal(  # the GAN side keeps the aligned 512-frame path: bit for bit
        np.stack(gan[gan["view"] >= 1]["logits"]), np.stack(frame_gan["logits"])
    )
    # each folder refuses the other source (the check write_logits makes before writing)
    photo_id = logits_identity(store, G, {"kind": C}, {"kind": "kind"}, views, 4)
    frame_id = logits_identity(store, G, {"kind": C}, {"kind": "kind"}, aligned_job.views, 4)
    with pytest.raises(
        StoreError, match=r"group/crop/: stored .*'original_source': 'photo'.*, given"
    ):
        check_identity(tmp_path / "logits", frame_id)
    with pytest.raises(
        StoreError, match=r"group/crop/: stored .*, given .*'original_source': 'photo'"
    ):
        check_identity(tmp_path / "frame", photo_id)
    condition = LatentStore.create(
        tmp_path / "cond", 2, G.num_ws, G.w_dim, 2,
        attrs={"generator_sha256": G.sha256, "condition": {"label": "jpeg20"}},
        manifest=store.manifest().iloc[:2],
    )  # fmt: skip
    with pytest.raises(
        ConfigError, match=r"original_source: 'photo' cannot render condition store"
    ):
        read_photos(condition, np.array([0]), store.manifest(), size=24)
