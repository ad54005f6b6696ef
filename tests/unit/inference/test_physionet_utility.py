"""PhysioNet 2019 utility: hand-computed cases of the challenge's scoring rules."""

from __future__ import annotations

import numpy as np
import pytest

from inference.utility import best_alarms, best_threshold, normalized_utility, stay_utility


def septic_labels(n: int, first_label: int) -> np.ndarray:
    lab = np.zeros(n, dtype=int)
    lab[first_label:] = 1
    return lab


def test_non_septic_costs_per_alarm() -> None:
    assert stay_utility([0] * 10, [0] * 10) == 0.0
    assert stay_utility([0] * 10, [1, 1, 0, 0, 0, 0, 0, 0, 0, 1]) == pytest.approx(-0.15)


def test_septic_reward_curve() -> None:
    # first label at hour 20 -> onset t_sepsis = 26
    lab = septic_labels(40, 20)

    def one_alarm(t: int) -> float:
        a = np.zeros(40, dtype=int)
        a[t] = 1
        return stay_utility(lab, a) - stay_utility(lab, np.zeros(40, dtype=int))

    assert one_alarm(26 - 12) == pytest.approx(0.0)  # d = -12
    assert one_alarm(26 - 9) == pytest.approx(0.5)  # halfway up
    assert one_alarm(26 - 6) == pytest.approx(1.0)  # optimal
    assert one_alarm(26) == pytest.approx(1.0 / 3.0 + 2.0 * 2.0 / 3.0)  # down 2/3 vs -4/3 miss
    assert one_alarm(26 + 3) == pytest.approx(0.0 - (-2.0) + 0.0)  # tp 0, fn would be -2
    assert one_alarm(26 + 4) == 0.0  # after d = +3 nothing counts
    assert one_alarm(26 - 13) == pytest.approx(-0.05)  # too early: false alarm


def test_missing_septic_cost() -> None:
    lab = septic_labels(40, 20)
    # misses from d = -5 .. +3: -2/9 * (1..9)
    expected = -sum(2.0 / 9.0 * k for k in range(1, 10))
    assert stay_utility(lab, np.zeros(40)) == pytest.approx(expected)


def test_normalised_best_and_none() -> None:
    labels = [septic_labels(50, 30), np.zeros(20, dtype=int), septic_labels(8, 0)]
    assert normalized_utility(labels, [best_alarms(x) for x in labels]) == pytest.approx(1.0)
    assert normalized_utility(labels, [np.zeros(len(x)) for x in labels]) == pytest.approx(0.0)
    always = normalized_utility(labels, [np.ones(len(x)) for x in labels])
    assert always < 1.0
    assert best_alarms(septic_labels(8, 0)).tolist() == [1] * 8  # onset 6, clipped window
    with pytest.raises(ValueError, match="septic"):
        normalized_utility([np.zeros(3)], [np.zeros(3)])


def test_best_threshold_finds_perfect_scores() -> None:
    labels = [septic_labels(50, 30), np.zeros(20, dtype=int)]
    scores = [best_alarms(labels[0]) * 0.9 + 0.05, np.full(20, 0.05)]
    th, u = best_threshold(labels, scores, candidates=[0.01, 0.5, 0.99])
    assert th == 0.5
    assert u == pytest.approx(1.0)
