"""storage.access and the 0002 schema on SQLite: patients, views, tokens, audit, alert
workflow, dead-letter index, pagination and retention."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from storage import access
from storage.access import DeadLetterRow, Principal
from storage.db import (
    AlertRow,
    ScoreRow,
    head_revision,
    make_engine,
    migrate,
    require_current_schema,
    write_alerts,
    write_scores,
)
from storage.errors import SchemaOutOfDate

T0 = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)


def score(minute: int, patient: str = "pA", **kw: Any) -> ScoreRow:
    fields: dict[str, Any] = {
        "patient": patient,
        "scored_at": T0 + timedelta(minutes=minute),
        "model": "sepsis_transformer",
        "model_version": "1",
        "risk": min(minute / 1000, 1.0),
        "news2": minute % 21,
        "qsofa": 1,
        "sirs": 2,
        "alert": False,
    }
    fields.update(kw)
    return ScoreRow(**fields)


def alert(i: int, patient: str = "pA", **kw: Any) -> AlertRow:
    fields: dict[str, Any] = {
        "alert_id": f"a{i:04d}",
        "patient": patient,
        "raised_at": T0 + timedelta(minutes=i),
        "severity": "critical",
        "reason": "NEWS2 8 >= 7",
        "risk": 0.9,
        "news2": 8,
    }
    fields.update(kw)
    return AlertRow(**fields)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    migrate(url)
    eng = make_engine(url)
    yield eng
    eng.dispose()


def patients(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM patients ORDER BY patient")).mappings().all()
    return {r["patient"]: dict(r) for r in rows}


def test_patients_upserted_with_scores_idempotently_and_order_independently(
    engine: Engine,
) -> None:
    write_scores(engine, [score(10, risk=0.1, news2=1), score(30, risk=0.3, news2=3)])
    p = access.get_patient(engine, "pA")
    assert p is not None
    assert (p["first_seen"], p["last_seen"]) == (
        T0 + timedelta(minutes=10),
        T0 + timedelta(minutes=30),
    )
    assert (p["last_risk"], p["last_news2"]) == (0.3, 3)
    # a late, older score moves first_seen back but never overwrites the newer state
    write_scores(engine, [score(5, risk=0.9, news2=9)])
    p = access.get_patient(engine, "pA")
    assert p is not None
    assert p["first_seen"] == T0 + timedelta(minutes=5)
    assert (p["last_seen"], p["last_risk"], p["last_news2"]) == (T0 + timedelta(minutes=30), 0.3, 3)
    # a newer one does; a replay changes nothing
    write_scores(
        engine,
        [score(40, risk=None, degraded=True, alert=True, patient="pA"), score(1, patient="pB")],
    )
    before = patients(engine)
    assert before["pA"]["last_risk"] is None and before["pA"]["last_degraded"]
    assert before["pA"]["last_alert"]
    write_scores(engine, [score(40, risk=None, degraded=True, alert=True), score(1, patient="pB")])
    assert patients(engine) == before
    assert set(before) == {"pA", "pB"}


def test_hourly_view_and_alert_outcomes_view(engine: Engine) -> None:
    write_scores(engine, [score(m, risk=m / 200) for m in (0, 20, 40, 60, 80)])
    with engine.connect() as conn:
        hourly = conn.execute(
            text("SELECT hour, n_scores, max_risk, max_news2 FROM v_hourly_scores ORDER BY hour")
        ).all()
    assert [(h[1], h[2]) for h in hourly] == [(3, 0.2), (2, 0.4)]
    assert str(hourly[0][0]).startswith("2026-01-01 08:00")
    write_alerts(engine, [alert(1)])
    access.transition_alert(engine, "a0001", "acknowledge", "nurse")
    with engine.connect() as conn:
        out = conn.execute(text("SELECT * FROM v_alert_outcomes")).mappings().one()
    assert out["status"] == "acknowledged" and out["acknowledged_by"] == "nurse"
    assert out["seconds_to_acknowledge"] > 0 and out["seconds_to_resolve"] is None


def test_tokens_store_only_hashes_and_can_be_revoked(engine: Engine) -> None:
    tok = access.create_token(engine, "alice", "analyst")
    assert tok.startswith("ww_") and len(tok) > 40
    assert access.authenticate(engine, tok) == Principal("alice", "analyst")
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT * FROM api_tokens")).mappings().one()
    assert tok not in [str(v) for v in stored.values()]
    assert stored["token_sha256"] == access.hash_token(tok)
    assert access.authenticate(engine, tok + "x") is None
    assert access.authenticate(engine, "nonsense") is None
    with pytest.raises(access.TokenError, match="already exists"):
        access.create_token(engine, "alice", "admin")
    with pytest.raises(access.TokenError, match="role"):
        access.create_token(engine, "bob", "root")
    access.revoke_token(engine, "alice")
    assert access.authenticate(engine, tok) is None
    with pytest.raises(access.TokenError, match="no active token"):
        access.revoke_token(engine, "alice")
    assert access.list_tokens(engine)[0]["revoked_at"] is not None


def test_alert_workflow(engine: Engine) -> None:
    write_alerts(engine, [alert(1), alert(2)])
    a = access.transition_alert(engine, "a0001", "acknowledge", "nurse")
    assert a["status"] == "acknowledged" and a["acknowledged_by"] == "nurse"
    again = access.transition_alert(engine, "a0001", "acknowledge", "someone-else")
    assert again["acknowledged_by"] == "nurse"  # the first acknowledgement stands
    r = access.transition_alert(engine, "a0001", "resolve", "doctor")
    assert r["status"] == "resolved" and r["resolved_by"] == "doctor" and r["resolved_at"]
    with pytest.raises(access.AlertStateError, match="resolved"):
        access.transition_alert(engine, "a0001", "acknowledge", "nurse")
    with pytest.raises(access.AlertNotFound):
        access.transition_alert(engine, "nope", "resolve", "nurse")
    # a redelivered alert does not reset its workflow state
    write_alerts(engine, [alert(1)])
    assert access.query_alerts(engine, status="resolved")[0]["alert_id"] == "a0001"
    assert [x["alert_id"] for x in access.query_alerts(engine, status="open")] == ["a0002"]


def test_score_pagination_covers_everything_once(engine: Engine) -> None:
    # two patients scored at the same instants: the cursor must break ties by id
    write_scores(engine, [score(m // 2, patient=f"p{m % 2}") for m in range(57)])
    seen: list[int] = []
    cursor: str | None = None
    while True:
        rows, cursor = access.query_scores(engine, limit=10, cursor=cursor, with_features=False)
        seen += [r["id"] for r in rows]
        if cursor is None:
            break
    assert len(seen) == 57 == len(set(seen))
    rows, _ = access.query_scores(engine, patient="p1", min_risk=0.02, limit=1000)
    assert rows and all(r["patient"] == "p1" and r["risk"] >= 0.02 for r in rows)
    with pytest.raises(access.CursorError):
        access.query_scores(engine, cursor="garbage!")


def test_audit_log(engine: Engine) -> None:
    access.audit(engine, Principal("alice", "analyst"), "read", "GET /scores?patient=pA", "pA")
    (entry,) = access.fetch_audit(engine)
    assert entry["who"] == "alice" and entry["role"] == "analyst" and entry["patient"] == "pA"
    assert entry["at"].tzinfo is not None


def test_dead_letter_index_is_idempotent(engine: Engine) -> None:
    row = DeadLetterRow(
        topic="fhir.inbound", partition=3, offset=42, stage="normalise",
        reason="not JSON", received_at=T0,
    )  # fmt: skip
    assert access.write_dead_letters(engine, [row, row]) == 1
    assert access.write_dead_letters(engine, [row]) == 0


def test_purge_keeps_recent_rows_and_the_audit_log(engine: Engine) -> None:
    now = datetime.now(UTC)
    old, new = now - timedelta(days=40), now - timedelta(days=1)
    write_scores(engine, [score(0, scored_at=old, patient="old"), score(0, scored_at=new)])
    write_alerts(engine, [alert(1, raised_at=old), alert(2, raised_at=new)])
    access.audit(engine, Principal("a", "admin"), "read", "x")
    dry = access.purge(engine, 30, dry_run=True)
    assert dry == {"scores": 1, "alerts": 1, "dead_letters": 0, "patients": 1}
    assert access.purge(engine, 30) == dry
    assert access.purge(engine, 30) == {"scores": 0, "alerts": 0, "dead_letters": 0, "patients": 0}
    assert list(patients(engine)) == ["pA"]
    assert len(access.fetch_audit(engine)) == 1
    with pytest.raises(ValueError, match="positive"):
        access.purge(engine, 0)


def test_dead_letter_row_from_headers() -> None:
    from streams.persist import dead_letter_row

    headers = [
        ("wardwatch.reason", b"MalformedJson: not JSON"),
        ("wardwatch.stage", b"normalise"),
        ("wardwatch.source.topic", b"fhir.inbound"),
        ("wardwatch.source.partition", b"5"),
        ("wardwatch.source.offset", b"1234"),
        ("wardwatch.dead_lettered_at", b"1767254400000"),
    ]
    row = dead_letter_row(headers, ("fhir.inbound.dlq", 0, 9))
    assert (row.topic, row.partition, row.offset, row.stage) == (
        "fhir.inbound",
        5,
        1234,
        "normalise",
    )
    assert row.reason == "MalformedJson: not JSON"
    assert row.received_at == datetime(2026, 1, 1, 8, 0, tzinfo=UTC)
    odd = dead_letter_row({"wardwatch.source.partition": b"x"}, ("fhir.inbound.dlq", 0, 9))
    assert (odd.topic, odd.partition, odd.offset, odd.stage) == (
        "fhir.inbound.dlq",
        0,
        9,
        "unknown",
    )


def test_query_hash_is_of_the_normalised_parameters() -> None:
    base = access.query_sha256("scores", {"patient": "p1", "from": T0, "limit": 50})
    assert len(base) == 64 and int(base, 16) >= 0
    # key order, None parameters and the time zone a time was written in do not matter
    plus1 = T0.astimezone(timezone(timedelta(hours=1)))
    same = access.query_sha256("scores", {"limit": 50, "to": None, "from": plus1, "patient": "p1"})
    assert same == base
    assert access.query_sha256("alerts", {"patient": "p1", "from": T0, "limit": 50}) != base
    assert access.query_sha256("scores", {"patient": "p2", "from": T0, "limit": 50}) != base
    assert access.query_sha256("scores", {"patient": "p1", "from": T0, "limit": 51}) != base


def test_audit_names_the_patients_returned_up_to_the_limit(engine: Engine) -> None:
    who = Principal("alice", "analyst")
    access.audit(engine, who, "read", "GET /alerts", patients=["pB", "pA", "pB"], query="h1")
    access.audit(engine, who, "read", "GET /scores", patients=["pC", "pC"])
    many = [f"p{i:04d}" for i in range(access.AUDIT_MAX_PATIENTS + 1)]
    access.audit(engine, who, "read", "GET /scores?limit=5000", patients=many)
    access.audit(engine, who, "read", "GET /alerts?status=open", patients=[])
    rows = access.fetch_audit(engine)[::-1]
    got = [(r["patient"], r["patients"], r["patient_count"], r["query_sha256"]) for r in rows]
    assert got == [
        (None, ["pA", "pB"], 2, "h1"),
        ("pC", ["pC"], 1, None),
        (None, None, access.AUDIT_MAX_PATIENTS + 1, None),  # too many: only the count
        (None, [], 0, None),
    ]


def test_audit_rows_written_before_0003_stay_valid(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    migrate(url, "0002")
    eng = make_engine(url)
    with eng.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO audit_log (at, who, role, action, resource, patient) "
                "VALUES ('2026-01-01 08:00:00', 'bob', 'admin', 'read', 'GET /scores', 'p9')"
            )
        )
    migrate(url)
    (row,) = access.fetch_audit(eng)
    assert (row["who"], row["patient"], row["patients"], row["patient_count"]) == (
        "bob", "p9", None, None,
    )  # fmt: skip
    eng.dispose()


def test_require_current_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'rev.db'}"
    eng = make_engine(url)
    with pytest.raises(SchemaOutOfDate, match=r"\(none\).*wardwatch db upgrade"):
        require_current_schema(eng)
    migrate(url, "0002")
    with pytest.raises(
        SchemaOutOfDate, match=f"revision 0002, this version needs {head_revision()}"
    ):
        require_current_schema(eng)
    migrate(url)
    assert require_current_schema(eng) == head_revision()
    eng.dispose()
