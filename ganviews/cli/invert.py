"""``ganviews invert``: align and invert the images of a manifest into a latent store
(paper Sec. 3.2; docs/inversion.md).

    ganviews invert MANIFEST STORE --generator G.pkl [--encoder E.pth.tar|E.safetensors] [--config inv.yaml]
        [--split val,test] [--shards all|0:4|0,2,5-7] [--shard-size 64] [--device auto] [--overwrite]
        [--allow-mixed-numerics] [--no-retry-failed]

The YAML holds two optional sections, ``align:`` (AlignConfig; ``resolution`` defaults to
the generator's) and ``invert:`` (InversionConfig). The store records the generator's and encoder's content hashes and the
resolved configs; a rerun with the same inputs skips finished items and retries failed
ones, a different generator, encoder or config is refused (``--overwrite`` starts over).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

CONFIG_SECTIONS = ("align", "invert")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "invert",
        help="align and invert a manifest's images into a latent store (resumable, by shard)",
        description="Load, align, encode and optimise w+ for every image of MANIFEST (optionally "
        "only some splits), writing w*, w_init, losses, PSNR/LPIPS and uint8 aligned / mask / "
        "reconstruction images into STORE shard by shard. Done items are skipped on rerun.",
    )
    parser.add_argument("manifest", metavar="MANIFEST", help="dataset manifest (Parquet)")
    parser.add_argument("store", metavar="STORE", help="latent store (Zarr), created if absent")
    parser.add_argument(
        "--generator",
        required=True,
        metavar="G",
        help="generator checkpoint (.pkl/.pt/.safetensors)",
    )
    parser.add_argument(
        "--encoder",
        metavar="E",
        help="RGBM encoder file: the authors' released sgan_encoders_*_RGBM_model_initial.pth.tar "
        "(what the paper used) or a ganviews .safetensors (default: start from G's mean w)",
    )
    parser.add_argument(
        "--config", metavar="YAML", help="YAML with `align:` and `invert:` sections"
    )
    parser.add_argument(
        "--split",
        metavar="S[,S]",
        help="only these manifest splits, e.g. val,test (default all rows)",
    )
    parser.add_argument(
        "--shards", default="all", help="all, a:b (end exclusive) or 0,2,5-7 (default all)"
    )
    parser.add_argument(
        "--shard-size",
        type=int,
        metavar="K",
        help="images per shard of a new store (default 64); left out, an existing store keeps "
        "its own; another value for an existing store is refused",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 … (default auto)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing store instead of resuming it"
    )
    parser.add_argument(
        "--allow-mixed-numerics",
        action="store_true",
        help="resume with another batch size, CPU thread count or device type than the store "
        "was started with (float32 results then differ slightly between images)",
    )
    parser.add_argument(
        "--no-retry-failed",
        dest="retry_failed",
        action="store_false",
        help="give up on images that failed before: invert only pending ones (failed images keep "
        "their reason and are reported as excluded)",
    )
    parser.add_argument(
        "--max-attempts",
        type=int,
        metavar="N",
        help="give up on an image once its inversion failed N times, over all runs (default: "
        "retry failed images every run; --no-retry-failed is 1)",
    )
    parser.add_argument("--steps", type=int, metavar="N", help="override invert.steps")
    parser.add_argument("--batch-size", type=int, metavar="B", help="override invert.batch_size")
    parser.add_argument(
        "--lpips-weights-dir",
        metavar="DIR",
        help="folder holding alexnet-owt-7be5be79.pth / vgg16-397923af.pth (searched before the torch cache)",
    )
    parser.add_argument(
        "--image-root",
        metavar="DIR",
        help="base of relative manifest paths (default: the manifest's folder)",
    )
    parser.set_defaults(func=run)


def parse_shards(text: str, n_shards: int) -> list[int]:
    """``all``, ``a:b`` (end exclusive, either side optional) or ``0,2,5-7`` → shard indices."""
    from ganviews.core.errors import ConfigError

    text = text.strip()
    if text == "all":
        return list(range(n_shards))
    m = re.fullmatch(r"(\d*):(\d*)", text)
    if m:
        lo, hi = int(m[1] or 0), int(m[2] or n_shards)
        if not lo < hi <= n_shards:
            raise ConfigError(
                f"--shards {text!r}: need 0 ≤ a < b ≤ {n_shards} (the store has {n_shards} shards)"
            )
        return list(range(lo, hi))
    out: list[int] = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m:
            raise ConfigError(
                f"--shards: {part!r} is not all, a:b, an index or a range a-b (got {text!r})"
            )
        lo, hi = int(m[1]), int(m[2] or m[1])
        if hi < lo or hi >= n_shards:
            raise ConfigError(f"--shards: {part!r} outside 0…{n_shards - 1}")
        out.extend(range(lo, hi + 1))
    return sorted(set(out))


def load_config(path: str | None, args: argparse.Namespace):
    """(the ``align:`` section, InversionConfig) from the YAML and the command-line overrides.
    Both are checked here, before any model is loaded; the AlignConfig is built once the
    generator is known (``align.resolution`` defaults to its resolution)."""
    from ganviews.core.config import from_dict, load_yaml
    from ganviews.core.errors import ConfigError
    from ganviews.inversion.align import AlignConfig
    from ganviews.inversion.invert import InversionConfig

    data = load_yaml(path) if path else {}
    unknown = sorted(set(data) - set(CONFIG_SECTIONS))
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {unknown}; allowed: {list(CONFIG_SECTIONS)}")
    inv = dict(data.get("invert") or {})
    for key, value in (("steps", args.steps), ("batch_size", args.batch_size)):
        if value is not None:
            inv[key] = value
    align = dict(data.get("align") or {})
    from_dict(AlignConfig, align, key="align")  # unknown keys and bad values fail here
    return align, from_dict(InversionConfig, inv, key="invert")


def existing_shard_size(store: str | Path, overwrite: bool) -> int | None:
    """The shard size of the store being resumed (None: no store yet, or it is replaced)."""
    from storage import LatentStore

    if overwrite or not (Path(store) / "zarr.json").is_file():
        return None
    return LatentStore.open(store, mode="r").shard_size


def run(args: argparse.Namespace) -> int:
    import time

    from tqdm import tqdm

    from ganviews.core.config import from_dict
    from ganviews.core.errors import ConfigError
    from ganviews.core.runtime import resolve_device, set_numerics_policy
    from ganviews.inversion.align import AlignConfig
    from storage import read_manifest
    from tasks.invert import load_inversion_models, prepare_store, run_invert
    from tasks.jobs import InvertJob
    from tasks.pipeline_config import MAX_SHARD_SIZE
    from tasks.store_io import select_splits

    shard_size = args.shard_size or existing_shard_size(args.store, args.overwrite) or 64
    if not 1 <= shard_size <= MAX_SHARD_SIZE:
        raise ConfigError(f"--shard-size: must be between 1 and {MAX_SHARD_SIZE}, got {shard_size}")
    if args.max_attempts is not None and args.max_attempts < 1:
        raise ConfigError(f"--max-attempts: must be ≥ 1, got {args.max_attempts}")
    if not args.retry_failed and args.max_attempts not in (None, 1):
        raise ConfigError("--max-attempts contradicts --no-retry-failed (which means 1)")
    align, inv_cfg = load_config(args.config, args)
    splits = [s.strip() for s in (args.split or "").split(",") if s.strip()]
    manifest = select_splits(
        read_manifest(args.manifest), splits, key="--split", source="the manifest"
    )
    if not len(manifest):
        raise ConfigError(f"{args.manifest}: no rows to invert")
    device = resolve_device(args.device)
    set_numerics_policy(device)
    G, E, _ = load_inversion_models(
        args.generator,
        args.encoder,
        inv_cfg,
        device=device,
        lpips_weights_dir=args.lpips_weights_dir,
    )
    job = InvertJob(
        store=Path(args.store),
        generator=Path(args.generator),
        encoder=Path(args.encoder) if args.encoder else None,
        align=from_dict(AlignConfig, {"resolution": G.resolution, **align}, key="align"),
        invert=inv_cfg,
        image_root=Path(args.image_root)
        if args.image_root
        else Path(args.manifest).resolve().parent,
        lpips_weights_dir=Path(args.lpips_weights_dir) if args.lpips_weights_dir else None,
        allow_mixed_numerics=args.allow_mixed_numerics,
        retry_failed=args.retry_failed,
        max_attempts=args.max_attempts,
    )
    store = prepare_store(job, manifest, G, E, shard_size=shard_size, overwrite=args.overwrite)
    shards = parse_shards(args.shards, len(store.shards()))
    print(
        f"inverting {len(shards)} of {len(store.shards())} shards of {store.path} on {device} "
        f"({inv_cfg.optimizer}, {inv_cfg.steps} steps, batch {inv_cfg.batch_size})",
        flush=True,
    )
    done = failed = 0
    t0 = time.perf_counter()
    todo = sum(
        len(store.todo(max_attempts=job.attempt_limit, shard=store.shards()[k])) for k in shards
    )
    # a bar on a terminal (tqdm hides itself when stderr is not one; the log has plain lines)
    bar = tqdm(total=todo, unit="img", desc="invert", disable=None, leave=False)
    for k in shards:
        s = run_invert(job, [k], device=device, on_batch=bar.update)[0]
        done, failed = done + s["done"], failed + s["failed"]
        extra = (
            f", mean loss {s['mean_loss']:.4f}, PSNR {s['mean_psnr']:.2f} dB" if s["done"] else ""
        )
        print(
            f"shard {k} [{s['shard']}]: {s['todo']} to do → {s['done']} done, {s['failed']} failed"
            f"{extra}, {s['seconds']:.1f} s ({s['images_per_second']:.2f} images/s)",
            flush=True,
        )
    bar.close()
    store = type(store).open(job.store, mode="r")
    total = len(store.done())
    print(
        f"{done} images inverted, {failed} failed in {time.perf_counter() - t0:.1f} s; "
        f"the store now has {total}/{store.n_images} done, {len(store.failed())} failed"
        f"{given_up_note(store, job)} (`ganviews status {args.store}` lists the reasons)"
    )
    return 0


def given_up_note(store, job) -> str:
    """ ", N given up on (…)" when failed images reached the job's attempt limit, else ""."""
    given_up = len(store.given_up(job.attempt_limit))
    if not given_up:
        return ""
    rule = "--no-retry-failed" if not job.retry_failed else f"--max-attempts {job.max_attempts}"
    return f", {given_up} of them given up on ({rule}; runs no longer retry them)"
