"""``ganviews train-encoder``: train the RGBM encoder on (w, G(w)) pairs (paper Sec. 3.2, Eq. 2–3).

    ganviews train-encoder --generator G.pkl --out E.safetensors --steps 20000 --batch-size 16 \\
        --perceptual lpips-alex [--resume] [--device cuda]

A training checkpoint (model + optimiser + step + RNG state) is kept next to the output
(``E.safetensors.ckpt`` unless ``--checkpoint`` names another file); ``--resume`` continues
it to ``--steps`` in total. Without ``--resume`` an existing checkpoint is an error, so a
run is never restarted or overwritten by accident. The body is
:func:`tasks.train_encoder.run_train_encoder`, as in the pipeline. See docs/alignment_encoder.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

_PERCEPTUAL = ("lpips-alex", "lpips-vgg", "lpips-random", "none")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train-encoder",
        help="train the RGBM encoder (image + mask → w+) on samples of a generator",
        description="Train the RGBM ResNet encoder on (w, G(w)) pairs with random masks: "
        "L1 + LPIPS on images + λ·ℓ2 on latents (paper Eq. 2–3).",
    )
    p.add_argument(
        "--generator", type=Path, required=True, help="generator file (.pkl, .pt or .safetensors)"
    )
    p.add_argument("--out", type=Path, required=True, help="encoder .safetensors file to write")
    p.add_argument(
        "--steps", type=int, required=True, help="optimiser steps in total (resumed steps count)"
    )
    p.add_argument(
        "--batch-size", type=int, default=8, help="pairs per step (default: %(default)s)"
    )
    p.add_argument(
        "--perceptual",
        choices=_PERCEPTUAL,
        default="lpips-alex",
        help="image perceptual term; lpips-random has a random backbone (tests/demo only, not a "
        "perceptual metric); none = L1 only (default: %(default)s)",
    )
    p.add_argument(
        "--weights-dir", type=Path, help="folder holding the LPIPS backbone's torchvision weights"
    )
    p.add_argument(
        "--depth",
        type=int,
        choices=(18, 34, 50),
        default=34,
        help="ResNet depth (default: %(default)s)",
    )
    p.add_argument(
        "--resolution",
        type=int,
        help="encoder input size (default: min(generator resolution, 256))",
    )
    p.add_argument("--width", type=int, default=64, help="ResNet stem width (default: %(default)s)")
    p.add_argument(
        "--norm",
        choices=("batch", "group"),
        default="batch",
        help="normalisation (default: %(default)s)",
    )
    p.add_argument(
        "--lr", type=float, default=1e-4, help="Adam learning rate (default: %(default)s)"
    )
    p.add_argument(
        "--lambda-latent",
        type=float,
        default=1.0,
        help="weight λ of the latent ℓ2 term (default: %(default)s)",
    )
    p.add_argument(
        "--truncation-psi",
        type=float,
        default=1.0,
        help="ψ of the sampled w (default: %(default)s)",
    )
    p.add_argument(
        "--style-mix-prob",
        type=float,
        default=0.9,
        help="share of style-mixed samples (default: %(default)s)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the sampled pairs and masks (default: %(default)s)",
    )
    p.add_argument("--checkpoint", type=Path, help="training checkpoint file (default: OUT.ckpt)")
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=1000,
        help="steps between checkpoints (default: %(default)s)",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue the training checkpoint if it exists"
    )
    p.add_argument(
        "--log-every",
        type=int,
        default=100,
        help="steps per logged loss average (default: %(default)s)",
    )
    p.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:1 or auto (default: %(default)s)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    from tasks.pipeline_config import EncoderTrainingConfig
    from tasks.train_encoder import run_train_encoder

    # training progress (one line per --log-every window) is shown even without -v
    logging.getLogger("ganviews.inversion.encoder").setLevel(
        min(logging.getLogger().level, logging.INFO)
    )
    settings = EncoderTrainingConfig(
        enabled=True, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        lambda_latent=args.lambda_latent, perceptual=args.perceptual, depth=args.depth,
        resolution=args.resolution, width=args.width, norm=args.norm,
        truncation_psi=args.truncation_psi, style_mix_prob=args.style_mix_prob,
        checkpoint_every=args.checkpoint_every, log_every=args.log_every,
    )  # fmt: skip
    result = run_train_encoder(
        args.generator, args.out, settings, device=args.device, seed=args.seed,
        lpips_weights_dir=args.weights_dir, checkpoint=args.checkpoint, resume=args.resume,
    )  # fmt: skip
    last = result.history[-1] if result.history else {}
    losses = ", ".join(f"{k} {v:.4g}" for k, v in last.items() if k != "step")
    print(
        f"encoder: {args.out} (sha256 {result.encoder.sha256[:12]}…), {result.steps} steps, {result.seconds:.1f} s"
    )
    if losses:
        print(f"last window (step {last['step']}): {losses}")
    return 0
