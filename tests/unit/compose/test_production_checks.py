"""The production compose file is a valid Compose file and a locked-down one.

Checked without Docker: the file is validated against the vendored Compose
Specification schema (``schema/compose-spec.json``, Apache-2.0, see ``schema/SOURCE.md``)
after a YAML load, and then against the house rules: every long-running service has a
health check, runs as a non-root user on a read-only root file system with writable
paths only for its data, takes its secrets only from required variables, publishes ports
on 127.0.0.1 only, and runs a real ``wardwatch`` subcommand with real settings. The
Triton model config the compose file mounts must match the GPU it reserves.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click
import jsonschema
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[3]
COMPOSE_DIR = ROOT / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
SCHEMA_DIR = Path(__file__).resolve().parent / "schema"
LOCAL_MODEL_REPOSITORY = ROOT / "inference" / "model_repository"
WARDWATCH_IMAGE = "wardwatch/worker:latest"

# Writable paths per service besides /tmp: the data directory (a named volume, or a
# tmpfs where the state is rebuilt at start) and scratch the image's start script needs.
# A new service, or a new writable path, is added here with the reason next to it.
WRITABLE = {
    # /opt/kafka/config: the start script writes server.properties there; logs: log4j.
    "kafka": {"/var/lib/kafka/data", "/opt/kafka/config", "/opt/kafka/logs"},
    "kafka-init": set(),
    # /var/run/postgresql: the server's Unix socket and lock file.
    "postgres": {"/var/lib/postgresql/data", "/var/run/postgresql"},
    "triton": set(),
    # Faust's local state (tables are rebuilt from their changelogs).
    "worker": {"/var/lib/wardwatch"},
    "writer": {"/var/lib/wardwatch"},
    # The resend-detection SQLite file (WARDWATCH_GATEWAY_DEDUP_PATH).
    "gateway": {"/var/lib/wardwatch"},
    "api": set(),
    "migrate": set(),
}
SCRATCH = {"/tmp"}
# A variable named like this is a secret: it must never have a default.
SECRET_NAME = re.compile(r"KEY|PASSWORD|SECRET|TOKEN|CREDENTIAL|PRIVATE", re.IGNORECASE)
# ${VAR}, ${VAR:-d}, ${VAR-d}, ${VAR:?m}, ${VAR?m}, ${VAR:+a}, ${VAR+a}; $${...} is a
# literal dollar (an escape), not an interpolation.
INTERPOLATION = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}")


def wardwatch_cli() -> click.Group:
    """The ``wardwatch`` command group as :func:`streams.cli.main` dispatches it: the
    project's lazy group, and Faust's own ``worker`` command, without starting anything."""
    from faust.cli.faust import cli as faust_cli

    from streams.cli import FAUST_COMMANDS, LAZY_COMMANDS, wardwatch

    group = click.Group("wardwatch")
    for name in LAZY_COMMANDS:
        cmd = wardwatch.get_command(click.Context(wardwatch), name)
        assert cmd is not None, name
        group.add_command(cmd, name)
    for name in FAUST_COMMANDS:
        group.add_command(faust_cli.commands[name], name)
    return group


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def is_one_shot(service: dict[str, Any]) -> bool:
    return str(service.get("restart", "no")) == "no"


def runs_wardwatch(service: dict[str, Any]) -> bool:
    return service.get("image") == WARDWATCH_IMAGE


def load_model_config(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_schema_is_vendored_with_its_licence() -> None:
    source = (SCHEMA_DIR / "SOURCE.md").read_text()
    assert re.search(r"github\.com/compose-spec/compose-spec/blob/[0-9a-f]{40}/", source)
    assert "Apache License" in (SCHEMA_DIR / "LICENSE").read_text()


def test_compose_file_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = json.loads((SCHEMA_DIR / "compose-spec.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    errors = sorted(
        jsonschema.Draft7Validator(schema).iter_errors(compose), key=lambda e: list(e.path)
    )
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors[:10])


def test_the_schema_check_catches_a_broken_file(compose: dict[str, Any]) -> None:
    # The check above must be able to fail: a misspelt service key is refused.
    schema = json.loads((SCHEMA_DIR / "compose-spec.json").read_text())
    broken = json.loads(json.dumps(compose))
    broken["services"]["api"]["helthcheck"] = broken["services"]["api"].pop("healthcheck")
    assert list(jsonschema.Draft7Validator(schema).iter_errors(broken))


def test_every_service_is_checked_here(services: dict[str, Any]) -> None:
    assert set(services) == set(WRITABLE), "add the new service's writable paths to WRITABLE"


def test_every_long_running_service_has_a_healthcheck(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        if is_one_shot(svc):
            # A one-shot job's exit status is its check: everything that needs it must
            # wait for it to complete successfully, not merely to start.
            for other, dependant in services.items():
                deps = dependant.get("depends_on", {})
                if name in deps:
                    assert deps[name]["condition"] == "service_completed_successfully", other
            continue
        check = svc.get("healthcheck")
        assert check and not check.get("disable"), f"{name} has no health check"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name


def test_every_service_runs_as_a_non_root_user(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        user = str(svc.get("user", ""))
        assert user, f"{name}: no user: (the image's default may be root)"
        uid = user.split(":", 1)[0]
        assert uid not in ("0", "root"), f"{name} runs as root"


def test_root_file_systems_are_read_only(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        assert svc.get("read_only") is True, f"{name}: read_only: true missing"
        writable: set[str] = set()
        for entry in svc.get("tmpfs", []):
            writable.add(str(entry).split(":", 1)[0])
        for volume in svc.get("volumes", []):
            parts = str(volume).split(":")
            source, target = parts[0], parts[1]
            mode = parts[2] if len(parts) > 2 else "rw"
            if source.startswith((".", "/", "~")):
                assert "ro" in mode.split(","), f"{name}: bind mount {volume} is writable"
            else:
                writable.add(target)  # a named volume
        unexpected = writable - WRITABLE[name] - SCRATCH
        assert not unexpected, f"{name}: writable paths beyond its data: {unexpected}"


def test_secrets_are_required_never_defaulted(services: dict[str, Any]) -> None:
    text = COMPOSE_FILE.read_text()
    found = set()
    for match in INTERPOLATION.finditer(text):
        var, op = match.group(1), match.group(2)
        if SECRET_NAME.search(var):
            found.add(var)
            assert op in (":?", "?"), f"${{{var}...}} must be ${{{var}:?message}}, no default"
    assert {"WARDWATCH_PSEUDONYM_KEY", "WARDWATCH_DB_PASSWORD"} <= found
    # A secret-looking variable a service sets is interpolated (required) or a secrets file.
    for name, svc in services.items():
        for key, value in env_of(svc).items():
            if not SECRET_NAME.search(key):
                continue
            if key.endswith("_FILE") or value.startswith("/run/secrets/"):
                # a file mounted from the secrets: section, never the secret itself
                assert value.startswith("/run/secrets/"), f"{name}: {key}={value}"
                assert value.removeprefix("/run/secrets/") in svc.get("secrets", []), key
            else:
                assert INTERPOLATION.search(value), f"{name}: {key} is a literal secret"
    assert "WARDWATCH_DEV_MODE" not in text


def test_the_secret_check_catches_a_default() -> None:
    bad = "X: ${WARDWATCH_PSEUDONYM_KEY:-public} $${NOT_A_VAR:-x}"
    ops = [(m.group(1), m.group(2)) for m in INTERPOLATION.finditer(bad)]
    assert ops == [("WARDWATCH_PSEUDONYM_KEY", ":-")]


def test_ports_are_published_on_loopback_only(services: dict[str, Any]) -> None:
    # Plain-text listeners: beyond the host only behind a TLS-terminating proxy (see
    # the compose file's header and docs/operations.md).
    for name, svc in services.items():
        for spec in svc.get("ports", []):
            assert str(spec).startswith("127.0.0.1:"), f"{name}: {spec} published beyond the host"


def test_commands_are_real_wardwatch_subcommands(services: dict[str, Any]) -> None:
    group = wardwatch_cli()
    ours = {name: svc for name, svc in services.items() if runs_wardwatch(svc)}
    assert set(ours) >= {"worker", "writer", "gateway", "api"}
    for name, svc in ours.items():
        argv = [str(a) for a in svc["command"]]
        ctx = group.make_context("wardwatch", list(argv))
        sub, cmd, rest = group.resolve_command(ctx, argv)
        assert cmd is not None, f"{name}: {argv[0]} is not a wardwatch command"
        # Parses the options too: an unknown or misspelt one raises click.UsageError.
        cmd.make_context(str(sub), rest, parent=ctx)
    with pytest.raises(click.UsageError):
        group.resolve_command(group.make_context("wardwatch", ["wroker"]), ["wroker"])


def test_wardwatch_env_vars_are_real_settings(services: dict[str, Any]) -> None:
    fields = {f"WARDWATCH_{name.upper()}" for name in Settings.model_fields}
    for name, svc in services.items():
        if not runs_wardwatch(svc):
            continue
        unknown = {k for k in env_of(svc) if k.startswith("WARDWATCH_")} - fields
        assert not unknown, f"{name} sets WARDWATCH_ variables Settings does not read: {unknown}"


def test_worker_image_runs_as_the_compose_user(services: dict[str, Any]) -> None:
    dockerfile = (COMPOSE_DIR / "Dockerfile").read_text()
    uid = re.search(r"useradd .*--uid (\d+)", dockerfile)
    assert uid is not None
    for name, svc in services.items():
        if runs_wardwatch(svc):
            assert str(svc["user"]).split(":", 1)[0] == uid.group(1), name


def triton_config_mounts(triton: dict[str, Any]) -> dict[str, Path]:
    """Model name -> the host file compose mounts over /models/<model>/config.pbtxt."""
    out = {}
    for volume in triton.get("volumes", []):
        source, target = str(volume).split(":")[:2]
        m = re.fullmatch(r"/models/([^/]+)/config\.pbtxt", target)
        if m:
            out[m.group(1)] = (COMPOSE_DIR / source).resolve()
    return out


def gpu_count(service: dict[str, Any]) -> int:
    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {})
    total = 0
    for d in devices.get("devices", []):
        if "gpu" in d.get("capabilities", []):
            count = d.get("count", 1)
            total += 10**6 if count == "all" else int(count)
    return total


def test_triton_config_agrees_with_the_gpu_reservation(services: dict[str, Any]) -> None:
    triton = services["triton"]
    mounts = triton_config_mounts(triton)
    local_models = {p.parent.name for p in LOCAL_MODEL_REPOSITORY.glob("*/config.pbtxt")}
    assert local_models, "no model in the local repository"
    gpus = gpu_count(triton)
    for model in local_models:
        local = load_model_config(LOCAL_MODEL_REPOSITORY / model / "config.pbtxt")
        # Locally Triton runs on the CPU (compose/services.sh serves this repository).
        cpu = model_config_pb2.ModelInstanceGroup.KIND_CPU
        assert {g.kind for g in local.instance_group} == {cpu}
        prod = load_model_config(mounts[model]) if model in mounts else local
        want = model_config_pb2.ModelInstanceGroup.KIND_GPU if gpus else cpu
        assert prod.instance_group, model
        for group in prod.instance_group:
            assert group.kind == want, f"{model}: {group} with {gpus} GPU(s) reserved"
            assert all(0 <= g < gpus for g in group.gpus), f"{model}: GPUs beyond the reservation"
        if gpus:
            assert prod.model_warmup, f"{model}: no model_warmup on the GPU"
        # The production config differs only in where the instances run and the warm-up.
        same = model_config_pb2.ModelConfig()
        same.CopyFrom(prod)
        del same.instance_group[:]
        del same.model_warmup[:]
        base = model_config_pb2.ModelConfig()
        base.CopyFrom(local)
        del base.instance_group[:]
        del base.model_warmup[:]
        assert same == base, f"{model}: production config drifted from the local one"
        assert [g.count for g in prod.instance_group] == [g.count for g in local.instance_group]
        inputs = {i.name: i for i in prod.input}
        # Both warm up before they report ready (the demo's cold-start latency).
        assert local.model_warmup, f"{model}: the local config has no model_warmup"
        for warm in [*prod.model_warmup, *local.model_warmup]:
            assert 1 <= warm.batch_size <= prod.max_batch_size, warm.name
            assert set(warm.inputs) == set(inputs), warm.name
            for key, spec in warm.inputs.items():
                assert spec.data_type == inputs[key].data_type, (warm.name, key)
                assert list(spec.dims) == list(inputs[key].dims), (warm.name, key)
