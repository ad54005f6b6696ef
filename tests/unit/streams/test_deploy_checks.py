"""Outside development mode nothing starts on the public pseudonym key, a short key or a
public database password."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

import streams.cli_context as cli_context
import streams.cli_run as cli_run
from streams.cli_analyst import api_cmd
from streams.cli_edge import gateway_cmd
from streams.deploy_checks import UnsafeSettingsError, require_safe
from streams.settings import PROJECT_ROOT, Settings

GOOD_KEY = "k" * 48
PG = "postgresql+psycopg://wardwatch:{}@db.hospital.example:5432/wardwatch"


def _prod(**kw: object) -> Settings:
    return Settings(dev_mode=False, **kw)  # type: ignore[arg-type]


def test_the_public_default_key_is_refused() -> None:
    with pytest.raises(UnsafeSettingsError, match="public default") as e:
        require_safe(_prod(), "gateway", database=False)
    assert "wardwatch-local-development-key" not in str(e.value)  # never quoted


def test_a_short_key_is_refused() -> None:
    with pytest.raises(UnsafeSettingsError, match="is 12 bytes; use at least 32"):
        require_safe(_prod(pseudonym_key="short-secret"), "gateway", database=False)


@pytest.mark.parametrize("password", ["wardwatch", "postgres", "Password"])
def test_public_database_passwords_are_refused(password: str) -> None:
    s = _prod(pseudonym_key=GOOD_KEY, database_url=PG.format(password))
    with pytest.raises(UnsafeSettingsError, match="default or public database password") as e:
        require_safe(s, "api")
    assert password not in str(e.value)
    require_safe(s, "gateway", database=False)  # the gateway holds no database


def test_safe_settings_and_other_databases_start() -> None:
    require_safe(_prod(pseudonym_key=GOOD_KEY, database_url=PG.format("x9!long-random")), "api")
    require_safe(_prod(pseudonym_key=GOOD_KEY), "worker")  # SQLite: a file, no password
    require_safe(
        _prod(pseudonym_key=GOOD_KEY, database_url="postgresql+psycopg://svc@db/wardwatch"),
        "worker",
    )  # no password in the URL: certificate or peer authentication


def test_development_mode_starts_anyway_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    require_safe(Settings(dev_mode=True), "worker")
    assert "development mode, starting anyway" in caplog.text


def test_the_commands_refuse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_context, "_SETTINGS", _prod())
    for cmd in (gateway_cmd, api_cmd):
        r = CliRunner().invoke(cmd, [])
        assert r.exit_code == 1 and "refuses to start" in r.output, r.output
    r = CliRunner().invoke(cli_run.replay_cmd, [str(PROJECT_ROOT / "README.md")])
    assert r.exit_code == 1 and "replay refuses to start" in r.output, r.output


def test_the_worker_refuses_before_it_connects() -> None:
    env = {**os.environ, "WARDWATCH_DEV_MODE": "0", "WARDWATCH_KAFKA_BOOTSTRAP": "127.0.0.1:1"}
    r = subprocess.run(
        [sys.executable, "-m", "streams", "worker"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0
    assert "worker refuses to start" in r.stderr and "WARDWATCH_DEV_MODE=1" in r.stderr, r.stderr
