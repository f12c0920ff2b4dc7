"""The ``ganviews`` command line: one program, one sub-command per module in this package.

Each module ``ganviews/cli/<name>.py`` defines ``register(subparsers)``, which adds its
parser and sets ``func``; heavy imports (torch, Prefect, Zarr) happen inside ``func`` so
``ganviews --help`` stays fast. Library errors become one clean line on stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from ganviews import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ganviews",
        description="Deep generative views: invert, perturb, classify and ensemble.",
    )
    parser.add_argument("--version", action="version", version=f"ganviews {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    from ganviews.core.errors import GanviewsError
    from storage.errors import StoreError

    parser = build_parser()
    args = parser.parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (GanviewsError, StoreError) as exc:
        print(f"ganviews {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ganviews {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
