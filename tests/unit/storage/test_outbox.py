"""The transactional outbox: one row per alert and live subscriber, in the alert's own
transaction, numbered per subscriber without gaps."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, func, select

from storage import access, outbox
from storage.db import AlertRow, count_alerts, make_engine, migrate, write_alerts
from storage.errors import StoragePermanentError
from storage.models import Alert, OutboxEntry

T0 = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)


def alert(i: int, hours: float | None = None) -> AlertRow:
    raised = T0 + timedelta(hours=i if hours is None else hours)
    resource = {"resourceType": "RiskAssessment", "id": f"a{i}"}
    return AlertRow(alert_id=f"a{i}", patient=f"p{i % 2}", raised_at=raised, severity="warning",
                    reason="r", explanation={"risk_assessment": resource})  # fmt: skip


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'o.db'}"
    migrate(url)
    eng = make_engine(url)
    yield eng
    eng.dispose()


def sub(engine: Engine, name: str = "x") -> str:
    return outbox.create_subscriber(
        engine, kind="rest-hook", topic="t", endpoint=f"http://{name}", payload="id-only", who="w"
    ).id


def numbers(engine: Engine, sid: str) -> list[tuple[int, str]]:
    return [(e.event_number, e.alert_id) for e in outbox.events(engine, sid, 1)]


def test_events_are_numbered_per_subscriber_in_alert_order(engine: Engine) -> None:
    a, b = sub(engine, "a"), sub(engine, "b")
    # written in reverse id order: numbered by raised_at
    assert write_alerts(engine, [alert(2), alert(1), alert(3, hours=0.5)], outbox.enqueue) == 3
    assert numbers(engine, a) == [(1, "a3"), (2, "a1"), (3, "a2")]
    assert write_alerts(engine, [alert(1), alert(2)], outbox.enqueue) == 0  # replay: nothing
    outbox.switch_off(engine, b)
    c = sub(engine, "c")
    write_alerts(engine, [alert(4), alert(5)], outbox.enqueue)
    assert numbers(engine, a) == [(1, "a3"), (2, "a1"), (3, "a2"), (4, "a4"), (5, "a5")]
    assert [n for n, _ in numbers(engine, b)] == [1, 2, 3]  # off: kept, no more
    assert numbers(engine, c) == [(1, "a4"), (2, "a5")]  # from its creation on
    state = outbox.get_subscriber(engine, a)
    assert state is not None and state.events_since_start == 5


def test_outbox_rows_are_in_the_alerts_transaction(engine: Engine) -> None:
    sid = sub(engine)

    def enqueue_then_fail(conn: Connection, ids: list[int]) -> None:
        outbox.enqueue(conn, ids)
        raise RuntimeError("crash after queueing")

    with pytest.raises(RuntimeError):
        write_alerts(engine, [alert(1)], enqueue_then_fail)
    assert count_alerts(engine) == 0
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(OutboxEntry)).scalar_one() == 0
    state = outbox.get_subscriber(engine, sid)
    assert state is not None and state.events_since_start == 0


def test_pending_delivered_failure_and_error(engine: Engine) -> None:
    sid = sub(engine)
    write_alerts(engine, [alert(i) for i in range(1, 6)], outbox.enqueue)
    assert [e.event_number for e in outbox.pending(engine, sid, 2)] == [1, 2]
    outbox.mark_delivered(engine, sid, 2)
    assert [e.event_number for e in outbox.pending(engine, sid, 10)] == [3, 4, 5]
    assert outbox.record_failure(engine, sid, "HTTP 503", timedelta(hours=6)) == "requested"
    assert outbox.record_failure(engine, sid, "HTTP 503", timedelta(0)) == "error"
    state = outbox.get_subscriber(engine, sid)
    assert state is not None and state.last_error == "HTTP 503" and state.failing_since
    write_alerts(engine, [alert(6)], outbox.enqueue)  # an error subscriber still collects
    assert [e.event_number for e in outbox.events(engine, sid, 4, 6)] == [4, 5, 6]
    outbox.mark_delivered(engine, sid, 6)
    state = outbox.get_subscriber(engine, sid)
    assert state is not None
    assert (state.status, state.delivered_through, state.failing_since) == ("active", 6, None)
    assert outbox.pending(engine, sid, 10) == []


def test_bad_kind_or_payload_is_refused(engine: Engine) -> None:
    with pytest.raises(ValueError, match="kind"):
        outbox.create_subscriber(engine, kind="email", topic="t", endpoint="e", payload="id-only",
                                 who="w")  # fmt: skip
    with pytest.raises(ValueError, match="payload"):
        outbox.create_subscriber(engine, kind="rest-hook", topic="t", endpoint="e", payload="all",
                                 who="w")  # fmt: skip


def test_acknowledged_and_resolved_alerts_are_queued_as_updates(engine: Engine) -> None:
    sid = sub(engine)
    write_alerts(engine, [alert(1), alert(2)], outbox.enqueue)
    access.transition_alert(engine, "a1", "acknowledge", "nurse")
    access.transition_alert(engine, "a1", "acknowledge", "nurse")  # a no-op: not queued
    access.transition_alert(engine, "a2", "resolve", "nurse")
    access.transition_alert(engine, "a1", "resolve", "doctor")
    later = sub(engine, "later")  # from its creation on
    with pytest.raises(access.AlertStateError):
        access.transition_alert(engine, "a2", "resolve", "nurse")  # refused: not queued
    events = outbox.events(engine, sid, 1)
    assert [(e.event_number, e.alert_id, e.kind) for e in events] == [
        (1, "a1", "raised"), (2, "a2", "raised"), (3, "a1", "acknowledged"),
        (4, "a2", "resolved"), (5, "a1", "resolved"),
    ]  # fmt: skip
    assert events[0].resource == {"resourceType": "RiskAssessment", "id": "a1"}
    ack, resolved = events[2].resource, events[4].resource
    assert (ack["id"], ack["status"], resolved["status"]) == ("a1", "amended", "amended")
    assert ack["note"][-1]["text"].startswith("Alert acknowledged at ")
    # each update keeps the body it was queued with: a resend says the same
    ack_state = [x for x in ack["extension"][0]["extension"] if x["url"] == "status"]
    assert ack_state == [{"url": "status", "valueCode": "acknowledged"}]
    assert "nurse" not in str(events) and "doctor" not in str(events)  # who stays in the db
    assert outbox.events(engine, later, 1) == []
    state = outbox.get_subscriber(engine, sid)
    assert state is not None and state.events_since_start == 5


def test_an_update_is_in_the_transitions_transaction(engine: Engine) -> None:
    sid = sub(engine)
    write_alerts(engine, [alert(1)], outbox.enqueue)
    with engine.begin() as conn:  # a subscriber table that refuses the new number
        conn.exec_driver_sql(
            "CREATE TRIGGER refuse BEFORE UPDATE OF events_since_start ON subscribers "
            "BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
    with pytest.raises(StoragePermanentError):
        access.transition_alert(engine, "a1", "acknowledge", "nurse")
    with engine.connect() as conn:
        assert conn.execute(select(Alert.status)).scalars().all() == ["open"]
    assert [e.kind for e in outbox.events(engine, sid, 1)] == ["raised"]
