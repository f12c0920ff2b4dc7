"""``ganviews corrupt``: one condition's corrupted copies of a store's inverted images (paper
Sec. 4.1, Fig. 7; docs/corruptions.md).

    ganviews corrupt STORE OUT --condition pgd [--classifier C.safetensors[:TASK]] \
        [--splits val,test] [--max-images N] [--seed 0] [--device auto]
    ganviews corrupt STORE OUT --condition '{kind: jpeg, quality: 20}'

Writes the condition's latent store OUT (resumable: a rerun corrupts only what is missing);
invert it with ``ganviews invert OUT/manifest.parquet OUT`` (the stored corrupted images are
the targets) and render it with ``ganviews render OUT``, whose rows get the condition's label.
The pipeline's ``corrupt`` stage (``corruptions:`` in the YAML) does all three per condition.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "corrupt",
        help="corrupted / adversarial copies of a store's inverted images (one condition)",
        description="Corrupt the aligned images the clean store has inverted under one "
        "condition (fgsm, pgd, cw, jpeg, blur, noise) into the condition's own latent store.",
    )
    p.add_argument("store", metavar="STORE", help="the clean latent store (inverted)")
    p.add_argument("out", metavar="OUT", help="the condition's latent store (created or resumed)")
    p.add_argument(
        "--condition", required=True, metavar="SPEC",
        help="a kind (pgd) or a YAML mapping of Condition fields ('{kind: pgd, steps: 20}')",
    )  # fmt: skip
    p.add_argument(
        "--classifier", metavar="PATH[:TASK]",
        help="attacks: the attacked classifier and the label column it predicts",
    )  # fmt: skip
    p.add_argument("--splits", default="val,test", help="splits to corrupt (default val,test)")
    p.add_argument("--max-images", type=int, metavar="N", help="per split, only the first N")
    p.add_argument("--seed", type=int, default=0, help="base seed of noise (default 0)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 … (default auto)")
    p.set_defaults(func=run)


def parse_condition(text: str):
    """``pgd`` or a YAML mapping → Condition (ConfigError naming the bad field)."""
    import yaml

    from ganviews.core.config import from_dict
    from ganviews.core.errors import ConfigError
    from ganviews.corruptions.conditions import Condition

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--condition: {text!r} is neither a kind nor a YAML mapping") from exc
    data = {"kind": data} if isinstance(data, str) else data
    return from_dict(Condition, data, key="condition")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ganviews.cli.render import parse_classifier
    from tasks.corrupt import (
        CorruptJob,
        attack_success,
        plan_corrupt,
        prepare_condition_store,
        run_corrupt,
    )

    condition = parse_condition(args.condition)
    path, task = None, ""
    if args.classifier:
        _, path, task = parse_classifier(f"c={args.classifier}")
    job = CorruptJob(
        source=Path(args.store), store=Path(args.out), condition=condition,
        classifier=Path(path) if path else None, task=task or "",
        splits=tuple(s for s in args.splits.split(",") if s), max_images=args.max_images,
        seed=args.seed,
    )  # fmt: skip
    prepare_condition_store(job)
    summaries = run_corrupt(job, plan_corrupt(job), device=args.device)
    done = sum(s["done"] for s in summaries)
    print(f"{condition.label}: corrupted {done} images into {args.out}")
    if condition.is_attack:
        n, rate = attack_success(args.out)
        print(f"attack success on the test split: {rate:.3f} ({n} images)")
    return 0
