"""``ganviews render``: classify the original, the reconstruction and every view of a store's
inverted images, writing the logits table (paper Sec. 3.3–3.4; docs/views.md).

    ganviews render STORE --generator G.pkl --classifier smile=smile.safetensors:Smiling \
        --logits LOGITS [--config views.yaml | --preset faces] [--shards all|a:b|0,2,5-7] [--device auto]
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "render",
        help="render GAN/image views of inverted images and write their logits",
        description="For each shard of the store: classify the original (view 0), the "
        "reconstruction (view 1) and the perturbed views of every method and setting in "
        "one fused pass on the device, and write the rows to the logits dataset.",
    )
    parser.add_argument("store", metavar="STORE", help="latent store (Zarr) with inverted images")
    parser.add_argument(
        "--generator", required=True, metavar="G", help="the generator the store was inverted with"
    )
    parser.add_argument(
        "--classifier", action="append", required=True, metavar="NAME=PATH[:TASK]",
        help="a classifier checkpoint; NAME names it in the table, TASK is the manifest label "
        "column it predicts (default: the task in its config); repeat for several",
    )  # fmt: skip
    parser.add_argument(
        "--logits", required=True, metavar="DIR", help="logits dataset root (Parquet)"
    )
    parser.add_argument("--config", metavar="YAML", help="ViewConfig YAML (may name `preset:`)")
    parser.add_argument(
        "--preset", choices=["faces", "cars", "cats"], help="settings preset (default faces)"
    )
    parser.add_argument(
        "--shards",
        default="all",
        help="all, a:b (end exclusive), or shard indices like 0,2,5-7 (default all)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 … (default auto)")
    parser.add_argument("--seed", type=int, default=0, help="base seed of every view (default 0)")
    parser.add_argument("--n-views", type=int, metavar="N", help="override n_views (N per group)")
    parser.add_argument("--batch-size", type=int, metavar="B", help="override batch_size")
    parser.add_argument(
        "--persist-views", action="store_true", help="also store uint8 views in the store"
    )
    parser.add_argument(
        "--class-column", metavar="COL", help="label column with the class of a conditional G"
    )
    parser.set_defaults(func=run)


def parse_classifier(spec: str) -> tuple[str, str, str | None]:
    """``NAME=PATH[:TASK]`` → (name, path, task or None)."""
    from ganviews.core.errors import ConfigError

    name, sep, rest = spec.partition("=")
    if not sep or not name or not rest:
        raise ConfigError(f"--classifier: expected NAME=PATH[:TASK], got {spec!r}")
    path, task = rest, None
    head, colon, tail = rest.rpartition(":")
    if colon and head and tail and "/" not in tail and "\\" not in tail and "." not in tail:
        path, task = head, tail
    return name, path, task


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from ganviews.cli.invert import parse_shards
    from ganviews.core.config import load_yaml
    from ganviews.views.render import count_views, view_config
    from storage import LatentStore
    from tasks.jobs import RenderJob
    from tasks.render import run_render

    specs = [parse_classifier(s) for s in args.classifier]
    names = [s[0] for s in specs]
    if len(set(names)) != len(names):
        from ganviews.core.errors import ConfigError

        raise ConfigError(f"--classifier: names must be unique, got {names}")
    data = load_yaml(args.config) if args.config else {}
    overrides = {"n_views": args.n_views, "batch_size": args.batch_size}
    data.update({k: v for k, v in overrides.items() if v is not None})
    if args.persist_views:
        data["persist_views"] = True
    cfg = view_config(data, preset=args.preset or ("faces" if "preset" not in data else None))
    n_shards = len(LatentStore.open(args.store, mode="r").shards())
    shards = parse_shards(args.shards, n_shards)
    job = RenderJob(
        store=Path(args.store), generator=Path(args.generator),
        classifiers={n: Path(p) for n, p, _ in specs}, tasks={n: t for n, _, t in specs if t},
        views=cfg, logits=Path(args.logits), seed=args.seed, class_column=args.class_column,
    )  # fmt: skip
    store = LatentStore.open(args.store, mode="r")
    done = store.done()
    total = sum(
        count_views(cfg, int(((done >= a) & (done < b)).sum()))
        for a, b in (store.shards()[k] for k in shards)
    )
    # a bar on a terminal (tqdm hides itself when stderr is not one; the log has plain lines)
    with tqdm(total=total, unit="view", desc="render", disable=None, leave=False) as bar:
        summaries = run_render(job, shards, device=args.device, on_batch=bar.update)
    for s in summaries:
        rate = f", {s['views']} views at {s['views_per_second']:.1f}/s" if s.get("views") else ""
        print(
            f"shard {s['shard']}: {s['images']} images → {s['rows']} rows in {s['files']} files{rate}"
        )
    total = sum(s["rows"] for s in summaries)
    print(f"wrote {total} logit rows for {len(summaries)} shards to {args.logits}")
    return 0
