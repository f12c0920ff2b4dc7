"""The ``ganviews`` command line: one program, one sub-command per module in this package.

Each module ``ganviews/cli/<name>.py`` defines ``register(subparsers)``, which adds its
parser and sets ``func``; heavy imports (torch, Prefect, Zarr) happen inside ``func`` so
``ganviews --help`` stays fast. Library errors become one clean line on stderr, exit code 2;
so does a full disk (ENOSPC/EDQUOT), naming the path and saying that a rerun resumes.
Output piped into a reader that stops early (``ganviews status S | head``) ends the command
quietly with exit code 141 (128 + SIGPIPE, what a shell reports for tools killed by it).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
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
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe fails here, inside the handler, not at exit
        return code
    except BrokenPipeError:
        # the reader went away: send what is still buffered to /dev/null so that the
        # interpreter's final flush does not fail again, and stop without a traceback
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except (GanviewsError, StoreError) as exc:
        print(f"ganviews {args.command}: error: {exc}", file=sys.stderr)
        if argv is None and getattr(exc, "exit_now", False):  # as a program, not embedded
            sys.stderr.flush()
            os._exit(2)  # a job thread and Prefect's exit-time flush may wait on a silent API
        return 2
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = exc.filename or "the output"
        print(
            f"ganviews {args.command}: error: no space left on the device of {where} "
            f"({exc.strerror}); finished items are stored atomically, so free space and rerun "
            "the same command to resume",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(f"ganviews {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
