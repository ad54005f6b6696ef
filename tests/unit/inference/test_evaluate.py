"""Evaluation helpers: rule scores from an hourly matrix, alarm onsets, GBM features."""

from __future__ import annotations

import numpy as np

from inference.evaluate import bootstrap_ci, gbm_features, rising_edges, rule_scores
from inference.features import WINDOW

CODES = ("heart_rate", "spo2", "temperature", "systolic_bp", "respiratory_rate", "fio2")


def test_rule_scores_carry_forward_and_go_stale() -> None:
    m = np.full((15, len(CODES)), np.nan)
    m[0] = [135, 90, 39.5, 88, 26, 0.5]  # NEWS2: 3+3+2(O2)+3+3+0(A)+2 = 16; qSOFA 2
    n2, qs = rule_scores(m, CODES)
    assert n2[0] == 16 and qs[0] == 2
    assert n2[12] == 16, "12 h old still counts (edge inclusive)"
    assert n2[13] == -1, "stale: NEWS2 null"
    assert qs[13] == 0


def test_rule_scores_missing_parameter_is_null() -> None:
    m = np.full((2, len(CODES)), np.nan)
    m[0, 0] = 80.0
    n2, _ = rule_scores(m, CODES)
    assert (n2 == -1).all()


def test_rising_edges_count_onsets() -> None:
    a = np.array([1, 1, 0, 1, 0, 0, 1], bool)
    assert rising_edges([a, np.zeros(3, bool), np.ones(2, bool)]) == 4


def test_gbm_features_shape_and_last_row() -> None:
    c, f = 3, 10
    rows = np.arange((WINDOW + 5) * f, dtype=np.float32).reshape(WINDOW + 5, f)
    starts = np.array([0, 5])
    x = gbm_features(rows, starts, c)
    assert x.shape == (2, f + 2 * c + 2 * c + c)
    np.testing.assert_array_equal(x[1, :f], rows[WINDOW + 4])


def test_bootstrap_interval_brackets_the_estimate() -> None:
    rng = np.random.default_rng(1)
    labels = [np.array([0, 0, 1], np.int8), np.array([0, 1], np.int8), np.array([0, 0], np.int8)]
    scores = [np.array([0.1, 0.2, 0.9]), np.array([0.3, 0.8]), np.array([0.4, 0.1])]
    lo, hi = bootstrap_ci(labels * 5, scores * 5, lambda y, s: float(np.mean(s[y == 1])), 50, rng)
    assert lo <= 0.85 <= hi
