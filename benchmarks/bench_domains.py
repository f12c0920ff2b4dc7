"""Time per 1,000 images for the paper's domain configs, from unit costs measured at full size.

For each config (default configs/celebahq.yaml, cars.yaml, cats.yaml) this builds randomly
initialised networks of the real sizes — config-f StyleGAN2 at the config's resolution, the
RGBM ResNet-34 encoder at 256 px, LPIPS with a random AlexNet trunk ("lpips-random", the same
cost as the ImageNet one) and each configured classifier's architecture — and measures on the
chosen device:

* ``t_eval``: one evaluation of the inversion objective per image — loss and gradient of
  masked L1 + LPIPS + encoder consistency, exactly the call L-BFGS makes inside ``invert()``
  (``ganviews.inversion.invert._Objective``), under the config's numerics policy
  (``invert.precision``), batch ``--batch``;
* ``t_render``: one ``G.synthesis`` per image (no grad), batch ``--batch``;
* ``t_cls``: one classifier forward per image (its own preprocessing included).

Costs do not depend on weight values, so random weights stand in for trained ones. The work
per image follows from the config (docs/quickstart.md states the formula):

    invert  = steps · evals_per_step · t_eval
    render  = (1 + Σ_gan (N − 1)) · t_render
    classify= Σ_classifiers t_cls · (2 + (#gan + #combined + #image groups) · (N − 1))

``evals_per_step`` defaults to 1.04, measured over 100-step runs in benchmarks/bench_invert.py
(docs/inversion.md). FLOP counts (torch's FlopCounterMode) are printed next to the times so
CPU measurements can be rescaled to another device.

    python benchmarks/bench_domains.py --quick                # cats only, 1 round
    python benchmarks/bench_domains.py --device cuda --batch 16
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ganviews.classifiers.model import build_classifier  # noqa: E402
from ganviews.core.runtime import NumericsPolicy, resolve_device, set_numerics_policy  # noqa: E402
from ganviews.inversion.encoder import Encoder  # noqa: E402
from ganviews.inversion.invert import _Objective  # noqa: E402  (the objective invert() minimises)
from ganviews.inversion.perceptual import load_perceptual  # noqa: E402
from ganviews.stylegan.generator import Generator, GeneratorConfig  # noqa: E402
from ganviews.views.render import view_groups  # noqa: E402
from tasks.pipeline_config import load_pipeline_config  # noqa: E402

# the released classifiers' architecture and preprocessing per config (docs/classifiers.md)
CLASSIFIERS = {
    "celebahq.yaml": {"arch": "celebahq_attribute", "num_outputs": 1, "preprocessing": "celebahq"},
    "cars.yaml": {"arch": "resnet18", "num_outputs": 3, "preprocessing": "car"},
    "cats.yaml": {"arch": "resnet18", "num_outputs": 12, "preprocessing": "cat"},
}


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, rounds: int) -> float:
    """Best wall time of ``rounds`` calls after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(rounds):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def work_per_image(cfg) -> tuple[int, int]:
    """(renders, classifier calls per classifier) per image for the config's views."""
    n, p = cfg.views.n_views, cfg.views.num_perturbed
    groups = view_groups(cfg.views)
    gan = sum(1 for g in groups if g.kind == "gan")
    combined = sum(1 for g in groups if g.kind == "combined")
    image = sum(1 for g in groups if g.kind == "image")
    # view 0 (x) and view 1 (G(w*)) once; combined groups jitter the P perturbed renders
    return 1 + gan * p, 2 + (gan + combined) * p + image * (n - 1)


def bench_config(path: Path, args, device: torch.device) -> dict:
    cfg = load_pipeline_config(path)
    R = cfg.align.resolution
    gen = torch.Generator().manual_seed(0)
    G = Generator(GeneratorConfig(img_resolution=R)).eval().requires_grad_(False).to(device)
    E = Encoder.for_generator(
        G, depth=cfg.encoder_training.depth, resolution=cfg.encoder_training.resolution
    )
    E = E.eval().requires_grad_(False).to(device)
    P = load_perceptual("lpips-random", device=device)
    C = build_classifier(CLASSIFIERS[path.name]).eval().requires_grad_(False).to(device)
    B = args.batch
    images = (torch.rand(B, 3, R, R, generator=gen) * 2 - 1).to(device)  # [B, 3, R, R]
    masks = torch.ones(B, 1, R, R, device=device)  # [B, 1, R, R]

    res = {}
    objective = _Objective(
        G,
        images,
        masks,
        perceptual=P,
        encoder=E,
        latent_mode=cfg.invert.latent_term,
        w_init=None,
        cfg=cfg.invert,
        policy=NumericsPolicy(cfg.invert.precision),
        chunk=B,
    )
    x0 = objective.enc_ref.reshape(B, -1)  # [B, num_ws·w_dim]: what L-BFGS hands the objective
    rows = torch.arange(B, device=device)
    t_eval = timed(lambda: objective(x0, rows), device, args.rounds) / B  # loss + grad, per image

    with torch.no_grad():
        ws = G.mapping(
            torch.randn(B, G.z_dim, generator=gen).to(device), None
        )  # [B, num_ws, w_dim]
        t_render = timed(lambda: G.synthesis(ws, noise_mode="const"), device, args.rounds) / B
        t_cls = timed(lambda: C(images), device, args.rounds) / B

    with contextlib.suppress(Exception):  # FLOP counts are informative only
        one_w = ws[:1].clone().requires_grad_(True)
        res["flop_eval"] = flops(lambda: G.synthesis(one_w, noise_mode="const").sum().backward())
        with torch.no_grad():
            res["flop_render"] = flops(lambda: G.synthesis(ws[:1], noise_mode="const"))
            res["flop_cls"] = flops(lambda: C(images[:1]))

    renders, calls = work_per_image(cfg)
    n_cls = len(cfg.models.classifiers)
    per_image = {
        "invert": cfg.invert.steps * args.evals_per_step * t_eval,
        "render": renders * t_render,
        "classify": n_cls * calls * t_cls,
    }
    return {
        "cfg": cfg,
        "R": R,
        "t_eval": t_eval,
        "t_render": t_render,
        "t_cls": t_cls,
        "renders": renders,
        "calls": calls,
        "n_cls": n_cls,
        "per_image": per_image,
        **res,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "configs",
        nargs="*",
        type=Path,
        default=[ROOT / "configs" / n for n in ("cats.yaml", "cars.yaml", "celebahq.yaml")],
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--batch", type=int, default=None, help="images per batch (default 1 on CPU, 16 on CUDA)"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="timed rounds per unit after a warm-up (best kept)"
    )
    parser.add_argument(
        "--evals-per-step", type=float, default=1.04, help="objective evaluations per L-BFGS step"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--quick", action="store_true", help="smoke run: cats only, 1 round")
    args = parser.parse_args()
    if args.quick:
        args.configs, args.rounds = [ROOT / "configs" / "cats.yaml"], 1
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    set_numerics_policy(device)
    args.batch = args.batch or (16 if device.type == "cuda" else 1)
    print(
        f"machine: {machine(device)}; torch {torch.__version__}, {torch.get_num_threads()} threads; float32; "
        f"batch {args.batch}, best of {args.rounds} rounds, {args.evals_per_step} evals/step; random weights"
    )
    print(
        "| config | R | t_eval s/img | t_render s/img | t_cls s/img | renders/img | cls calls/img × classifiers "
        "| invert h/1k | render h/1k | classify h/1k | total h/1k |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for path in args.configs:
        r = bench_config(Path(path), args, device)
        p = {k: v * 1000 / 3600 for k, v in r["per_image"].items()}
        print(
            f"| {Path(path).name} | {r['R']} | {r['t_eval']:.3f} | {r['t_render']:.3f} | {r['t_cls']:.4f} | "
            f"{r['renders']} | {r['calls']} × {r['n_cls']} | {p['invert']:.1f} | {p['render']:.1f} | "
            f"{p['classify']:.1f} | {sum(p.values()):.1f} |",
            flush=True,
        )
        if "flop_eval" in r:
            print(
                f"  FLOPs per image: G fwd+bwd {r['flop_eval'] / 1e9:.0f} G, render {r['flop_render'] / 1e9:.0f} G, "
                f"classifier {r['flop_cls'] / 1e9:.1f} G",
                flush=True,
            )


if __name__ == "__main__":
    main()
