"""Inversion speed work (issue 15): old path vs new, numerics policies, continuous batching.

All in one process, same generator, targets, start and objective:

* ``objective``: one evaluation (loss + gradient) per image, old objective (LPIPS recomputes
  the target's features every call) vs new (cached target features);
* ``shard``: a shard of ``--images`` images × ``--steps`` L-BFGS steps through the old path
  (the code of ``--old-commit``, loaded from git: boolean-indexed L-BFGS, exact fp32, batches
  of ``--batch``) vs the new default path, with both final-loss distributions;
* ``numerics``: the new path under ``exact`` vs ``bf16`` (and ``tf32`` on CUDA): final loss,
  PSNR and LPIPS, all measured in exact fp32;
* ``continuous``: a shard of varied difficulty (generated targets, targets with added
  noise, random-noise images) through fixed batches (one ``invert`` call per ``--batch``
  images) vs continuous batching (one call, ``--batch`` slots): evaluations and wall time;
* ``progress``: the opt-in stopping rule at several tolerances: evaluations saved against
  final loss / PSNR (the curve behind the docs' table).

Networks are the shared 32 px fixture generator, a random ResNet encoder and "lpips-random"
(cost does not depend on weight values). Defaults keep a 2-core CPU run to minutes.

    python benchmarks/bench_speed.py --parts objective,shard --steps 500
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _machine import device_name  # noqa: E402

from ganviews.inversion.encoder import Encoder  # noqa: E402
from ganviews.inversion.invert import invert  # noqa: E402
from ganviews.inversion.perceptual import load_perceptual  # noqa: E402
from ganviews.stylegan.generator import load_generator  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO.parent / "shared" / "fixtures" / "stylegan2" / "nvidia-ada-res32.pkl"
OLD_FILES = {  # module name in the old package → path at the old commit
    "runtime": "ganviews/core/runtime.py",
    "lbfgs": "ganviews/inversion/lbfgs.py",
    "invert": "ganviews/inversion/invert.py",
}


def load_old_invert(commit: str):
    """``invert`` as it was at ``commit`` (its L-BFGS and runtime too), as module ``_old``."""
    folder = Path(tempfile.mkdtemp(prefix="ganviews-old-")) / "_old"
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    for name, path in OLD_FILES.items():
        text = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{commit}:{path}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        text = text.replace("ganviews.inversion.lbfgs", "_old.lbfgs")
        text = text.replace("ganviews.core.runtime", "_old.runtime")
        (folder / f"{name}.py").write_text(text)
    sys.path.insert(0, str(folder.parent))
    spec = importlib.util.spec_from_file_location("_old.invert", folder / "invert.py")
    importlib.import_module("_old")
    module = importlib.util.module_from_spec(spec)
    sys.modules["_old.invert"] = module
    spec.loader.exec_module(module)
    return module


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def quantiles(t: torch.Tensor) -> str:
    q = torch.quantile(t.double().cpu(), torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64))
    return "/".join(f"{v:.4f}" for v in q.tolist())


def targets(G, n: int, seed: int, kind: str = "generated") -> torch.Tensor:
    """``n`` targets in [-1, 1]: G's own images, noisy ones, or uniform noise (hardest)."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, G.z_dim, generator=gen)
    with torch.no_grad():
        x = G.synthesis(G.mapping(z.to(G.mean_w.device), truncation_psi=0.7)).clamp(-1, 1)
    noise = (torch.rand(x.shape, generator=gen) * 2 - 1).to(x.device)
    if kind == "noisy":
        x = (0.6 * x + 0.4 * noise).clamp(-1, 1)
    elif kind == "noise":
        x = noise
    return x


def part_objective(ctx, old) -> None:
    from ganviews.core.runtime import NumericsPolicy
    from ganviews.inversion.invert import InversionConfig, _Objective

    G, E, P, x = ctx["G"], ctx["E"], ctx["P"], ctx["x"][: ctx["batch"]]
    n, device = x.shape[0], x.device
    masks = torch.ones(n, 1, G.resolution, G.resolution, device=device)
    cfg = InversionConfig()
    with torch.no_grad():
        enc_ref = E(x, masks)
    rows = torch.arange(n, device=device)
    x0 = enc_ref.reshape(n, -1)
    old_obj = old._Objective(
        G,
        x,
        masks,
        perceptual=P,
        encoder=E,
        latent_mode="encoder_consistency",
        w_ref=enc_ref,
        enc_ref=enc_ref,
        cfg=old.InversionConfig(),
    )
    new_obj = _Objective(
        G,
        x,
        masks,
        perceptual=P,
        encoder=E,
        latent_mode="encoder_consistency",
        w_init=None,
        cfg=cfg,
        policy=NumericsPolicy(cfg.precision),
        chunk=n,
    )
    reps = ctx["reps"]
    res = {}
    for name, obj in (("old", old_obj), ("new", new_obj)):
        obj(x0, rows)  # warm-up
        (loss, _), sec = timed(lambda obj=obj: [obj(x0, rows) for _ in range(reps)][-1], device)
        res[name] = (loss, sec / reps / n)
    same = torch.equal(res["old"][0], res["new"][0])
    print(
        f"\n== objective (batch {n}, loss + gradient): old {res['old'][1] * 1e3:.2f} ms/image, "
        f"new {res['new'][1] * 1e3:.2f} ms/image → {res['old'][1] / res['new'][1]:.2f}x; "
        f"losses bit-identical: {same}"
    )


def part_shard(ctx, old) -> None:
    G, E, P, x = ctx["G"], ctx["E"], ctx["P"], ctx["x"]
    kw = dict(encoder=E, perceptual=P, steps=ctx["steps"], batch_size=ctx["batch"])
    ro, t_old = timed(lambda: old.invert(G, x, **kw), x.device)
    rn, t_new = timed(lambda: invert(G, x, **kw), x.device)
    print(f"\n== shard: {x.shape[0]} images × {ctx['steps']} steps, batch {ctx['batch']}")
    print(
        f"{'path':>5} {'sec':>8} {'img/s':>7} {'evals/img':>9} {'loss p10/p50/p90':>22}  PSNR p50"
    )
    for name, r, sec in (("old", ro, t_old), ("new", rn, t_new)):
        print(
            f"{name:>5} {sec:>8.1f} {x.shape[0] / sec:>7.3f} "
            f"{float(r.evaluations.float().mean()):>9.1f} {quantiles(r.loss):>22}  "
            f"{float(r.psnr.median()):.2f}"
        )
    diff = (ro.loss - rn.loss).abs().max()
    print(f"new/old speed: {t_old / t_new:.2f}x; max |Δ final loss| per image {float(diff):.2e}")


def part_numerics(ctx, _old) -> None:
    G, E, P, x = ctx["G"], ctx["E"], ctx["P"], ctx["x"]
    kinds = ["exact", "bf16"] + (["tf32"] if x.is_cuda else [])
    print(f"\n== numerics: {x.shape[0]} images × {ctx['steps']} steps (metrics in exact fp32)")
    print(
        f"{'policy':>6} {'sec':>8} {'loss p10/p50/p90':>22} {'PSNR p10/p50/p90':>24} {'LPIPS p50':>9}"
    )
    base = None
    for kind in kinds:
        r, sec = timed(
            lambda kind=kind: invert(
                G,
                x,
                encoder=E,
                perceptual=P,
                steps=ctx["steps"],
                batch_size=ctx["batch"],
                precision=kind,
            ),
            x.device,
        )
        base = base or r
        rel = float(((r.loss - base.loss) / base.loss).mean())
        print(
            f"{kind:>6} {sec:>8.1f} {quantiles(r.loss):>22} {quantiles(r.psnr):>24} "
            f"{float(r.lpips.median()):>9.4f}  mean rel. loss vs exact {rel:+.2%}"
        )


def part_continuous(ctx, _old) -> None:
    G, E, P = ctx["G"], ctx["E"], ctx["P"]
    n = ctx["shard"]
    x = torch.cat(
        [
            targets(G, n - 2 * (n // 3), 11),
            targets(G, n // 3, 12, "noisy"),
            targets(G, n // 3, 13, "noise"),
        ]
    )
    x = x[torch.randperm(n, generator=torch.Generator().manual_seed(5))]
    kw = dict(encoder=E, perceptual=P, steps=ctx["steps"], tolerance_change=1e-4)
    b = ctx["batch"]

    def fixed():
        return [invert(G, x[i : i + b], batch_size=b, **kw) for i in range(0, n, b)]

    parts, t_fixed = timed(fixed, x.device)
    cont, t_cont = timed(lambda: invert(G, x, batch_size=b, **kw), x.device)
    ev_fixed = sum(int(p.evaluations.sum()) for p in parts)
    loss_fixed = torch.cat([p.loss for p in parts])
    print(
        f"\n== continuous vs fixed batches: {n} images (⅓ generated, ⅓ noisy, ⅓ noise), "
        f"{ctx['steps']} steps, tolerance_change 1e-4, batch {b}"
    )
    print(f"fixed:      {t_fixed:7.1f} s, {ev_fixed} evaluations, loss {quantiles(loss_fixed)}")
    print(
        f"continuous: {t_cont:7.1f} s, {int(cont.evaluations.sum())} evaluations, "
        f"loss {quantiles(cont.loss)} → {t_fixed / t_cont:.2f}x"
    )


def part_progress(ctx, _old) -> None:
    G, E, P, x = ctx["G"], ctx["E"], ctx["P"], ctx["x"]
    print(f"\n== progress rule: {x.shape[0]} images, ≤ {ctx['steps']} steps, window 50")
    print(f"{'progress_tol':>12} {'evals/img':>9} {'saved':>6} {'loss p50':>9} {'PSNR p50':>9}")
    full = None
    for tol in (0.0, 3e-3, 1e-2, 3e-2):
        r = invert(
            G,
            x,
            encoder=E,
            perceptual=P,
            steps=ctx["steps"],
            batch_size=ctx["batch"],
            progress_tol=tol,
        )
        ev = float(r.evaluations.float().mean())
        full = full or ev
        print(
            f"{tol:>12g} {ev:>9.1f} {1 - ev / full:>6.1%} {float(r.loss.median()):>9.4f} "
            f"{float(r.psnr.median()):>9.2f}"
        )


PARTS = {
    "objective": part_objective,
    "shard": part_shard,
    "numerics": part_numerics,
    "continuous": part_continuous,
    "progress": part_progress,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"any of {', '.join(PARTS)}")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--images", type=int, default=16, help="shard / numerics / progress")
    parser.add_argument("--shard", type=int, default=64, help="images of the continuous part")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--reps", type=int, default=5, help="objective evaluations timed")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--old-commit", default="0a71ab8", help="the old path's git commit")
    args = parser.parse_args(argv)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    torch.set_num_threads(args.threads)
    G = load_generator(FIXTURE, device=device)
    torch.manual_seed(1)
    E = Encoder.for_generator(G, depth=34).to(device).eval().requires_grad_(False)
    P = load_perceptual("lpips-random", device=device)
    print(
        f"bench_speed: {device_name(device)} ({torch.get_num_threads()} torch threads); torch "
        f"{torch.__version__}; 32 px fixture G, ResNet-34 encoder, lpips-random; old path = "
        f"{args.old_commit}; steps {args.steps}, images {args.images}, batch {args.batch}"
    )
    try:
        old = load_old_invert(args.old_commit)
    except (OSError, subprocess.CalledProcessError) as exc:  # a copy without git history
        print(f"old path unavailable ({exc}); parts objective and shard are skipped")
        old = None
    ctx = dict(
        G=G,
        E=E,
        P=P,
        x=targets(G, args.images, 0),
        steps=args.steps,
        batch=args.batch,
        reps=args.reps,
        shard=args.shard,
    )
    for name in args.parts.split(","):
        if old is None and name in ("objective", "shard"):
            continue
        PARTS[name](ctx, old)
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
