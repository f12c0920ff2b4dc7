"""The inversion shard task end to end: manifest → load/align → invert → latent store.

Runs the real modules (image loading, alignment, inversion, Zarr store) on a tiny
manifest of 32 px images made by the fixture generator plus one corrupt file. LPIPS uses
"lpips-random" (mechanics only).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ganviews.core.errors import GanviewsError
from ganviews.inversion.align import AlignConfig
from ganviews.inversion.invert import InversionConfig
from ganviews.stylegan.generator import load_generator
from storage.arrays import ALIGNED, MASK, RECON
from storage.errors import StoreError
from storage.latents import LatentStore
from tasks.invert import failed_images, invert_shard_task, plan_invert, run_invert, store_attrs
from tasks.jobs import InvertJob

INV = InversionConfig(steps=3, lpips_net="lpips-random", batch_size=2)
ALIGN = AlignConfig(mode="none", resolution=32)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # two OpenMP threads on a shared 2-core runner spin (10x slower)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def gen_path(stylegan2_fixtures):
    return stylegan2_fixtures / "nvidia-ada-res32.pkl"


def _dataset(tmp_path, G, n=5, corrupt=(2,)):
    """n PNGs of G's images (clamped to [-1, 1]) and a manifest; ``corrupt`` rows are garbage."""
    gen = torch.Generator().manual_seed(0)
    imgs = G.synthesis(G.mapping(torch.randn(n, G.z_dim, generator=gen))).clamp(-1, 1)
    pixels = (
        ((imgs + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    )  # [n, 32, 32, 3]
    rows = []
    for i in range(n):
        path = tmp_path / "images" / f"img{i}.png"
        path.parent.mkdir(exist_ok=True)
        if i in corrupt:
            path.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
        else:
            Image.fromarray(pixels[i]).save(path)
        rows.append(
            {"image_id": f"id{i}", "path": f"images/img{i}.png", "split": "test", "label": i % 2}
        )
    return pd.DataFrame(rows), pixels


def test_shard_task_end_to_end(tmp_path, gen_path) -> None:
    G = load_generator(gen_path)
    frame, pixels = _dataset(tmp_path, G)
    store = LatentStore.create(
        tmp_path / "store",
        n_images=5,
        num_ws=G.num_ws,
        w_dim=G.w_dim,
        shard_size=3,
        attrs=store_attrs(G, None, ALIGN, INV),
        manifest=frame,
    )
    job = InvertJob(
        store=store.path, generator=gen_path, align=ALIGN, invert=INV, image_root=tmp_path
    )
    first = run_invert(job, [0], device="cpu")[0]  # items 0, 1, 2 (2 is corrupt)
    second = invert_shard_task.fn(job, (3, 5), "cpu")  # the Prefect task's body
    assert (first["todo"], first["done"], first["failed"]) == (3, 2, 1)
    assert (second["todo"], second["done"], second["failed"]) == (2, 2, 0)

    store = LatentStore.open(store.path)
    assert store.done().tolist() == [0, 1, 3, 4]
    assert store.failed().tolist() == [2]
    reason = store.failures()["reason"].iloc[0]
    assert "unreadable" in reason or "corrupt" in reason, reason
    data = store.read([0, 1, 3, 4])
    assert np.isfinite(data["w"]).all() and np.isfinite(data["w_init"]).all()
    assert (data["iterations"] == 3).all()
    assert (
        (data["loss"] < 1.0).all()
        and np.isfinite(data["psnr"]).all()
        and np.isfinite(data["lpips"]).all()
    )
    np.testing.assert_allclose(
        data["loss"], data["loss_l1"] + data["loss_lpips"] + data["loss_latent"], rtol=1e-5
    )
    # No encoder: the start is G's mean w on every layer.
    np.testing.assert_allclose(
        data["w_init"], np.broadcast_to(G.mean_w.numpy(), data["w_init"].shape)
    )
    # The stored target is the PNG itself (mode "none" at the generator's size), mask all known.
    aligned = store.read_array(ALIGNED, [0, 1, 3, 4])
    np.testing.assert_array_equal(aligned, pixels[[0, 1, 3, 4]].transpose(0, 3, 1, 2))
    assert (store.read_array(MASK, [0, 1, 3, 4]) == 255).all()
    recon = store.read_array(RECON, [0, 3])
    expected = ((G.synthesis(torch.from_numpy(data["w"][[0, 2]])).clamp(-1, 1) + 1) * 127.5).round()
    assert np.abs(recon.astype(int) - expected.numpy().astype(int)).max() <= 1

    # A rerun skips done items; the unreadable image is retried until it failed max_attempts
    # times, then given up on (also when its file is fixed) until the limit is raised.
    again = run_invert(job, [1], device="cpu")[0]
    assert again["todo"] == 0
    twice = dataclasses.replace(job, max_attempts=2)
    assert failed_images(dataclasses.replace(job, retry_failed=False))["given_up"] == 1
    assert plan_invert(twice) == [(0, 3)]
    retried = run_invert(twice, [0], device="cpu")[0]
    assert (retried["todo"], retried["done"], retried["failed"]) == (1, 0, 1)
    assert run_invert(twice, [0], device="cpu")[0]["todo"] == 0  # failed twice: given up
    assert plan_invert(twice) == [] and failed_images(twice) == {"failed": 1, "given_up": 1}
    assert LatentStore.open(store.path).failures()["attempts"].tolist() == [2]
    Image.fromarray(pixels[1]).save(tmp_path / "images" / "img2.png")
    assert plan_invert(twice) == []  # a fixed file alone does not bring it back
    thrice = dataclasses.replace(job, max_attempts=3)
    assert failed_images(thrice) == {"failed": 1, "given_up": 0}
    assert plan_invert(thrice) == [(0, 3)]
    retry = run_invert(thrice, [0], device="cpu")[0]
    assert (retry["todo"], retry["done"], retry["failed"]) == (1, 1, 0)
    store = LatentStore.open(store.path)
    assert store.done().tolist() == [0, 1, 2, 3, 4] and store.failures().empty
    # w of items done earlier was not touched by the retry.
    np.testing.assert_array_equal(store.read([0, 1, 3, 4])["w"], data["w"])


def test_finished_images_are_stored_before_the_call_returns(tmp_path, gen_path) -> None:
    """One invert() call of 4 images through 1 slot. With ``flush_seconds=0`` each image is
    written as it stops: a crash while the third runs (here: the store's second write
    raises, as a kill would cut the call) keeps the two finished images, written whole, and
    leaves the other two pending. Images that finish within ``flush_seconds`` of the last
    write share one write (a write costs fsyncs; default 2 s): with a window longer than
    the call, all four take a single write, with the same values."""
    from tasks.invert import invert_batch_into, load_inversion_models

    cfg = dataclasses.replace(INV, batch_size=1)
    G = load_generator(gen_path)
    frame, _ = _dataset(tmp_path, G, n=4, corrupt=())
    G, E, P = load_inversion_models(gen_path, None, cfg, device=torch.device("cpu"))

    def run(name: str, flush_seconds: float, crash_at: int | None) -> tuple[LatentStore, list]:
        store = LatentStore.create(
            tmp_path / name, n_images=4, num_ws=G.num_ws, w_dim=G.w_dim, shard_size=4,
            attrs=store_attrs(G, None, ALIGN, cfg), manifest=frame,
        )  # fmt: skip
        for array, channels in ((ALIGNED, 3), (MASK, 1), (RECON, 3)):
            store.ensure_array(array, (channels, 32, 32), np.uint8)
        writes, write = [], store.write

        def write_then_crash(indices, **values):
            write(indices, **values)
            writes.append(list(indices))
            if len(writes) == crash_at:
                raise RuntimeError("worker killed")

        store.write = write_then_crash
        invert_batch_into(
            store, np.arange(4), frame, G, E, P, align_cfg=ALIGN, inversion_cfg=cfg,
            image_root=tmp_path, flush_seconds=flush_seconds,
        )  # fmt: skip
        return LatentStore.open(store.path, mode="r"), writes

    with pytest.raises(RuntimeError, match="worker killed"):
        run("each", 0.0, crash_at=2)
    each = LatentStore.open(tmp_path / "each", mode="r")
    assert each.done().tolist() == [0, 1] and len(each.todo()) == 2
    assert np.isfinite(each.read([0, 1])["w"]).all()
    together, writes = run("together", 3600.0, crash_at=None)
    assert writes == [[0, 1, 2, 3]] and together.done().tolist() == [0, 1, 2, 3]
    np.testing.assert_array_equal(together.read([0, 1])["w"], each.read([0, 1])["w"])


def test_store_refuses_other_generator_or_config(tmp_path, gen_path, stylegan2_fixtures) -> None:
    G = load_generator(gen_path)
    frame, _ = _dataset(tmp_path, G, n=2, corrupt=())
    store = LatentStore.create(
        tmp_path / "store",
        n_images=2,
        num_ws=G.num_ws,
        w_dim=G.w_dim,
        shard_size=2,
        attrs=store_attrs(G, None, ALIGN, INV),
        manifest=frame,
    )
    other = stylegan2_fixtures / "rosinality-res32.pt"
    with pytest.raises(
        GanviewsError, match=r"made with generator sha256 .* but the given generator"
    ):
        run_invert(
            InvertJob(
                store=store.path, generator=other, align=ALIGN, invert=INV, image_root=tmp_path
            ),
            [0],
            device="cpu",
        )
    changed = InversionConfig(steps=4, lpips_net="lpips-random", batch_size=2)
    with pytest.raises(StoreError, match=r"config.invert.steps"):
        run_invert(
            InvertJob(
                store=store.path,
                generator=gen_path,
                align=ALIGN,
                invert=changed,
                image_root=tmp_path,
            ),
            [0],
            device="cpu",
        )
    # Batch size and threads change float32 results (issue 18.7): the first run records them,
    # a resume with others is refused unless it allows the mix, which the store then lists.
    torch.set_num_threads(1)
    (first,) = run_invert(
        InvertJob(
            store=store.path, generator=gen_path, align=ALIGN, invert=INV, image_root=tmp_path
        ),
        [0],
        device="cpu",
    )
    assert first["done"] == 2
    recorded = {
        "batch_size": INV.batch_size, "cpu_threads": 1, "device_type": "cpu",
        "synthesis_kernels": "fused", "memory_format": "contiguous", "compile": False,
    }  # fmt: skip
    assert LatentStore.open(store.path).attrs["numerics"] == recorded
    reference = dataclasses.replace(INV, synthesis_kernels="reference")  # G's other kernels
    with pytest.raises(StoreError, match=r"synthesis_kernels 'fused' → 'reference'"):
        run_invert(
            InvertJob(
                store=store.path, generator=gen_path, align=ALIGN, invert=reference,
                image_root=tmp_path,
            ),
            [0],
            device="cpu",
        )  # fmt: skip
    # A record from before G's kernels were recorded means the reference kernels ran.
    old = {k: recorded[k] for k in ("batch_size", "cpu_threads", "device_type")}
    LatentStore.open(store.path, mode="a").record_attrs({"numerics": old})
    with pytest.raises(StoreError, match=r"synthesis_kernels 'reference' → 'fused'"):
        run_invert(
            InvertJob(
                store=store.path, generator=gen_path, align=ALIGN, invert=INV, image_root=tmp_path
            ),
            [0],
            device="cpu",
        )
    LatentStore.open(store.path, mode="a").record_attrs({"numerics": recorded})
    other_batch = InversionConfig(steps=3, lpips_net="lpips-random", batch_size=1)
    job = InvertJob(
        store=store.path, generator=gen_path, align=ALIGN, invert=other_batch, image_root=tmp_path
    )
    with pytest.raises(StoreError, match=r"other numerics \(batch_size 2 → 1\).*--allow-mixed"):
        run_invert(job, [0], device="cpu")
    mixed = dataclasses.replace(job, allow_mixed_numerics=True)
    (out,) = run_invert(mixed, [0], device="cpu")
    assert out["todo"] == 0  # nothing left; the mix is still recorded
    assert LatentStore.open(store.path).attrs["numerics_mixed"] == [{**recorded, "batch_size": 1}]
    with pytest.raises(GanviewsError, match=r"shard: index 5 out of range"):
        run_invert(
            InvertJob(
                store=store.path, generator=gen_path, align=ALIGN, invert=INV, image_root=tmp_path
            ),
            [5],
            device="cpu",
        )


def test_cli_invert_creates_resumes_and_refuses_mixing(
    tmp_path, gen_path, stylegan2_fixtures, capsys
) -> None:
    from ganviews.cli import main
    from storage import write_manifest

    G = load_generator(gen_path)
    frame, _ = _dataset(tmp_path, G, n=4, corrupt=(1,))
    frame["split"] = ["val", "val", "test", "train"]
    write_manifest(frame, tmp_path / "manifest.parquet")
    (tmp_path / "inv.yaml").write_text(
        "align:\n  resolution: 32\ninvert:\n  steps: 2\n  lpips_net: lpips-random\n  batch_size: 2\n"
    )
    base = [
        str(tmp_path / "manifest.parquet"),
        str(tmp_path / "store"),
        "--config",
        str(tmp_path / "inv.yaml"),
        "--split",
        "val,test",
        "--shard-size",
        "2",
        "--device",
        "cpu",
    ]
    assert main(["invert", *base, "--generator", str(gen_path)]) == 0
    out = capsys.readouterr().out
    assert "2 images inverted, 1 failed" in out and "the store now has 2/3 done" in out
    store = LatentStore.open(tmp_path / "store")
    assert store.image_ids.tolist() == ["id0", "id1", "id2"]  # the train row is not in the store
    assert (
        store.attrs["config"]["invert"]["steps"] == 2
        and "batch_size" not in store.attrs["config"]["invert"]
        and "compile" not in store.attrs["config"]["invert"]
    )
    assert store.attrs["generator_sha256"] == G.sha256 and store.attrs["encoder_sha256"] is None
    # Rerun of one shard: nothing done is redone, the failed item is retried (and fails again).
    assert main(["invert", *base, "--generator", str(gen_path), "--shards", "0:1"]) == 0
    assert "1 to do → 0 done, 1 failed" in capsys.readouterr().out
    # A rerun takes the shard size from the store (it used to need --shard-size 2 again), and
    # --no-retry-failed gives up on the failed image instead of retrying it every time.
    again = [a for a in base if a not in ("--shard-size", "2")]
    assert main(["invert", *again, "--generator", str(gen_path), "--no-retry-failed"]) == 0
    out = capsys.readouterr().out
    assert "shard 0 [00000000-00000002]: 0 to do → 0 done, 0 failed" in out
    assert "the store now has 2/3 done, 1 failed" in out
    # Another generator or another config is refused with one clear line (exit code 2).
    assert (
        main(["invert", *base, "--generator", str(stylegan2_fixtures / "rosinality-res32.pt")]) == 2
    )
    assert "made with generator sha256" in capsys.readouterr().err
    assert main(["invert", *base, "--generator", str(gen_path), "--steps", "5"]) == 2
    assert "config.invert.steps: stored 2, given 5" in capsys.readouterr().err
    assert main(["invert", *base, "--generator", str(gen_path), "--shards", "7"]) == 2
    assert "--shards: '7' outside 0…1" in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_text("inversion:\n  steps: 2\n")
    bad = [*base[:2], "--config", str(tmp_path / "bad.yaml")]
    assert main(["invert", *bad, "--generator", str(gen_path)]) == 2
    assert "unknown section(s) ['inversion']" in capsys.readouterr().err
    # --overwrite starts over with the new settings; align.resolution defaults to the generator's.
    (tmp_path / "inv.yaml").write_text(
        "invert:\n  steps: 1\n  lpips_net: lpips-random\n  batch_size: 2\n"
    )
    assert main(["invert", *base, "--generator", str(gen_path), "--overwrite"]) == 0
    store = LatentStore.open(tmp_path / "store")
    assert store.attrs["config"]["align"]["resolution"] == G.resolution == 32
    assert store.read([0])["iterations"].tolist() == [1]
