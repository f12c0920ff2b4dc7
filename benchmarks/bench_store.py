"""Latent store throughput and size against one torch ``.pth`` file per image.

The paper's code saves each projection with ``torch.save`` to its own file; this pipeline
writes shard-sized batches into one Zarr v3 store. Both are measured here, in the same
process, on the same synthetic w+ latents (10,000 × 18 × 512 float32 by default):

- write MB/s (raw float32 bytes per second of wall time), including the store's fsyncs
  when ``durable`` (the default) and without them (as ``torch.save`` does not fsync);
- read MB/s: every latent, shard by shard; and 1,000 random single-image reads;
- bytes on disk per latent.

It also measures the compression candidates (ratio, encode/decode MB/s) on three latent
profiles. Reads hit the page cache (dropping it would disturb other users of the machine).

    python benchmarks/bench_store.py            # 10k latents
    python benchmarks/bench_store.py --quick    # 1k latents, smoke run
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402  (the baseline's format)
import zarr  # noqa: E402
from _machine import cpu_name  # noqa: E402  (benchmarks/ is the script's folder)
from zarr.codecs import BloscCodec, ZstdCodec  # noqa: E402
from zarr.storage import MemoryStore  # noqa: E402

from storage import LatentStore  # noqa: E402

NUM_WS, W_DIM = 18, 512


def realistic_latents(n: int, seed: int = 0) -> np.ndarray:
    """w+ like an L-BFGS inversion: one mapping-network-like w per image repeated over the 18
    layers, plus small per-layer deviations (σ = 0.05) from the per-layer optimisation."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, 1, W_DIM)).astype(np.float32) * 0.8
    w = np.where(w > 0, w, 0.2 * w)  # leaky-ReLU-shaped like the mapping network's output
    return (w + 0.05 * rng.standard_normal((n, NUM_WS, W_DIM))).astype(np.float32)  # [N, 18, 512]


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def bench_store(latents: np.ndarray, root: Path, *, shard: int, durable: bool) -> dict[str, float]:
    n = len(latents)
    path = root / f"store-{'durable' if durable else 'plain'}.zarr"
    shutil.rmtree(path, ignore_errors=True)
    store = LatentStore.create(
        path, n, NUM_WS, W_DIM, shard, attrs={"generator_sha256": "bench"}, durable=durable
    )
    loss = np.zeros(shard, np.float32)
    t0 = time.perf_counter()
    for start, stop in store.shards():
        idx = np.arange(start, stop)
        store.write(idx, w=latents[start:stop], loss=loss[: stop - start])
    t_write = time.perf_counter() - t0
    reader = LatentStore.open(path)
    t0 = time.perf_counter()
    for start, stop in reader.shards():
        got = reader.read(np.arange(start, stop), fields=["w"])["w"]
    t_read = time.perf_counter() - t0
    assert np.array_equal(got, latents[start:stop])
    picks = np.random.default_rng(1).integers(0, n, 1000)
    t0 = time.perf_counter()
    for i in picks:
        reader.read([int(i)], fields=["w"])
    t_random = time.perf_counter() - t0
    return {
        "write_s": t_write,
        "read_s": t_read,
        "random_ms": 1000 * t_random / len(picks),
        "bytes": dir_bytes(path / "w"),
        "total_bytes": dir_bytes(path),
    }


def bench_pth(latents: np.ndarray, root: Path) -> dict[str, float]:
    folder = root / "pth"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    n = len(latents)
    tensors = torch.from_numpy(latents)
    t0 = time.perf_counter()
    for i in range(n):
        torch.save({"w": tensors[i : i + 1].clone()}, folder / f"{i:06d}.pth")  # [1, 18, 512]
    t_write = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(n):
        got = torch.load(folder / f"{i:06d}.pth", weights_only=True)["w"]
    t_read = time.perf_counter() - t0
    assert torch.equal(got, tensors[n - 1 : n])
    picks = np.random.default_rng(1).integers(0, n, 1000)
    t0 = time.perf_counter()
    for i in picks:
        torch.load(folder / f"{int(i):06d}.pth", weights_only=True)
    t_random = time.perf_counter() - t0
    return {
        "write_s": t_write,
        "read_s": t_read,
        "random_ms": 1000 * t_random / len(picks),
        "bytes": dir_bytes(folder),
        "total_bytes": dir_bytes(folder),
    }


CODECS = {
    "zstd-3": [ZstdCodec(level=3)],
    "zstd-9": [ZstdCodec(level=9)],
    "blosc-lz4 + shuffle": [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle", typesize=4)],
    "blosc-lz4 + bitshuffle": [BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle", typesize=4)],
    "blosc-zstd-5 + shuffle": [BloscCodec(cname="zstd", clevel=5, shuffle="shuffle", typesize=4)],
    "blosc-zstd-5 + bitshuffle": [
        BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle", typesize=4)
    ],
}


def bench_codecs(n: int) -> None:
    rng = np.random.default_rng(2)
    w = realistic_latents(n, seed=3)
    profiles = {
        "w+ = w + N(0, 0.05²) per layer": w,
        "w repeated 18× (W-space inversion)": np.repeat(w[:, :1], NUM_WS, axis=1),
        "iid Gaussian (worst case)": rng.standard_normal((n, NUM_WS, W_DIM)).astype(np.float32),
    }
    print(f"\ncompression on {n} latents, chunks of 64 images (ratio = raw / stored bytes)")
    print(f"{'profile':36s} {'codec':28s} {'ratio':>6s} {'enc MB/s':>9s} {'dec MB/s':>9s}")
    for pname, data in profiles.items():
        for cname, codecs in CODECS.items():
            store = MemoryStore()
            arr = zarr.create_array(
                store,
                shape=data.shape,
                chunks=(64, NUM_WS, W_DIM),
                dtype="float32",
                compressors=codecs,
                fill_value=0.0,
            )
            t0 = time.perf_counter()
            arr[:] = data
            t_enc = time.perf_counter() - t0
            t0 = time.perf_counter()
            back = arr[:]
            t_dec = time.perf_counter() - t0
            assert np.array_equal(back, data)
            stored = sum(
                len(v.to_bytes())
                for k, v in store._store_dict.items()
                if not k.endswith("zarr.json")
            )
            mb = data.nbytes / 1e6
            print(
                f"{pname:36s} {cname:28s} {data.nbytes / stored:6.3f} {mb / t_enc:9.0f} {mb / t_dec:9.0f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 latents instead of 10,000")
    parser.add_argument("--n", type=int, default=None, help="number of latents")
    parser.add_argument("--shard", type=int, default=64, help="shard size (images per chunk)")
    parser.add_argument(
        "--dir", type=Path, default=None, help="scratch folder (default: a temp dir)"
    )
    parser.add_argument("--codecs-only", action="store_true", help="only the compression table")
    args = parser.parse_args()
    n = args.n or (1000 if args.quick else 10_000)
    if args.codecs_only:
        bench_codecs(min(n, 2048))
        return

    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}")
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, zarr {zarr.__version__}, "
        f"numpy {np.__version__}"
    )
    print(
        f"latents: {n} × {NUM_WS} × {W_DIM} float32 ({n * NUM_WS * W_DIM * 4 / 1e6:.1f} MB raw), "
        f"shard size {args.shard}; reads from the page cache"
    )
    print("load average at start: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    latents = realistic_latents(n)
    raw_mb = latents.nbytes / 1e6
    root = Path(tempfile.mkdtemp(prefix="bench-store-", dir=args.dir))
    try:
        results = {
            "torch .pth per image (baseline)": bench_pth(latents, root),
            "LatentStore, durable (fsync)": bench_store(
                latents, root, shard=args.shard, durable=True
            ),
            "LatentStore, no fsync": bench_store(latents, root, shard=args.shard, durable=False),
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    base = results["torch .pth per image (baseline)"]
    print(
        f"\n{'format':34s} {'write MB/s':>10s} {'read MB/s':>10s} {'1 random read':>14s} "
        f"{'bytes/latent':>13s} {'vs .pth: write':>15s} {'read':>6s} {'size':>6s}"
    )
    for name, r in results.items():
        print(
            f"{name:34s} {raw_mb / r['write_s']:10.1f} {raw_mb / r['read_s']:10.1f} "
            f"{r['random_ms']:11.3f} ms {r['bytes'] / n:13.0f} "
            f"{base['write_s'] / r['write_s']:14.2f}× {base['read_s'] / r['read_s']:5.2f}× "
            f"{r['bytes'] / base['bytes']:5.2f}×"
        )
    print(
        f"(raw float32 latent: {NUM_WS * W_DIM * 4} bytes; store totals incl. status/metrics: "
        f"{results['LatentStore, durable (fsync)']['total_bytes'] / n:.0f} bytes/image)"
    )
    bench_codecs(min(n, 2048))
    print("load average at end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
