"""``ganviews import-official {latents,evaluations}``: start from the authors' released files.

    ganviews import-official latents DIR --manifest M --generator G --store S [--split val,test]
    ganviews import-official evaluations DIR --logits OUT

``latents``: the authors' per-image inversions (``<image name>.pth`` holding
``{"w": [1, num_ws, w_dim]}``, from ``car_latents.zip`` / ``celebahq_latents.zip``) become
a latent store's w* (status done; an image without a usable file is marked failed with the
reason), so ``render``/``run --stages render,evaluate`` and ``report`` need no inversion
(tasks/import_official.py). ``evaluations``: ``precomputed_evaluations.zip``'s npz
probabilities become a logits table that ``ganviews report`` evaluates (storage/official.py).
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "import-official",
        help="import the authors' released latents or precomputed evaluations",
        description="Start from the authors' released files instead of GPU work: per-image "
        "latents into a latent store, precomputed evaluations into a logits table.",
    )
    kinds = parser.add_subparsers(dest="kind", metavar="KIND", required=True)
    lat = kinds.add_parser(
        "latents",
        help="<image name>.pth files ({'w': [1, num_ws, w_dim]}) → a latent store (no inversion)",
        description="Match the authors' <image file name>.pth latents to the manifest's images "
        "by file name and write them as w* (status done); images without a usable file are "
        "marked failed with the reason. Rerunning keeps done images (--overwrite replaces).",
    )
    lat.add_argument("dir", metavar="DIR", help="folder with the .pth files (searched recursively)")
    lat.add_argument("--manifest", required=True, metavar="M", help="manifest Parquet")
    lat.add_argument(
        "--generator", required=True, metavar="G", help="the generator the latents belong to"
    )
    lat.add_argument("--store", required=True, metavar="S", help="latent store (Zarr) to write")
    lat.add_argument("--split", metavar="S[,S]", help="only these manifest splits (default all)")
    lat.add_argument(
        "--config",
        metavar="YAML",
        help="YAML whose `align:` section is recorded, so `ganviews render` can re-align the "
        "originals (e.g. configs/cars.yaml; `ganviews run` passes its own)",
    )
    lat.add_argument(
        "--shard-size", type=int, default=64, metavar="K", help="images per shard (default 64)"
    )
    lat.add_argument(
        "--overwrite", action="store_true", help="replace an existing store instead of adding to it"
    )
    lat.set_defaults(func=run_latents)
    ev = kinds.add_parser(
        "evaluations",
        help="precomputed_evaluations.zip npz probabilities → a logits table for `ganviews report`",
        description="Convert <domain>/output/<classifier>_<split>/{gan,image}_ensemble_*.npz "
        "(probabilities) into the logits table: binary P → logit, multi-class p → log p.",
    )
    ev.add_argument("dir", metavar="DIR", help="the unzipped precomputed_evaluations folder")
    ev.add_argument("--logits", required=True, metavar="OUT", help="logits dataset to write")
    ev.add_argument(
        "--split", default="val,test", metavar="S[,S]", help="splits to import (default val,test)"
    )
    ev.add_argument(
        "--gan-views",
        type=int,
        metavar="K",
        help="keep the first K GAN views (reconstruction, then perturbed in order): the "
        "notebook's ens_size, 31 in the paper's figures (default: all)",
    )
    ev.set_defaults(func=run_evaluations)


def run_latents(args: argparse.Namespace) -> int:
    from ganviews.core.config import from_dict, load_yaml, to_dict
    from ganviews.core.errors import ConfigError
    from ganviews.inversion.align import AlignConfig
    from ganviews.stylegan.generator import load_generator
    from storage import LatentStore, read_manifest
    from tasks.import_official import SOURCE, import_official_latents
    from tasks.invert import check_align_resolution
    from tasks.store_io import select_splits

    if args.shard_size < 1:
        raise ConfigError(f"--shard-size: must be ≥ 1, got {args.shard_size}")
    splits = [s.strip() for s in (args.split or "").split(",") if s.strip()]
    manifest = select_splits(
        read_manifest(args.manifest), splits, key="--split", source="the manifest"
    )
    if not len(manifest):
        raise ConfigError(f"{args.manifest}: no rows to import")
    G = load_generator(args.generator, device="cpu")
    config: dict = {"source": SOURCE}
    if args.config:
        align = dict(load_yaml(args.config).get("align") or {})
        align_cfg = from_dict(AlignConfig, {"resolution": G.resolution, **align}, key="align")
        check_align_resolution(align_cfg, G)
        config["align"] = to_dict(align_cfg)
    attrs = {"generator_sha256": G.sha256, "encoder_sha256": None, "config": config}
    layout = dict(
        n_images=len(manifest), num_ws=G.num_ws, w_dim=G.w_dim, shard_size=args.shard_size
    )
    if args.overwrite:
        store = LatentStore.create(
            args.store, **layout, attrs=attrs, manifest=manifest, overwrite=True
        )
    else:
        store = LatentStore.open_or_create(args.store, **layout, attrs=attrs, manifest=manifest)
    s = import_official_latents(store, args.dir, overwrite=args.overwrite)
    print(
        f"{s['imported']} latents imported, {s['failed']} images failed, {s['kept']} already done "
        f"kept; {s['unmatched']} .pth files match no manifest image; the store now has "
        f"{len(store.done())}/{store.n_images} done: {store.path}"
    )
    for reason, count in sorted(s["reasons"].items()):
        print(f"  failed ({count}): {reason}")
    return 0


def run_evaluations(args: argparse.Namespace) -> int:
    from ganviews.core.errors import ConfigError
    from storage.logits import SPLITS
    from storage.official import import_official_evaluations

    splits = tuple(s.strip() for s in args.split.split(",") if s.strip())
    bad = [s for s in splits if s not in SPLITS]
    if bad or not splits:
        raise ConfigError(f"--split: {bad or args.split!r} not in {list(SPLITS)}")
    counts = import_official_evaluations(
        args.dir, args.logits, splits=splits, gan_views=args.gan_views
    )
    print(
        f"{counts['files']} evaluation files → {counts['groups']} (classifier, method, setting, "
        f"split) groups, {counts['rows']} rows in {args.logits}"
    )
    return 0
