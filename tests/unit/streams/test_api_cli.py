"""The analyst commands (token, scores, alerts, export, purge) on SQLite, through click."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

import streams.cli_context as cli_context
from storage import access
from storage.db import (
    AlertRow,
    ScoreRow,
    head_revision,
    make_engine,
    migrate,
    write_alerts,
    write_scores,
)
from storage.errors import StorageUnavailable
from streams.cli_analyst import (
    COMMANDS,
    alerts_cmd,
    api_cmd,
    export_cmd,
    purge_cmd,
    scores_cmd,
    token_cmd,
)
from streams.cli_db import db_cmd
from streams.settings import Settings

T0 = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setattr(cli_context, "_SETTINGS", Settings(database_url=url, retention_days=30))
    migrate(url)
    eng = make_engine(url)
    write_scores(
        eng,
        [
            ScoreRow(
                patient=f"p{i % 2}", scored_at=T0 + timedelta(hours=i), model="m",
                model_version="1", risk=i / 10, news2=i, news2_breakdown={"rr": 1},
                features={"hr": [80.0, None]}, degraded=False,
            )
            for i in range(10)
        ],
    )  # fmt: skip
    write_alerts(
        eng,
        [
            AlertRow(
                alert_id="a1", patient="p0", raised_at=T0, severity="critical", reason="NEWS2 8"
            )
        ],
    )
    eng.dispose()
    return url


def test_commands_are_registered() -> None:
    assert {c.name for c in COMMANDS} == {"api", "token", "scores", "alerts", "export", "purge"}


def test_token_create_prints_it_last_and_stores_the_hash(db: str) -> None:
    r = CliRunner().invoke(token_cmd, ["create", "--role", "alerting", "--name", "nurse"])
    assert r.exit_code == 0, r.output
    token = r.output.strip().splitlines()[-1]
    assert token.startswith("ww_") and " " not in token
    eng = make_engine(db)
    assert access.authenticate(eng, token) == access.Principal("nurse", "alerting")
    again = CliRunner().invoke(token_cmd, ["create", "--role", "admin", "--name", "nurse"])
    assert again.exit_code == 1 and "already exists" in again.output
    bad = CliRunner().invoke(token_cmd, ["create", "--role", "root", "--name", "x"])
    assert bad.exit_code == 2 and "analyst" in bad.output
    assert CliRunner().invoke(token_cmd, ["revoke", "nurse"]).exit_code == 0
    assert access.authenticate(eng, token) is None
    r = CliRunner().invoke(token_cmd, ["revoke", "nurse"])
    assert r.exit_code == 1 and "no active token" in r.output
    eng.dispose()


def test_scores_and_alerts_tables(db: str) -> None:
    r = CliRunner().invoke(scores_cmd, ["--patient", "p1", "--min-risk", "0.5"])
    assert r.exit_code == 0, r.output
    assert "3 scores" in r.output and "p1" in r.output and "p0" not in r.output
    r = CliRunner().invoke(alerts_cmd, ["--status", "open"])
    assert r.exit_code == 0 and "NEWS2 8" in r.output and "critical" in r.output
    r = CliRunner().invoke(scores_cmd, ["--from", "yesterday"])
    assert r.exit_code == 2 and "ISO" in r.output


def test_export_csv_and_parquet(db: str, tmp_path: Path) -> None:
    out = tmp_path / "s.csv"
    args = ["scores", "--from", "2026-01-01T10:00", "--to", "2026-01-01T15:00+00:00"]
    r = CliRunner().invoke(export_cmd, [*args, "--out", str(out)])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(out.open()))
    assert [row["scored_at"][:13] for row in rows] == [f"2026-01-01T{h}" for h in range(10, 15)]
    assert json.loads(rows[0]["features"]) == {"hr": [80.0, None]}
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "s.parquet"
    r = CliRunner().invoke(export_cmd, [*args, "--format", "parquet", "--out", str(out)])
    assert r.exit_code == 0, r.output
    table = pq.read_table(out)
    assert (
        table.num_rows == 5 and str(table.schema.field("scored_at").type) == "timestamp[us, tz=UTC]"
    )
    assert not (tmp_path / "s.parquet.partial").exists()


def test_purge_uses_the_retention_setting(db: str) -> None:
    r = CliRunner().invoke(purge_cmd, ["--dry-run"])
    assert r.exit_code == 0
    assert (
        "would delete 10 scores, 1 alerts, 0 dead_letters, 2 patients (older than 30 days)"
        in r.output
    )
    r = CliRunner().invoke(purge_cmd, ["--days", "100000"])
    assert "deleted 0 scores" in r.output
    assert CliRunner().invoke(purge_cmd, ["--days", "0"]).exit_code == 2


def test_cli_reads_and_exports_are_audited(db: str, tmp_path: Path) -> None:
    assert CliRunner().invoke(scores_cmd, ["--patient", "p1", "--min-risk", "0.5"]).exit_code == 0
    assert CliRunner().invoke(alerts_cmd, ["--status", "open"]).exit_code == 0
    out = tmp_path / "s.csv"
    r = CliRunner().invoke(export_cmd, ["scores", "--to", "2026-01-01T12:00", "--out", str(out)])
    assert r.exit_code == 0, r.output
    eng = make_engine(db)
    log = access.fetch_audit(eng)[::-1]
    eng.dispose()
    cols = ("role", "action", "patient", "patients", "patient_count")
    assert [tuple(e[c] for c in cols) for e in log] == [
        ("cli", "read", "p1", ["p1"], 1),
        ("cli", "read", "p0", ["p0"], 1),  # the one open alert is p0's
        ("cli", "export", None, ["p0", "p1"], 2),
    ]  # fmt: skip
    assert all(e["who"].startswith("cli:") for e in log)
    assert log[0]["query_sha256"] == access.query_sha256(
        "scores", {"patient": "p1", "min_risk": 0.5, "limit": 50, "newest": True}
    )
    to = datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert log[2]["query_sha256"] == access.query_sha256(
        "export", {"what": "scores", "to": to, "format": "csv"}
    )
    assert "(4 rows)" in log[2]["resource"]


def test_an_export_that_cannot_be_audited_is_not_written(
    db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unavailable(*_a: object, **_k: object) -> None:
        raise StorageUnavailable("audit_log is away")

    monkeypatch.setattr(access, "audit", unavailable)
    out = tmp_path / "s.csv"
    r = CliRunner().invoke(export_cmd, ["scores", "--out", str(out)])
    assert r.exit_code == 1 and "audit_log is away" in r.output
    assert not out.exists() and not (tmp_path / "s.csv.partial").exists()
    r = CliRunner().invoke(scores_cmd, [])
    assert r.exit_code == 1 and "p0" not in r.output  # nothing printed unaudited


def test_db_upgrade_and_the_api_refusing_a_schema_behind_head(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'behind.db'}"
    migrate(url, "0002")
    monkeypatch.setattr(cli_context, "_SETTINGS", Settings(database_url=url, dev_mode=False))
    monkeypatch.setattr(cli_context, "require_safe", lambda *_a, **_k: None)
    r = CliRunner().invoke(api_cmd, [])
    assert r.exit_code == 1 and "run `wardwatch db upgrade`" in r.output, r.output
    r = CliRunner().invoke(db_cmd, ["current"])
    assert r.exit_code == 1 and f"schema at revision 0002; newest {head_revision()}" in r.output
    # the owner's URL, when set, is the one db upgrade migrates
    owner = f"sqlite:///{tmp_path / 'owner.db'}"
    monkeypatch.setattr(
        cli_context, "_SETTINGS", Settings(database_url=url, migration_database_url=owner)
    )
    assert CliRunner().invoke(db_cmd, ["upgrade"]).output.strip() == (
        f"schema at revision {head_revision()} (was empty)"
    )
    monkeypatch.setattr(cli_context, "_SETTINGS", Settings(database_url=url))
    r = CliRunner().invoke(db_cmd, ["upgrade"])
    assert r.exit_code == 0 and f"schema at revision {head_revision()} (was 0002)" in r.output
    assert CliRunner().invoke(db_cmd, ["current"]).exit_code == 0
    r = CliRunner().invoke(db_cmd, ["grant", "--api-role", "x"])
    assert r.exit_code == 1 and "need PostgreSQL" in r.output
