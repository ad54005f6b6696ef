"""Cross-validation of the ensemble configurations (inference.crossval): the fold
assignment, the per-stay utility sums and their bootstrap, and a small end-to-end run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from inference.crossval import assign_folds, crossvalidate, main
from inference.utility import StayUtilities, normalized_utility, paired_bootstrap


def test_folds_are_balanced_seeded_and_independent_of_input_order() -> None:
    stems = [f"p{i:06d}" for i in range(103)]
    folds = assign_folds(stems, 5, seed=0)
    assert sorted(np.bincount(folds).tolist()) == [20, 20, 21, 21, 21]
    assert (assign_folds(stems, 5, seed=0) == folds).all()
    assert not (assign_folds(stems, 5, seed=1) == folds).all()
    shuffled = list(reversed(stems))
    again = dict(zip(shuffled, assign_folds(shuffled, 5, seed=0), strict=True))
    assert all(again[s] == f for s, f in zip(stems, folds, strict=True))
    with pytest.raises(ValueError, match="folds"):
        assign_folds(stems[:3], 4, seed=0)
    with pytest.raises(ValueError, match="folds"):
        assign_folds(stems, 1, seed=0)


def _stays(n: int, rng: np.random.Generator) -> tuple[list[np.ndarray], list[np.ndarray]]:
    labels, alarms = [], []
    for i in range(n):
        hours = int(rng.integers(10, 60))
        y = np.zeros(hours, np.int8)
        if i % 3 == 0:
            y[int(rng.integers(0, hours)) :] = 1
        labels.append(y)
        alarms.append((rng.random(hours) < 0.2).astype(np.int8))
    return labels, alarms


def test_stay_utilities_agree_with_the_challenge_utility_also_on_a_resample() -> None:
    labels, alarms = _stays(40, np.random.default_rng(2))
    u = StayUtilities.of(labels, alarms)
    assert u.normalised() == pytest.approx(normalized_utility(labels, alarms), abs=1e-12)
    pick = np.array([0, 0, 3, 5, 7, 9, 9, 12])
    want = normalized_utility([labels[i] for i in pick], [alarms[i] for i in pick])
    assert u.normalised(pick) == pytest.approx(want, abs=1e-12)
    with pytest.raises(ValueError, match="no septic stay"):
        u.normalised(np.array([1, 2, 4]))  # stays 1, 2, 4 are not septic


def test_paired_bootstrap_sees_no_difference_between_equals_and_a_clear_one() -> None:
    labels, alarms = _stays(90, np.random.default_rng(3))
    a = StayUtilities.of(labels, alarms)
    diff, lo, hi, ahead = paired_bootstrap(a, a, 200, np.random.default_rng(0))
    assert diff == lo == hi == ahead == 0.0
    perfect = StayUtilities.of(labels, [np.zeros_like(y) + (y > 0) for y in labels])
    diff, lo, hi, ahead = paired_bootstrap(a, perfect, 200, np.random.default_rng(0))
    assert diff > 0 and 0 < lo <= diff <= hi and ahead == 1.0
    with pytest.raises(ValueError, match="same stays"):
        paired_bootstrap(a, StayUtilities.of(labels[:5], alarms[:5]), 10, np.random.default_rng(0))


def test_crossvalidate_end_to_end_on_synthetic_stays_and_resumes(tmp_path: Path) -> None:
    from tests.unit.inference.test_risk_model import _write_synthetic_stays

    data = tmp_path / "psv"
    data.mkdir()
    _write_synthetic_stays(data, 80)
    out = tmp_path / "cv"
    recipe = {"epochs": 1, "neg_ratio": 2, "batch_size": 64, "lr": 1e-3, "patience": 1}
    m = crossvalidate(data, out, folds=3, seed=0, threads=1, n_boot=50, recipe=recipe)
    train_patients = m["n_patients"]
    assert m["n_folds"] == 3 and m["validation_read"] is False
    assert 40 <= train_patients <= 70  # the train split's 70 % of 80, no other split
    assert set(m["methods"]) == {"transformer", "gbm_1", "ensemble_1", "gbm_2", "ensemble_2"}
    for r in m["methods"].values():
        assert len(r["utility_per_fold"]) == len(r["auroc_per_fold"]) == 3
        assert -5.0 < r["utility"] <= 1.0
        # the served policy's alert state is risk >= threshold: the same utility, and
        # suppression raises at most one alert per rising edge
        assert r["alert_state"]["utility"] == pytest.approx(r["utility"], abs=1e-4)
        assert r["alert_state"]["alerts"] >= 0
    pb = m["paired_bootstrap"]
    assert pb["ci95"][0] <= pb["utility_difference"] <= pb["ci95"][1]
    # the rule: the higher pooled ensemble utility is chosen
    assert m["compared"] == ["ensemble_1", "ensemble_2"]
    u1, u2 = (m["methods"][f"ensemble_{fs}"]["utility"] for fs in (1, 2))
    assert m["chosen_method"] == ("ensemble_2" if pb["utility_difference"] > 0 else "ensemble_1")
    assert (u2 > u1) == (m["chosen_method"] == "ensemble_2") or u1 == u2
    report = (out / "report.md").read_text()
    assert "Chosen:" in report and "validation split was not read" in report
    assert "septic alerted in the 24 h before onset" in report
    assert (out / "crossval.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "metrics.json").read_text())["chosen"] == m["chosen"]

    # a second run reuses every fold file (same configuration) and gives the same numbers
    stamps = {p: p.stat().st_mtime_ns for p in (out / "folds").glob("fold-*.npz")}
    assert len(stamps) == 3
    again = crossvalidate(data, out, folds=3, seed=0, threads=1, n_boot=50, recipe=recipe)
    assert again["methods"] == m["methods"]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    # another transformer recipe against this run as the baseline: same patients, so the
    # baseline's ensemble and transformer are reported beside this run's and compared
    longer = recipe | {"epochs": 2}
    other = tmp_path / "cv-longer"
    kw = {"folds": 3, "threads": 1, "n_boot": 50, "feature_sets": (1,), "recipe": longer}
    b = crossvalidate(data, other, seed=0, baseline=out, **kw)  # type: ignore[arg-type]
    assert b["compared"] == ["baseline_ensemble_1", "ensemble_1"]
    assert b["methods"]["baseline_ensemble_1"] == m["methods"]["ensemble_1"]
    assert b["baseline"]["transformer_recipe"]["epochs"] == 1
    assert "baseline: ensemble" in (other / "report.md").read_text()
    with pytest.raises(ValueError, match="other patients"):
        crossvalidate(data, tmp_path / "cv-seed1", seed=1, baseline=out, **kw)  # type: ignore[arg-type]


def test_help_explains_the_decision_rule(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "Decision rule" in out and "resumes" in out


def test_gbm_overrides_change_the_fold_key_and_the_labels_only_when_given() -> None:
    from inference.crossval import TRANSFORMER_RECIPE, _fold_key, method_label

    recipe = dict(TRANSFORMER_RECIPE)
    plain = _fold_key((1, 2), 0, 5, recipe, {})
    # the key of runs made before overrides existed: their fold files stay valid
    assert json.loads(plain) == {"feature_sets": [1, 2], "seed": 0, "folds": 5, "recipe": recipe}
    assert _fold_key((1, 2), 0, 5, recipe, {"max_iter": 1000}) != plain
    m = {
        "transformer_recipe": recipe,
        "gbm_overrides": {"max_iter": 1000},
        "baseline": {"transformer_recipe": recipe, "gbm_overrides": {}},
    }
    assert method_label("ensemble_1", m).startswith(
        "ensemble, v2 config (feature set 1), max_iter 1000"
    )
    assert "max_iter" not in method_label("baseline_ensemble_1", m)
    assert method_label("transformer", m) == "transformer (up to 2 epochs, patience 4)"
