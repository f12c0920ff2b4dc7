"""How much batch size and CPU thread count change float32 inversion results (issue 18.7).

Inverts the same N images of a fixture generator three times — (batch 8, 1 thread),
(batch 3, 1 thread), (batch 8, 2 threads) — and prints max |Δw| over all w+ entries, the
number of images whose w changed at all, and max |ΔPSNR| (dB) against the first run. These
are the numbers docs/inversion.md quotes for why the store records batch size, threads and
device type and refuses to mix them on resume.

    python benchmarks/bench_numerics_identity.py [--generator G.pkl] [--n 8] [--steps 100]
        [--compare batch|threads|both]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ganviews.inversion.invert import invert
from ganviews.stylegan.generator import load_generator

FIXTURE = Path(__file__).resolve().parents[2] / "shared/fixtures/stylegan2/nvidia-ada-res32.pkl"


def run(G, images, *, batch_size: int, threads: int, steps: int):
    torch.set_num_threads(threads)
    return invert(
        G, images, steps=steps, batch_size=batch_size, lpips_net="lpips-random", precision="exact"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generator", type=Path, default=FIXTURE)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--compare", choices=["batch", "threads", "both"], default="both")
    args = parser.parse_args()
    G = load_generator(args.generator)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        ws = G.mapping(torch.randn([args.n, G.z_dim], generator=gen), None, truncation_psi=0.7)
        images = G.synthesis(ws, noise_mode="const").clamp(-1, 1)
    ref = run(G, images, batch_size=8, threads=1, steps=args.steps)
    runs = {"batch": ("batch 3 vs 8", {"batch_size": 3, "threads": 1}),
            "threads": ("2 threads vs 1", {"batch_size": 8, "threads": 2})}  # fmt: skip
    for label, kw in [runs[k] for k in runs if args.compare in (k, "both")]:
        other = run(G, images, steps=args.steps, **kw)
        dw = (other.w - ref.w).abs()
        changed = int((dw.flatten(1).amax(1) > 0).sum())
        dpsnr = float((other.psnr - ref.psnr).abs().max())
        print(
            f"{label}: max |Δw| {float(dw.max()):.3g}, images with any change {changed}/{args.n}, "
            f"max |ΔPSNR| {dpsnr:.3g} dB"
        )


if __name__ == "__main__":
    main()
