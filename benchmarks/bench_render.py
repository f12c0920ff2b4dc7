"""Render path, old against new in one process: classified views per second and model loading.

The old path is ``ganviews/views/render.py`` + ``perturb.py`` as they were at ``--old-commit``
(before issue 15 item 7: per group × target × classifier index uploads into per-group tables,
list indexing, one preprocessing per classifier), loaded from git next to the current
modules; both run the same work on the same inputs, in alternating rounds (best of each
kept), so drifting machine load affects both alike. Their logits are compared (CPU: bit for
bit). A second part times what the worker-level model cache saves per shard: loading the
generator and the classifiers cold (the old path's cost per shard) against a cache hit.

    python benchmarks/bench_render.py                   # 32 px fixture G, 1 and 8 classifiers
    python benchmarks/bench_render.py --classifiers 1,40 --device cuda
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import device_name  # noqa: E402

from ganviews.classifiers.checkpoints import save_classifier  # noqa: E402
from ganviews.classifiers.model import build_classifier  # noqa: E402
from ganviews.core.model_cache import MODELS  # noqa: E402
from ganviews.core.runtime import resolve_device, set_numerics_policy  # noqa: E402
from ganviews.stylegan.generator import load_generator  # noqa: E402
from ganviews.views.render import (  # noqa: E402
    GanGroup,
    ViewConfig,
    count_views,
    render_and_classify,
)
from tasks.render import load_models  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO.parent / "shared" / "fixtures" / "stylegan2" / "nvidia-ada-res32.pkl"


def load_old_render(commit: str):
    """``render_and_classify`` as it was at ``commit`` (with its perturb module), as ``_oldr``."""
    folder = Path(tempfile.mkdtemp(prefix="ganviews-old-render-")) / "_oldr"
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    for name in ("render", "perturb"):
        text = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{commit}:ganviews/views/{name}.py"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        (folder / f"{name}.py").write_text(text.replace("ganviews.views.perturb", "_oldr.perturb"))
    sys.path.insert(0, str(folder.parent))
    importlib.import_module("_oldr")
    modules = {}
    for name in ("perturb", "render"):
        spec = importlib.util.spec_from_file_location(f"_oldr.{name}", folder / f"{name}.py")
        modules[name] = importlib.util.module_from_spec(spec)
        sys.modules[f"_oldr.{name}"] = modules[name]
        spec.loader.exec_module(modules[name])
    return modules["render"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def classifiers_for(k: int, resize: int, width: int, device) -> dict[str, torch.nn.Module]:
    """``k`` attribute-style classifiers: one preprocessing, their own weights."""
    torch.manual_seed(0)
    cfg = {"arch": "smallcnn", "num_outputs": 1, "width": width,
           "preprocessing": {"resize": resize, "interpolation": "area", "antialias": False}}  # fmt: skip
    return {
        f"attr{i:02d}": build_classifier({**cfg, "task": f"attr{i:02d}"})
        .to(device)
        .eval()
        .requires_grad_(False)
        for i in range(k)
    }


def part_fused(args, device, G, old) -> None:
    gen = torch.Generator().manual_seed(1)
    w = G.mapping(torch.randn(args.images, G.z_dim, generator=gen).to(device)).cpu()
    u8 = torch.randint(0, 256, (args.images, 3, G.resolution, G.resolution), generator=gen,
                       dtype=torch.uint8)  # fmt: skip
    cfg = ViewConfig(
        n_views=args.n_views,
        gan=(
            GanGroup("isotropic", "fine", (0.1, 0.2), combined=True),
            GanGroup("stylemix", "fine"),
        ),
        image_methods=("crop",),
        batch_size=args.batch,
        combined_renders=4,
    )
    ids = [f"im{i}" for i in range(args.images)]
    print(
        f"fused pass: {args.images} images, n_views {args.n_views}, groups isotropic_fine "
        f"(0.1, 0.2) + combined (4 renders) + stylemix_fine + crop, batch {args.batch}; smallcnn "
        f"width {args.width} classifiers with one preprocessing (area resize to {args.resize})"
    )
    print(f"{'classifiers':>11s} {'views':>6s} {'old s':>8s} {'new s':>8s} {'old v/s':>8s} "
          f"{'new v/s':>8s} {'new/old':>8s} {'max |Δ|':>9s}")  # fmt: skip
    for k in [int(x) for x in args.classifiers.split(",")]:
        cs = classifiers_for(k, args.resize, args.width, device)
        runs = {
            "old": lambda cs=cs: old.render_and_classify(
                G, cs, w, u8.float() / 127.5 - 1.0, image_ids=ids, config=cfg, device=device,
                seed=0,
            ),
            "new": lambda cs=cs: render_and_classify(
                G, cs, w, u8, image_ids=ids, config=cfg, device=device, seed=0
            ),
        }  # fmt: skip
        best, out = {}, {}
        for name, fn in runs.items():  # warm-up
            out[name] = fn()
        for _ in range(args.rounds):
            for name, fn in runs.items():
                sync(device)
                t0 = time.perf_counter()
                fn()
                sync(device)
                best[name] = min(best.get(name, float("inf")), time.perf_counter() - t0)
        delta = max(
            float(np.abs(a.logits[n] - b.logits[n]).max())
            for a, b in zip(out["old"], out["new"], strict=True)
            for n in cs
        )
        views = count_views(cfg, args.images)  # images through every classifier
        print(
            f"{k:>11d} {views:>6d} {best['old']:8.3f} {best['new']:8.3f} "
            f"{views / best['old']:8.1f} {views / best['new']:8.1f} "
            f"{best['old'] / best['new']:7.2f}× {delta:9.2e}"
        )
        sys.stdout.flush()


def part_loading(args, device) -> None:
    k = max(int(x) for x in args.classifiers.split(","))
    folder = Path(tempfile.mkdtemp(prefix="ganviews-bench-models-"))
    paths = {
        name: save_classifier(C.cpu(), folder / f"{name}.safetensors")
        for name, C in classifiers_for(k, args.resize, args.width, "cpu").items()
    }
    MODELS.clear()
    t0 = time.perf_counter()
    load_models(FIXTURE, paths, device=device)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(10):
        load_models(FIXTURE, paths, device=device)
    warm = (time.perf_counter() - t0) / 10
    print(
        f"model loading per shard, G + {k} classifiers: cold {cold:.3f} s (the old path, every "
        f"shard), cached {warm * 1e3:.2f} ms (the new path after the first shard)"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--classifiers", default="1,8", help="classifier counts to time")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--n-views", type=int, default=8)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--resize", type=int, default=64, help="classifier input side")
    p.add_argument("--width", type=int, default=8, help="smallcnn width")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--old-commit", default="c5d7003", help="the old path's git commit")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    set_numerics_policy(device)
    torch.set_num_threads(args.threads)
    G = load_generator(FIXTURE, device=device)
    print(
        f"bench_render: {device_name(device)} ({torch.get_num_threads()} torch threads); torch "
        f"{torch.__version__}; 32 px fixture G; old path = {args.old_commit}; rounds {args.rounds}"
    )
    try:
        old = load_old_render(args.old_commit)
    except (OSError, subprocess.CalledProcessError) as exc:  # a copy without git history
        print(f"old path unavailable ({exc}); the fused comparison is skipped")
    else:
        part_fused(args, device, G, old)
    part_loading(args, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
