"""Choosing the alert policy on held-out folds: the grid, both rules, the card."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from inference.alert_policy import AlertPolicy
from inference.policy_tuning import (
    Candidate,
    Fold,
    choose_best,
    choose_guarded,
    plain,
    render_markdown,
    score_grid,
    tune,
    write_card,
)


def _folds(flicker: bool, n_folds: int = 3, per_fold: int = 60, seed: int = 1) -> list[Fold]:
    """Synthetic held-out folds: a third of the stays septic (label from hour 30, onset
    36). With ``flicker`` the risk of septic stays crosses the threshold only every other
    hour before onset, so holding the alert earns more; otherwise it is steady."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_folds):
        labels, risks, news2 = [], [], []
        for i in range(per_fold):
            y = np.zeros(48, np.int8)
            r = rng.uniform(0.0, 0.04, 48)
            if i % 3 == 0:
                y[30:] = 1
                high = np.arange(20, 40)
                r[high[::2] if flicker else high] = 0.2
            labels.append(y)
            risks.append(r)
            news2.append(np.full(48, 3.0))
        out.append(Fold(labels, risks, news2, threshold=0.1))
    return out


GRID = [plain(), Candidate(1.0, 1.0, 2.0, None, None), Candidate(1.0, 1.0, 0.0, 7, 5)]


def test_a_clearly_better_policy_replaces_the_plain_one() -> None:
    table = score_grid(_folds(flicker=True), GRID)
    every = table.in_folds(np.ones(3, bool))
    assert table.utility(GRID[1], every) > table.utility(plain(), every) + 0.1
    rng = np.random.default_rng(0)
    assert choose_best(table, every) == GRID[1]
    assert choose_guarded(table, every, 200, rng) == GRID[1]


def test_without_a_clear_gain_the_plain_policy_stays() -> None:
    table = score_grid(_folds(flicker=False), GRID)
    every = table.in_folds(np.ones(3, bool))
    # holding adds alert hours after the risk falls: no better than plain here
    assert table.utility(GRID[1], every) <= table.utility(plain(), every)
    assert choose_guarded(table, every, 200, np.random.default_rng(0)) == plain()


def test_tune_reports_nested_rules_and_the_comparisons(tmp_path: Path) -> None:
    r = tune(_folds(flicker=True), GRID, n_boot=100)
    assert r["chosen"]["hold_hours"] == 2.0
    assert len(r["nested_choices"]["rule 2"]) == 3
    rows = r["methods"]
    assert set(rows) >= {"NEWS2 >= 5", "rule 1, nested", "previous policy (as v2 was served)"}
    # risk >= threshold is the plain policy's state, so the same utility
    assert rows["risk >= threshold"]["utility"] == pytest.approx(
        tune(_folds(flicker=True), [plain()], n_boot=50)["methods"][
            "rule 2, nested (the served rule)"
        ]["utility"]
    )
    assert (
        rows["rule 2, nested (the served rule)"]["utility"] > rows["risk >= threshold"]["utility"]
    )
    assert "Chosen: 1x threshold, clear below 1x, hold 2 h" in render_markdown(r, "cmd")
    card = tmp_path / "model_card.json"
    card.write_text(json.dumps({"alert_threshold": 0.02, "version": 9}))
    write_card(card, r, base_rate=0.015)
    written = json.loads(card.read_text())
    policy = AlertPolicy.from_card(written)
    assert policy == AlertPolicy(threshold=0.02, hold_hours=2.0, base_rate=0.015)
    assert (
        written["alert_policy"]["crossval"]["utility"]
        == rows["rule 2, nested (the served rule)"]["utility"]
    )
