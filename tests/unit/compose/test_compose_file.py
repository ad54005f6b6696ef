"""The production compose file and the local services script agree with the settings.

No Docker and no services: the compose file is parsed with PyYAML, services.sh is read
as text (and run only for its argument checks).
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[3]
COMPOSE_DIR = ROOT / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
SERVICES_SH = COMPOSE_DIR / "services.sh"
POM = COMPOSE_DIR / "kafka" / "pom.xml"
LOCAL_PG_URL = "postgresql+psycopg://wardwatch:wardwatch@127.0.0.1:5433/wardwatch"


@pytest.fixture(scope="module")
def defaults() -> Settings:
    # The defaults, whatever WARDWATCH_* variables the test run happens to have.
    return Settings.model_construct()


@pytest.fixture(scope="module")
def script_vars() -> dict[str, str]:
    """The NAME=value assignments at the top level of services.sh."""
    pattern = re.compile(r'^([A-Z_]+)="?([^"\s$]*)"?\s*$', re.MULTILINE)
    return dict(pattern.findall(SERVICES_SH.read_text()))


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def published_ports(service: dict[str, Any]) -> dict[int, tuple[str, int]]:
    """container port -> (host address, host port), from short-syntax port strings."""
    out: dict[int, tuple[str, int]] = {}
    for spec in service.get("ports", []):
        host_ip, host_port, container_port = str(spec).split(":")
        out[int(container_port)] = (host_ip, int(host_port))
    return out


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def load_topics_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "compose_kafka_topics", COMPOSE_DIR / "kafka" / "topics.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def project_topics(s: Settings) -> list[str]:
    return [s.topic_inbound, s.topic_dlq, s.topic_events, s.topic_scores, s.topic_alerts]


def test_expected_services_present(services: dict[str, Any]) -> None:
    want = {"kafka", "kafka-init", "postgres", "triton", "worker", "writer", "gateway", "api"}
    assert want <= set(services)


def test_secrets_have_no_defaults() -> None:
    # `${VAR:?message}` makes compose refuse to start without it; `${VAR:-default}` would
    # start every service on a public value.
    text = (COMPOSE_DIR / "docker-compose.yml").read_text()
    for secret in ("WARDWATCH_PSEUDONYM_KEY", "WARDWATCH_DB_PASSWORD"):
        assert f"${{{secret}:-" not in text and f"${{{secret}}}" not in text
        assert f"${{{secret}:?" in text
    assert "WARDWATCH_DEV_MODE" not in text


def test_edge_and_api_run_the_real_commands(services: dict[str, Any]) -> None:
    from streams.cli_analyst import api_cmd
    from streams.cli_edge import gateway_cmd

    assert services["gateway"]["command"] == [gateway_cmd.name]
    assert services["api"]["command"] == [api_cmd.name]
    for name in ("gateway", "api"):
        env = services[name]["environment"]
        assert set(env) <= {f"WARDWATCH_{f.upper()}" for f in Settings.model_fields}, name
        for port in services[name]["ports"]:
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port} published beyond the host"
    for name in ("worker", "writer"):
        assert services[name]["environment"]["WARDWATCH_DATA_DIR"] == "/var/lib/wardwatch"


def test_bind_mounts_exist(services: dict[str, Any]) -> None:
    checked = 0
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            if isinstance(volume, dict):
                if volume.get("type") != "bind":
                    continue
                source = str(volume["source"])
            else:
                source = str(volume).split(":", 1)[0]
                if not source.startswith((".", "/", "~")):
                    continue  # a named volume
            host = (COMPOSE_DIR / source).resolve()
            assert host.exists(), (
                f"{name}: bind-mounted host path {source} -> {host} does not exist"
            )
            checked += 1
    assert checked >= 1, "expected at least the model repository bind mount"


def test_build_contexts_and_dockerfiles_exist(services: dict[str, Any]) -> None:
    built = {name: svc["build"] for name, svc in services.items() if "build" in svc}
    assert "worker" in built
    for name, build in built.items():
        context = (COMPOSE_DIR / build["context"]).resolve()
        assert context.is_dir(), f"{name}: build context {context} missing"
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        assert dockerfile.is_file(), f"{name}: {dockerfile} missing"


def test_worker_image_installs_from_the_lock(services: dict[str, Any]) -> None:
    build = services["worker"]["build"]
    assert (COMPOSE_DIR / build["context"]).resolve() == ROOT
    dockerfile = (ROOT / build["dockerfile"]).read_text()
    assert "FROM python:3.11-slim" in dockerfile
    assert "uv sync --frozen" in dockerfile
    # Every package the wheel ships must be copied into the image.
    for package in ("streams", "fhir", "inference", "storage"):
        assert f"COPY {package} " in dockerfile


def test_topics_match_settings(services: dict[str, Any], defaults: Settings) -> None:
    init_env = env_of(services["kafka-init"])
    assert init_env["WARDWATCH_TOPICS"].split() == project_topics(defaults)
    assert int(init_env["WARDWATCH_TOPIC_PARTITIONS"]) == defaults.topic_partitions
    # The local script creates the same topics.
    topics = load_topics_module()
    assert list(topics.PROJECT_TOPICS) == project_topics(defaults)
    assert defaults.topic_partitions == topics.DEFAULT_PARTITIONS


def test_kafka_single_node_settings(services: dict[str, Any], defaults: Settings) -> None:
    env = env_of(services["kafka"])
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_NODE_ID"] == "1"
    for key in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    ):
        assert env[key] == "1", key
    assert int(env["KAFKA_NUM_PARTITIONS"]) == defaults.topic_partitions
    assert "healthcheck" in services["kafka"]


def test_kafka_image_matches_local_jars(services: dict[str, Any]) -> None:
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    version = ET.parse(POM).getroot().findtext("m:properties/m:kafka.version", namespaces=ns)
    assert version
    assert version.startswith("4.")
    assert services["kafka"]["image"] == f"apache/kafka:{version}"


def test_ports_match_settings_and_script(
    services: dict[str, Any], defaults: Settings, script_vars: dict[str, str]
) -> None:
    kafka_port = port_of(defaults.kafka_bootstrap)
    assert published_ports(services["kafka"])[kafka_port] == ("127.0.0.1", kafka_port)
    assert int(script_vars["KAFKA_PORT"]) == kafka_port

    grpc_port = port_of(defaults.triton_grpc_url)
    triton_ports = published_ports(services["triton"])
    assert triton_ports[grpc_port] == ("127.0.0.1", grpc_port)
    assert int(script_vars["TRITON_GRPC_PORT"]) == grpc_port
    for var in ("TRITON_HTTP_PORT", "TRITON_METRICS_PORT"):
        port = int(script_vars[var])
        assert triton_ports[port] == ("127.0.0.1", port)

    pg_port = int(script_vars["PG_PORT"])
    assert published_ports(services["postgres"])[5432] == ("127.0.0.1", pg_port)
    assert f":{pg_port}/" in LOCAL_PG_URL


def test_postgres_matches_local(services: dict[str, Any], script_vars: dict[str, str]) -> None:
    assert services["postgres"]["image"] == "postgres:15"
    env = env_of(services["postgres"])
    assert env["POSTGRES_USER"] == script_vars["PG_APP_USER"] == "wardwatch"
    assert env["POSTGRES_DB"] == script_vars["PG_APP_DB"] == "wardwatch"
    assert "healthcheck" in services["postgres"]


def test_triton_has_gpu_reservation(services: dict[str, Any]) -> None:
    triton = services["triton"]
    devices = triton["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)
    dockerfile = (COMPOSE_DIR / triton["build"]["context"] / "Dockerfile").read_text()
    assert re.search(r"nvcr\.io/nvidia/tritonserver:\$\{TRITON_TAG\}", dockerfile)
    assert re.search(r"TRITON_TAG=2[45]\.\d\d-py3", dockerfile)
    assert "--model-repository=/models" in triton["command"]
    assert "healthcheck" in triton


def test_worker_environment_uses_real_settings(services: dict[str, Any]) -> None:
    worker = services["worker"]
    env = env_of(worker)
    fields = {f"WARDWATCH_{name.upper()}" for name in Settings.model_fields}
    unknown = {k for k in env if k.startswith("WARDWATCH_")} - fields
    assert not unknown, f"worker sets WARDWATCH_ variables that Settings does not read: {unknown}"
    for key in ("WARDWATCH_KAFKA_BOOTSTRAP", "WARDWATCH_DATABASE_URL", "WARDWATCH_TRITON_GRPC_URL"):
        assert key in env
    assert env["WARDWATCH_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert port_of(env["WARDWATCH_TRITON_GRPC_URL"]) == 8001
    assert "replicas" in worker["deploy"]
    assert worker["command"][0] == "worker"
    assert "healthcheck" in worker


def test_scoring_and_writing_run_as_separate_services(services: dict[str, Any]) -> None:
    # The worker scores (never waits on the database); the writer stores, in a consumer
    # group of its own, from the same image and app id.
    worker, writer = env_of(services["worker"]), env_of(services["writer"])
    fields = {f"WARDWATCH_{name.upper()}" for name in Settings.model_fields}
    unknown = {k for k in writer if k.startswith("WARDWATCH_")} - fields
    assert not unknown, f"writer sets WARDWATCH_ variables that Settings does not read: {unknown}"
    assert worker["WARDWATCH_WORKER_ROLE"] == "score"
    assert writer["WARDWATCH_WORKER_ROLE"] == "persist"
    assert services["writer"]["image"] == services["worker"]["image"]
    assert writer.get("WARDWATCH_APP_ID") == worker.get("WARDWATCH_APP_ID")
    assert writer["WARDWATCH_DATABASE_URL"] == worker["WARDWATCH_DATABASE_URL"]
    assert "postgres" in services["writer"]["depends_on"]
    assert "postgres" not in services["worker"]["depends_on"]
    assert "healthcheck" in services["writer"]


def test_services_script_rejects_unknown_service() -> None:
    result = subprocess.run(
        ["bash", str(SERVICES_SH), "status", "zookeeper"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert "unknown service 'zookeeper'" in result.stderr


def test_services_script_syntax() -> None:
    subprocess.run(["bash", "-n", str(SERVICES_SH)], check=True, timeout=30)
