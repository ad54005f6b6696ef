"""Clinical context in PatientState, and NEWS2 SpO2 scale 2 chosen from it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fhir.events import ClinicalEvent, EventKind
from inference.context import Scale2Codes, load_scale2_codes, uses_spo2_scale2
from inference.state import PatientState

T0 = datetime(2026, 1, 1, tzinfo=UTC)
HYPERCAPNIA = "http://hl7.org/fhir/sid/icd-10-cm|J96.12"
SCALE2_FLAG = "https://wardwatch.example.org/fhir/CodeSystem/news2|spo2-scale-2"
COPD_ONLY = "http://hl7.org/fhir/sid/icd-10-cm|J44.9"


def ctx(
    code: str,
    hours: float,
    value_code: str,
    *,
    kind: EventKind = "condition",
    source: str = "",
    status: str = "final",
) -> ClinicalEvent:
    return ClinicalEvent(
        patient="p1",
        time=T0 + timedelta(hours=hours),
        code=code,
        kind=kind,
        value_code=value_code,
        source=source,
        status=status,  # type: ignore[arg-type]
    )


def vital(code: str, hours: float, value: float) -> ClinicalEvent:
    return ClinicalEvent(
        patient="p1", time=T0 + timedelta(hours=hours), code=code, kind="vital", value=value
    )


def test_context_is_kept_and_read_as_of() -> None:
    st = PatientState()
    st.apply(
        [
            ctx("condition", 0, HYPERCAPNIA, source="Condition/c1"),
            ctx("flag", 5, SCALE2_FLAG, kind="flag", source="Flag/f1"),
        ]
    )
    assert st.context("condition") == {HYPERCAPNIA}
    assert st.context("flag", T0 + timedelta(hours=4)) == frozenset()
    assert st.context("flag", T0 + timedelta(hours=5)) == {SCALE2_FLAG}
    assert st.context("heart_rate") == frozenset()  # not a context code
    assert st.codes == [] and st.latest_readings(T0 + timedelta(hours=9)) == {}


def test_two_conditions_without_source_at_the_same_time_are_both_kept() -> None:
    st = PatientState()
    st.apply([ctx("condition", 0, HYPERCAPNIA), ctx("condition", 0, COPD_ONLY)])
    assert st.context("condition") == {HYPERCAPNIA, COPD_ONLY}


def test_prune_never_drops_context() -> None:
    st = PatientState()
    st.apply([ctx("condition", 0, HYPERCAPNIA, source="Condition/c1")])
    st.apply([vital("heart_rate", h, 80.0) for h in range(0, 200, 10)])
    st.prune(T0 + timedelta(hours=200), keep_hours=72)
    assert st.context("condition") == {HYPERCAPNIA}
    assert len(st.series("heart_rate")[0]) < 20


def test_entered_in_error_retracts_context() -> None:
    st = PatientState()
    st.apply(
        [
            ctx("condition", 0, HYPERCAPNIA, source="Condition/c1"),
            ctx("condition", 1, HYPERCAPNIA, source="Condition/c1", status="entered-in-error"),
            ctx("condition", 0, HYPERCAPNIA, source="Condition/c1"),  # late redelivery
        ]
    )
    assert st.context("condition") == frozenset()


def test_first_seen_counts_numeric_observations_only() -> None:
    st = PatientState()
    st.apply(
        [
            ctx("condition", -500, HYPERCAPNIA, source="Condition/old"),
            ClinicalEvent(
                patient="p1",
                time=T0 - timedelta(hours=3),
                code="consciousness",
                kind="vital",
                value_code="A",
            ),
            vital("heart_rate", 0, 80.0),
        ]
    )
    assert st.first_seen == T0.timestamp()


def test_context_survives_json_round_trip() -> None:
    st = PatientState()
    st.apply([ctx("goal", 2, SCALE2_FLAG, kind="flag", source="Goal/g1")])
    st.apply([vital("heart_rate", 3, 80.0)])
    back = PatientState.from_json(st.to_json())
    assert back == st and back.context("goal") == {SCALE2_FLAG}


def test_scale2_table_loads_and_matches() -> None:
    table = load_scale2_codes()
    assert table.selects([], [HYPERCAPNIA])
    assert table.selects([SCALE2_FLAG], [])
    assert table.selects([], ["  HTTP://hl7.org/fhir/sid/icd-10-cm | J96.12 "])  # normalised
    assert not table.selects([COPD_ONLY], [COPD_ONLY])


def test_uses_scale2_from_condition_flag_or_goal() -> None:
    as_of = T0 + timedelta(hours=10)
    for ev in (
        ctx("condition", 0, HYPERCAPNIA, source="Condition/c1"),
        ctx("flag", 0, SCALE2_FLAG, kind="flag", source="Flag/f1"),
        ctx("goal", 0, SCALE2_FLAG, kind="flag", source="Goal/g1"),
    ):
        st = PatientState()
        st.apply([ev])
        assert uses_spo2_scale2(st, as_of), ev
        assert not uses_spo2_scale2(st, T0 - timedelta(hours=1)), "not yet recorded"


def test_unlisted_context_keeps_scale1() -> None:
    st = PatientState()
    st.apply([ctx("condition", 0, COPD_ONLY, source="Condition/c1")])
    assert not uses_spo2_scale2(st, T0 + timedelta(hours=1))
    custom = Scale2Codes.from_lists([], [COPD_ONLY])
    assert uses_spo2_scale2(st, T0 + timedelta(hours=1), custom)
