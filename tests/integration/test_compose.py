"""docker-compose.yml and the worker Dockerfile, checked without Docker (it cannot run here).

Parses the compose file the way Compose does (YAML with anchors and merge keys) and checks the
services, their wiring (database URL, Redis, API URL, pool and queue names agree with the
deploy job), commands, health checks, GPU reservations, the shared volume, and that every
file the compose file and the Dockerfile reference exists in the repository.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def _command(service: dict) -> list[str]:
    cmd = service.get("command", [])
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def _option(cmd: list[str], flag: str) -> str | None:
    return cmd[cmd.index(flag) + 1] if flag in cmd else None


def _workers(services: dict) -> dict[str, dict]:
    return {k: v for k, v in services.items() if _command(v)[:3] == ["prefect", "worker", "start"]}


def _gpu_workers(services: dict) -> dict[str, dict]:
    return {k: v for k, v in _workers(services).items() if "deploy" in v}


def test_services_present(services) -> None:
    assert {
        "postgres",
        "redis",
        "prefect-server",
        "prefect-services",
        "ganviews-deploy",
        "worker-control",
    } <= set(services)
    assert len(_gpu_workers(services)) >= 2


def test_database_and_broker_wiring(services) -> None:
    pg = services["postgres"]["environment"]
    for name in ("prefect-server", "prefect-services"):
        env = services[name]["environment"]
        url = env["PREFECT_API_DATABASE_CONNECTION_URL"]
        m = re.fullmatch(r"postgresql\+asyncpg://(\w+):(\w+)@postgres:5432/(\w+)", url)
        assert m, url
        assert m.groups() == (pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"], pg["POSTGRES_DB"])
        assert (
            env["PREFECT_MESSAGING_BROKER"]
            == env["PREFECT_MESSAGING_CACHE"]
            == "prefect_redis.messaging"
        )
        assert env["PREFECT_REDIS_MESSAGING_HOST"] == "redis"
        assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
        assert (
            services[name]["image"] == "prefecthq/prefect:3.8.8-python3.11"
        )  # the version the code is pinned to
    assert services["prefect-server"]["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
    }


def test_server_and_services_commands(services) -> None:
    server = _command(services["prefect-server"])
    assert server[:3] == ["prefect", "server", "start"] and "--no-services" in server
    assert _option(server, "--host") == "0.0.0.0" and _option(server, "--port") == "4200"
    assert "4200:4200" in services["prefect-server"]["ports"]
    assert _command(services["prefect-services"]) == ["prefect", "server", "services", "start"]
    assert (
        services["prefect-services"]["depends_on"]["prefect-server"]["condition"]
        == "service_healthy"
    )


def test_every_long_running_service_has_a_health_check(services) -> None:
    for name, svc in services.items():
        if svc.get("restart") == "no":
            continue
        check = svc.get("healthcheck")
        assert check and check.get("test"), f"{name} has no health check"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
    server_check = " ".join(services["prefect-server"]["healthcheck"]["test"])
    assert "http://localhost:4200/api/health" in server_check
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "redis-cli ping" in " ".join(services["redis"]["healthcheck"]["test"])
    for name, worker in _workers(services).items():
        assert "--with-healthcheck" in _command(worker), name  # serves :8080/health
        assert "localhost:8080/health" in " ".join(worker["healthcheck"]["test"]), name


def test_services_health_check_detects_the_services_process(services, tmp_path) -> None:
    """Run the check's Python against a fake /proc view: found only when the argv matches."""
    code = services["prefect-services"]["healthcheck"]["test"][-1]
    assert services["prefect-services"]["healthcheck"]["test"][:3] == ["CMD", "python", "-c"]
    for argv, expected in (
        (b"prefect\x00server\x00services\x00start\x00", 0),
        (b"prefect\x00worker\x00start\x00", 1),
    ):
        proc = tmp_path / str(expected) / "proc"
        (proc / "1").mkdir(parents=True)
        (proc / "1" / "cmdline").write_bytes(argv)
        (proc / "self").mkdir()
        patched = code.replace("'/proc/%s/cmdline'", f"'{proc}/%s/cmdline'").replace(
            "os.listdir('/proc')", f"os.listdir('{proc}')"
        )
        with pytest.raises(SystemExit) as info:
            exec(patched, {})  # noqa: S102 - the compose file's own check, on a fake /proc
        assert info.value.code == expected


def test_workers_share_pool_queues_volume_and_api(services, compose) -> None:
    deploy = services["ganviews-deploy"]
    deploy_cmd = _command(deploy)
    assert deploy_cmd[:2] == ["ganviews", "deploy"] and deploy["restart"] == "no"
    pool = _option(deploy_cmd, "--work-pool")
    assert pool and int(_option(deploy_cmd, "--heartbeat-seconds")) >= 30
    mounts = {}
    for name, svc in {**_workers(services), "ganviews-deploy": deploy}.items():
        env = svc["environment"]
        assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api", name
        assert int(env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"]) >= 30, (
            name
        )  # zombie detection needs heartbeats
        assert svc["depends_on"]["prefect-server"]["condition"] == "service_healthy", name
        assert svc["build"]["context"] == "." and svc["build"]["dockerfile"] == "Dockerfile", name
        mounts[name] = [v for v in svc["volumes"] if v.split(":")[0] == "ganviews-data"]
    assert all(m == ["ganviews-data:/data"] for m in mounts.values()), (
        mounts
    )  # one shared store volume, same path
    assert set(compose["volumes"]) >= {"ganviews-data", "postgres-data", "redis-data"}
    for name, worker in _workers(services).items():
        cmd = _command(worker)
        assert _option(cmd, "--pool") == pool and _option(cmd, "--type") == "process", name
        assert (
            worker["depends_on"]["ganviews-deploy"]["condition"] == "service_completed_successfully"
        ), name
    control = _command(services["worker-control"])
    assert _option(control, "--work-queue") == "control" and "--limit" not in control
    assert services["worker-control"]["environment"]["CUDA_VISIBLE_DEVICES"] == ""


def test_one_gpu_per_worker(services) -> None:
    gpus, names = [], []
    for name, worker in _gpu_workers(services).items():
        cmd = _command(worker)
        assert _option(cmd, "--work-queue") == "shards" and _option(cmd, "--limit") == "1", name
        names.append(_option(cmd, "--name"))
        devices = worker["deploy"]["resources"]["reservations"]["devices"]
        assert (
            len(devices) == 1
            and devices[0]["driver"] == "nvidia"
            and devices[0]["capabilities"] == ["gpu"]
        )
        assert len(devices[0]["device_ids"]) == 1, name
        gpus.append(devices[0]["device_ids"][0])
        # Only the reserved GPU is visible in the container, where it is device 0.
        assert worker["environment"]["CUDA_VISIBLE_DEVICES"] == "0", name
    assert len(set(gpus)) == len(gpus) and len(set(names)) == len(names), (gpus, names)


def test_queue_and_pool_names_match_the_code_defaults(services) -> None:
    from tasks.pipeline_config import OrchestrationConfig

    orch = OrchestrationConfig()
    assert _option(_command(services["ganviews-deploy"]), "--work-pool") == orch.work_pool
    assert {_option(_command(w), "--work-queue") for w in _workers(services).values()} == {
        orch.shard_queue,
        orch.control_queue,
    }


def test_referenced_files_exist(services) -> None:
    dockerfile = REPO / "Dockerfile"
    assert dockerfile.is_file()
    for svc in services.values():
        if "build" in svc:
            assert (REPO / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):  # a bind mount: must exist
                assert (REPO / source).exists(), volume
    copies = [
        line.split()[1:-1]
        for line in dockerfile.read_text().splitlines()
        if line.startswith("COPY ")
    ]
    assert copies
    for sources in copies:
        for src in sources:
            assert (REPO / src).exists(), f"Dockerfile COPY {src}: not in the repository"
    text = dockerfile.read_text()
    assert re.search(r"^FROM python:3\.11", text, re.M)  # the interpreter pyproject.toml requires
    assert (
        "pip install ." in text and "flows.shards" in text
    )  # module entrypoints importable in the image
    for package in ("ganviews", "storage", "tasks", "flows"):
        assert f"COPY {package} " in text, package
