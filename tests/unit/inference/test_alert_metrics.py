"""The alert state measured: simulation with the worker's policy code, and its metrics."""

from __future__ import annotations

import numpy as np
import pytest

from inference.alert_metrics import alert_metrics, policy_states, rising_edges, simulate
from inference.alert_policy import AlertPolicy
from inference.utility import normalized_utility


def test_simulate_runs_the_policy_hour_by_hour() -> None:
    p = AlertPolicy(threshold=0.5, clear_ratio=0.8, suppress_hours=6)
    risk = np.array([0.1, 0.6, 0.45, 0.3, 0.7, 0.1, 0.1, 0.1, 0.1, 0.9])
    state, raised = simulate(p, risk)
    assert state.tolist() == [0, 1, 1, 0, 1, 0, 0, 0, 0, 1]
    # hour 4 re-enters within 6 h of hour 1's alert; hour 9 is 8 h later
    assert np.flatnonzero(raised).tolist() == [1, 9]


def test_simulate_reads_nan_as_model_away_and_minus_one_as_null_news2() -> None:
    p = AlertPolicy(threshold=0.5)
    state, _ = simulate(p, np.array([np.nan, np.nan, 0.1]), np.array([7.0, -1.0, 7.0]))
    # NEWS2 7 enters while the model is away; a missing risk never clears; a risk does
    assert state.tolist() == [True, True, False]
    with pytest.raises(ValueError, match="differ in length"):
        simulate(p, np.zeros(3), np.zeros(2))


def test_rising_edges() -> None:
    assert rising_edges(np.array([1, 1, 0, 1, 0], bool)).tolist() == [1, 0, 0, 1, 0]


def test_metrics_of_a_known_case() -> None:
    # septic stay: first label at hour 20, so onset at 26; state on from 10 to 28
    septic = np.zeros(40, np.int8)
    septic[20:] = 1
    st_septic = np.zeros(40, bool)
    st_septic[10:29] = True
    quiet = np.zeros(48, np.int8)
    st_quiet = np.zeros(48, bool)
    st_quiet[5:7] = True
    st_quiet[30] = True
    m = alert_metrics([septic, quiet], [st_septic, st_quiet])
    assert m.septic_stays == 1 and m.alerts == 3
    assert m.septic_alerted_before_onset == 1.0
    assert m.median_lead_hours == 16.0  # 26 - 10: the state's first hour within 24 h
    # the septic alert at hour 10 is 16 h before onset (true); both quiet ones are false
    assert m.ppv_per_alert == pytest.approx(1 / 3)
    assert m.alerts_per_100_patient_days == pytest.approx(100 * 3 / (88 / 24))
    assert m.alert_hours_fraction == pytest.approx((19 + 3) / 88)
    assert m.utility == pytest.approx(normalized_utility([septic, quiet], [st_septic, st_quiet]))


def test_an_alert_more_than_a_day_early_is_not_a_warning() -> None:
    septic = np.zeros(60, np.int8)
    septic[40:] = 1  # onset 46
    st = np.zeros(60, bool)
    st[2:5] = True  # 44 h early, cleared
    m = alert_metrics([septic], [st])
    assert m.septic_alerted_before_onset == 0.0 and m.median_lead_hours is None
    assert m.ppv_per_alert == 0.0


def test_policy_states_uses_the_raised_alerts_not_edges() -> None:
    p = AlertPolicy(threshold=0.5, suppress_hours=6)
    risks = [np.array([0.9, 0.1, 0.9, 0.1, 0.9])]
    states, raised = policy_states(p, risks)
    assert int(raised[0].sum()) == 1 and int(rising_edges(states[0]).sum()) == 3
    m = alert_metrics([np.zeros(5, np.int8) + np.array([0, 0, 0, 0, 1], np.int8)], states, raised)
    assert m.alerts == 1
