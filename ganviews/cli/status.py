"""``ganviews status STORE [--json] [--max-attempts N]``: per-shard progress of a latent store and
a summary of its failures (by reason and by failed attempts; with ``--max-attempts``, how many a
run gives up on); ``--json`` prints the same as one JSON object for scripts and monitoring."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "status",
        help="per-shard progress and failures of a latent store",
        description="Show a latent store's identity, per-shard progress (pending/done/failed) "
        "and its failures grouped by reason.",
    )
    parser.add_argument("store", metavar="STORE", help="path of the latent store (Zarr)")
    parser.add_argument(
        "--all",
        action="store_true",
        help="list every shard (default: all when ≤ 40, else only unfinished ones)",
    )
    parser.add_argument(
        "--failures",
        type=int,
        default=10,
        metavar="N",
        help="list up to N failed images (default 10; with --json every failure is listed)",
    )
    parser.add_argument(
        "--max-attempts",
        type=int,
        metavar="N",
        help="the limit runs use (orchestration.max_image_attempts, 1 for retry_failed_images: "
        "false): count the failed images given up on, i.e. that failed N times",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object: identity, totals, every shard, failures and their reasons",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from storage import LatentStore

    store = LatentStore.open(args.store, mode="r")
    if args.json:
        print(json.dumps(status_json(store, args.max_attempts), indent=1, default=str))
        return 0
    attrs = store.attrs
    table = store.status_table()
    done, failed, pending = (int(table[c].sum()) for c in ("done", "failed", "pending"))
    n = store.n_images
    print(f"store      {store.path}")
    print(
        f"images     {n}  (w+ {store.num_ws}×{store.w_dim}, {len(table)} shards of {store.shard_size})"
    )
    print(
        f"generator  {str(attrs.get('generator_sha256'))[:16]}…  encoder "
        f"{str(attrs.get('encoder_sha256'))[:16]}  config {str(attrs.get('config_hash'))[:16]}"
    )
    print(f"created    {attrs.get('created_at')}  code {attrs.get('code_version')}")
    print(f"progress   done {done} ({100 * done / n:.1f}%)  failed {failed}  pending {pending}")
    print()
    finished = (table["pending"] == 0) & (table["failed"] == 0)
    shown = table if args.all or len(table) <= 40 else table[~finished]
    if len(shown) < len(table):
        print(f"{int(finished.sum())} complete shards not shown (--all lists them)")
    if len(shown):
        shown = shown.assign(
            progress=[
                _bar(d, stop - start)
                for d, start, stop in zip(shown["done"], shown["start"], shown["stop"], strict=True)
            ]
        )
        print(shown.to_string(index=False))
    failures = store.failures()
    if len(failures):
        print()
        print(f"failures ({len(failures)}), by reason (a traceback's last line):")
        counts = failures["reason"].map(_last_line).value_counts()
        for reason, count in counts.items():
            print(f"  {count:6d}  {reason[:100]}")
        tries = failures["attempts"].value_counts().sort_index()
        print("by failed attempts: " + ", ".join(f"{n} after {k}" for k, n in tries.items()))
        if args.max_attempts is not None:
            given_up = len(store.given_up(args.max_attempts))
            print(
                f"given up   {given_up} (failed {args.max_attempts} times; runs retry the "
                f"other {len(failures) - given_up})"
            )
        if args.failures > 0:
            print()
            print(failures.head(args.failures).to_string(index=False, max_colwidth=80))
    return 0


def status_json(store, max_attempts: int | None = None) -> dict:
    """The store's identity, totals, per-shard counts and failures (with their attempts) as plain
    JSON types; ``given_up``: failed images that reached ``max_attempts`` (None: not counted)."""
    attrs = store.attrs
    table = store.status_table()
    failures = store.failures()
    reasons = failures["reason"].map(_last_line).value_counts() if len(failures) else {}
    keys = ("generator_sha256", "encoder_sha256", "config_hash", "created_at", "code_version")
    return {
        "store": str(store.path),
        **{k: attrs.get(k) for k in keys},
        "n_images": int(store.n_images),
        "num_ws": int(store.num_ws),
        "w_dim": int(store.w_dim),
        "shard_size": int(store.shard_size),
        **{c: int(table[c].sum()) for c in ("done", "failed", "pending")},
        "shards": table.to_dict("records"),
        "given_up": None if max_attempts is None else len(store.given_up(max_attempts)),
        "failure_reasons": {str(k): int(v) for k, v in dict(reasons).items()},
        "failures": failures.to_dict("records"),
    }


def _bar(done: int, total: int, width: int = 20) -> str:
    filled = int(round(width * done / total)) if total else width
    return "#" * filled + "." * (width - filled)


def _last_line(reason: str) -> str:
    """The line that says what went wrong: a traceback's exception line, or the reason itself."""
    lines = [line.strip() for line in str(reason).splitlines() if line.strip()]
    return lines[-1] if lines else "(no reason given)"
