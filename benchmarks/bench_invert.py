"""Inversion throughput: batched per-image L-BFGS vs the paper's one-image-at-a-time loop.

For each batch size B (default 1, 4, 16, 64) the first B images of a fixed pool are inverted
together for ``--steps`` L-BFGS steps with the full objective (masked L1 + masked LPIPS +
encoder consistency, the encoder re-run on G(w) at every evaluation). Batch 1 is the
per-image baseline, run on the first ``--baseline-images`` images one by one. Reported per
B: images/s, objective evaluations per image, the final-loss distribution, the largest
difference of an image's final loss from its batch-1 run, and peak memory; then the
speed-up of the best batch over batch 1.

Costs do not depend on weight values, so randomly initialised networks stand in for trained
ones: CPU — the shared 32 px fixture generator (or ``--resolution 64``: a random 64 px
config-f-like generator); GPU — random config-f generators at 256 and 1024 px. LPIPS uses
the "lpips-random" trunk (same cost as AlexNet with ImageNet weights).

    python benchmarks/bench_invert.py --quick            # smoke run
    python benchmarks/bench_invert.py --steps 500        # the paper's setting
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _machine import device_name  # noqa: E402  (benchmarks/ is the script's folder)

from ganviews.inversion.encoder import Encoder  # noqa: E402
from ganviews.inversion.invert import invert  # noqa: E402
from ganviews.inversion.perceptual import load_perceptual  # noqa: E402
from ganviews.stylegan.generator import Generator, GeneratorConfig, load_generator  # noqa: E402

FIXTURE = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "fixtures"
    / "stylegan2"
    / "nvidia-ada-res32.pkl"
)


def machine(device: torch.device) -> str:
    return f"{device_name(device)} ({torch.get_num_threads()} torch threads)"


def build_generator(resolution: int, device: torch.device):
    if resolution == 32 and FIXTURE.is_file():
        return load_generator(FIXTURE, device=device), f"fixture {FIXTURE.name}"
    torch.manual_seed(0)
    if resolution <= 64:  # a small config-f-like net for CPU runs
        cfg = GeneratorConfig(
            z_dim=128,
            w_dim=128,
            img_resolution=resolution,
            mapping_layers=4,
            channel_base=4096,
            channel_max=128,
        )
        label = "random small config-f"
    else:
        cfg = GeneratorConfig(img_resolution=resolution)  # config-f: 512-d z/w, 8 mapping layers
        label = "random config-f"
    G = Generator(cfg).to(device).eval().requires_grad_(False)
    return G, f"{label} {resolution} px"


def peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB (GPU, this run)"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (process RSS peak so far)"


def run_one(G, E, P, images, steps: int, batch, lpips_resolution, precision="exact"):
    if images.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(images.device)
    t0 = time.perf_counter()
    res = invert(
        G,
        images,
        encoder=E,
        perceptual=P,
        steps=steps,
        batch_size=batch,
        lpips_resolution=lpips_resolution,
        precision=precision,
    )
    if images.device.type == "cuda":
        torch.cuda.synchronize()
    return res, time.perf_counter() - t0


#: Dense peak TFLOP/s per precision of cards we may be lent (vendor data sheets, SXM parts).
PEAKS = {
    "H100": {"exact": 67.0, "tf32": 494.7, "bf16": 989.4},
    "H200": {"exact": 67.0, "tf32": 494.7, "bf16": 989.4},
    "A100": {"exact": 19.5, "tf32": 156.0, "bf16": 312.0},
}


def peak_tflops(device: torch.device, precision: str) -> float | None:
    name = device_name(device)
    return next((v[precision] for k, v in PEAKS.items() if k in name), None)


def flop_per_eval(G, E, P, image, lpips_resolution) -> float:
    """FLOP of one objective evaluation (forward + backward) for one image, as L-BFGS calls it."""
    from torch.utils.flop_counter import FlopCounterMode

    from ganviews.core.runtime import NumericsPolicy
    from ganviews.inversion.invert import InversionConfig, _Objective

    cfg = InversionConfig(lpips_resolution=lpips_resolution)
    mask = image.new_ones(1, 1, *image.shape[2:])
    objective = _Objective(
        G,
        image,
        mask,
        perceptual=P,
        encoder=E,
        latent_mode="encoder_consistency" if E is not None else "l2",
        w_init=None,
        cfg=cfg,
        policy=NumericsPolicy("exact"),
        chunk=1,
    )
    ws = objective.w_init.clone().requires_grad_(True)  # [1, L, C]
    with torch.enable_grad(), FlopCounterMode(display=False) as counter:
        parts, _ = objective.terms(ws, torch.zeros(1, dtype=torch.long, device=image.device))
        sum(parts.values()).sum().backward()  # what autograd.grad does inside the objective
    return float(counter.get_total_flops())


def precision_table(G, E, P, images, args, device) -> None:
    """s/image, evaluations, achieved TFLOP/s and peak memory per image for each precision."""
    flop = flop_per_eval(G, E, P, images[:1], args.lpips_resolution)
    print(
        f"\nprecisions at batch {args.precision_batch} ({args.steps} steps; "
        f"{flop / 1e9:.1f} GFLOP per image-evaluation)"
    )
    print(
        f"{'precision':>9} {'batch':>5} {'s/image':>8} {'evals/img':>9} {'TFLOP/s':>8} "
        f"{'% peak':>7} {'GiB/img':>8} {'loss p10/p50/p90':>22}"
    )
    for precision in args.precisions:
        res, sec = run_one(
            G, E, P, images, args.steps, args.precision_batch, args.lpips_resolution, precision
        )
        n = images.shape[0]
        evals = float(res.evaluations.float().sum())
        tflops = flop * evals / sec / 1e12
        peak = peak_tflops(device, precision)
        share = f"{100 * tflops / peak:6.1f}%" if peak else f"{'—':>7}"
        mem = (
            f"{torch.cuda.max_memory_allocated(device) / 2**30 / n:8.2f}"
            if device.type == "cuda"
            else f"{'—':>8}"
        )
        q = torch.quantile(res.loss.float().cpu(), torch.tensor([0.1, 0.5, 0.9])).tolist()
        print(
            f"{precision:>9} {str(args.precision_batch):>5} {sec / n:>8.3f} {evals / n:>9.1f} "
            f"{tflops:>8.2f} {share} {mem} {q[0]:>7.4f}/{q[1]:.4f}/{q[2]:.4f}"
        )


def bench_resolution(resolution: int, args, device: torch.device) -> None:
    G, label = build_generator(resolution, device)
    E = None
    if not args.no_encoder:
        torch.manual_seed(1)
        E = (
            Encoder.for_generator(G, depth=args.encoder_depth)
            .to(device)
            .eval()
            .requires_grad_(False)
        )
    P = load_perceptual("lpips-random", device=device, resolution=args.lpips_resolution)
    gen = torch.Generator(device="cpu").manual_seed(0)
    pool = max(*args.batches, args.precision_images if args.precisions else 1)
    z = torch.randn(pool, G.z_dim, generator=gen).to(device)
    with torch.no_grad():
        images = G.synthesis(G.mapping(z, truncation_psi=0.7)).clamp(-1, 1)  # [pool, 3, R, R]
    print(
        f"\n== {label}: num_ws={G.num_ws}, w_dim={G.w_dim}; encoder: "
        f"{'none' if E is None else f'ResNet-{args.encoder_depth} at {E.resolution} px'}; "
        f"LPIPS at {args.lpips_resolution or 'full'} resolution; {args.steps} L-BFGS steps"
    )
    base_n = min(args.baseline_images, pool)
    t_base, base_loss = 0.0, []
    for i in range(base_n):
        res, sec = run_one(G, E, P, images[i : i + 1], args.steps, 1, args.lpips_resolution)
        t_base += sec
        base_loss.append(float(res.loss[0]))
    base_ips = base_n / t_base
    print(
        f"{'batch':>5} {'images':>6} {'sec':>8} {'img/s':>8} {'evals/img':>9} "
        f"{'loss p10/p50/p90':>22} {'max|Δloss| vs B=1':>18}  peak memory"
    )
    print(
        f"{1:>5} {base_n:>6} {t_base:>8.1f} {base_ips:>8.3f} {'':>9} "
        f"{'(per-image loop)':>22} {'0':>18}  {peak_memory(device)}"
    )
    best = (1, base_ips)
    for batch in args.batches:
        if batch == 1:
            continue
        res, sec = run_one(G, E, P, images[:batch], args.steps, batch, args.lpips_resolution)
        ips = batch / sec
        q = torch.quantile(res.loss.float().cpu(), torch.tensor([0.1, 0.5, 0.9])).tolist()
        k = min(base_n, batch)
        diff = max(abs(float(res.loss[i]) - base_loss[i]) for i in range(k))
        evals = float(res.evaluations.float().mean())
        print(
            f"{batch:>5} {batch:>6} {sec:>8.1f} {ips:>8.3f} {evals:>9.1f} "
            f"{q[0]:>7.4f}/{q[1]:.4f}/{q[2]:.4f} {diff:>18.2e}  {peak_memory(device)}"
        )
        if ips > best[1]:
            best = (batch, ips)
    print(
        f"best: batch {best[0]} at {best[1]:.3f} img/s = {best[1] / base_ips:.1f}x the per-image loop"
    )
    if args.precisions:
        precision_table(G, E, P, images[: args.precision_images], args, device)


def lpips_cost(args, device: torch.device) -> None:
    """Forward + backward time of masked LPIPS per image at full size vs area-downsampled."""
    P_full = load_perceptual("lpips-random", device=device)
    print(f"\n== masked LPIPS (AlexNet trunk) forward+backward, batch {args.lpips_batch}")
    for size in (int(s) for s in args.lpips_cost.split(",")):
        for res in (None, 256, 128):
            if res is not None and res >= size:
                continue
            P = (
                P_full
                if res is None
                else load_perceptual("lpips-random", device=device, resolution=res)
            )
            x = torch.rand(args.lpips_batch, 3, size, size, device=device) * 2 - 1
            y = (torch.rand_like(x) * 2 - 1).requires_grad_(True)
            P(y, x).sum().backward()  # warm-up
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0, reps = time.perf_counter(), 3
            for _ in range(reps):
                P(y, x).sum().backward()
            if device.type == "cuda":
                torch.cuda.synchronize()
            per = (time.perf_counter() - t0) / reps / args.lpips_batch
            print(f"  {size:>5} px, LPIPS at {res or size:>5} px: {per * 1e3:8.2f} ms per image")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--steps", type=int, default=500, help="L-BFGS steps per image (default 500)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 10 steps, batches 1, 4")
    parser.add_argument("--batches", default="1,4,16,64")
    parser.add_argument("--resolutions", default=None, help="default: 32 on CPU, 256,1024 on GPU")
    parser.add_argument(
        "--baseline-images", type=int, default=2, help="images inverted one by one for B=1"
    )
    parser.add_argument(
        "--lpips-resolution", type=int, default=None, help="e.g. 256 (NVIDIA projector style)"
    )
    parser.add_argument(
        "--no-encoder", action="store_true", help="latent term ℓ2 to mean w instead"
    )
    parser.add_argument("--encoder-depth", type=int, default=34)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--lpips-cost", metavar="SIZES", help="only time LPIPS at these sizes, e.g. 256,1024"
    )
    parser.add_argument("--lpips-batch", type=int, default=4)
    parser.add_argument(
        "--precisions", default="", help="e.g. exact,tf32,bf16: a table at --precision-batch"
    )
    parser.add_argument(
        "--precision-batch", default="auto", help="slots for the precision table (or auto)"
    )
    parser.add_argument("--precision-images", type=int, default=16)
    args = parser.parse_args(argv)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    args.batches = sorted({int(b) for b in args.batches.split(",")} | {1})
    args.precisions = [p for p in args.precisions.split(",") if p]
    if args.precision_batch != "auto":
        args.precision_batch = int(args.precision_batch)
    if args.quick:
        args.steps, args.batches = 10, [1, 4]
    resolutions = (
        [int(r) for r in args.resolutions.split(",")]
        if args.resolutions
        else ([256, 1024] if device.type == "cuda" else [32])
    )
    print(
        f"bench_invert: {machine(device)}; torch {torch.__version__}; float32, batch rows "
        f"in exact precision; batches {args.batches}; {args.steps} steps"
    )
    if args.lpips_cost:
        lpips_cost(args, device)
        return 0
    for r in resolutions:
        bench_resolution(r, args, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
