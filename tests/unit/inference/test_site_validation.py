"""Site validation's pure parts: labels, hourly rows, recalibration and the report."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from inference import calibration as cal
from inference import site_labels as sl
from inference import site_report as sr
from inference import site_validation as sv
from inference.alert_policy import AlertPolicy
from inference.utility import DT_OPTIMAL

T0 = datetime(2026, 3, 1, 0, 0, tzinfo=UTC)
H = timedelta(hours=1)


@dataclass(frozen=True)
class Score:
    scored_at: datetime
    risk: float | None
    news2: int | None = 1
    alert: bool = False


# ------------------------------------------------------------------ hourly rows


def test_one_row_per_hour_the_last_score_wins() -> None:
    scores = [
        Score(T0 + 2 * H + timedelta(minutes=50), 0.3, 4, True),
        Score(T0 + timedelta(minutes=5), 0.1, 2),
        Score(T0 + timedelta(minutes=40), 0.2, None),
        Score(T0 + H + timedelta(minutes=1), None, 3),  # degraded
    ]
    (stay,) = sv.hourly_stays("pt-a", scores)
    assert stay.times == [T0 + timedelta(minutes=40), T0 + H + timedelta(minutes=1), *[
        T0 + 2 * H + timedelta(minutes=50)
    ]]  # fmt: skip
    np.testing.assert_array_equal(stay.risk, [0.2, np.nan, 0.3])
    np.testing.assert_array_equal(stay.news2, [-1, 3, 4])
    np.testing.assert_array_equal(stay.alert, [False, False, True])
    assert stay.scores == 4 and not stay.filled.any()


def test_hours_without_a_score_carry_forward_and_long_gaps_split_stays() -> None:
    scores = [Score(T0, 0.1), Score(T0 + 3 * H, 0.4, alert=True), Score(T0 + 40 * H, 0.2)]
    first, second = sv.hourly_stays("pt-a", scores)
    assert first.times == [T0, T0 + H, T0 + 2 * H, T0 + 3 * H]
    np.testing.assert_array_equal(first.risk, [0.1, 0.1, 0.1, 0.4])
    np.testing.assert_array_equal(first.filled, [False, True, True, False])
    assert second.times == [T0 + 40 * H] and second.scores == 1
    with pytest.raises(ValueError, match="naive"):
        sv.hourly_stays("pt-a", [Score(datetime(2026, 3, 1), 0.1)])


def test_hourly_labels_are_physionets() -> None:
    times = [T0 + h * H for h in range(20)]
    onset = T0 + 10 * H
    y = sv.hourly_labels(times, onset)
    assert y.tolist() == [0] * 4 + [1] * 16  # from onset - 6 h on
    # inference.utility puts onset at the first positive row + 6: the given onset
    assert int(np.argmax(y)) - DT_OPTIMAL == 10
    assert not sv.hourly_labels(times, None).any()
    late = sv.hourly_labels([T0 + 30 * H + timedelta(minutes=59)], T0 + 37 * H)
    assert late.tolist() == [0]


def _labels(onsets: dict[str, datetime | None]) -> sl.SiteLabels:
    return sl.SiteLabels(onsets, "csv", len(onsets))


def test_assemble_counts_patients_without_an_outcome() -> None:
    pts = [(p, [Score(T0 + h * H, 0.1) for h in range(12)]) for p in ("a", "b", "c")]
    labels = _labels({"a": T0 + 8 * H, "b": None, "z": None})
    data = sv.assemble(pts, labels)
    c = data.counts
    assert (c["patients_with_scores"], c["patients"], c["patients_no_outcome_given"]) == (3, 2, 1)
    assert (c["labels_without_scores"], c["septic_patients"], c["rows"]) == (1, 1, 24)
    assert c["positive_rows"] == 10 and c["scores_of_patients_left_out"] == 12
    with_c = sv.assemble(pts, labels, unlabelled_negative=True)
    assert with_c.counts["patients"] == 3 and with_c.counts["rows"] == 36
    assert not with_c.labels[2].any()


def test_assemble_refuses_what_cannot_be_validated() -> None:
    pts = [("a", [Score(T0 + h * H, 0.1) for h in range(12)])]
    with pytest.raises(sv.SiteValidationError, match="no scores"):
        sv.assemble([], _labels({"a": None}))
    with pytest.raises(sv.SiteValidationError, match="no septic patient among the 1 labelled"):
        sv.assemble(pts, _labels({"a": None}))
    with pytest.raises(sv.SiteValidationError, match="no septic patient among the 0"):
        sv.assemble(pts, _labels({"b": T0}))
    with pytest.raises(sv.SiteValidationError, match="positive hour"):
        sv.assemble(pts, _labels({"a": T0 + 30 * H}))  # scores end before onset - 6 h


# ------------------------------------------------------------------ recalibration


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


def test_platt_recovers_a_known_miscalibration() -> None:
    rng = np.random.default_rng(3)
    z = rng.normal(-3.5, 1.3, 200_000)
    y = (rng.random(z.size) < 1 / (1 + np.exp(-z))).astype(np.int8)
    a, b = 0.6, -0.8  # the served risk is too spread out and shifted
    served = 1 / (1 + np.exp(-(z - b) / a))  # so that sigmoid(a * logit(served) + b) is true
    fa, fb = cal.platt_fit_risk(served, y)
    assert fa == pytest.approx(a, abs=0.03) and fb == pytest.approx(b, abs=0.1)
    q = cal.recalibrate(served, fa, fb)
    assert cal.brier(y, q) < cal.brier(y, served)
    assert cal.calibration_error(y, q) < cal.calibration_error(y, served) / 2
    back = cal.inverse_recalibrate(cal.recalibrate([0.01, 0.2], a, b), a, b)
    np.testing.assert_allclose(back, [0.01, 0.2])
    with pytest.raises(ValueError, match="no inverse"):
        cal.inverse_recalibrate(0.1, 0.0, 1.0)


def test_patient_folds_spread_septic_patients() -> None:
    pts = [f"p{i}" for i in range(23)]
    septic = pts[:7]
    folds = sv.patient_folds(pts, septic, 5, seed=1)
    assert set(folds) == set(pts) and set(folds.values()) == set(range(5))
    per_fold = [sum(1 for p in septic if folds[p] == f) for f in range(5)]
    assert min(per_fold) >= 1 and max(per_fold) - min(per_fold) <= 1
    assert folds == sv.patient_folds(list(reversed(pts)), septic, 5, seed=1)
    with pytest.raises(ValueError, match="2 folds"):
        sv.patient_folds(pts, septic, 1)


def _synthetic_site(
    n: int = 120, septic_every: int = 4, seed: int = 0, a: float = 0.5, b: float = -1.5
) -> tuple[list[tuple[str, list[Score]]], sl.SiteLabels]:
    """Stays of 48 h; every ``septic_every``-th patient septic at hour 36, its score
    rising from hour 24; the stored risk is that score squashed by (a, b), far from the
    rate of positive hours."""
    rng = np.random.default_rng(seed)
    pts = []
    onsets: dict[str, datetime | None] = {}
    for i in range(n):
        septic = i % septic_every == 0
        hours = np.arange(48)
        z = -4.5 + rng.normal(0, 0.5, 48) + (septic * np.clip(hours - 24, 0, None) * 0.35)
        served = 1 / (1 + np.exp(-(z - b) / a))
        name = f"pt-{i:03d}"
        pts.append(
            (
                name,
                [
                    Score(T0 + int(h) * H, float(r), int(h % 4), bool(r >= 0.02))
                    for h, r in zip(hours, served, strict=True)
                ],
            )
        )
        onsets[name] = T0 + 36 * H if septic else None
    return pts, _labels(onsets)


def test_validate_reports_and_recalibrates(tmp_path: Path) -> None:
    pts, labels = _synthetic_site()
    data = sv.assemble(pts, labels)
    policy = AlertPolicy(threshold=0.02, base_rate=0.01)
    r = sv.validate(data, policy, model={"name": "m", "version": "9"}, n_boot=50)
    for key in (
        "counts",
        "discrimination",
        "calibration",
        "threshold",
        "alert_state",
        "threshold_curve",
        "recalibration",
    ):
        assert key in r, key
    d = r["discrimination"][sv.MODEL_NAME]
    assert 0.8 < d["auroc"] <= 1 and d["auroc_ci95"][0] <= d["auroc"] <= d["auroc_ci95"][1]
    cv = r["recalibration"]["cross_validation"]
    assert cv["folds"] == 5 and len(cv["per_fold"]) == 5
    assert cv["recalibrated"]["brier"] < cv["served"]["brier"]
    assert cv["recalibrated"]["calibration_error"] < cv["served"]["calibration_error"]
    rc = r["recalibration"]
    assert rc["a"] > 0 and rc["adoptable"]  # informative risk: the map is increasing
    th = r["threshold"]
    assert th["proposed_recalibrated_space"] == pytest.approx(
        float(cal.recalibrate(th["proposed_served_space"], rc["a"], rc["b"]))
    )
    assert rc["card_block"]["alert_policy"]["threshold"] == th["proposed_recalibrated_space"]
    states = r["alert_state"]["methods"]
    assert set(states) == {sv.STORED_STATE, "risk >= threshold (0.02)", "NEWS2 >= 5"}
    # the stored state was made as risk >= 0.02: the two must measure the same
    assert states[sv.STORED_STATE] == states["risk >= threshold (0.02)"]
    files = sr.write_report(r, data, tmp_path)
    for f in files.values():
        assert f.stat().st_size > 0
    saved = json.loads(files["recalibration.json"].read_text())
    assert math.isfinite(saved["a"]) and math.isfinite(saved["b"])
    md = files["report.md"].read_text()
    assert "## The alert state" in md and "new model version" in md
    assert "_plot" not in json.loads(files["metrics.json"].read_text())


def test_a_threshold_far_too_low_is_replaced_by_cross_validation() -> None:
    pts, labels = _synthetic_site(seed=1)
    data = sv.assemble(pts, labels)
    low = AlertPolicy(threshold=1e-4)  # below every risk: always alerting
    r = sv.validate(data, low, model={"name": "m", "version": "9"}, n_boot=100)
    th = r["threshold"]
    cv = th["cross_validation"]
    assert cv["better"] and cv["difference_ci95"][0] > 0
    assert th["changed"] and th["proposed_served_space"] > 1e-4
    assert th["decision"].startswith("tuned")
    kept = sv.validate(data, AlertPolicy(threshold=th["proposed_served_space"]), model={}, n_boot=0)
    assert not kept["threshold"]["changed"]  # no bootstrap: nothing is reliably better
