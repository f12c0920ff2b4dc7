"""``ganviews train-gan``: train a StyleGAN2 generator on a small image domain (see docs/demo.md).

    ganviews train-gan --data FOLDER|MANIFEST --out DIR --resolution 32 --kimg 60 [--resume]

``--data`` is a manifest (.parquet; rows of ``--splits`` are used), a folder with a
``labels.csv``/``labels.parquet`` that has a split column (read with the folder adapter, same
``--splits`` filter), or any other folder (every image under it). Images are resized to
``--resolution`` with bicubic filtering when their size differs. ``DIR`` receives
``checkpoint.pt`` (full state, for ``--resume``), ``generator.safetensors`` (G_ema, loadable by
``load_generator``), ``config.json``, ``log.jsonl`` and ``samples.png`` at every checkpoint.
"""

from __future__ import annotations

import argparse
from pathlib import Path

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train-gan",
        help="train a StyleGAN2 generator (own .safetensors format) on an image folder or manifest",
        description="StyleGAN2 training: non-saturating logistic loss, lazy R1, style mixing, EMA of G.",
    )
    p.add_argument(
        "--data",
        type=Path,
        required=True,
        help="manifest .parquet, labelled folder, or image folder",
    )
    p.add_argument(
        "--splits",
        default="train",
        help="comma-separated splits used from a manifest (default: %(default)s)",
    )
    p.add_argument("--out", type=Path, required=True, help="run directory")
    p.add_argument("--resolution", type=int, default=32, help="image size (default: %(default)s)")
    p.add_argument(
        "--kimg", type=float, required=True, help="training length in thousands of real images"
    )
    p.add_argument("--batch-size", type=int, default=32, help="default: %(default)s")
    p.add_argument("--z-dim", type=int, default=64, help="default: %(default)s")
    p.add_argument("--w-dim", type=int, default=64, help="default: %(default)s")
    p.add_argument("--mapping-layers", type=int, default=2, help="default: %(default)s")
    p.add_argument(
        "--g-channels", default="128,128,64,64", help="G widths for 4…R px (default: %(default)s)"
    )
    p.add_argument(
        "--d-channels", default="64,64,128,128", help="D widths for R…4 px (default: %(default)s)"
    )
    p.add_argument(
        "--lr", type=float, default=0.0025, help="G and D learning rate (default: %(default)s)"
    )
    p.add_argument(
        "--r1-gamma", type=float, default=0.01, help="R1 weight γ (default: %(default)s)"
    )
    p.add_argument("--style-mixing-prob", type=float, default=0.9, help="default: %(default)s")
    p.add_argument(
        "--ema-kimg",
        type=float,
        default=10.0,
        help="G_ema half-life in kimg (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=200,
        help="steps between checkpoints (default: %(default)s)",
    )
    p.add_argument(
        "--log-every", type=int, default=50, help="steps between log lines (default: %(default)s)"
    )
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = torch's default")
    p.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:1 or auto (default: %(default)s)"
    )
    p.add_argument("--resume", action="store_true", help="continue DIR/checkpoint.pt")
    p.set_defaults(func=run)


def _widths(text: str, flag: str) -> tuple[int, ...]:
    from ganviews.core.errors import ConfigError

    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError as exc:
        raise ConfigError(f"{flag}: expected comma-separated integers, got {text!r}") from exc


def data_paths(data: Path, splits: list[str]) -> list[Path]:
    """The image files ``--data`` names (manifest rows / labelled folder / plain folder)."""
    from ganviews.core.errors import GanviewsError

    if data.is_file():
        from storage.manifest import read_manifest

        frame = read_manifest(data)
    elif data.is_dir() and any((data / n).is_file() for n in ("labels.csv", "labels.parquet")):
        from storage.adapters import build_folder

        frame = build_folder(data)
    elif data.is_dir():
        paths = sorted(p for p in data.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES)
        if not paths:
            raise GanviewsError(f"--data: no images ({', '.join(_IMAGE_SUFFIXES)}) under {data}")
        return paths
    else:
        raise GanviewsError(f"--data: {data} is neither a manifest file nor a folder")
    if "split" in frame.columns:
        frame = frame[frame["split"].isin(splits)]
    if frame.empty:
        raise GanviewsError(f"--data: no rows of splits {splits} in {data}")
    return [Path(p) for p in frame["path"]]


def load_uint8(paths: list[Path], resolution: int):
    """Images as a uint8 tensor [N, 3, R, R] (bicubic resize where the size differs)."""
    import numpy as np
    import torch
    from PIL import Image

    from ganviews.core.errors import GanviewsError
    from ganviews.core.images import load_images

    arrays, failures = load_images(paths)
    if failures:
        first = next(iter(failures.items()))
        raise GanviewsError(
            f"--data: {len(failures)} unreadable images, e.g. {paths[first[0]]}: {first[1]}"
        )
    out = []
    for arr in arrays:
        if arr.shape[:2] != (resolution, resolution):
            arr = np.asarray(
                Image.fromarray(arr).resize((resolution, resolution), Image.Resampling.BICUBIC)
            )
        out.append(arr)
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()  # [N, 3, R, R]


def run(args: argparse.Namespace) -> int:
    import logging

    import torch

    from ganviews.core.runtime import resolve_device
    from ganviews.stylegan.training import ShuffledImages, TrainGANConfig, train_gan

    logging.getLogger("ganviews.stylegan.training").setLevel(
        min(logging.getLogger().level, logging.INFO)
    )
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    config = TrainGANConfig(
        resolution=args.resolution,
        z_dim=args.z_dim,
        w_dim=args.w_dim,
        mapping_layers=args.mapping_layers,
        g_channels=_widths(args.g_channels, "--g-channels"),
        d_channels=_widths(args.d_channels, "--d-channels"),
        batch_size=args.batch_size,
        total_kimg=args.kimg,
        g_lr=args.lr,
        d_lr=args.lr,
        r1_gamma=args.r1_gamma,
        style_mixing_prob=args.style_mixing_prob,
        ema_kimg=args.ema_kimg,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
    )
    images = load_uint8(
        data_paths(args.data, [s.strip() for s in args.splits.split(",")]), args.resolution
    )
    print(
        f"train-gan: {images.shape[0]} images of {args.resolution} px, {config.total_steps} steps on {device}"
    )
    data = ShuffledImages(images, batch_size=config.batch_size, seed=config.seed, device=device)

    def write_samples(state) -> None:
        from torchvision.utils import save_image

        from ganviews.core.atomic import write_atomically

        with torch.no_grad():
            gen = torch.Generator(device=device).manual_seed(config.seed + 12345)
            z = torch.randn([64, config.z_dim], generator=gen, device=device)  # [64, z_dim]
            img = state.G_ema(z, noise_mode="const")  # [64, 3, R, R]
        grid = (img.clamp(-1, 1) + 1) / 2
        write_atomically(
            args.out / "samples.png",
            lambda tmp: save_image(grid, tmp, format="png", nrow=8, padding=1),
        )

    train_gan(
        config,
        data,
        out_dir=args.out,
        device=device,
        resume=args.resume,
        log_every=args.log_every,
        on_checkpoint=write_samples,
    )
    print(f"train-gan: generator written to {args.out / 'generator.safetensors'}")
    return 0
