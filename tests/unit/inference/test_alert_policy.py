"""The alert policy: enter, stay (hysteresis, hold), suppress, escalate, clear."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from inference.alert_policy import (
    AlertPolicy,
    AlertState,
    percent,
    risk_phrase,
    step,
    transition,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
# the v2 policy's shape: hysteresis, NEWS2 >= 7 enters and >= 5 stays
POLICY = AlertPolicy(threshold=0.5, clear_ratio=0.8, news2_enter=7, news2_stay=5)


def run(
    seq: list[tuple[float | None, int | None]], policy: AlertPolicy = POLICY
) -> list[tuple[bool, str | None]]:
    state = AlertState()
    out = []
    for h, (risk, news2) in enumerate(seq):
        state, decision = step(
            state,
            patient="pt-x",
            as_of=T0 + timedelta(hours=h),
            risk=risk,
            news2=news2,
            policy=policy,
        )
        out.append((state.active, None if decision is None else decision.severity))
    return out


def test_quiet_patient_never_alerts() -> None:
    assert run([(0.1, 0), (0.2, 1), (0.49, 4)]) == [(False, None)] * 3


def test_enter_at_threshold_and_hysteresis() -> None:
    got = run([(0.5, 0), (0.45, 0), (0.41, 0), (0.39, 0)])
    assert got == [(True, "warning"), (True, None), (True, None), (False, None)]


def test_news2_high_alerts_without_the_model() -> None:
    assert run([(None, 7)]) == [(True, "warning")]
    assert run([(None, 6)]) == [(False, None)]


def test_missing_risk_never_clears() -> None:
    assert run([(0.9, 0), (None, 0), (None, None)]) == [
        (True, "warning"),
        (True, None),
        (True, None),
    ]


def test_escalation_raises_again_and_severity_holds() -> None:
    got = run([(0.6, 2), (0.7, 8), (0.7, 2)])
    assert got == [(True, "warning"), (True, "critical"), (True, None)]


def test_suppression_window() -> None:
    # leaves and re-enters within 6 h: no second alert; after 6 h: a new one
    seq = [(0.9, 0), (0.1, 0), (0.9, 0), (0.1, 0), (0.1, 0), (0.1, 0), (0.1, 0), (0.9, 0)]
    got = run(seq)
    assert [d for _, d in got] == ["warning", None, None, None, None, None, None, "warning"]


def test_alert_ids_are_deterministic() -> None:
    a = step(AlertState(), patient="p", as_of=T0, risk=0.9, news2=None, policy=POLICY)[1]
    b = step(AlertState(), patient="p", as_of=T0, risk=0.9, news2=None, policy=POLICY)[1]
    assert a is not None and b is not None and a.alert_id == b.alert_id


def test_state_round_trip() -> None:
    s = AlertState(
        active=True, severity="critical", last_raised_s=1.5, last_raised_severity="warning"
    )
    assert AlertState.from_dict(s.to_dict()) == s
    assert AlertState.from_dict(None) == AlertState()


def test_plain_policy_is_risk_at_or_above_the_threshold() -> None:
    plain = AlertPolicy(threshold=0.5)
    seq = [(0.6, 9), (0.49, 9), (0.5, 0), (0.1, 8), (None, 8), (0.2, 8)]
    # NEWS2 enters only while the model is away (hour 4); a risk clears it again
    assert [a for a, _ in run(seq, plain)] == [True, False, True, False, True, False]


def test_hysteresis_clears_below_the_ratio() -> None:
    p = AlertPolicy(threshold=0.5, clear_ratio=0.8)
    assert p.clear_below == pytest.approx(0.4)
    got = run([(0.5, 0), (0.41, 0), (0.39, 0)], p)
    assert [a for a, _ in got] == [True, True, False]


def test_hold_keeps_the_alert_for_its_hours_after_the_last_high_risk() -> None:
    p = AlertPolicy(threshold=0.5, hold_hours=3)
    got = run([(0.6, 0), (0.1, 0), (0.1, 0), (0.1, 0), (0.7, 0), (0.1, 0)], p)
    assert [a for a, _ in got] == [True, True, True, False, True, True]
    # the re-entry at hour 4 is within the 6 h suppression window: no second alert
    assert [d for _, d in got] == ["warning", None, None, None, None, None]


def test_news2_stay_needs_its_setting() -> None:
    seq = [(0.6, 6), (0.1, 6)]
    assert [a for a, _ in run(seq, AlertPolicy(threshold=0.5))] == [True, False]
    assert [a for a, _ in run(seq, AlertPolicy(threshold=0.5, news2_stay=5))] == [True, True]


def test_nan_risk_is_no_risk() -> None:
    st, sev = transition(AlertState(), 0.0, float("nan"), 7, AlertPolicy(threshold=0.5))
    assert st.active and sev == "warning"


@pytest.mark.parametrize(
    "kwargs", [{"threshold": 0.0}, {"threshold": 1.0}, {"threshold": 0.1, "clear_ratio": 0.0}]
)
def test_policy_out_of_range_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be in"):
        AlertPolicy(**kwargs)


def test_policy_from_card_and_overrides() -> None:
    card = {
        "alert_threshold": 0.02,
        "alert_policy": {"threshold": 0.025, "clear_ratio": 0.9, "news2_enter": 7, "x": 1},
    }
    p = AlertPolicy.from_card(card, hold_hours=2.0, threshold=None)
    assert (p.threshold, p.clear_ratio, p.news2_enter, p.hold_hours) == (0.025, 0.9, 7, 2.0)
    old = AlertPolicy.from_card({"alert_threshold": 0.02})
    assert old == AlertPolicy(threshold=0.02)
    assert AlertPolicy.from_card(card | {"alert_policy": p.to_dict()}) == p


def test_state_from_before_last_high_reads() -> None:
    old = {"active": True, "severity": "warning", "last_raised_s": 1.0}
    assert AlertState.from_dict(old).last_high_s is None


@pytest.mark.parametrize(
    ("p", "text"), [(0.01485, "1.5%"), (0.2, "20%"), (0.0012, "0.12%"), (0.0, "0%")]
)
def test_percent(p: float, text: str) -> None:
    assert percent(p) == text


def test_risk_phrase_keeps_the_comparison_visible() -> None:
    p = AlertPolicy(threshold=0.01485, base_rate=0.018)
    assert risk_phrase(0.041, p) == "sepsis risk 4.1% (2.3x base rate 1.8%), alert at 1.49%"
    # 1.52 % and 1.485 % both print as "1.5%": more digits until they differ
    near = risk_phrase(0.0152, p)
    assert near.startswith("sepsis risk 1.52% ") and near.endswith("alert at 1.49%")
    assert "base rate" not in risk_phrase(0.041, AlertPolicy(threshold=0.01485))


def test_reason_states_the_risk_in_percent() -> None:
    p = AlertPolicy(threshold=0.01485, base_rate=0.018)
    _, d = step(AlertState(), patient="p", as_of=T0, risk=0.0214, news2=8, policy=p)
    assert d is not None and d.severity == "critical"
    assert d.reason == "sepsis risk 2.1% (1.2x base rate 1.8%), alert at 1.49%; NEWS2 8"
