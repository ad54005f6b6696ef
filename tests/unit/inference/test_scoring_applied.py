"""Messages read again after a rebalance: the patient's record already holds them.

A worker's table is restored from the changelog, which can run ahead of the committed
offsets, so the new owner of a partition reads again messages its records already hold.
Found by the scale-out leave test: replayed against the later alert state, a NEWS2 of 7
raised an alert the patient never had (the first pass was in the alert state then).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson

from fhir.events import NUMERIC_CODES, ClinicalEvent
from inference.alert_policy import AlertPolicy
from inference.features import FeatureSpec
from inference.scoring.alerts import advance
from inference.scoring.applied import APPLIED_KEEP, already_applied, source_position
from inference.scoring.envelope import Envelope
from inference.scoring.model_info import ModelInfo
from inference.scoring.prepare import score_envelopes
from inference.scoring.record import PatientRecord

START = datetime(2026, 1, 1, tzinfo=UTC)
SPEC = FeatureSpec(
    codes=NUMERIC_CODES, mean=(0.0,) * len(NUMERIC_CODES), std=(1.0,) * len(NUMERIC_CODES)
)
MODEL = ModelInfo("sepsis_transformer", "7")
# NEWS2 enters at 7 and holds at 5: these tests drive the alert state by NEWS2 alone
POLICY = AlertPolicy(threshold=0.5, suppress_hours=6.0, news2_enter=7, news2_stay=5)
TOPIC_PARTITION = "wardwatch.fhir.inbound/3"
TS0 = 1_800_000_000_000

# NEWS2 (scale 1, on air, consciousness never recorded) by (respiration, SpO2, pulse):
# 7 = 3 + 3 + 1, 5 = 3 + 2 + 0, 0 = all normal.
NEWS2_7, NEWS2_5, NEWS2_0 = (26.0, 90.0, 95.0), (26.0, 93.0, 80.0), (16.0, 98.0, 80.0)


def _env(hour: int, vitals: tuple[float, float, float], source: str, ts: int | None) -> Envelope:
    rr, spo2, hr = vitals
    values = {
        "respiratory_rate": rr,
        "spo2": spo2,
        "heart_rate": hr,
        "systolic_bp": 120.0,
        "temperature": 37.0,
    }
    events = tuple(
        ClinicalEvent(
            patient="pt-a",
            time=START + timedelta(hours=hour),
            code=code,
            kind="vital",
            value=v,
            source=f"Observation/{code}-{hour}",
        )
        for code, v in values.items()
    )
    return Envelope("pt-a", source, ts, events)


# In the alert state from hour 0 to 8 (NEWS2 5 keeps it; the 7 at hour 8 is more than
# the 6 h suppression window after the alert at hour 0), cleared at hour 9.
HOURS = [NEWS2_7, *[NEWS2_5] * 7, NEWS2_7, NEWS2_0]


def _stay(kafka: bool) -> list[Envelope]:
    return [
        _env(h, v, f"{TOPIC_PARTITION}/{100 + h}" if kafka else "offline", TS0 + h)
        for h, v in enumerate(HOURS)
    ]


def _run(records: dict[str, PatientRecord], envs: list[Envelope]) -> tuple[list[str], list[int]]:
    """Score ``envs`` as the agent does (risk low: NEWS2 alone drives the alerts); the
    alerts raised (their times) and, per score, whether the patient was in alert."""
    raised, active = [], []
    for rec, pending in score_envelopes(records, envs, spec=SPEC, staleness_hours=12):
        score, decision = advance(rec, pending, 0.0, model=MODEL, policy=POLICY)
        active.append(int(score["alert"]))
        if decision is not None:
            raised.append(decision.raised_at.isoformat())
    return raised, active


def test_a_replay_after_the_record_moved_on_raises_nothing_again() -> None:
    envs = _stay(kafka=True)
    records: dict[str, PatientRecord] = {}
    raised, active = _run(records, envs)
    assert raised == [START.isoformat()]
    assert active == [1] * 9 + [0]
    # The new owner restores the record from the changelog (ahead of the committed
    # offset, which is still hour 7's) and reads hours 7-9 again.
    restored = {"pt-a": PatientRecord.from_json(records["pt-a"].to_json())}
    replayed: list[Envelope] = []
    out = score_envelopes(restored, envs[7:], spec=SPEC, staleness_hours=12, replayed=replayed)
    assert out == [] and replayed == envs[7:]
    assert restored["pt-a"].alert == records["pt-a"].alert
    # The next message is scored as usual.
    nxt = _env(10, NEWS2_0, f"{TOPIC_PARTITION}/110", TS0 + 10)
    assert _run(restored, [nxt]) == ([], [0])


def test_without_offsets_the_same_replay_raises_an_alert_the_patient_never_had() -> None:
    # What the check prevents (and why this test can fail): the envelopes of a source
    # without offsets are applied again, and hour 8 steps from the cleared state.
    envs = _stay(kafka=False)
    records: dict[str, PatientRecord] = {}
    assert _run(records, envs)[0] == [START.isoformat()]
    raised, _ = _run(records, envs[7:])
    assert raised == [(START + timedelta(hours=8)).isoformat()]


def test_offsets_that_restart_with_newer_messages_are_applied() -> None:
    rec = PatientRecord()
    for off in range(5):
        assert not already_applied(rec, _env(off, NEWS2_0, f"{TOPIC_PARTITION}/{off}", TS0 + off))
    assert already_applied(rec, _env(2, NEWS2_0, f"{TOPIC_PARTITION}/2", TS0 + 2))
    # The topic was deleted and created again: offsets start at 0 with later messages.
    assert not already_applied(rec, _env(5, NEWS2_0, f"{TOPIC_PARTITION}/0", TS0 + 50))
    assert rec.applied[TOPIC_PARTITION] == ([0], TS0 + 50)
    assert already_applied(rec, _env(5, NEWS2_0, f"{TOPIC_PARTITION}/0", TS0 + 50))
    assert not already_applied(rec, _env(6, NEWS2_0, f"{TOPIC_PARTITION}/1", TS0 + 51))
    # Another partition, and a message without a timestamp, go by offsets alone.
    assert not already_applied(rec, _env(7, NEWS2_0, "wardwatch.clinical.events/3/0", None))
    assert already_applied(rec, _env(7, NEWS2_0, "wardwatch.clinical.events/3/0", None))
    assert not already_applied(rec, _env(7, NEWS2_0, "offline", None))
    assert not already_applied(rec, _env(7, NEWS2_0, "offline", None))


def test_records_applied_out_of_order_are_late_not_lost() -> None:
    # A leave test lost 6 records with a high watermark: around a rebalance offset 21 was
    # applied before 15..20, which then looked applied and were skipped, never scored.
    rec = PatientRecord()
    src = f"{TOPIC_PARTITION}/{{}}"
    assert not already_applied(rec, _env(0, NEWS2_0, src.format(14), TS0 + 14))
    assert not already_applied(rec, _env(1, NEWS2_0, src.format(21), TS0 + 21))
    for off in range(15, 21):
        assert not already_applied(rec, _env(0, NEWS2_0, src.format(off), TS0 + off)), off
    for off in range(14, 22):  # and a replay of them all is recognised
        assert already_applied(rec, _env(0, NEWS2_0, src.format(off), TS0 + off)), off


def test_only_the_latest_offsets_are_remembered() -> None:
    rec = PatientRecord()
    src = f"{TOPIC_PARTITION}/{{}}"
    n = APPLIED_KEEP + 10
    for off in range(n):
        already_applied(rec, _env(0, NEWS2_0, src.format(off), TS0 + off))
    assert rec.applied[TOPIC_PARTITION][0] == list(range(10, n))
    assert already_applied(rec, _env(0, NEWS2_0, src.format(n - 1), TS0 + n - 1))
    # Older than remembered: applied again (a possible double application, never a loss).
    assert not already_applied(rec, _env(0, NEWS2_0, src.format(3), TS0 + 3))


def test_applied_offsets_travel_with_the_record_and_old_records_have_none() -> None:
    rec = PatientRecord()
    assert "o" not in orjson.loads(rec.to_json()), "records without Kafka sources unchanged"
    already_applied(rec, _env(0, NEWS2_0, f"{TOPIC_PARTITION}/7", TS0))
    already_applied(rec, _env(0, NEWS2_0, "wardwatch.clinical.events/0/3", None))
    again = PatientRecord.from_bytes(rec.to_bytes())
    assert again.applied == {
        TOPIC_PARTITION: ([7], TS0),
        "wardwatch.clinical.events/0": ([3], None),
    }
    old = orjson.loads(rec.to_json())
    del old["o"]
    assert PatientRecord.from_bytes(orjson.dumps(old)).applied == {}


def test_source_position() -> None:
    assert source_position("wardwatch.fhir.inbound/3/120") == ("wardwatch.fhir.inbound/3", 120)
    for other in ("offline", "s", "file.psv/12", "a/b/c", "topic/3/-1", "", "/data/p1/7", "d/e/3"):
        assert source_position(other) is None, other
