"""``ganviews query``: look at latents in a store, or run SQL over logits, manifest and status.

``ganviews query latents STORE --ids 0 5 10:20 img_0042 [--array w] [--out w.npy]``
``ganviews query sql "SELECT …" --logits DIR [--manifest FILE] [--store DIR] [--out FILE]``
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "query",
        help="inspect latents or run SQL over the tables",
        description="Inspect latents in a store, or query the logits, "
        "manifest and store status with SQL (DuckDB).",
    )
    sub = parser.add_subparsers(dest="query_command", metavar="WHAT")

    latents = sub.add_parser("latents", help="shape and statistics of stored latents")
    latents.add_argument("store", metavar="STORE", help="path of the latent store")
    latents.add_argument(
        "--ids",
        nargs="+",
        metavar="ID",
        default=None,
        help="store indices (5), ranges (10:20) or image ids; default: all done",
    )
    latents.add_argument("--array", default="w", help="w (default), w_init, or an extra array name")
    latents.add_argument(
        "--out",
        type=Path,
        default=None,
        help="save the selected rows: .npz holds the array, image_id and index; .npy the array "
        "alone, with the ids in OUT.ids.csv beside it",
    )
    latents.set_defaults(func=run_latents)

    query = sub.add_parser("sql", help="SQL over the views logits, manifest, latents_status")
    query.add_argument(
        "query", metavar="SQL", help='e.g. "SELECT task, count(*) FROM logits GROUP BY task"'
    )
    query.add_argument(
        "--logits", type=Path, default=None, help="logits dataset folder (view: logits)"
    )
    query.add_argument(
        "--manifest",
        type=Path,
        default=None,
        help="manifest Parquet (view: manifest; default: the store's copy)",
    )
    query.add_argument(
        "--store", type=Path, default=None, help="latent store (view: latents_status)"
    )
    query.add_argument(
        "--out", type=Path, default=None, help="write the result (.csv, .parquet or .json)"
    )
    query.add_argument("--max-rows", type=int, default=50, help="rows to print (default 50)")
    query.set_defaults(func=run_sql)
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])


def _select(store, tokens: list[str] | None):
    import numpy as np

    if tokens is None:
        return store.done()
    picked: list[int] = []
    names: list[str] = []
    for token in tokens:
        for part in filter(None, token.split(",")):
            if ":" in part and all(
                p.strip().lstrip("-").isdigit() or not p.strip() for p in part.split(":")
            ):
                start, _, stop = part.partition(":")
                picked.extend(range(int(start or 0), int(stop) if stop else store.n_images))
            elif part.lstrip("-").isdigit():
                picked.append(int(part))
            else:
                names.append(part)
    if names:
        picked.extend(store.indices_of(names).tolist())
    return np.asarray(picked, dtype=np.int64)


def run_latents(args: argparse.Namespace) -> int:
    import numpy as np

    from storage import DONE, LatentStore, StoreError

    store = LatentStore.open(args.store, mode="r")
    idx = _select(store, args.ids)
    if len(idx) == 0:
        raise StoreError(f"{store.path}: nothing selected (no --ids given and no item is done)")
    if args.array in ("w", "w_init"):
        data = store.read(idx, fields=[args.array, "status", "image_id", "loss", "psnr", "lpips"])
        values = data[args.array]
    else:
        data = store.read(idx, fields=["status", "image_id", "loss", "psnr", "lpips"])
        values = store.read_array(args.array, idx)
    status = data["status"]
    print(
        f"{args.array}: shape {values.shape} dtype {values.dtype} "
        f"({int((status == DONE).sum())} of {len(idx)} selected done)"
    )
    if values.dtype.kind == "f":
        finite = values[np.isfinite(values)]
        if finite.size:
            print(
                f"  mean {finite.mean():.6g}  std {finite.std():.6g}  min {finite.min():.6g}  "
                f"max {finite.max():.6g}  (NaN: {values.size - finite.size})"
            )
        if values.ndim >= 2:
            norms = np.linalg.norm(values.reshape(len(values), -1), axis=1)
            print(
                f"  per-image L2 norm: mean {np.nanmean(norms) if np.isfinite(norms).any() else float('nan'):.6g}"
            )
        if values.ndim == 3 and values.shape[1] > 1:
            spread = np.nanmean(np.linalg.norm(values - values.mean(axis=1, keepdims=True), axis=2))
            print(f"  mean distance of a layer's w from the image's mean w: {spread:.6g}")
    else:
        print(f"  min {values.min()}  max {values.max()}  mean {values.mean():.6g}")
    if len(idx) <= 20:
        import pandas as pd

        names = {0: "pending", 1: "done", 2: "failed"}
        print(
            pd.DataFrame(
                {
                    "index": idx,
                    "image_id": data["image_id"],
                    "status": [names.get(int(s), str(s)) for s in status],
                    "loss": data["loss"],
                    "psnr": data["psnr"],
                    "lpips": data["lpips"],
                }
            ).to_string(index=False)
        )
    if args.out is not None:
        save_rows(args.out, args.array, values, idx, data["image_id"])
    return 0


def save_rows(out: Path, array: str, values, idx, image_ids) -> None:
    """The selected rows with their ids: one .npz, or a .npy plus ``OUT.ids.csv`` (index, image_id)."""
    import numpy as np
    import pandas as pd

    from storage import StoreError
    from storage.atomic import write_output

    ids = np.asarray(image_ids).astype(str)
    buf = io.BytesIO()
    if out.suffix.lower() == ".npz":
        np.savez(buf, **{array.replace("/", "_"): values, "image_id": ids, "index": idx})
        write_output(out, buf.getbuffer())
        print(f"saved {values.shape} with image_id and index to {out}")
    elif out.suffix.lower() == ".npy":
        np.save(buf, values)
        write_output(out, buf.getbuffer())
        sidecar = out.with_name(out.name + ".ids.csv")
        table = pd.DataFrame({"index": idx, "image_id": ids})
        write_output(sidecar, table.to_csv(index=False).encode())
        print(f"saved {values.shape} to {out}, row ids to {sidecar}")
    else:
        raise StoreError(f"--out {out}: use a .npz (array + ids) or .npy (+ .ids.csv) name")


def run_sql(args: argparse.Namespace) -> int:
    import pandas as pd

    from storage import StoreError
    from storage.atomic import write_output
    from storage.query import sql

    if args.logits is None and args.manifest is None and args.store is None:
        raise StoreError("give at least one of --logits, --manifest, --store")
    frame = sql(args.query, logits=args.logits, manifest=args.manifest, store=args.store)
    if args.out is not None:
        suffix = args.out.suffix.lower()
        buf = io.BytesIO()
        if suffix == ".csv":
            buf.write(frame.to_csv(index=False).encode())
        elif suffix == ".parquet":
            frame.to_parquet(buf, index=False)
        elif suffix == ".json":
            buf.write(frame.to_json(orient="records", indent=1).encode())
        else:
            raise StoreError(f"--out {args.out}: use a .csv, .parquet or .json name")
        write_output(args.out, buf.getbuffer())
        print(f"wrote {len(frame)} rows to {args.out}")
    with pd.option_context(
        "display.max_rows", args.max_rows, "display.width", 160, "display.max_columns", 30
    ):
        print(frame if len(frame) else "(no rows)")
    return 0
