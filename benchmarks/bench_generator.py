"""Synthesis throughput of a randomly initialised config-f StyleGAN2 generator.

Measures images/s of ``G.synthesis(ws, noise_mode="const")`` at batch sizes 1, 2, 4, … for
both modulated-conv paths (fused: per-sample weights in one grouped conv; non-fused: scaled
activations, plain batched conv). Reports each batch size's per-image throughput as a
ratio to batch 1 (same path, same process) and the fused / non-fused ratio. Cost does not
depend on the weights' values, so random weights stand in for a trained network.

    python benchmarks/bench_generator.py                  # CPU: 32 px, CUDA: 256 px
    python benchmarks/bench_generator.py --resolution 64 --max-batch 16
    python benchmarks/bench_generator.py --resolution 1024 --amp bf16   # on a GPU
    python benchmarks/bench_generator.py --quick          # smoke run
"""

from __future__ import annotations

import argparse
import time

import torch
from _machine import device_name  # benchmarks/ is the script's folder

from ganviews.core.runtime import resolve_device, set_numerics_policy
from ganviews.stylegan.generator import Generator, GeneratorConfig


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--resolution", type=int, default=None, help="image size (default 32 on CPU, 256 on CUDA)"
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument(
        "--max-batch", type=int, default=64, help="largest batch size (powers of two from 1)"
    )
    p.add_argument(
        "--amp", choices=["none", "fp16", "bf16"], default="none", help="autocast dtype (CUDA only)"
    )
    p.add_argument(
        "--min-time", type=float, default=1.0, help="seconds of timed calls per measurement"
    )
    p.add_argument(
        "--rounds", type=int, default=3, help="alternating measurement rounds (best is kept)"
    )
    p.add_argument(
        "--warmup-max-batch",
        type=int,
        default=64,
        help="skip the warm-up call above this batch size (slow CPUs: the smaller "
        "batches already warmed the allocator; primitive creation costs milliseconds)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--paths", default="fused,nonfused", help="which modulated-conv paths to time")
    p.add_argument("--quick", action="store_true", help="smoke run: batches 1-4, short timing")
    return p.parse_args()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def images_per_second(
    G, ws, *, fused: bool, amp: str, min_time: float, device: torch.device
) -> float:
    """Time whole calls until ``min_time`` has passed (at least one call); images/s."""
    amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(amp)
    calls, start = 0, time.perf_counter()
    while True:
        if amp_dtype is None:
            G.synthesis(ws, noise_mode="const", fused_modconv=fused)
        else:
            with torch.autocast(device_type=device.type, dtype=amp_dtype):
                G.synthesis(ws, noise_mode="const", fused_modconv=fused)
        calls += 1
        sync(device)
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return calls * ws.shape[0] / elapsed


def measure(
    G,
    ws,
    paths,
    *,
    rounds: int,
    amp: str,
    min_time: float,
    device: torch.device,
    warmup: bool = True,
) -> dict[str, float]:
    """Best of ``rounds`` alternating measurements per path (after one warm-up call each).

    Alternating the paths and keeping the best round makes the fused/non-fused ratio robust
    to other processes sharing the machine.
    """
    kw = {"amp": amp, "device": device}
    if warmup:
        for path in paths:  # allocator, oneDNN / cuDNN primitive selection
            images_per_second(G, ws, fused=path == "fused", min_time=0.0, **kw)
    best = dict.fromkeys(paths, 0.0)
    for _ in range(rounds):
        for path in paths:
            ips = images_per_second(G, ws, fused=path == "fused", min_time=min_time / rounds, **kw)
            best[path] = max(best[path], ips)
    return best


def main() -> int:
    args = parse_args()
    device = resolve_device(args.device)
    set_numerics_policy(device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.amp != "none" and device.type != "cuda":
        raise SystemExit("--amp needs a CUDA device")
    resolution = args.resolution or (256 if device.type == "cuda" else 32)
    max_batch, min_time, rounds = (
        (4, 0.2, 1) if args.quick else (args.max_batch, args.min_time, args.rounds)
    )
    batches = [b for b in (2**i for i in range(0, 11)) if b <= max_batch]
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]

    torch.manual_seed(0)
    cfg = GeneratorConfig(
        z_dim=512, w_dim=512, img_resolution=resolution, mapping_layers=8, conv_clamp=256
    )
    G = Generator(cfg).eval().requires_grad_(False).to(device)
    n_params = sum(p.numel() for p in G.synthesis.parameters())
    print(
        f"device: {device} ({device_name(device)}), torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    print(f"dtype: float32 weights, compute {args.amp if args.amp != 'none' else 'float32'}")
    print(
        f"generator: config-f, {resolution} px, z=w=512, num_ws={G.num_ws}, widths {cfg.block_channels()}, "
        f"{n_params / 1e6:.1f} M synthesis parameters"
    )
    print(
        f"timing: synthesis only, noise const, best of {rounds} alternating rounds of >= "
        f"{min_time / rounds:.2f} s (at least one call) per path, after one warm-up call "
        f"(up to batch {args.warmup_max_batch})\n"
    )

    results: dict[tuple[str, int], float] = {}
    header = f"{'batch':>5}" + "".join(f" | {p + ' img/s':>14} {'x b1':>6}" for p in paths)
    if set(paths) == {"fused", "nonfused"}:
        header += " | fused/nonfused"
    print(header)
    for batch in batches:
        ws = G.mapping(torch.randn(batch, 512, device=device))  # [N, L, 512]
        row = f"{batch:>5}"
        best = measure(
            G,
            ws,
            paths,
            rounds=rounds,
            amp=args.amp,
            min_time=min_time,
            device=device,
            warmup=batch <= args.warmup_max_batch,
        )
        for path in paths:
            ips = results[(path, batch)] = best[path]
            row += f" | {ips:>14.2f} {ips / results[(path, 1)]:>6.2f}"
        if set(paths) == {"fused", "nonfused"}:
            row += f" | {results[('fused', batch)] / results[('nonfused', batch)]:>14.2f}"
        print(row, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
