"""``ganviews demo``: the whole pipeline on a bundled real domain, offline, on CPU (docs/demo.md).

    ganviews demo [--out ./demo-out] [--fresh] [--config configs/demo.yaml] [--data-only]

Chai et al. 2021 end to end on scikit-learn's handwritten digits (32 px RGB), with the
project's own StyleGAN2 (``ganviews/assets/demo/generator.safetensors``, trained by
``ganviews train-gan``) and a small CNN trained on the real train split:

1. data — render the digits and write ``OUT/data/manifest.parquet`` (storage.adapters.digits);
2. align (mode none) + invert the val and test images into ``OUT/store`` shard by shard
   (tasks.invert.invert_shard_with; L1 objective, see configs/demo.yaml);
3. PCA statistics of G's w space, then render + classify the GAN views (isotropic, PCA,
   style-mix; coarse and fine) and image views (color, crop) of every inverted image into
   ``OUT/logits`` (tasks.render.render_shard_with);
4. α cross-validation on val, test accuracy, plots and gallery → ``OUT/report/report.md``.

A second run resumes: done images are not inverted again (the store's status), shards whose
logits are recorded as complete for the same generator, classifier, view config and image set
are not rendered again (``OUT/state/render-<shard>.json``); only the report is rebuilt.
``--fresh`` deletes OUT's demo folders first. Stages run in this process, one after another
(no Prefect server needed); timings go to ``OUT/timings.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO_ROOT / "configs" / "demo.yaml"
SECTIONS = ("data", "models", "splits", "limit_per_split", "shard_size", "device", "threads", "seed", "align", "invert", "views",
            "pca_samples", "report")
OWNED_DIRS = ("data", "store", "logits", "report", "state")  # what --fresh removes under OUT


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the whole pipeline on the bundled digits domain (offline, CPU, ≈10 min)",
        description="Digits → align → invert (val, test) → store → views → logits → α-CV → report. "
        "A rerun resumes and skips finished work.",
    )
    p.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder (default: %(default)s)")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="demo YAML (default: configs/demo.yaml)")
    p.add_argument("--fresh", action="store_true", help="delete OUT's demo folders and start over")
    p.add_argument("--data-only", action="store_true", help="only render the digits and write the manifest")
    p.add_argument("--device", help="override the config's device (cpu, cuda, auto)")
    p.add_argument("--check-generator", action="store_true",
                   help="only write OUT/generator_samples.png and OUT/generator_check.json (how the "
                   "real-data classifier labels 2000 samples of the demo generator)")
    p.set_defaults(func=run)


def load_demo_config(path: Path) -> dict:
    """The YAML as a dict, with unknown top-level keys rejected and sections validated."""
    from ganviews.config import load_yaml
    from ganviews.errors import ConfigError

    if not path.is_file():
        raise ConfigError(f"--config: {path} not found")
    data = load_yaml(path)
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; allowed: {list(SECTIONS)}")
    missing = [k for k in ("models", "align", "invert", "views") if k not in data]
    if missing:
        raise ConfigError(f"{path}: missing section(s) {missing}")
    return data


def model_path(value: str | None, what: str) -> Path | None:
    """A model path from the config (relative → repository root); missing file → clear error."""
    from ganviews.errors import ConfigError

    if value is None:
        return None
    path = Path(value)
    path = path if path.is_absolute() else REPO_ROOT / path
    if not path.is_file():
        raise ConfigError(
            f"models.{what}: {path} not found; it ships with the repository (ganviews/assets/demo/) "
            f"or can be rebuilt with the commands in docs/demo.md"
        )
    return path


def prepare_data(out: Path, data_cfg: dict):
    """Render the digits into OUT/data and write OUT/data/manifest.parquet → the manifest."""
    from storage.adapters.digits import build_digits
    from storage.manifest import read_manifest, write_manifest

    root = out / "data"
    frame = build_digits(root, **data_cfg)
    path = root / "manifest.parquet"
    if not path.is_file() or not read_manifest(path).drop(columns=[], errors="ignore").equals(frame):
        write_manifest(frame, path)
    return frame, path


class Stopwatch:
    """Wall time per stage, printed as it goes and saved to OUT/timings.json."""

    def __init__(self, path: Path):
        import time

        self.path, self.times, self._clock = path, {}, time.perf_counter
        self._t0 = self._clock()

    def lap(self, name: str, start: float) -> None:
        seconds = self._clock() - start
        self.times[name] = round(seconds, 2)
        print(f"  {name}: {seconds:.1f} s", flush=True)

    def save(self) -> dict:
        import json

        self.times["total"] = round(self._clock() - self._t0, 2)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.times, indent=2) + "\n")
        return self.times


def invert_stage(out: Path, manifest_path: Path, cfg: dict, *, device, G_path, E_path) -> Path:
    """Create/reopen OUT/store and invert every shard's pending items."""
    from ganviews.cli.invert import open_store, select_splits
    from storage import read_manifest
    from tasks.invert import invert_shard_with, load_inversion_models, resolve_configs

    align_cfg, inv_cfg = resolve_configs(cfg["align"], cfg["invert"])
    manifest = select_splits(read_manifest(manifest_path), ",".join(cfg.get("splits") or ["val", "test"]))
    limit = cfg.get("limit_per_split")
    if limit is not None:  # smoke runs and tests: the first `limit` images of each split
        attrs = dict(manifest.attrs)
        manifest = manifest.groupby("split", sort=False).head(int(limit)).reset_index(drop=True)
        manifest.attrs = attrs
    G, E, P = load_inversion_models(G_path, E_path, inv_cfg, device=device)
    store = open_store(str(out / "store"), manifest, G, E, align_cfg, inv_cfg,
                       shard_size=int(cfg.get("shard_size", 128)), overwrite=False)
    todo = len(store.todo())
    print(f"invert: {todo} of {store.n_images} images to do ({inv_cfg.optimizer}, {inv_cfg.steps} steps, "
          f"L1{' + LPIPS' if inv_cfg.lambda_lpips > 0 else ' only'})", flush=True)
    for k in range(len(store.shards())):
        if len(store.todo(shard=store.shards()[k])) == 0:
            continue
        s = invert_shard_with(store, k, G, E, P, align_cfg=align_cfg, inversion_cfg=inv_cfg)
        print(f"  shard {s['shard']}: {s['done']} done, {s['failed']} failed, PSNR {s['mean_psnr']:.2f} dB, "
              f"{s['seconds']:.0f} s", flush=True)
    return store.path


def render_key(G, classifiers: dict, view_cfg, seed: int, ids) -> str:
    """Hash of everything a shard's logits depend on (skip a shard when it is unchanged)."""
    import hashlib
    import json

    from ganviews.config import to_dict

    payload = {"generator": G.sha256, "classifiers": {k: C.sha256 for k, C in sorted(classifiers.items())},
               "views": to_dict(view_cfg), "seed": seed, "ids": [str(i) for i in ids]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def render_stage(out: Path, store_path: Path, cfg: dict, *, device, G_path, C_path) -> int:
    """Render + classify the views of every shard not yet recorded as complete → shards rendered."""
    import json

    from storage.latents import LatentStore
    from tasks.render import load_models, prepare_pca, render_shard_with, resolve_view_config

    models = cfg["models"]
    view_cfg = resolve_view_config(cfg["views"])
    name = models.get("classifier_name") or "classifier"
    G, classifiers = load_models(G_path, {name: C_path}, device=device)
    store = LatentStore.open(store_path, mode="a")
    pca = prepare_pca(store.path, G, view_cfg, device=device, n_samples=int(cfg.get("pca_samples", 20000)))
    state = out / "state"
    state.mkdir(parents=True, exist_ok=True)
    done = store.done()
    rendered = 0
    for k, (start, stop) in enumerate(store.shards()):
        ids = store.image_ids[done[(done >= start) & (done < stop)]]
        key = render_key(G, classifiers, view_cfg, int(cfg.get("seed", 0)), ids)
        marker = state / f"render-{start:08d}-{stop:08d}.json"
        if marker.is_file() and json.loads(marker.read_text()).get("key") == key:
            continue
        s = render_shard_with(store, k, G, classifiers, view_cfg=view_cfg, logits_dir=out / "logits",
                              device=device, seed=int(cfg.get("seed", 0)), tasks={name: models.get("task", "label")},
                              pca=pca)
        marker.write_text(json.dumps({"key": key, "images": s["images"], "rows": s["rows"]}) + "\n")
        rendered += 1
        print(f"  shard {s['shard']}: {s['images']} images → {s['rows']} logit rows", flush=True)
    return rendered


def generator_check(G, C, *, n: int = 2000, seed: int = 0, batch: int = 250, truncation_psi: float = 1.0) -> dict:
    """How the real-data classifier labels ``n`` samples of G: confidence and class balance."""
    import numpy as np
    import torch

    gen = torch.Generator().manual_seed(seed)
    probs = []
    with torch.no_grad():
        for start in range(0, n, batch):
            z = torch.randn([min(batch, n - start), G.z_dim], generator=gen)  # [B, z_dim]
            img = G(z.to(G.mean_w.device), truncation_psi=truncation_psi, noise_mode="const")  # [B, 3, R, R]
            probs.append(torch.softmax(C(img.clamp(-1, 1)), dim=1).cpu())  # [B, K]
    p = torch.cat(probs).numpy()  # [n, K]
    counts = np.bincount(p.argmax(1), minlength=p.shape[1])
    return {
        "samples": n,
        "truncation_psi": truncation_psi,
        "mean_max_confidence": float(p.max(1).mean()),
        "share_confidence_above_0.9": float((p.max(1) > 0.9).mean()),
        "class_counts": counts.tolist(),
        "class_share_min_max": [float(counts.min() / n), float(counts.max() / n)],
        "entropy_of_class_balance_bits": float(-(counts / n * np.log2(np.maximum(counts / n, 1e-12))).sum()),
    }


def sample_grid(G, path: Path, *, rows: int = 8, cols: int = 16, seed: int = 0, truncation_psi: float = 1.0) -> Path:
    """An 8×16 grid of G's samples (constant noise) as a PNG."""
    import torch
    from torchvision.utils import save_image

    gen = torch.Generator().manual_seed(seed)
    z = torch.randn([rows * cols, G.z_dim], generator=gen)  # [n, z_dim]
    with torch.no_grad():
        img = G(z.to(G.mean_w.device), truncation_psi=truncation_psi, noise_mode="const")  # [n, 3, R, R]
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image((img.clamp(-1, 1) + 1) / 2, path, nrow=cols, padding=2, pad_value=0.5)
    return path


def run(args: argparse.Namespace) -> int:
    import shutil
    import time

    import torch

    from ganviews.cli.report import run_report
    from ganviews.runtime import resolve_device, set_numerics_policy

    cfg = load_demo_config(args.config)
    out = args.out.resolve()
    if args.fresh:
        for name in OWNED_DIRS:
            shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    watch = Stopwatch(out / "timings.json")
    t = time.perf_counter()
    _, manifest_path = prepare_data(out, dict(cfg.get("data") or {}))
    watch.lap("data", t)
    print(f"data: {manifest_path}", flush=True)
    if args.data_only:
        return 0
    models = cfg["models"]
    G_path = model_path(models.get("generator"), "generator")
    C_path = model_path(models.get("classifier"), "classifier")
    E_path = model_path(models.get("encoder"), "encoder")
    if args.check_generator:
        import json

        from ganviews.classify import load_classifier
        from ganviews.generator import load_generator

        G, C = load_generator(G_path), load_classifier(C_path)
        grid = sample_grid(G, out / "generator_samples.png")
        stats = generator_check(G, C)
        (out / "generator_check.json").write_text(json.dumps(stats, indent=2) + "\n")
        print(f"samples: {grid}\n{json.dumps(stats, indent=2)}")
        return 0
    if int(cfg.get("threads", 0)) > 0:
        torch.set_num_threads(int(cfg["threads"]))
    device = resolve_device(args.device or cfg.get("device", "auto"))
    set_numerics_policy(device)
    print(f"ganviews demo → {out} (device {device}, {torch.get_num_threads()} threads)", flush=True)

    t = time.perf_counter()
    store_path = invert_stage(out, manifest_path, cfg, device=device, G_path=G_path, E_path=E_path)
    watch.lap("invert", t)
    t = time.perf_counter()
    print("views + logits:", flush=True)
    rendered = render_stage(out, store_path, cfg, device=device, G_path=G_path, C_path=C_path)
    if not rendered:
        print("  every shard already rendered", flush=True)
    watch.lap("views+logits", t)
    t = time.perf_counter()
    outputs = run_report(out / "logits", out / "report", store=store_path, config=cfg.get("report"))
    watch.lap("report", t)
    times = watch.save()
    print(f"done in {times['total']:.0f} s; report: {outputs.report_md}", flush=True)
    return 0
