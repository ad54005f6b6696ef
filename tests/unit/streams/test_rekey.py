"""Rotating the pseudonym key: the edge maps old to new pseudonyms, the database is
renamed by the map in one transaction, and a patient's history stays one history."""

from __future__ import annotations

import csv
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select, text

import streams.cli_context as cli_context
from fhir.pseudonym import pseudonymise
from storage.db import (
    AlertRow,
    ScoreRow,
    fetch_scores,
    make_engine,
    migrate,
    write_alerts,
    write_scores,
)
from storage.models import AuditEntry
from storage.rekey import RekeyConflictError, rekey
from streams.cli_rekey import rekey_cmd
from streams.settings import Settings

OLD = "o" * 40
NEW = "n" * 40
T0 = datetime(2026, 1, 1, 8, tzinfo=UTC)


def score(patient: str, hour: int) -> ScoreRow:
    return ScoreRow(
        patient=patient,
        scored_at=T0 + timedelta(hours=hour),
        model="sepsis_transformer",
        model_version="3",
        risk=0.1 * hour,
        news2=hour,
        event_offset=f"in/0/{hour}-{patient}",
    )


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'rekey.db'}"
    migrate(url)
    monkeypatch.setattr(
        cli_context,
        "_SETTINGS",
        Settings(database_url=url, pseudonym_key=OLD, new_pseudonym_key=NEW, dev_mode=True),
    )
    return url


def test_map_then_apply_keeps_each_history_under_its_new_pseudonym(db: str, tmp_path: Path) -> None:
    mrns = ["MRN-1001", "MRN-1002", "MRN-1003"]
    old = {m: pseudonymise(m, OLD.encode(), "HOSP") for m in mrns}
    new = {m: pseudonymise(m, NEW.encode(), "HOSP") for m in mrns}
    eng = make_engine(db)
    write_scores(eng, [score(old[m], h) for m in mrns[:2] for h in range(3)])
    write_alerts(
        eng,
        [
            AlertRow(
                alert_id="a1",
                patient=old["MRN-1001"],
                raised_at=T0,
                severity="warning",
                reason="risk 0.70 >= 0.50",
                risk=0.7,
                news2=5,
            )
        ],
    )
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(mrns) + "\n\n")
    out = tmp_path / "map.csv"
    r = CliRunner().invoke(
        rekey_cmd, ["map", "--ids", str(ids), "--system", "HOSP", "--out", str(out)]
    )
    assert r.exit_code == 0, r.output
    pairs = list(csv.DictReader(out.open()))
    assert {(p["old"], p["new"]) for p in pairs} == {(old[m], new[m]) for m in mrns}
    assert not any(m in out.read_text() for m in mrns), "the map holds no identifier"

    dry = CliRunner().invoke(rekey_cmd, ["apply", "--map", str(out), "--dry-run"])
    assert dry.exit_code == 0 and "would rename" in dry.output, dry.output
    assert {s.patient for s in fetch_scores(eng)} == {old[m] for m in mrns[:2]}

    r = CliRunner().invoke(rekey_cmd, ["apply", "--map", str(out)])
    assert r.exit_code == 0, r.output
    assert "scores 6" in r.output and "alerts 1" in r.output and "patients 2" in r.output
    by_patient: dict[str, list[float]] = {}
    for s in fetch_scores(eng):
        by_patient.setdefault(s.patient, []).append(s.risk)
    assert set(by_patient) == {new[m] for m in mrns[:2]}
    assert all(len(v) == 3 for v in by_patient.values())
    with eng.connect() as conn:
        assert conn.execute(text("SELECT patient FROM alerts")).scalar() == new["MRN-1001"]
        audit = conn.execute(select(AuditEntry).where(AuditEntry.action == "rekey")).all()
        assert len(audit) == 1
    # applied twice: nothing left to rename
    again = CliRunner().invoke(rekey_cmd, ["apply", "--map", str(out)])
    assert again.exit_code == 0 and "renamed 0 rows" in again.output, again.output
    eng.dispose()


def test_a_new_pseudonym_with_rows_already_is_refused_and_nothing_changes(db: str) -> None:
    eng = make_engine(db)
    write_scores(eng, [score("pt-old", 1), score("pt-new", 2)])
    with pytest.raises(RekeyConflictError):
        rekey(eng, {"pt-old": "pt-new"})
    assert sorted(s.patient for s in fetch_scores(eng)) == ["pt-new", "pt-old"]
    with pytest.raises(ValueError, match="same new one"):
        rekey(eng, {"pt-a": "pt-x", "pt-b": "pt-x"})
    with pytest.raises(ValueError, match="overlap"):
        rekey(eng, {"pt-a": "pt-b", "pt-b": "pt-c"})
    eng.dispose()


def test_map_refuses_without_a_new_key_or_with_the_same_key(
    db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("MRN-1\n")
    args = ["map", "--ids", str(ids), "--system", "HOSP", "--out", str(tmp_path / "m.csv")]
    monkeypatch.setattr(cli_context, "_SETTINGS", Settings(database_url=db, pseudonym_key=OLD))
    r = CliRunner().invoke(rekey_cmd, args)
    assert r.exit_code == 1 and "WARDWATCH_NEW_PSEUDONYM_KEY" in r.output
    monkeypatch.setattr(
        cli_context,
        "_SETTINGS",
        Settings(database_url=db, pseudonym_key=OLD, new_pseudonym_key=OLD),
    )
    r = CliRunner().invoke(rekey_cmd, args)
    assert r.exit_code == 1 and "is the current key" in r.output
    monkeypatch.setattr(
        cli_context,
        "_SETTINGS",
        Settings(database_url=db, pseudonym_key=OLD, new_pseudonym_key="short", dev_mode=False),
    )
    r = CliRunner().invoke(rekey_cmd, args)
    assert r.exit_code == 1 and "refuses to start" in r.output, r.output
