"""Classified views per second: the fused render → classify pass against two baselines.

All three do the same work for each image (paper Sec. 3.3–3.4): classify the original, the
reconstruction G(w*) and N−1 isotropic fine-layer views (N+1 classified views per image),
with a randomly initialised config-f StyleGAN2 generator (cost does not depend on the
weights' values) and a ResNet-18 classifier with its own on-device preprocessing.

- fused: :func:`ganviews.views.render.render_and_classify` — batches of ``batch_size`` views across
  images, perturb → render → preprocess → classify on the device, logits copied once;
- disk: the same batched rendering, but every view is written as a PNG, read back and then
  classified in batches (render-to-disk-then-classify);
- per-image: a loop over images, each rendering and classifying its own N+1 views in one
  batch (the official evaluation loop's shape).

Ratios are measured in the same process, in rounds that alternate over all cases (the
best of each is kept), so drifting machine load affects every case alike. The fused logits are checked against the
per-image loop's.

    python benchmarks/bench_views.py            # CPU: 32 px narrow generator; CUDA: 256 px config-f
    python benchmarks/bench_views.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ganviews.classifiers.model import build_classifier
from ganviews.core.runtime import resolve_device, set_numerics_policy
from ganviews.stylegan.generator import Generator, GeneratorConfig
from ganviews.views.perturb import perturb_from_seeds, view_seed
from ganviews.views.render import GanGroup, ViewConfig, render_and_classify, to_uint8

SIGMA = 0.3


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument(
        "--resolution", type=int, help="generator resolution (default: 32 on CPU, 256 on CUDA)"
    )
    p.add_argument(
        "--channel-base", type=int, help="config-f width rule (default: 4096 CPU, 32768 CUDA)"
    )
    p.add_argument("--channel-max", type=int, help="maximum width (default: 128 CPU, 512 CUDA)")
    p.add_argument(
        "--classifier-res", type=int, help="ResNet input side (default: 64 CPU, 224 CUDA)"
    )
    p.add_argument("--images", type=int, help="images (default: 8 CPU, 64 CUDA)")
    p.add_argument("--n-views", type=int, help="N per image (default: 16 CPU, 32 CUDA)")
    p.add_argument("--batch-sizes", help="comma list (default: 8,32,128 CPU; 32,128,512 CUDA)")
    p.add_argument(
        "--amp",
        choices=["float32", "float16", "bfloat16"],
        default="float32",
        help="autocast dtype",
    )
    p.add_argument(
        "--rounds", type=int, default=3, help="alternating rounds over all cases (best kept)"
    )
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument(
        "--quick", action="store_true", help="smoke run: 2 images, N=4, one batch size, one round"
    )
    return p.parse_args()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def view_ws(G, w, ids, n_views, seed):
    """[n·(N−1), L, C] perturbed w of every image's views 2..N, image-major."""
    seeds = [
        view_seed(seed, i, "isotropic", "fine", SIGMA, v)
        for i in ids
        for v in range(2, n_views + 1)
    ]
    w_rep = w.repeat_interleave(n_views - 1, dim=0)  # [n·(N−1), L, C]
    return perturb_from_seeds(G, w_rep, seeds, method="isotropic", layers="fine", setting=SIGMA)


@torch.no_grad()
def per_image_loop(G, C, w, images, ids, n_views, seed, autocast):
    out = []
    with autocast():
        for i in range(w.shape[0]):
            wv = view_ws(G, w[i : i + 1], ids[i : i + 1], n_views, seed)  # [N−1, L, C]
            renders = G.synthesis(torch.cat([w[i : i + 1], wv]), noise_mode="const")  # [N, 3, R, R]
            x = torch.cat([images[i : i + 1], renders.float()])  # [N+1, 3, R, R]
            out.append(C(x).float().cpu())
    return torch.stack(out)  # [n, N+1, K]


@torch.no_grad()
def render_to_disk(G, C, w, images, ids, n_views, seed, batch, folder: Path, autocast):
    """Render every view in batches, write PNGs, read them back, classify in batches."""
    ws = torch.cat([w, view_ws(G, w, ids, n_views, seed)])  # recon first, then views
    paths = []
    with autocast():
        for start in range(0, ws.shape[0], batch):
            pix = to_uint8(
                G.synthesis(ws[start : start + batch], noise_mode="const")
            )  # [B, 3, R, R]
            for k, arr in enumerate(pix.permute(0, 2, 3, 1).cpu().numpy()):
                path = folder / f"{start + k:06d}.png"
                Image.fromarray(arr).save(path)
                paths.append(path)
        logits = [C(images).float().cpu()]
        for start in range(0, len(paths), batch):
            arr = np.stack(
                [np.asarray(Image.open(p)) for p in paths[start : start + batch]]
            )  # [B, R, R, 3]
            x = torch.from_numpy(arr).to(w.device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
            logits.append(C(x).float().cpu())
    return torch.cat(logits)


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    set_numerics_policy(device)
    gpu = device.type == "cuda"
    res = args.resolution or (256 if gpu else 32)
    n_images = 2 if args.quick else (args.images or (64 if gpu else 8))
    n_views = 4 if args.quick else (args.n_views or (32 if gpu else 16))
    default_bs = "32,128,512" if gpu else "8,32,128"
    batch_sizes = [int(b) for b in (args.batch_sizes or default_bs).split(",")]
    if args.quick:
        batch_sizes = batch_sizes[:1]
    rounds = 1 if args.quick else args.rounds
    gcfg = GeneratorConfig(
        img_resolution=res,
        channel_base=args.channel_base or (32768 if gpu else 4096),
        channel_max=args.channel_max or (512 if gpu else 128),
    )
    torch.manual_seed(0)
    G = Generator(gcfg).eval().requires_grad_(False).to(device)
    cres = args.classifier_res or (224 if gpu else 64)
    C = build_classifier(
        {
            "arch": "resnet18",
            "num_outputs": 2,
            "task": "bench",
            "preprocessing": {"resize": cres, "crop": cres},
        }
    )
    C = C.eval().requires_grad_(False).to(device)
    gen = torch.Generator().manual_seed(1)
    w = G.mapping(torch.randn(n_images, G.z_dim, generator=gen).to(device))  # [n, L, C]
    images = (torch.rand(n_images, 3, res, res, generator=gen) * 2 - 1).to(device)
    ids = [f"img{i:05d}" for i in range(n_images)]
    total = n_images * (n_views + 1)
    amp = {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}[args.amp]

    def autocast():
        return (
            torch.autocast(device.type, dtype=amp)
            if amp
            else torch.autocast(device.type, enabled=False)
        )

    print(
        f"device      {device} ({device_name(device)}), torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    print(
        f"generator   config-f, {res} px, widths {gcfg.block_channels()}, z=w={G.w_dim}, num_ws {G.num_ws}"
    )
    print(f"classifier  ResNet-18, input {cres} px (resize + centre crop on the device), 2 logits")
    print(f"work        {n_images} images × (N+1 = {n_views + 1}) classified views = {total}; "
          f"isotropic fine σ={SIGMA}; dtype {args.amp}; best of {rounds} alternating rounds")  # fmt: skip
    print()

    cases = {
        ("per-image", n_views + 1): lambda: per_image_loop(
            G, C, w, images, ids, n_views, 0, autocast
        )
    }
    for bs in batch_sizes:
        cfg = ViewConfig(n_views=n_views, gan=(GanGroup("isotropic", "fine", (SIGMA,)),), image_methods=(),
                         batch_size=bs, dtype=args.amp)  # fmt: skip
        cases[("disk", bs)] = lambda bs=bs: _disk(G, C, w, images, ids, n_views, bs, autocast)
        cases[("fused", bs)] = lambda cfg=cfg: render_and_classify(
            G, {"C": C}, w, images, image_ids=ids, config=cfg, device=device, seed=0
        )
    # Rounds alternate over all cases (best kept), so a change in machine load hits every case.
    best = {key: float("inf") for key in cases}
    outputs = {key: fn() for key, fn in cases.items()}  # warm-up (allocator, kernels) + results
    for _ in range(rounds):
        for key, fn in cases.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            best[key] = min(best[key], time.perf_counter() - t0)
    loop_s = best[("per-image", n_views + 1)]
    loop_logits = outputs[("per-image", n_views + 1)]
    print(f"{'mode':<12}{'batch':>6}{'time s':>10}{'views/s':>10}{'× per-image':>13}{'× disk':>8}")
    print(
        f"{'per-image':<12}{n_views + 1:>6}{loop_s:>10.3f}{total / loop_s:>10.1f}{1.0:>13.2f}{'':>8}"
    )
    for bs in batch_sizes:
        disk_s, fused_s = best[("disk", bs)], best[("fused", bs)]
        fused = torch.from_numpy(outputs[("fused", bs)][0].logits["C"]).view(
            n_images, n_views + 1, -1
        )
        diff = float((fused - loop_logits).abs().max())
        print(
            f"{'disk':<12}{bs:>6}{disk_s:>10.3f}{total / disk_s:>10.1f}{loop_s / disk_s:>13.2f}{1.0:>8.2f}"
        )
        print(f"{'fused':<12}{bs:>6}{fused_s:>10.3f}{total / fused_s:>10.1f}{loop_s / fused_s:>13.2f}"
              f"{disk_s / fused_s:>8.2f}   (max |Δlogit| vs per-image {diff:.1e})")  # fmt: skip
    # The disk path's own cost per view, apart from rendering and classifying (CPU work that
    # a GPU does not speed up): PNG encode + decode at this resolution and at 256 / 1024 px.
    with torch.no_grad():
        renders = to_uint8(
            G.synthesis(w[:1].expand(16, -1, -1), noise_mode="const").float()
        )  # [16, 3, R, R]
    print()
    with tempfile.TemporaryDirectory() as tmp:
        for side in sorted({res, 256, 1024}):
            pix = renders if side == res else to_uint8(
                torch.nn.functional.interpolate(renders.float() / 127.5 - 1, size=(side, side), mode="bilinear")
            )  # fmt: skip
            ms = min(png_roundtrip_ms(pix[:4], Path(tmp)) for _ in range(2))
            print(f"PNG write + read back at {side:>4} px: {ms:7.2f} ms/view on one CPU thread "
                  f"(caps the disk path at {1000 / ms:,.0f} views/s per thread)")  # fmt: skip


def png_roundtrip_ms(pixels: torch.Tensor, folder: Path) -> float:
    """Milliseconds per image to write and read back uint8 [N, 3, R, R] images as PNG files."""
    arrays = pixels.permute(0, 2, 3, 1).cpu().numpy()
    t0 = time.perf_counter()
    for k, arr in enumerate(arrays):
        Image.fromarray(arr).save(folder / f"{k}.png")
    back = [np.asarray(Image.open(folder / f"{k}.png")) for k in range(len(arrays))]
    assert all(np.array_equal(a, b) for a, b in zip(arrays, back, strict=True))
    return 1000 * (time.perf_counter() - t0) / len(arrays)


def _disk(G, C, w, images, ids, n_views, bs, autocast):
    with tempfile.TemporaryDirectory() as tmp:
        return render_to_disk(G, C, w, images, ids, n_views, 0, bs, Path(tmp), autocast)


if __name__ == "__main__":
    main()
