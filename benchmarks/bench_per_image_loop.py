"""ganviews' batched inversion against the authors' per-image loop, and the fused generator.

Part ``loop``: the same images, generator, targets, start points and objective, inverted

* the authors' way — one image at a time, their ``invert_lbfgs`` loop driving their
  ``FullBatchLBFGS`` (chail/gan-ensembling ``utils/inversions.py``, ``utils/LBFGS.py``),
  re-implemented here from its semantics: lr 1, history 10, weak-Wolfe bracketing line
  search (c1 1e-4, c2 0.9, ×2 extrapolation, at most 10 trial steps, quadratic
  interpolation from the bracket's ends clipped to [α + 0.2(β − α), (β − α)/2]), a backward
  pass only for trials that pass Armijo, curvature pairs kept when yᵀs > 0.01·sᵀBs with
  Bs = −t·g, H₀ = yᵀs/yᵀy, and on a failed line search: back to x, no curvature update, the
  history kept (the next step retries the same direction). Step 0 evaluates the start;
  then ``--steps`` optimiser steps;
* by ganviews: ``invert(..., batch_size=--batch)``, each image with its own L-BFGS state.

Both use ganviews' objective (masked L1 + masked LPIPS + encoder consistency, LPIPS target
features cached — the authors recompute them every evaluation, so their loop is, if
anything, favoured), exact fp32, one torch thread. Printed: wall time and ratio, the
final-loss distributions side by side, forward and backward passes per image.

Part ``generator``: forward + backward of the synthesis (batch ``--gen-batch``) at 32 and
64 px, reference kernels vs fused vs fused + channels_last (vs compiled with ``--compile``:
first call = compile time, then steady state), best of alternating rounds.

    python benchmarks/bench_per_image_loop.py                       # 16 images × 100 steps
    python benchmarks/bench_per_image_loop.py --steps 500           # the paper's setting
    python benchmarks/bench_per_image_loop.py --parts generator --compile
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _machine import device_name  # noqa: E402  (benchmarks/ is the script's folder)
from bench_invert import build_generator  # noqa: E402

from ganviews.core.runtime import NumericsPolicy  # noqa: E402
from ganviews.inversion.encoder import Encoder  # noqa: E402
from ganviews.inversion.invert import InversionConfig, _Objective, invert  # noqa: E402
from ganviews.inversion.perceptual import load_perceptual  # noqa: E402
from ganviews.stylegan.fused import SynthesisOptions  # noqa: E402
from ganviews.stylegan.generator import Generator, GeneratorConfig  # noqa: E402

C1, C2, ETA, MAX_LS, HISTORY, CURV_EPS = 1e-4, 0.9, 2.0, 10, 10, 1e-2  # their defaults


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def quadratic_min(a, fa, ga, b, fb) -> float:
    """Minimiser of the quadratic through (a, fa) with slope ga and (b, fb), kept in the
    interval [min(a, b), max(a, b)] (their ``polyinterp`` for two points, one slope)."""
    if a == 0:
        t = -ga * b**2 / (2 * (fb - fa - ga * b))
    else:
        curv = -(fa - fb - ga * (a - b)) / (a - b) ** 2
        t = a - ga / (2 * curv)
    return float(np.clip(t, min(a, b), max(a, b)))


class PerImageLoop:
    """One image's full-batch L-BFGS with the authors' loop semantics (see module doc)."""

    def __init__(self, closure, x0: torch.Tensor):
        self.closure = closure  # x [D] → loss (0-dim, with graph), grad function
        self.x = x0.clone()
        self.s: list[torch.Tensor] = []
        self.y: list[torch.Tensor] = []
        self.h_diag = 1.0
        self.fail = True  # their state starts "failed": no curvature update at step 1
        self.d = self.t = self.prev_grad = self.bs = None
        self.forward = self.backward = 0
        self.loss, self.grad = self._eval_grad()

    def _eval(self):
        self.forward += 1
        return self.closure(self.x)

    def _eval_grad(self):
        loss, grad_fn = self._eval()
        self.backward += 1
        return loss.detach(), grad_fn()

    def _direction(self, grad: torch.Tensor) -> torch.Tensor:
        q = -grad
        rho = [1.0 / float(y.dot(s)) for s, y in zip(self.s, self.y, strict=True)]
        alpha = [0.0] * len(self.s)
        for i in range(len(self.s) - 1, -1, -1):
            alpha[i] = float(self.s[i].dot(q)) * rho[i]
            q = q - alpha[i] * self.y[i]
        r = q * self.h_diag
        for i in range(len(self.s)):
            beta = float(self.y[i].dot(r)) * rho[i]
            r = r + (alpha[i] - beta) * self.s[i]
        return r

    def _curvature_update(self, grad: torch.Tensor) -> None:
        if self.fail:
            return
        y = grad - self.prev_grad
        s = self.d * self.t
        ys, sbs = float(y.dot(s)), float(s.dot(self.bs))
        if ys > CURV_EPS * sbs:
            if len(self.s) == HISTORY:
                self.s.pop(0)
                self.y.pop(0)
            self.s.append(s)
            self.y.append(y)
            self.h_diag = ys / float(y.dot(y))

    def step(self) -> None:
        grad = self.grad
        if self.d is not None:
            self._curvature_update(grad)
        d = self._direction(grad)
        self.prev_grad = grad.clone()
        f_k, gtd = self.loss, grad.dot(d)
        t, t_prev, alpha, beta = 1.0, 0.0, 0.0, float("inf")
        f_a, g_a, f_b = f_k, gtd, None
        fail, ls_step = False, 0
        self.x = self.x + t * d
        loss, grad_fn = self._eval()
        while True:
            if ls_step >= MAX_LS:  # give up: back to x, re-evaluate there
                self.x = self.x - t * d
                t = 0.0
                loss, new_grad = self._eval_grad()
                fail = True
                break
            if loss > f_k + C1 * t * gtd:  # Armijo fails: upper end of the bracket
                beta, t_prev, f_b = t, t, loss.detach()
            else:
                self.backward += 1
                new_grad = grad_fn()
                gtd_new = new_grad.dot(d)
                if gtd_new < C2 * gtd:  # curvature fails: lower end
                    alpha, t_prev, f_a, g_a = t, t, loss.detach(), gtd_new
                else:
                    break
            if f_b is None or not bool(torch.isfinite(f_b)):
                t = ETA * t if beta == float("inf") else (alpha + beta) / 2.0
            else:
                t = quadratic_min(alpha, float(f_a), float(g_a), beta, float(f_b))
                if t < alpha + 0.2 * (beta - alpha):
                    t = alpha + 0.2 * (beta - alpha)
                elif t > (beta - alpha) / 2.0:
                    t = (beta - alpha) / 2.0
                if t <= 0:
                    t = (beta - alpha) / 2.0
            self.x = self.x + (t - t_prev) * d  # in place from the last trial, as theirs
            loss, grad_fn = self._eval()
            ls_step += 1
        self.bs = grad * (-t)
        self.d, self.t, self.fail = d, t, fail
        self.loss, self.grad = loss.detach(), new_grad


def per_image_loop(objective: _Objective, x0: torch.Tensor, steps: int):
    """Invert each row of ``x0`` [N, D] alone; final x [N, D], forward and backward counts."""
    xs, fwd, bwd = [], [], []
    for i in range(x0.shape[0]):
        index = torch.tensor([i], device=x0.device)

        def closure(x, index=index):
            ws = x.detach().view(1, *objective.shape).requires_grad_(True)
            with torch.enable_grad():
                parts, _ = objective.terms(ws, index)
                loss = (parts["l1"] + parts["lpips"] + parts["latent"])[0]

            def grad_fn():
                (g,) = torch.autograd.grad(loss, ws)
                return g.reshape(-1)

            return loss, grad_fn

        run = PerImageLoop(closure, x0[i])
        for _ in range(steps):
            run.step()
        xs.append(run.x)
        fwd.append(run.forward)
        bwd.append(run.backward)
    return torch.stack(xs), np.array(fwd), np.array(bwd)


def quantiles(values: torch.Tensor) -> str:
    q = np.quantile(values.double().cpu().numpy(), [0.1, 0.5, 0.9])
    return "/".join(f"{v:.4f}" for v in q)


def part_loop(args, device) -> None:
    G, label = build_generator(args.resolution, device)
    torch.manual_seed(1)
    E = Encoder.for_generator(G, depth=34).to(device).eval().requires_grad_(False)
    P = load_perceptual("lpips-random", device=device)
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(args.images, G.z_dim, generator=gen).to(device)
    with torch.no_grad():
        x = G.synthesis(G.mapping(z, truncation_psi=0.7)).clamp(-1, 1)  # [N, 3, R, R]
    masks = torch.ones(args.images, 1, G.resolution, G.resolution, device=device)
    cfg = InversionConfig(steps=args.steps)
    objective = _Objective(
        G,
        x,
        masks,
        perceptual=P,
        encoder=E,
        latent_mode="encoder_consistency",
        w_init=None,
        cfg=cfg,
        policy=NumericsPolicy("exact"),
        chunk=args.images,
    )
    x0 = objective.w_init.reshape(args.images, -1)
    print(
        f"\n== per-image loop vs batched: {label}, ResNet-34 encoder, lpips-random, "
        f"{args.images} images × {args.steps} steps, batch {args.batch}, exact fp32"
    )
    sync(device)
    t0 = time.perf_counter()
    x_loop, fwd, bwd = per_image_loop(objective, x0, args.steps)
    sync(device)
    t_loop = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = invert(G, x, masks, encoder=E, perceptual=P, steps=args.steps, batch_size=args.batch)
    sync(device)
    t_batch = time.perf_counter() - t0
    rows = torch.arange(args.images, device=device)
    with torch.no_grad():  # both final points measured by the same code, batch of N
        final = {}
        for name, w in (("loop", x_loop), ("batched", res.w.reshape(args.images, -1))):
            parts, img = objective.terms(w.view(-1, *objective.shape), rows)
            final[name] = (parts["l1"] + parts["lpips"] + parts["latent"], img)
    psnr = {
        k: -10 * torch.log10(((v[1].clamp(-1, 1) - x) / 2).square().mean(dim=(1, 2, 3)))
        for k, v in final.items()
    }
    print(
        f"{'path':>24} {'sec':>8} {'s/image':>8} {'fwd/img':>8} {'bwd/img':>8} "
        f"{'final loss p10/p50/p90':>23} {'mean':>7} {'PSNR p50':>8}"
    )
    ev = float(res.evaluations.float().mean())
    for name, sec, f, b in (
        ("authors' per-image loop", t_loop, fwd.mean(), bwd.mean()),
        (f"ganviews batch {args.batch}", t_batch, ev, ev),
    ):
        key = "loop" if name.startswith("authors") else "batched"
        loss = final[key][0]
        print(
            f"{name:>24} {sec:>8.1f} {sec / args.images:>8.2f} {f:>8.1f} {b:>8.1f} "
            f"{quantiles(loss):>23} {float(loss.mean()):>7.4f} {float(psnr[key].median()):>8.2f}"
        )
    rel = (final["batched"][0] - final["loop"][0]) / final["loop"][0]
    print(
        f"wall-time ratio loop / batched: {t_loop / t_batch:.2f}x; per-image final loss, "
        f"batched vs loop: median {float(rel.median()):+.2%}, lower for "
        f"{int((rel < 0).sum())}/{args.images} images"
    )


def fwd_bwd(G, ws, options) -> None:
    w = ws.detach().requires_grad_(True)
    img = G.synthesis(w, options=options)
    torch.autograd.grad(img.square().sum(), w)


def part_generator(args, device) -> None:
    paths = {
        "reference": SynthesisOptions.reference(),
        "fused": SynthesisOptions(),
        "fused+channels_last": SynthesisOptions(memory_format="channels_last"),
    }
    if args.compile:
        paths["fused+compile"] = SynthesisOptions(compile=True)
    print(
        f"\n== generator forward + backward, batch {args.gen_batch}, random config-f "
        f"(w 512, widths min({args.channel_base}/r, {args.channel_max}), conv_clamp 256), "
        f"best of {args.rounds} alternating rounds"
    )
    print(f"{'px':>4} {'path':>20} {'first call s':>12} {'ms/call':>9} {'vs reference':>12}")
    for res in args.gen_resolutions:
        torch.manual_seed(0)
        cfg = GeneratorConfig(
            img_resolution=res,
            channel_base=args.channel_base,
            channel_max=args.channel_max,
            conv_clamp=256,
        )
        G = Generator(cfg).to(device).eval().requires_grad_(False)
        ws = G.mapping(torch.randn(args.gen_batch, G.z_dim, device=device))
        first, best = {}, dict.fromkeys(paths, float("inf"))
        for name, options in paths.items():
            sync(device)
            t0 = time.perf_counter()
            fwd_bwd(G, ws, options)
            sync(device)
            first[name] = time.perf_counter() - t0
        for _ in range(args.rounds):
            for name, options in paths.items():
                sync(device)
                t0 = time.perf_counter()
                for _ in range(args.calls):
                    fwd_bwd(G, ws, options)
                sync(device)
                best[name] = min(best[name], (time.perf_counter() - t0) / args.calls)
        for name in paths:
            print(
                f"{res:>4} {name:>20} {first[name]:>12.2f} {best[name] * 1e3:>9.1f} "
                f"{best['reference'] / best[name]:>11.2f}x"
            )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--parts", default="loop,generator", help="loop, generator")
    p.add_argument("--resolution", type=int, default=32, help="loop: 32 = the shared fixture")
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--gen-resolutions", type=lambda s: [int(v) for v in s.split(",")], default=[32, 64]
    )
    p.add_argument("--gen-batch", type=int, default=16)
    p.add_argument("--channel-base", type=int, default=4096)
    p.add_argument("--channel-max", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--calls", type=int, default=2, help="timed calls per round")
    p.add_argument(
        "--compile", action="store_true", help="also time SynthesisOptions(compile=True)"
    )
    args = p.parse_args(argv)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    torch.set_num_threads(args.threads)
    load = " / ".join(f"{v:.2f}" for v in os.getloadavg())
    print(
        f"bench_per_image_loop: {device_name(device)}, {torch.get_num_threads()} torch thread(s), "
        f"torch {torch.__version__}, load average (1/5/15 min) {load}"
    )
    for part in args.parts.split(","):
        {"loop": part_loop, "generator": part_generator}[part](args, device)
        sys.stdout.flush()
    print(f"load average at the end: {' / '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
