"""The production services' command lines start on production-like settings.

Each WardWatch service of compose/docker-compose.yml (the migrate job, then gateway,
worker, writer, api) is started as compose would start it — its ``command:`` after the
image's ``wardwatch`` entry point, its ``environment:`` with the ``${VAR:?}`` secrets
filled in — but as a
local process against the local services: hosts rewritten to 127.0.0.1, the run's own
topics, consumer group, ports and data directory. No development mode: a random 48-byte
pseudonym key, a random dead-letter key, a throwaway PostgreSQL role with a random
password, owner of a throwaway database (both dropped afterwards), and the TLS files of
compose's ``secrets:`` made by the test (a CA, server certificates, a client CA and a
token JWKS): the gateway and the API answer over HTTPS only, and the gateway takes a FHIR
resource only with a signed bearer token. Each must answer its health check, and
nothing may be written under the repository while they run (the image's code is
read-only; the processes' working directory is a temporary one, as the image's is the
data directory).

Extending (TLS, OAuth2, ...): put the extra environment of a service into
:data:`EXTRA_ENV` (or pass ``extra_env`` to :func:`production_env`), and the scheme
and client options of its health check into :data:`HEALTH`.

Role creation needs CREATEROLE: ``WARDWATCH_TEST_POSTGRES_ROLE_ADMIN`` (default: the
local ``wardwatch`` role, which compose/services.sh grants CREATEROLE locally).
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import yaml
from psycopg import sql

from streams.settings import PROJECT_ROOT, Settings
from tests.tls_certs import TokenIssuer, make_pki

from .harness import PG_ADMIN, isolated_run

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.triton]

COMPOSE_FILE = PROJECT_ROOT / "compose" / "docker-compose.yml"
ROLE_ADMIN = os.environ.get("WARDWATCH_TEST_POSTGRES_ROLE_ADMIN", PG_ADMIN)
SERVICES = ("migrate", "gateway", "worker", "writer", "api")
ONE_SHOT = {"migrate"}
ISSUER = "https://auth.hospital.example"
AUDIENCE = "https://wardwatch.hospital.example/fhir"
# Container addresses of the compose network -> the local services.
HOSTS = {"kafka:19092": "127.0.0.1:9092", "triton:8001": "127.0.0.1:8001"}
CONTAINER_DATA_DIR = "/var/lib/wardwatch"
# Per service: extra environment (e.g. TLS certificate paths) merged over compose's.
EXTRA_ENV: dict[str, dict[str, str]] = {name: {} for name in SERVICES}
# Per service: the health URL (formatted with the service's env) and httpx client
# options (e.g. {"verify": ca_path, "cert": (crt, key)} once TLS is on).
HEALTH: dict[str, tuple[list[str], dict[str, Any]]] = {
    "gateway": (
        ["https://127.0.0.1:{WARDWATCH_GATEWAY_HTTP_PORT}/fhir/metadata"],
        {},  # verify: the test's CA, set by the test
    ),
    "worker": (
        [
            "http://127.0.0.1:{WARDWATCH_WORKER_WEB_PORT}/healthz",
            "http://127.0.0.1:{WARDWATCH_WORKER_WEB_PORT}/readyz",
        ],
        {},
    ),
    "writer": (
        [
            "http://127.0.0.1:{WARDWATCH_WORKER_WEB_PORT}/healthz",
            "http://127.0.0.1:{WARDWATCH_WORKER_WEB_PORT}/readyz",
        ],
        {},
    ),
    "api": (
        [
            "https://127.0.0.1:{WARDWATCH_API_PORT}/health",
            "https://127.0.0.1:{WARDWATCH_API_PORT}/ready",
        ],
        {},
    ),
}
START_TIMEOUT_S = 150.0


def compose_file() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict) and isinstance(data["services"], dict)
    return data


def compose_services() -> dict[str, Any]:
    services: dict[str, Any] = compose_file()["services"]
    return services


def make_tls_dir(folder: Path) -> tuple[Path, Path, TokenIssuer]:
    """The files compose's ``secrets:`` name, in ``folder`` (WARDWATCH_TLS_DIR): server
    certificates for 127.0.0.1, the client CA and a token issuer's JWKS. Returns
    (folder, the CA that signed everything, the token issuer)."""
    (folder / "made").mkdir(parents=True)
    pki, tokens = make_pki(folder / "made"), TokenIssuer(folder / "made", ISSUER)
    files = {
        "gateway.crt": pki.server_cert,
        "gateway.key": pki.server_key,
        "client-ca.crt": pki.ca,
        "oauth-jwks.json": tokens.jwks,
        "api.crt": pki.server_cert,
        "api.key": pki.server_key,
    }
    for name, source in files.items():
        (folder / name).write_bytes(source.read_bytes())
    return folder, pki.ca, tokens


def secret_files(secrets_: dict[str, str]) -> dict[str, str]:
    """``/run/secrets/<name>`` -> the file compose would mount there (``file:``)."""
    out = {}
    for name, spec in (compose_file().get("secrets") or {}).items():
        out[f"/run/secrets/{name}"] = substitute(str(spec["file"]), secrets_)
    return out


def substitute(value: str, secrets_: dict[str, str]) -> str:
    """Compose's interpolation of ``${VAR:?message}`` from ``secrets_``. Raises KeyError
    for a variable the test does not provide (compose would refuse to start too) and
    AssertionError for any other form (the unit tests forbid them for secrets)."""

    def one(match: re.Match[str]) -> str:
        assert match.group(2) in (":?", "?"), match.group(0)
        return secrets_[match.group(1)]

    return re.sub(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(:?[-?+])?[^}]*\}", one, value)


def production_env(
    service: dict[str, Any],
    s: Settings,
    secrets_: dict[str, str],
    *,
    database_url: str,
    data_dir: Path,
    ports: dict[str, int],
    extra_env: dict[str, str] | None = None,
) -> dict[str, str]:
    """The environment compose gives ``service``, rewritten for the local services and
    this run (topics, app id, database, data directory, ports), plus ``extra_env``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WARDWATCH_")}
    mounted = secret_files(secrets_)
    for key, raw in (service.get("environment") or {}).items():
        value = substitute(str(raw), secrets_)
        if value.startswith("/run/secrets/"):
            assert value.removeprefix("/run/secrets/") in service.get("secrets", []), key
            value = mounted[value]
        for container, local in HOSTS.items():
            value = value.replace(container, local)
        if value == "0.0.0.0":
            value = "127.0.0.1"  # loopback: the test's ports are not for the network
        value = value.replace(CONTAINER_DATA_DIR, str(data_dir))
        env[key] = value
    for url_key in ("WARDWATCH_DATABASE_URL", "WARDWATCH_MIGRATION_DATABASE_URL"):
        if url_key in env:
            # Same user and password as compose's URL, on the run's database.
            assert f":{secrets_['WARDWATCH_DB_PASSWORD']}@postgres:5432/" in env[url_key]
            env[url_key] = database_url
    env.update(
        {
            "WARDWATCH_APP_ID": s.app_id,
            "WARDWATCH_TOPIC_INBOUND": s.topic_inbound,
            "WARDWATCH_TOPIC_DLQ": s.topic_dlq,
            "WARDWATCH_TOPIC_EVENTS": s.topic_events,
            "WARDWATCH_TOPIC_SCORES": s.topic_scores,
            "WARDWATCH_TOPIC_ALERTS": s.topic_alerts,
            "WARDWATCH_DATA_DIR": str(data_dir),
            "WARDWATCH_GATEWAY_DEDUP_PATH": str(data_dir / "gateway-seen.sqlite"),
            "PYTHONDONTWRITEBYTECODE": "1",  # as the image: no .pyc beside the code
        }
    )
    env.update({f"WARDWATCH_{k.upper()}": str(v) for k, v in ports.items()})
    env.pop("WARDWATCH_DEV_MODE", None)
    env.update(extra_env or {})
    return env


@contextmanager
def throwaway_role(database: str) -> Iterator[tuple[str, str]]:
    """A login role with a random password owning ``database``: (user, password).
    Dropped afterwards with everything it owns."""
    user = f"ww_prod_{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(24)
    with psycopg.connect(ROLE_ADMIN, autocommit=True) as conn:
        try:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(user), sql.Literal(password)
                )
            )
        except psycopg.errors.InsufficientPrivilege as exc:
            pytest.fail(
                f"{ROLE_ADMIN.split('@')[-1]}: cannot create a throwaway role ({exc}); "
                "restart the local PostgreSQL with compose/services.sh (it grants the local "
                "wardwatch role CREATEROLE) or set WARDWATCH_TEST_POSTGRES_ROLE_ADMIN"
            )
    # The run's database belongs to the test's admin (isolated_run): let the role use it
    # as the migrations need (PostgreSQL 15 grants nobody CREATE on schema public).
    with psycopg.connect(_on_database(PG_ADMIN, database), autocommit=True) as conn:
        conn.execute(
            sql.SQL("GRANT CONNECT, CREATE, TEMPORARY ON DATABASE {} TO {}").format(
                sql.Identifier(database), sql.Identifier(user)
            )
        )
        conn.execute(
            sql.SQL("GRANT USAGE, CREATE ON SCHEMA public TO {}").format(sql.Identifier(user))
        )
    try:
        yield user, password
    finally:
        with psycopg.connect(ROLE_ADMIN, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
            )
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(user)))


def _on_database(url: str, database: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + database


def _server(url: str) -> str:
    """host:port of a libpq URL."""
    return url.split("@", 1)[1].split("/", 1)[0]


def repo_state() -> str:
    """Every file git sees under the repository, ignored ones included, with its mtime:
    anything a service writes under the code shows up as a difference."""
    out = subprocess.run(
        ["git", "status", "--porcelain", "--ignored", "--untracked-files=all"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    lines = []
    for line in sorted(out.splitlines()):
        path = PROJECT_ROOT / line[3:].strip('"')
        if line[3:].startswith((".venv/", ".tools/", "var/", ".mypy_cache/", ".ruff_cache/")):
            continue  # the environment and the shared services' state: not the code
        if line[3:].startswith(".pytest_cache/") or "__pycache__/" in line:
            continue  # pytest's own writes (this test run), not the services'
        mtime = path.stat().st_mtime_ns if path.exists() else -1
        lines.append(f"{line} {mtime}")
    return "\n".join(lines)


def wait_healthy(
    name: str, proc: subprocess.Popen[bytes], env: dict[str, str], log: Path, ca: Path
) -> None:
    if name in ONE_SHOT:
        # A one-shot job's health is its exit status (compose: service_completed_successfully).
        assert proc.wait(START_TIMEOUT_S) == 0, f"{name}:\n{log.read_text()[-3000:]}"
        return
    urls, options = HEALTH[name]
    client = httpx.Client(timeout=5.0, verify=ssl.create_default_context(cafile=str(ca)), **options)
    deadline = time.monotonic() + START_TIMEOUT_S
    with client:
        for template in urls:
            url = template.format(**env)
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"{name} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
                try:
                    if client.get(url).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"{name}: {url} not healthy:\n{log.read_text()[-3000:]}")
                time.sleep(1.0)


def free_port() -> int:
    return 20000 + secrets.randbelow(20000)


def test_production_commands_start_on_production_settings(tmp_path: Path) -> None:
    services = compose_services()
    key = secrets.token_urlsafe(48)
    tls_dir, ca, tokens = make_tls_dir(tmp_path / "tls")
    before = repo_state()
    with isolated_run("prod") as s:
        database = s.database_url.rsplit("/", 1)[1]
        with throwaway_role(database) as (user, password):
            secrets_ = {
                "WARDWATCH_PSEUDONYM_KEY": key,
                "WARDWATCH_DB_PASSWORD": password,
                "WARDWATCH_DEAD_LETTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
                "WARDWATCH_TLS_DIR": str(tls_dir),
                "WARDWATCH_OAUTH_ISSUER": ISSUER,
                "WARDWATCH_OAUTH_AUDIENCE": AUDIENCE,
            }
            url = f"postgresql+psycopg://{user}:{password}@{_server(PG_ADMIN)}/{database}"
            procs: list[subprocess.Popen[bytes]] = []
            try:
                for name in SERVICES:
                    svc = services[name]
                    assert svc["image"] == "wardwatch/worker:latest", name
                    ports = {
                        "migrate": {},
                        "gateway": {
                            "gateway_mllp_port": free_port(),
                            "gateway_http_port": free_port(),
                        },
                        "worker": {"worker_web_port": free_port()},
                        "writer": {"worker_web_port": free_port()},
                        "api": {"api_port": free_port()},
                    }[name]
                    data_dir = tmp_path / name / "data"
                    work_dir = tmp_path / name / "cwd"
                    work_dir.mkdir(parents=True)
                    env = production_env(
                        svc,
                        s,
                        secrets_,
                        database_url=url,
                        data_dir=data_dir,
                        ports=ports,
                        extra_env=EXTRA_ENV[name],
                    )
                    log = tmp_path / f"{name}.log"
                    with log.open("wb") as out:
                        # The image's ENTRYPOINT is `wardwatch`: this is its command line.
                        proc = subprocess.Popen(
                            [sys.executable, "-m", "streams", *map(str, svc["command"])],
                            cwd=work_dir,
                            env=env,
                            stdout=out,
                            stderr=subprocess.STDOUT,
                            start_new_session=True,
                        )
                    procs.append(proc)
                    wait_healthy(name, proc, env, log, ca)
                    if name == "gateway":
                        gateway_env = env
                # The gateway takes a FHIR resource over HTTPS with a signed token only.
                assert_gateway_authenticates(gateway_env, ca, tokens)
                # Each wrote only where it was told to.
                assert list((tmp_path / "gateway" / "data").glob("gateway-seen.sqlite*"))
                assert (tmp_path / "worker" / "data" / "faust").is_dir()
            finally:
                for proc in procs:
                    if proc.poll() is None:
                        proc.terminate()
                for proc in procs:
                    try:
                        proc.wait(30)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait(10)
    assert repo_state() == before, "a service wrote under the repository"


def assert_gateway_authenticates(env: dict[str, str], ca: Path, tokens: TokenIssuer) -> None:
    url = f"https://127.0.0.1:{env['WARDWATCH_GATEWAY_HTTP_PORT']}/fhir/Observation"
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": "Patient/prod-start-1"},
        "effectiveDateTime": "2026-01-01T10:00:00Z",
        "valueQuantity": {"value": 88, "unit": "/min", "system": "http://unitsofmeasure.org"},
    }
    verify = ssl.create_default_context(cafile=str(ca))
    with httpx.Client(timeout=20.0, verify=verify) as client:
        assert client.post(url, json=obs).status_code == 401
        token = tokens.token(AUDIENCE, "system/Observation.write")
        r = client.post(url, json=obs, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code in (200, 201, 202), r.text
    with pytest.raises(httpx.HTTPError), httpx.Client(timeout=5.0) as plain:
        plain.get(url.replace("https://", "http://"))


def test_production_env_refuses_a_secret_it_is_not_given() -> None:
    # The substitution must fail as compose does, not start on an empty value.
    with pytest.raises(KeyError):
        substitute("${WARDWATCH_PSEUDONYM_KEY:?set it}", {})
