"""Operability without services: metric names and labels, lag and readiness arithmetic,
log lines (one JSON object each, with event fields), and that patient data does not get
into a log line through a dead-letter reason or a Faust repr."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from faust.events import Event
from faust.types import TP
from faust.types.tuples import Message, PendingMessage
from mode.utils.logging import setup_logging
from pydantic import ValidationError

from inference.client import TritonRiskClient
from inference.errors import ModelError, ModelUnavailable
from inference.scoring.envelope import normalise
from storage.db import make_engine
from streams.errors import reason_of
from streams.logs import JsonLogFormatter, TextLogFormatter, logging_config, redact_payloads
from streams.observe import (
    LATENCY_BUCKETS,
    DatabaseProbe,
    FlowSensor,
    Metrics,
    consumer_lag,
    event_fields,
    event_to_score_s,
    readiness_problems,
    safe_reason,
)
from streams.settings import Settings

# Identity a hospital feed carries; none of it may reach a log line.
NAME, GIVEN, FAMILY = "Florence Nightingale", "Florence", "Nightingale"
MRN, STREET, POSTCODE = "00442817", "Lea Hurst", "DE4 5GA"
PHI = (GIVEN, FAMILY, MRN, STREET, POSTCODE)


def obs(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "resourceType": "Observation",
        "id": "hr-1",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": "Patient/pt-aaaaaaaaaaaaaaaaaaaa"},
        "effectiveDateTime": "2026-01-01T00:00:00Z",
        "valueQuantity": {
            "value": 88,
            "unit": "/min",
            "system": "http://unitsofmeasure.org",
            "code": "/min",
        },
    }
    base.update(over)
    return base


# Raw (never pseudonymised) inputs whose refusal reasons quote the patient's identity.
RAW_REFUSED = {
    "subject by identifier": obs(
        subject={"reference": f"Patient?identifier=urn:mrn|{MRN}", "display": NAME}
    ),
    "name as a value": obs(
        valueQuantity={"value": NAME, "unit": "/min", "system": "http://unitsofmeasure.org"}
    ),
    "address as a time": obs(effectiveDateTime=f"{STREET}, {POSTCODE}"),
    "bundle entries": {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": obs(subject={"reference": f"Person/{NAME}"})},
            {"resource": obs(id="hr-2", effectiveDateTime=f"{STREET} {MRN}")},
        ],
    },
}


def refusal_reason(doc: dict[str, Any]) -> str:
    """The reason the normalise agent would dead-letter ``doc`` with (as the core does)."""
    try:
        result = normalise(orjson.dumps(doc), source="t/0/0", inbound_ts_ms=None)
    except Exception as exc:
        return reason_of(exc)
    assert result.rejected, "expected a refusal"
    return f"{len(result.rejected)} Bundle entries refused: " + "; ".join(result.rejected[:10])


# ------------------------------------------------------------------ metrics


def test_metric_names_and_labels_are_exposed() -> None:
    m = Metrics()
    m.events_in.labels("fhir.inbound").inc(3)
    m.events_out.labels("risk.scores").inc()
    m.dead_letter("normalise")
    m.batch("score", 7)
    m.triton_request(5, 0.004, "ok")
    m.set_build_info("0.1.0", "sepsis_transformer", "3")
    m.set_lag({("fhir.inbound", 2): 11})
    text = m.exposition().decode()
    for line in (
        'wardwatch_events_in_total{topic="fhir.inbound"} 3.0',
        'wardwatch_events_out_total{topic="risk.scores"} 1.0',
        'wardwatch_dead_letters_total{stage="normalise"} 1.0',
        'wardwatch_batch_size_count{agent="score"} 1.0',
        'wardwatch_triton_request_seconds_count{outcome="ok"} 1.0',
        "wardwatch_triton_batch_size_sum 5.0",
        'wardwatch_consumer_lag{partition="2",topic="fhir.inbound"} 11.0',
        'wardwatch_build_info{model="sepsis_transformer",model_version="3",version="0.1.0"} 1.0',
    ):
        assert line in text, line


def test_each_metrics_object_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()
    a.dead_letter("score")
    assert a.value("wardwatch_dead_letters_total", {"stage": "score"}) == 1.0
    assert b.value("wardwatch_dead_letters_total", {"stage": "score"}) == 0.0


def test_scored_counts_degraded_alerts_and_latency() -> None:
    m = Metrics()
    now = 1_800_000_000.0
    m.scored({"degraded": False, "inbound_ts_ms": int((now - 0.3) * 1000)}, None, now_s=now)
    m.scored({"degraded": True, "inbound_ts_ms": int((now - 20) * 1000)}, "high", now_s=now)
    m.scored({"degraded": False, "inbound_ts_ms": None}, "medium", now_s=now)
    assert m.value("wardwatch_scores_total") == 3
    assert m.value("wardwatch_scores_degraded_total") == 1
    assert m.value("wardwatch_alerts_raised_total", {"severity": "high"}) == 1
    assert m.value("wardwatch_alerts_raised_total", {"severity": "medium"}) == 1
    h = "wardwatch_event_to_score_seconds"
    assert m.value(f"{h}_count") == 2, "a score without an inbound time has no latency"
    assert m.value(f"{h}_bucket", {"le": "0.25"}) == 0
    assert m.value(f"{h}_bucket", {"le": "0.5"}) == 1
    assert m.value(f"{h}_bucket", {"le": "10.0"}) == 1
    assert m.value(f"{h}_bucket", {"le": "30.0"}) == 2
    assert m.value(f"{h}_sum") == pytest.approx(20.3, abs=0.01)


def test_latency_buckets_span_10ms_to_a_minute() -> None:
    assert LATENCY_BUCKETS[0] == 0.01
    assert LATENCY_BUCKETS[-1] == 60.0
    assert list(LATENCY_BUCKETS) == sorted(LATENCY_BUCKETS)


@pytest.mark.parametrize(
    ("ts", "now", "want"),
    [(1000, 2.5, 1.5), (3000, 2.0, 0.0), (None, 5.0, None), (0, 5.0, None), (True, 5.0, None)],
)
def test_event_to_score_seconds(ts: Any, now: float, want: float | None) -> None:
    assert event_to_score_s(ts, now) == want


def test_lag_gauge_forgets_partitions_no_longer_assigned() -> None:
    m = Metrics()
    m.set_lag({("a", 0): 5, ("a", 1): 2})
    m.set_lag({("a", 1): 0})
    assert (
        m.registry.get_sample_value("wardwatch_consumer_lag", {"topic": "a", "partition": "0"})
        is None
    )
    assert m.value("wardwatch_consumer_lag", {"topic": "a", "partition": "1"}) == 0


def test_consumer_lag_is_end_offset_minus_committed() -> None:
    a0, a1, a2, b0 = TP("a", 0), TP("a", 1), TP("a", 2), TP("b", 0)
    lag = consumer_lag({a0: 100, a1: 7, a2: None, b0: 4}, {a0: 60, a1: None, b0: 9})
    # no commit yet: all of it; end unknown: left out; committed past a stale end: 0
    assert lag == {("a", 0): 40, ("a", 1): 7, ("b", 0): 0}


def test_flow_sensor_counts_per_topic() -> None:
    m = Metrics()
    sensor = FlowSensor(m)
    for offset in range(3):
        sensor.on_message_in(TP("fhir.inbound", 1), offset, None)
    state = sensor.on_send_initiated(None, "risk.scores", None, 0, 10)

    class Meta:
        topic = "risk.scores"

    sensor.on_send_completed(None, state, Meta())
    sensor.on_send_error(None, RuntimeError("x"), sensor.on_send_initiated(None, "dlq", None, 0, 1))
    assert m.value("wardwatch_events_in_total", {"topic": "fhir.inbound"}) == 3
    assert m.value("wardwatch_events_out_total", {"topic": "risk.scores"}) == 1
    assert m.value("wardwatch_send_errors_total", {"topic": "dlq"}) == 1


# ------------------------------------------------------------------ triton observer


class _StubTriton(TritonRiskClient):
    def __init__(self, outcome: str, **kw: Any) -> None:
        super().__init__(max_batch=4, timeout_s=1.0, **kw)
        self.outcome = outcome

    async def _send_chunk(self, chunk: Any) -> Any:
        await asyncio.sleep(0.01)
        if self.outcome == "unavailable":
            raise ModelUnavailable("away")
        if self.outcome == "error":
            raise ModelError("bad shape")
        return np.full(chunk.shape[0], 0.5, dtype=np.float32)


@pytest.mark.parametrize("outcome", ["ok", "unavailable", "error"])
def test_triton_observer_sees_each_request(outcome: str) -> None:
    m = Metrics()
    client = _StubTriton(outcome, observer=m.triton_request)
    windows = np.zeros((6, 48, 3), dtype=np.float32)  # two requests: 4 + 2
    if outcome == "ok":
        assert asyncio.run(client.predict(windows)).shape == (6,)
    else:
        with pytest.raises(ModelUnavailable if outcome == "unavailable" else ModelError):
            asyncio.run(client.predict(windows))
    assert m.value("wardwatch_triton_batch_size_count") == 2
    assert m.value("wardwatch_triton_batch_size_sum") == 6
    secs = m.value("wardwatch_triton_request_seconds_sum", {"outcome": outcome})
    assert secs >= 0.02


def test_a_failing_observer_does_not_fail_the_prediction() -> None:
    def broken(batch: int, seconds: float, outcome: str) -> None:
        raise RuntimeError("metrics down")

    client = _StubTriton("ok", observer=broken)
    assert asyncio.run(client.predict(np.zeros((2, 48, 3), dtype=np.float32))).shape == (2,)


# ------------------------------------------------------------------ readiness


def test_readiness_problems_name_what_is_not_ready() -> None:
    ok = {"assigned": True, "rebalancing": False, "recovering": False}
    assert readiness_problems(**ok, producer=None, database=None) == {}
    got = readiness_problems(
        assigned=False,
        rebalancing=False,
        recovering=True,
        producer="Kafka unreachable",
        database="database unavailable (OperationalError)",
    )
    assert set(got) == {"partitions", "tables", "producer", "database"}
    assert got["database"] == "database unavailable (OperationalError)"
    assert (
        "rebalancing"
        in readiness_problems(
            assigned=True, rebalancing=True, recovering=False, producer=None, database=None
        )["partitions"]
    )


def test_database_probe_answers_for_a_reachable_database(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    assert asyncio.run(DatabaseProbe(lambda: engine)()) is None


def test_database_probe_reports_a_failure_without_raising() -> None:
    def unreachable() -> Any:
        raise ConnectionRefusedError("db.hospital.internal:5432")

    assert (
        asyncio.run(DatabaseProbe(unreachable)()) == "database unavailable (ConnectionRefusedError)"
    )


def test_database_probe_keeps_one_check_in_flight_while_the_database_hangs() -> None:
    release, calls = threading.Event(), []

    def hanging() -> Any:
        calls.append(1)
        release.wait(5)
        raise ConnectionError("gave up")

    async def main() -> list[str | None]:
        probe = DatabaseProbe(hanging)
        got = [await probe(0.05), await probe(0.05), await probe(0.05)]
        release.set()
        return got

    got = asyncio.run(main())
    assert all(g is not None and "did not answer" in g for g in got)
    assert len(calls) == 1


# ------------------------------------------------------------------ logs


@pytest.fixture
def root_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    yield
    for h in root.handlers:
        if h not in saved[0]:
            h.close()
    root.handlers[:], root.level = saved[0], saved[1]


def _event(topic: str, partition: int, offset: int, value: bytes) -> Event:
    msg = Message(topic, partition, offset, time.time(), 0, [], b"k", value, None)
    return Event(None, b"k", value, None, msg)  # type: ignore[arg-type]


def _json_logger(stream: io.StringIO) -> logging.Logger:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLogFormatter())
    logger = logging.getLogger("test.observe.json")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


def test_json_lines_carry_time_level_logger_message_and_event_fields() -> None:
    out = io.StringIO()
    logger = _json_logger(out)
    event = _event("fhir.inbound", 3, 41, b"{}")
    logger.warning("dead-lettered %s", "x", extra=event_fields(event, stage="normalise"))
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        logger.exception("failed\nover lines")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, "one line per record, even with newlines and a traceback"
    first, second = map(json.loads, lines)
    assert first["level"] == "WARNING" and first["logger"] == "test.observe.json"
    assert first["message"] == "dead-lettered x"
    assert (first["topic"], first["partition"], first["offset"]) == ("fhir.inbound", 3, 41)
    assert first["stage"] == "normalise"
    assert first["time"].endswith("Z") and "T" in first["time"]
    assert second["message"] == "failed\nover lines"
    assert "ValueError: boom" in second["exc_info"]


def test_faust_reprs_of_events_and_messages_lose_their_payload() -> None:
    value = orjson.dumps({"resourceType": "Patient", "name": [{"text": NAME}], "id": MRN})
    event = _event("fhir.inbound", 0, 1, value)
    pending = PendingMessage(
        None, b"pt-x", value, None, None, [("a", b"b")], "raw", "raw", None, "fhir.inbound.dlq"
    )
    out = io.StringIO()
    logger = _json_logger(out)
    logger.warning("processing %r", event)
    # what faust.topics logs when a send fails, and at debug for every send
    logger.warning(f"_on_published error for message topic dlq error x message {pending}")
    logger.warning("send: topic=%r k=%r v=%r timestamp=%r", "dlq", b"k'ey\"", value, None)
    text = out.getvalue()
    assert text.count("<redacted>") >= 4
    for secret in PHI:
        assert secret not in text
    assert all(json.loads(line) for line in text.splitlines())


def test_redact_payloads_keeps_the_rest_of_the_line() -> None:
    line = "<Event: k=b'pt-abc' v=b'{\"name\": \"x\\'y\"}'> at fhir.inbound/2/7"
    assert redact_payloads(line) == "<Event: k=<redacted> v=<redacted>> at fhir.inbound/2/7"


@pytest.mark.parametrize("case", sorted(RAW_REFUSED))
def test_dead_letter_reasons_in_logs_do_not_echo_identity(case: str) -> None:
    reason = refusal_reason(RAW_REFUSED[case])
    assert any(s in reason for s in PHI), "the raw reason quotes the input (what this guards)"
    safe = safe_reason(reason)
    for secret in PHI:
        assert secret not in safe, (secret, safe)
    kind = reason.split(":", 1)[0]
    assert safe.startswith(kind), "the error kind stays readable"


def test_safe_reason_keeps_pseudonyms_and_structure() -> None:
    reason = "MissingSubject: Observation/hr-1: subject 'Patient/00442817' is not a Patient entry"
    assert (
        safe_reason(reason)
        == "MissingSubject: Observation/hr-1: subject '…' is not a Patient entry"
    )
    kept = "UnitError: Observation/o1: unit mg for Patient/pt-abcdefghijklmnopqrst"
    assert safe_reason(kept) == kept
    assert (
        safe_reason("x: Patient/00442817 and Patient?identifier=a|b")
        == "x: Patient/… and Patient/…"
    )
    assert len(safe_reason("e" * 5000)) == 300


def test_text_format_appends_event_fields_and_redacts() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(TextLogFormatter())
    record = logging.LogRecord("t", logging.WARNING, __file__, 1, "got %r", (b"x",), None)
    record.__dict__.update(topic="a", partition=1, offset=2)
    record.msg = "got v=%r"
    handler.emit(record)
    line = out.getvalue().strip()
    assert line.endswith("got v=<redacted> (topic=a partition=1 offset=2)")


def test_worker_logging_config_makes_mode_handlers_write_json(
    tmp_path: Path, root_logging: None
) -> None:
    log_file = tmp_path / "worker.log"
    # What Faust's Worker does with -l warn -f FILE and the app's logging_config.
    setup_logging(loglevel="WARN", logfile=str(log_file), logging_config=logging_config("json"))
    logger = logging.getLogger("wardwatch.stream")
    logger.info("not at warn level")
    logger.warning("dead-lettered", extra={"topic": "t", "partition": 0, "offset": 9})
    logging.getLogger("faust.topics").error("boom")
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert [r["message"] for r in lines] == ["dead-lettered", "boom"], "level from -l kept"
    assert lines[0]["offset"] == 9 and lines[1]["logger"] == "faust.topics"


def test_worker_logging_config_text_format(tmp_path: Path, root_logging: None) -> None:
    log_file = tmp_path / "worker.log"
    setup_logging(loglevel="WARN", logfile=str(log_file), logging_config=logging_config("text"))
    event = _event("t", 0, 9, b"x")
    logging.getLogger("wardwatch.stream").warning("got %r", event, extra=event_fields(event))
    (line,) = log_file.read_text().splitlines()
    assert "[WARNING] wardwatch.stream: got <Event: k=<redacted> v=<redacted>>" in line
    assert line.endswith("(topic=t partition=0 offset=9)")


def test_logging_config_refuses_an_unknown_format() -> None:
    with pytest.raises(ValueError, match="json or text"):
        logging_config("xml")


def test_log_format_setting_defaults_to_json_and_is_checked() -> None:
    assert Settings().log_format == "json"
    assert Settings(log_format="text").log_format == "text"
    with pytest.raises(ValidationError):
        Settings(log_format="xml")  # type: ignore[arg-type]
