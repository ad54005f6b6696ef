"""PatientState: order independence, idempotency, corrections, as-of reads, pruning, JSON."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from fhir.events import ClinicalEvent
from inference.state import PatientState

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def ev(
    code: str,
    hours: float,
    value: float | None = None,
    *,
    source: str = "",
    status: str = "final",
    value_code: str | None = None,
) -> ClinicalEvent:
    return ClinicalEvent(
        patient="p1",
        time=T0 + timedelta(hours=hours),
        code=code,
        kind="vital",
        value=value,
        value_code=value_code,
        source=source,
        status=status,  # type: ignore[arg-type]
    )


def sample_events() -> list[ClinicalEvent]:
    out = [ev("heart_rate", h, 80.0 + h, source=f"Observation/hr{h}") for h in range(10)]
    out += [ev("lactate", h, 1.0 + h / 10, source=f"Observation/lac{h}") for h in (1, 5, 9)]
    out += [ev("consciousness", 2, value_code="A", source="Observation/c2")]
    out += [ev("temperature", 3.5, 38.2)]  # no source: identified by (code, time)
    out.append(ev("heart_rate", 4, 120.0, source="Observation/hr4", status="amended"))
    out.append(ev("lactate", 5, None, source="Observation/lac5", status="entered-in-error"))
    out.append(ev("heart_rate", 6, 70.0, source="Observation/hr6", status="preliminary"))
    out.append(ev("encounter_start", 0, 1.0, source="Encounter/e1"))  # ignored code
    return out


def test_apply_basic_reads() -> None:
    st = PatientState()
    st.apply(sample_events())
    assert st.patient == "p1"
    assert st.first_seen == T0.timestamp()
    r = st.latest("heart_rate", T0 + timedelta(hours=4, minutes=30))
    assert r is not None
    assert r.value == 120.0  # amended
    assert r.time == T0 + timedelta(hours=4)
    # preliminary delivered after the final: the final stays
    r6 = st.latest("heart_rate", T0 + timedelta(hours=6))
    assert r6 is not None
    assert r6.value == 86.0
    # entered-in-error removed lactate at 5 h
    lac = st.latest("lactate", T0 + timedelta(hours=7))
    assert lac is not None
    assert lac.value == pytest.approx(1.1)
    cons = st.latest("consciousness", T0 + timedelta(hours=9))
    assert cons is not None
    assert cons.value_code == "A"
    assert cons.value is None
    assert "encounter_start" not in st.codes


def test_as_of_filtering() -> None:
    st = PatientState()
    st.apply(sample_events())
    assert st.latest("heart_rate", T0 - timedelta(seconds=1)) is None
    r = st.latest("heart_rate", T0 + timedelta(hours=2, minutes=59))
    assert r is not None
    assert r.value == 82.0
    assert st.latest("lactate", T0 + timedelta(hours=20), max_age_hours=10) is None
    assert st.latest("lactate", T0 + timedelta(hours=19), max_age_hours=10) is not None
    readings = st.latest_readings(T0 + timedelta(hours=1))
    assert set(readings) == {"heart_rate", "lactate"}
    assert readings["heart_rate"].value == 81.0


def test_order_independence() -> None:
    events = sample_events()
    ref = PatientState()
    ref.apply(events)
    rng = random.Random(7)
    for _ in range(50):
        shuffled = events[:]
        rng.shuffle(shuffled)
        st = PatientState()
        st.apply(shuffled)
        assert st == ref
        assert st.to_json() == ref.to_json()


def test_idempotent() -> None:
    events = sample_events()
    st = PatientState()
    st.apply(events)
    before = st.to_json()
    assert st.apply(events) == 0
    assert st.to_json() == before
    twice = PatientState()
    twice.apply([e for e in events for _ in range(2)])
    assert twice == st


def test_retraction_before_original_and_amend_before_original() -> None:
    st = PatientState()
    st.apply([ev("lactate", 5, None, source="Observation/x", status="entered-in-error")])
    st.apply([ev("lactate", 5, 4.0, source="Observation/x")])
    assert st.latest("lactate", T0 + timedelta(hours=6)) is None
    st2 = PatientState()
    st2.apply([ev("heart_rate", 1, 130.0, source="Observation/y", status="corrected")])
    st2.apply([ev("heart_rate", 1, 90.0, source="Observation/y")])
    r = st2.latest("heart_rate", T0 + timedelta(hours=1))
    assert r is not None
    assert r.value == 130.0


def test_retraction_removes_all_codes_of_source_and_without_source() -> None:
    st = PatientState()
    st.apply(
        [
            ev("systolic_bp", 1, 120.0, source="Observation/bp1"),
            ev("diastolic_bp", 1, 80.0, source="Observation/bp1"),
            ev("temperature", 2, 37.0),
        ]
    )
    st.apply([ev("systolic_bp", 1, None, source="Observation/bp1", status="entered-in-error")])
    assert st.codes == ["temperature"]
    st.apply([ev("temperature", 2, None, status="entered-in-error")])
    assert st.codes == []
    assert st.first_seen == (T0 + timedelta(hours=1)).timestamp()


def test_non_finite_and_missing_values_ignored() -> None:
    st = PatientState()
    assert st.apply([ev("heart_rate", 1, float("nan")), ev("heart_rate", 2, None)]) == 0
    assert len(st) == 0
    assert st.first_seen is None


def test_prune_keeps_window_and_last_value_before_cutoff() -> None:
    st = PatientState()
    st.apply([ev("heart_rate", h, float(h), source=f"hr{h}") for h in range(100)])
    st.apply([ev("lactate", 1, 2.0, source="lac1"), ev("lactate", 2, 3.0, source="lac2")])
    now = T0 + timedelta(hours=99)
    removed = st.prune(now, keep_hours=60)
    hr_times, _ = st.series("heart_rate")
    # kept: (39 h, 99 h] plus the newest at or before 39 h
    assert hr_times[0] == (T0 + timedelta(hours=39)).timestamp()
    assert len(hr_times) == 61
    _, lac_values = st.series("lactate")
    assert lac_values == [3.0]  # the last value of a code always stays
    assert removed == 39 + 1
    assert st.first_seen == T0.timestamp()  # not pruned: stay time stays exact


def test_json_round_trip_is_compact() -> None:
    st = PatientState()
    st.apply(sample_events())
    st.apply([ev("spo2", 1.0 / 7, 97.0, source="s")])  # fractional second
    data = st.to_json()
    back = PatientState.from_json(data)
    assert back == st
    assert back.to_json() == data
    assert back.latest("spo2", T0 + timedelta(hours=1)) == st.latest(
        "spo2", T0 + timedelta(hours=1)
    )
    assert b" " not in data
    empty = PatientState("p9")
    assert PatientState.from_json(empty.to_json()) == empty


def test_from_json_rejects_unknown_schema() -> None:
    with pytest.raises(ValueError, match="schema"):
        PatientState.from_json(b'{"v": 99}')
