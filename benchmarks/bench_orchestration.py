"""Orchestration overhead and scaling (docs/orchestration.md, "Measured overheads").

1. Per-shard overhead: wall time per no-op shard (benchmarks/noop_stage.py: open the store,
   count its pending items) — called directly (baseline), through the embedded flow (Prefect task runs
   on the local API), and through a Prefect server + process workers (one flow run, i.e. one
   new process, per shard).
2. Scaling on CPU: the same inversion job (fixture generator, 32 px) with 1 vs 2 concurrent
   shards — embedded (devices [cpu] vs [cpu, cpu]) and distributed (1 vs 2 workers) — and
   the ratio to one worker.

    python benchmarks/bench_orchestration.py [--quick] [--shards 8] [--images-per-shard 8]

Every server and worker started here is stopped here (process groups), also on errors.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FIXTURE = (
    Path(os.environ.get("GANVIEWS_SHARED_FIXTURES", REPO.parent / "shared" / "fixtures"))
    / "stylegan2"
    / "nvidia-ada-res32.pkl"
)


def machine() -> str:
    import prefect
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in open("/proc/cpuinfo")
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (
        f"CPU {cpu} ({os.cpu_count()} cores), GPU {gpu}, torch {torch.__version__}, prefect {prefect.__version__}, "
        f"python {platform.python_version()}, dtype float32"
    )


# ----------------------------------------------------------------------------- data and configs


def make_job(root: Path, n_images: int, shard_size: int, steps: int) -> Path:
    """PNGs of the fixture generator + manifest + a pipeline YAML; returns the YAML path."""
    import numpy as np
    import pandas as pd
    import torch
    import yaml
    from PIL import Image

    from ganviews.classifiers.checkpoints import save_classifier
    from ganviews.classifiers.model import build_classifier
    from ganviews.stylegan.generator import load_generator
    from storage.manifest import write_manifest

    G = load_generator(FIXTURE)
    with torch.no_grad():
        imgs = G.synthesis(
            G.mapping(torch.randn(n_images, G.z_dim, generator=torch.Generator().manual_seed(0)))
        )
    pixels = ((imgs.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    (root / "images").mkdir(parents=True, exist_ok=True)
    for i in range(n_images):
        Image.fromarray(pixels[i]).save(root / "images" / f"{i:04d}.png")
    frame = pd.DataFrame(
        {
            "image_id": [f"im{i:04d}" for i in range(n_images)],
            "path": [f"images/{i:04d}.png" for i in range(n_images)],
            "split": ["test"] * n_images,
            "label": np.arange(n_images) % 2,
        }
    )
    frame.attrs["label_columns"] = ["label"]
    write_manifest(frame, root / "manifest.parquet")
    save_classifier(
        build_classifier(
            {"arch": "smallcnn", "num_outputs": 1, "task": "label", "width": 4}
        ).eval(),
        root / "clf.safetensors",
    )
    cfg = {
        "data": {"manifest": "manifest.parquet", "splits": ["test"]},
        "paths": {"store": "store", "logits": "logits", "report": "report"},
        "models": {"generator": str(FIXTURE), "classifiers": {"clf": {"path": "clf.safetensors", "task": "label"}}},
        "align": {"mode": "none", "resolution": 32},
        "invert": {"steps": steps, "lambda_lpips": 0.0, "latent_term": "l2", "latent_weight": 0.01, "batch_size": 4},
        "orchestration": {"shard_size": shard_size, "devices": ["cpu"], "cpu_threads": 1, "retries": 0,
                          "poll_seconds": 0.2, "work_pool": "bench", "deployment": "bench"},
    }  # fmt: skip
    path = root / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def with_orchestration(cfg_path: Path, root: Path, name: str, **orch) -> Path:
    """A copy of the job YAML writing to its own store, with orchestration overrides."""
    import yaml

    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["paths"] = {k: f"{name}/{k}" for k in ("store", "logits", "report")}
    cfg["orchestration"].update(job=name, **orch)
    out = root / f"{name}.yaml"
    out.write_text(yaml.safe_dump(cfg))
    return out


# ----------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGINT, signal.SIGKILL):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
            proc.wait(10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue


class Cluster:
    """A Prefect server (SQLite) with the ganviews deployments; workers added on demand."""

    def __init__(self, root: Path, cfg_path: Path):
        self.root, self.port = root, free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.env = {
            **os.environ,
            "PREFECT_HOME": str(root / "prefect-home"),
            "PREFECT_API_URL": self.url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "OMP_NUM_THREADS": "1",
            # the no-op stage's deployment is imported from benchmarks/ by the workers
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(REPO / "benchmarks"), os.environ.get("PYTHONPATH")) if p
            ),
        }
        self.procs: list[subprocess.Popen] = []
        self.workers: list[subprocess.Popen] = []
        server_env = {k: v for k, v in self.env.items() if k != "PREFECT_API_URL"}
        t0 = time.perf_counter()
        self.procs.append(
            start(
                [
                    str(BIN / "prefect"),
                    "server",
                    "start",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--no-ui",
                ],
                server_env,
                root / "server.log",
            )
        )
        while True:
            try:
                urllib.request.urlopen(self.url + "/health", timeout=2)
                break
            except OSError:
                if self.procs[0].poll() is not None or time.perf_counter() - t0 > 180:
                    raise RuntimeError(
                        "prefect server did not start; see " + str(root / "server.log")
                    ) from None
                time.sleep(0.5)
        self.server_start = time.perf_counter() - t0
        subprocess.run(
            [str(BIN / "ganviews"), "deploy", "--config", str(cfg_path)],
            env=self.env,
            check=True,
            capture_output=True,
        )

    def set_workers(self, n: int) -> None:
        while len(self.workers) > n:
            stop(self.workers.pop())
        while len(self.workers) < n:
            i = len(self.workers) + 1
            self.workers.append(
                start(
                    [
                        str(BIN / "prefect"),
                        "worker",
                        "start",
                        "--pool",
                        "bench",
                        "--work-queue",
                        "shards",
                        "--type",
                        "process",
                        "--limit",
                        "1",
                        "--name",
                        f"w{i}",
                    ],
                    self.env,
                    self.root / f"worker{i}.log",
                )
            )
        time.sleep(3)  # let them register and poll

    def close(self) -> None:
        for proc in reversed(self.procs + self.workers):
            stop(proc)


def run_job(cfg_path: Path, env: dict, stages: str = "invert") -> float:
    """Wall seconds of `ganviews run CONFIG --stages ...` (a fresh process, like a user's)."""
    t0 = time.perf_counter()
    out = subprocess.run(
        [str(BIN / "ganviews"), "run", str(cfg_path), "--stages", stages],
        env=env,
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise RuntimeError(out.stdout[-3000:] + out.stderr[-3000:])
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------- measurements


def prepare(cfg) -> None:
    """Create the job's store (what the pipeline's invert stage does first)."""
    from tasks.invert import prepare_store_task
    from tasks.jobs import invert_job

    prepare_store_task.fn(
        invert_job(cfg), cfg.data.manifest, cfg.data.splits, cfg.orchestration.shard_size
    )


def noop_embedded(cfg_path: Path, n_shards: int) -> tuple[float, float]:
    """(direct seconds per no-op shard, embedded-flow seconds per no-op shard), in this process."""
    from noop_stage import noop_job, noop_shard_task, run_noop
    from prefect import flow
    from prefect.testing.utilities import prefect_test_harness

    from flows.shards import run_shards
    from tasks.pipeline_config import as_config, pipeline_config_dict

    cfg = as_config(cfg_path)
    prepare(cfg)
    shards = [tuple(s) for s in __import__("storage").LatentStore.open(cfg.paths.store).shards()][
        :n_shards
    ]
    job = noop_job(cfg)
    t0 = time.perf_counter()
    for s in shards:
        run_noop(job, s, device="cpu")
    direct = (time.perf_counter() - t0) / len(shards)

    @flow(name="bench-noop")
    def noop_flow(config: dict) -> None:
        run_shards(as_config(config), "noop", job, shards, task=noop_shard_task)

    with prefect_test_harness(server_startup_timeout=300):
        noop_flow(pipeline_config_dict(cfg))  # warm-up: first flow and task runs
        t0 = time.perf_counter()
        noop_flow(pipeline_config_dict(cfg))
        embedded = (time.perf_counter() - t0) / len(shards)
    return direct, embedded


def noop_distributed(cluster: Cluster, cfg_path: Path, n_shards: int, workers: int) -> float:
    """Seconds per no-op shard through server + workers (the noop stage as a `ganviews` flow)."""
    code = (
        "import sys, time\n"
        "from prefect import flow\n"
        "from prefect.deployments.runner import EntrypointType\n"
        "from flows.shards import run_shards\n"
        "from noop_stage import NOOP_SHARD_FLOW, noop_job, noop_shard_flow\n"
        "from tasks.pipeline_config import as_config, pipeline_config_dict\n"
        "from storage import LatentStore\n"
        "noop_shard_flow.to_deployment('bench', work_pool_name='bench', work_queue_name='shards',\n"
        "    entrypoint_type=EntrypointType.MODULE_PATH).apply(work_pool_name='bench')\n"
        "@flow(name='bench-noop')\n"
        "def f(config: dict):\n"
        "    cfg = as_config(config)\n"
        f"    shards = [tuple(s) for s in LatentStore.open(cfg.paths.store).shards()][:{n_shards}]\n"
        "    run_shards(cfg, 'noop', noop_job(cfg), shards, deployment=NOOP_SHARD_FLOW + '/bench')\n"
        "cfg = as_config(sys.argv[1])\n"
        "t0 = time.perf_counter(); f(pipeline_config_dict(cfg)); print('SECONDS', time.perf_counter() - t0)\n"
    )
    from tasks.pipeline_config import as_config

    prepare(as_config(cfg_path))
    cluster.set_workers(workers)
    out = subprocess.run(
        [sys.executable, "-c", code, str(cfg_path)], env=cluster.env, capture_output=True, text=True
    )
    if out.returncode:
        raise RuntimeError(out.stdout[-3000:] + out.stderr[-3000:])
    seconds = float(
        next(line.split()[1] for line in out.stdout.splitlines() if line.startswith("SECONDS"))
    )
    return seconds / n_shards


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: few shards, few steps")
    parser.add_argument("--shards", type=int, default=8, help="shards per job (default 8)")
    parser.add_argument(
        "--images-per-shard", type=int, default=8, help="images per shard (default 8)"
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=60,
        help="L-BFGS steps per image in the scaling job (default 60)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    if args.quick:
        args.shards, args.images_per_shard, args.steps = 4, 4, 10
    if not FIXTURE.is_file():
        sys.exit(f"fixture generator not found: {FIXTURE} (set GANVIEWS_SHARED_FIXTURES)")
    root = Path(tempfile.mkdtemp(prefix="bench-orch-"))
    os.environ.setdefault(
        "PREFECT_LOGGING_LEVEL", "WARNING"
    )  # the numbers, not every run's log lines
    os.environ.setdefault("PREFECT_HOME", str(root / "prefect-home-local"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    print(machine())
    n = args.shards * args.images_per_shard
    print(
        f"job: {n} images of 32 px in {args.shards} shards of {args.images_per_shard}; inversion L-BFGS "
        f"{args.steps} steps, L1 only, batch 4; 1 torch thread per shard; one `ganviews run` process per job"
    )
    base = make_job(root, n, args.images_per_shard, args.steps)
    cluster = None
    try:
        direct, embedded = noop_embedded(
            with_orchestration(base, root, "noop-embedded"), args.shards
        )
        print(f"\nno-op shard, direct call:              {direct * 1000:8.1f} ms/shard (baseline)")
        print(
            f"no-op shard, embedded flow (1 device):  {embedded * 1000:8.1f} ms/shard "
            f"(+{(embedded - direct) * 1000:.1f} ms orchestration)"
        )
        cluster = Cluster(root, base)
        print(f"prefect server start (new SQLite database): {cluster.server_start:.1f} s")
        for w in (1, 2):
            per = noop_distributed(
                cluster,
                with_orchestration(base, root, f"noop-dist{w}", mode="distributed"),
                args.shards,
                w,
            )
            print(
                f"no-op shard, server + {w} worker(s):      {per * 1000:8.1f} ms/shard "
                f"(+{(per - direct) * 1000:.0f} ms: a flow run in a new process per shard)"
            )
        print("\nscaling, the same inversion job (wall seconds of `ganviews run --stages invert`):")
        rows = []
        for label, name, orch, workers in (
            ("embedded, devices [cpu]", "emb1", {"devices": ["cpu"]}, None),
            ("embedded, devices [cpu, cpu]", "emb2", {"devices": ["cpu", "cpu"]}, None),
            (
                "embedded, process runner [cpu, cpu]",
                "emb2p",
                {"devices": ["cpu", "cpu"], "task_runner": "process"},
                None,
            ),
            ("distributed, 1 worker", "dist1", {"mode": "distributed"}, 1),
            ("distributed, 2 workers", "dist2", {"mode": "distributed"}, 2),
        ):
            cfg = with_orchestration(base, root, name, **orch)
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            if workers:
                cluster.set_workers(workers)
                env = cluster.env
            else:
                env.pop("PREFECT_API_URL", None)
            rows.append((label, run_job(cfg, env)))
        for label, seconds in rows:
            ref = rows[0][1] if label.startswith("embedded") else rows[3][1]
            print(f"  {label:38s} {seconds:7.1f} s   ×{ref / seconds:.2f} vs one shard at a time")
    finally:
        if cluster is not None:
            cluster.close()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"kept {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
