"""``ganviews verify STORE [--reset]``: list a latent store's damaged chunks; ``--reset`` marks
their images pending so the next ``ganviews invert`` (or flow run) recomputes them. A GenRep
multiview store (``<multiview.out>/stores/<name>``) is recognised by its format: ``--reset``
marks the damaged shards' anchors pending for ``ganviews multiview sample``.

Exit status: 0 when the store is intact (or was reset), 1 when damage was found and left.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="check every chunk of a latent or multiview store; --reset marks damaged items pending",
        description="Decode every chunk of every array of a latent store or a GenRep multiview "
        "store (checksummed), check that shards with done items have their data (finite w / "
        "latents), and list what is damaged.",
    )
    parser.add_argument(
        "store", metavar="STORE", help="path of the latent store or multiview store (Zarr)"
    )
    parser.add_argument(
        "--reset",
        action="store_true",
        help="rewrite damaged chunks with their fill value and mark their images pending",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from storage import LatentStore
    from storage.multiview import is_multiview_store

    mode = "a" if args.reset else "r"
    if is_multiview_store(args.store):
        from storage.integrity import reset_multiview, verify_multiview
        from storage.multiview import MultiviewStore

        store = MultiviewStore.open(args.store, mode=mode)
        return _report(
            store.path, verify_multiview(store), args.reset,
            intact="every chunk of the multiview store is intact", unit="anchors",
            reset=lambda damages: reset_multiview(store, damages),
            redo="`ganviews multiview sample CONFIG` samples them again",
        )  # fmt: skip
    from storage.integrity import reset_damaged, verify

    store = LatentStore.open(args.store, mode=mode)
    return _report(
        store.path, verify(store), args.reset,
        intact=f"every chunk of {len(store.array_names())} arrays is intact", unit="images",
        reset=lambda damages: reset_damaged(store, damages),
        redo="`ganviews invert` (or resume) recomputes them",
    )  # fmt: skip


def _report(path, damages, reset_requested: bool, *, intact, unit, reset, redo) -> int:
    """Print a store's damaged chunks (exit 1), or reset them with ``reset`` (exit 0)."""
    if not damages:
        print(f"{path}: {intact}")
        return 0
    print(f"{path}: {len(damages)} damaged chunk(s)")
    for damage in damages:
        print(f"  {damage.line()}")
    if not reset_requested:
        print(f"run `ganviews verify {path} --reset` to mark their {unit} pending")
        return 1
    print(f"reset: {reset(damages)} {unit} pending; {redo}")
    return 0
