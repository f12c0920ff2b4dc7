"""``ganviews pca-stats``: PCA statistics of a generator's w space, for the PCA views (paper Sec. 3.3).

Samples w = mapping(z) (z ~ N(0, I), ψ = 1), runs a float64 PCA and writes an ``.npz``
(storage/pca_stats.py) that records the generator's content hash; the body is
:func:`tasks.pca.run_pca`, as in the pipeline's pca stage. Put it next to a latent
store as ``<store>/pca_stats.npz`` and ``ganviews render`` picks it up.
"""

from __future__ import annotations

import argparse
import time


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pca-stats",
        help="PCA of the generator's w space (for PCA views)",
        description="Sample w = mapping(z) and save its principal directions and standard "
        "deviations, tagged with the generator's sha256.",
    )
    parser.add_argument(
        "--generator",
        required=True,
        metavar="G",
        help="generator checkpoint (.pkl/.pt/.safetensors)",
    )
    parser.add_argument(
        "--out", required=True, metavar="FILE", help="output .npz (e.g. STORE/pca_stats.npz)"
    )
    parser.add_argument(
        "--samples", type=int, default=100_000, metavar="N", help="w samples (default 100000)"
    )
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument(
        "--batch-size", type=int, default=4096, metavar="B", help="mapping batch (default 4096)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 … (default auto)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ganviews.core.runtime import resolve_device
    from ganviews.stylegan.generator import load_generator
    from tasks.pca import run_pca
    from tasks.pipeline_config import PCAConfig

    if args.samples < 2:
        raise SystemExit(f"ganviews pca-stats: error: --samples must be ≥ 2, got {args.samples}")
    device = resolve_device(args.device)
    G = load_generator(args.generator, device=device)
    t0 = time.perf_counter()
    settings = PCAConfig(samples=args.samples, seed=args.seed, batch_size=args.batch_size)
    path, stats = run_pca(G, args.out, settings, device=device)
    top = ", ".join(f"{v:.3f}" for v in stats.stdevs[:5].tolist())
    print(
        f"wrote {path}: {stats.components.shape[0]} components of w_dim {G.w_dim} from {stats.n_samples} "
        f"samples in {time.perf_counter() - t0:.1f}s; top stdevs {top}; generator {G.sha256[:16]}…"
    )
    return 0
