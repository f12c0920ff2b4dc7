"""``ganviews train-classifier``: train or fine-tune a classifier on real images, reconstructions
G(w*) or perturbed GAN views (paper Eq. 8; docs/classifiers.md).

    ganviews train-classifier (--manifest M | --store S) --task LABEL --arch resnet18 \
        --out C.safetensors [--source real|recon|views] [--generator G] [--epochs N] [--resume]
"""

from __future__ import annotations

import argparse

_SECTIONS = ("classifier", "train", "views", "align")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train-classifier",
        help="train a classifier on real images, reconstructions or GAN views (Eq. 8)",
        description="Train (or fine-tune with --init) a classifier for one manifest label column. "
        "--source real trains on real images; recon / views mix real images with G(w*) / "
        "perturbed G(w̃) rendered on the fly from the store's latents. Writes OUT (the "
        "project's classifier format), OUT.ckpt (resumable) and OUT.train.json (report).",
    )
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--manifest", metavar="M", help="manifest Parquet (source real only)")
    data.add_argument("--store", metavar="S", help="latent store (labels from its manifest)")
    p.add_argument(
        "--task", required=True, metavar="LABEL", help="manifest label column to predict"
    )
    p.add_argument(
        "--out", required=True, metavar="C.safetensors", help="where to write the classifier"
    )
    p.add_argument(
        "--config", metavar="YAML", help=f"YAML with optional sections {', '.join(_SECTIONS)}"
    )
    g = p.add_argument_group("classifier (override --config)")
    g.add_argument(
        "--arch",
        help="resnet18/34/50/101/152, wide_resnet50_2, smallcnn; torchvision.<builder>, "
        "timm.<model> (local --init weights), torchscript (--init the TorchScript file)",
    )
    g.add_argument(
        "--num-outputs", type=int, help="1 sigmoid, 2 two-logit, K classes (default: from labels)"
    )
    g.add_argument("--width", type=int, help="smallcnn width")
    g.add_argument("--name", help="classifier name in logit tables (default TASK-ARCH)")
    g.add_argument("--preprocessing", help="preset: identity, celebahq, car, cat, imagenet")
    g.add_argument(
        "--init",
        metavar="CKPT",
        help="initialise from weights (e.g. ImageNet ResNet; head kept fresh if sizes differ); "
        "for --arch torchscript the TorchScript file to fine-tune",
    )
    t = p.add_argument_group("training (override --config)")
    t.add_argument("--epochs", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--weight-decay", type=float)
    t.add_argument("--optimizer", choices=["adam", "adamw", "sgd"])
    t.add_argument("--scheduler", choices=["cosine", "constant", "plateau"])
    t.add_argument(
        "--select", choices=["last", "best"], help="keep the last or the best-validation epoch"
    )
    t.add_argument(
        "--resume", action="store_true", help="continue OUT.ckpt (required when it exists)"
    )
    v = p.add_argument_group("data source (override --config)")
    v.add_argument("--source", choices=["real", "recon", "views"], default="real")
    v.add_argument(
        "--generator", metavar="G", help="generator the store was inverted with (recon/views)"
    )
    v.add_argument("--method", choices=["isotropic", "pca", "stylemix"], help="views: perturbation")
    v.add_argument("--layers", help="views: coarse | fine | middle")
    v.add_argument("--sigma", type=float, help="views: σ for isotropic / pca")
    v.add_argument(
        "--p-generated", type=float, help="chance a sample is its GAN image (default 0.5)"
    )
    v.add_argument("--batch-size", type=int)
    v.add_argument("--no-flip", action="store_true", help="no random horizontal flips")
    v.add_argument(
        "--real-source",
        choices=["aligned", "photo"],
        help="real images: the aligned frames (default) or the raw photos (the authors' cars: "
        "RandomResizedCrop of the photo, classified with normalisation only)",
    )
    v.add_argument("--photo-size", type=int, help="photo: side of the windows (default 256)")
    p.add_argument(
        "--align-mode", choices=["none", "face", "object"], help="manifest images: alignment"
    )
    p.add_argument("--resolution", type=int, help="manifest images: aligned size R")
    p.add_argument(
        "--image-root", metavar="DIR", help="base of relative manifest paths (default: its folder)"
    )
    p.add_argument("--val-split", default="val", help="validation split ('' for none; default val)")
    p.add_argument(
        "--class-column", metavar="COL", help="label column with the class of a conditional G"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 … (default auto)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def _sections(path: str | None) -> dict[str, dict]:
    from ganviews.core.config import load_yaml
    from ganviews.core.errors import ConfigError

    data = load_yaml(path) if path else {}
    unknown = sorted(set(data) - set(_SECTIONS))
    if unknown:
        raise ConfigError(f"{path}: unknown top-level keys {unknown} (allowed: {list(_SECTIONS)})")
    return {s: dict(data.get(s) or {}) for s in _SECTIONS}


def _override(section: dict, **values) -> dict:
    return {**section, **{k: v for k, v in values.items() if v is not None}}


def run(args: argparse.Namespace) -> int:
    from ganviews.classifiers.batches import SourceConfig
    from ganviews.classifiers.training import TrainConfig
    from ganviews.core.config import from_dict
    from ganviews.inversion.align import AlignConfig
    from tasks.train_classifier import run_train_classifier

    cfg = _sections(args.config)
    classifier = _override(
        cfg["classifier"],
        arch=args.arch,
        num_outputs=args.num_outputs,
        width=args.width,
        name=args.name,
        preprocessing=args.preprocessing,
    )
    classifier.setdefault("arch", "resnet18")
    train = _override(
        cfg["train"],
        epochs=args.epochs,
        lr=args.lr,
        weight_decay=args.weight_decay,
        optimizer=args.optimizer,
        scheduler=args.scheduler,
        select=args.select,
    )
    views = _override(
        cfg["views"],
        method=args.method,
        layers=args.layers,
        setting=args.sigma,
        p_generated=args.p_generated,
        batch_size=args.batch_size,
        flip=False if args.no_flip else None,
        real_source=args.real_source,
        photo_size=args.photo_size,
    )
    align = _override(cfg["align"], mode=args.align_mode, resolution=args.resolution)
    report = run_train_classifier(
        args.manifest or args.store,
        task=args.task,
        config=classifier,
        out=args.out,
        source=args.source,
        generator_path=args.generator,
        device=args.device,
        seed=args.seed,
        train=from_dict(TrainConfig, train, key="train"),
        views=from_dict(SourceConfig, views, key="views"),
        align=from_dict(AlignConfig, align, key="align"),
        init_from=args.init,
        resume=args.resume,
        val_split=args.val_split or None,
        class_column=args.class_column,
        image_root=args.image_root,
    )
    for h in report["history"]:
        val = (
            f"  val loss {h['val_loss']:.4f} acc {h['val_acc']:.4f}"
            if h["val_acc"] is not None
            else ""
        )
        print(
            f"epoch {h['epoch'] + 1:3d}  loss {h['train_loss']:.4f} acc {h['train_acc']:.4f}"
            f"  ({h['n_generated']}/{h['n_train']} GAN){val}"
        )
    print(
        f"{report['name']} ({report['task']}, {report['config']['arch']}, {report['config']['num_outputs']} "
        f"outputs) → {report['classifier']}  sha256 {report['sha256'][:12]}  "
        f"kept epoch {report['selected_epoch'] + 1}; report {report['classifier']}.train.json"
    )
    return 0
