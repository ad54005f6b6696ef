"""PatientState's JSON: schema 2 round trips exactly; schema-1 records (in changelogs
written before schema 2) still load, to the same state."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import orjson
import pytest

from fhir.events import CATEGORICAL_CODES, DEMOGRAPHIC_EPOCH, NUMERIC_CODES, ClinicalEvent
from inference.features import default_spec, feature_window
from inference.state import PatientState

T0 = datetime(2026, 1, 1, tzinfo=UTC)

# Written by PatientState.to_json before schema 2 (the state of legacy_events()), verbatim.
V1_STATE = (
    b'{"v":1,"p":"p1","f":1767218398.2,"o":{"condition":[[7201.8],["http://snomed.info/sct|'
    b'65710008"],["Condition/c1"],[1]],"consciousness":[[14401.8],["A"],["Observation/c2"],'
    b'[1]],"heart_rate":[[7201.8,10801.8,14401.8,18001.8],[80.0,81.0,120.0,83.0],["Observatio'
    b'n/hr0","Observation/hr1","Observation/hr2","Observation/hr3"],[1,1,2,1]],"lactate":[[1'
    b'0801.8],[1.1],["Observation/lac1"],[1]],"spo2":[[0,7716.086],[91.0,97.0],["Observation'
    b'/s0","Observation/s1"],[0,1]],"temperature":[[19801.8],[38.2],["@temperature@176723820'
    b'0"],[1]]},"x":{"Observation/lac3":18001.8}}'
)


def ev(
    code: str,
    hours: float,
    value: float | None = None,
    *,
    source: str = "",
    status: str = "final",
    value_code: str | None = None,
    kind: str = "vital",
) -> ClinicalEvent:
    return ClinicalEvent(
        patient="p1",
        time=T0 + timedelta(hours=hours),
        code=code,
        kind=kind,  # type: ignore[arg-type]
        value=value,
        value_code=value_code,
        source=source,
        status=status,  # type: ignore[arg-type]
    )


def legacy_events() -> list[ClinicalEvent]:
    """The events V1_STATE was made from."""
    out = [ev("heart_rate", h, 80.0 + h, source=f"Observation/hr{h}") for h in range(4)]
    out += [ev("lactate", h, 1.0 + h / 10, source=f"Observation/lac{h}") for h in (1, 3)]
    out.append(ev("consciousness", 2, value_code="A", source="Observation/c2"))
    out.append(ev("temperature", 3.5, 38.2))
    out.append(ev("heart_rate", 2, 120.0, source="Observation/hr2", status="amended"))
    out.append(ev("lactate", 3, None, source="Observation/lac3", status="entered-in-error"))
    out.append(ev("spo2", 1.0 / 7, 97.0, source="Observation/s1"))
    out.append(ev("spo2", -2.0005, 91.0, source="Observation/s0", status="preliminary"))
    out.append(
        ev(
            "condition",
            0,
            value_code="http://snomed.info/sct|65710008",
            kind="condition",
            source="Condition/c1",
        )
    )
    return out


def v1_dict(st: PatientState) -> dict[str, Any]:
    """Schema 1 as PatientState.to_dict wrote it (kept here to make schema-1 records)."""

    def compact(t: float) -> float | int:
        t = round(t, 3)
        return int(t) if t.is_integer() else t

    d = st.to_dict()
    base = st.first_seen or 0.0
    return {
        "v": 1,
        "p": d["p"],
        "f": None if st.first_seen is None else compact(st.first_seen),
        "o": {
            code: [[compact(t - base) for t in times], values, sources, ranks]
            for code, (times, values, sources, ranks) in d["o"].items()
        },
        "x": {k: compact(t - base) for k, t in d["x"].items()},
    }


def columns(st: PatientState) -> dict[str, tuple[list[Any], ...]]:
    """Every stored list, for exact comparison (float == float, int == int, same types)."""
    out: dict[str, tuple[list[Any], ...]] = {}
    for code, (times, values, sources, ranks) in st.to_dict()["o"].items():
        out[code] = (
            [(type(t), t) for t in times],
            [(type(v), v) for v in values],
            sources,
            [(type(r), r) for r in ranks],
        )
    return out


def random_state(rng: random.Random) -> PatientState:
    codes = rng.sample(NUMERIC_CODES, rng.randint(0, 10)) + list(CATEGORICAL_CODES[:1])
    events = []
    for code in codes:
        for n in range(rng.choice([0, 1, 3, 40])):
            numeric = code in NUMERIC_CODES
            events.append(
                ev(
                    code,
                    rng.choice([rng.randint(-100, 100), rng.uniform(-100, 100)]),
                    rng.uniform(-100, 500) if numeric else None,
                    value_code=None if numeric else "A",
                    source=rng.choice(["", f"Observation/{code}-{n}"]),
                    status=rng.choice(["final", "preliminary", "amended"]),
                )
            )
    if events and rng.random() < 0.5:
        victim = rng.choice(events)
        events.append(ev(victim.code, 1.0, source=victim.source, status="entered-in-error"))
    st = PatientState()
    st.apply(events)
    return st


def test_schema_1_record_loads_to_the_same_state() -> None:
    built = PatientState()
    built.apply(legacy_events())
    old = PatientState.from_json(V1_STATE)
    assert old == built
    assert columns(old) == columns(built)
    assert old.first_seen == built.first_seen
    assert old.to_json() == built.to_json()
    assert orjson.loads(old.to_json())["v"] == 3
    as_of = T0 + timedelta(hours=4)
    assert old.latest_readings(as_of) == built.latest_readings(as_of)
    assert old.context("condition", as_of) == built.context("condition", as_of)
    w_old = feature_window(old, as_of, default_spec())
    assert w_old.tobytes() == feature_window(built, as_of, default_spec()).tobytes()
    # the tombstone holds: a late copy of the retracted lactate is not taken
    assert old.apply([ev("lactate", 3, 1.3, source="Observation/lac3")]) == 0


@pytest.mark.parametrize("seed", range(4))
def test_round_trips_are_exact_for_both_schemas(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(60):
        st = random_state(rng)
        back = PatientState.from_json(st.to_json())
        assert back == st and columns(back) == columns(st)
        assert back.first_seen == st.first_seen and back.patient == st.patient
        assert back.to_json() == st.to_json()
        old = PatientState.from_dict(orjson.loads(orjson.dumps(v1_dict(st))))
        assert old == st and columns(old) == columns(st)


def test_loaded_state_shares_no_lists_with_its_input() -> None:
    st = PatientState()
    st.apply(legacy_events())
    d = st.to_dict()
    back = PatientState.from_dict(d)
    back.apply([ev("heart_rate", 9, 99.0, source="Observation/new")])
    assert d == st.to_dict(), "applying to the loaded state changed the dict it came from"
    assert back != st
    d["o"]["heart_rate"][0].append(1e12)  # and to_dict hands out copies
    assert st.series("heart_rate")[0][-1] != 1e12


def test_schema_2_record_reads_as_a_state_without_patient_context() -> None:
    st = PatientState()
    st.apply(legacy_events())
    d = orjson.loads(st.to_json())
    assert d["v"] == 3
    d["v"] = 2
    old = PatientState.from_dict(d)
    assert old == st and old.stay_fact("birth_year") is None and old.stay_times("admission") == []


def test_patient_context_is_kept_unpruned_and_round_trips() -> None:
    st = PatientState()
    st.apply(legacy_events())
    facts = [
        ClinicalEvent(
            patient="p1",
            time=DEMOGRAPHIC_EPOCH,
            code="birth_year",
            kind="demographic",
            value=1950.0,
            source="Patient/p1",
        ),
        ClinicalEvent(
            patient="p1",
            time=DEMOGRAPHIC_EPOCH,
            code="sex",
            kind="demographic",
            value_code="female",
            source="Patient/p1",
        ),
        ClinicalEvent(
            patient="p1",
            time=T0 - timedelta(days=9),
            code="admission",
            kind="encounter",
            value_code="IMP",
            source="Encounter/e1",
        ),
        ClinicalEvent(
            patient="p1",
            time=T0 - timedelta(days=8),
            code="icu_admission",
            kind="encounter",
            value_code="MICU",
            source="Encounter/e1",
        ),
    ]
    first, last = st.first_seen, st.last_seen
    assert st.apply(facts) == 4
    # context is not an observation: first/last seen and the codes stay as they were
    assert (st.first_seen, st.last_seen) == (first, last)
    assert "birth_year" not in st.codes and "sex" not in st.codes
    st.prune(T0 + timedelta(days=30), keep_hours=72)
    assert st.stay_fact("birth_year") == 1950.0 and st.stay_fact("sex") == "female"
    assert st.stay_times("icu_admission") == [(T0 - timedelta(days=8)).timestamp()]
    back = PatientState.from_json(st.to_json())
    assert back == st and back.stay_fact("sex") == "female"
    # the Encounter entered in error takes both its admissions with it
    st.apply([replace(facts[2], status="entered-in-error")])
    assert st.stay_times("admission") == [] and st.stay_times("icu_admission") == []


def test_schema_3_is_absolute_times_and_empty_state_round_trips() -> None:
    st = PatientState()
    st.apply([ev("heart_rate", 1.0 / 7, 80.0, source="Observation/a")])
    d = orjson.loads(st.to_json())
    assert d["o"]["heart_rate"][0] == [st.series("heart_rate")[0][0]]
    assert d["f"] == st.first_seen
    empty = PatientState("p9")
    assert PatientState.from_json(empty.to_json()) == empty
    with pytest.raises(ValueError, match="schema"):
        PatientState.from_json(b'{"v": 4}')
    np.testing.assert_array_equal(
        feature_window(PatientState.from_json(st.to_json()), T0, default_spec()),
        feature_window(st, T0, default_spec()),
    )
