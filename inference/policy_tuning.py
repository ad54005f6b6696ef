"""Choose the alert policy by cross-validation, judged by the alert state a clinician sees.

    python -m inference.policy_tuning --crossval var/crossval --out inference/reports/policy

Why: the hourly prediction a clinician acts on is the alert state, not "risk >= threshold".
The policy (threshold, hysteresis, hold time, NEWS2 entry and stay) decides that state,
and a policy tuned by hand took away more than a third of what the model's own threshold
earns. Here the policy is chosen on held-out predictions only.

Input: a :mod:`inference.crossval` run's fold files (every train-split patient scored by
an ensemble that never saw it, each fold with the threshold its build chose on the test
split) and the same patients' hourly NEWS2, computed with the stream's functions
(:func:`inference.evaluate.rule_scores`). Every candidate policy of :func:`policy_grid`
is run over every held-out stay with :func:`inference.alert_metrics.simulate` (the
worker's own :func:`~inference.alert_policy.transition`). The threshold is a multiple of
each fold's own threshold, so the chosen multiple carries over to the served model's.

Decision rule 1 (fixed before the first run): the policy with the highest pooled
normalised utility of its alert state; a tie (within 0.001) goes to fewer alerts raised.
Decision rule 2 (fixed after rule 1's nested estimate came in below the plain policy, and
before its own run; the served rule): rule 1's pick replaces the plain policy, whose
alert state is exactly risk >= the build's threshold, only when the paired patient
bootstrap's 95 % lower bound of its improvement is above zero. Each rule's honest
estimate is nested: for each fold, the policy is chosen on the other folds and scored on
that fold; the folds are pooled. The validation split is not read.

Writes ``<out>/policy.json`` (the chosen policy and the metrics), ``<out>/report.md`` and
``<out>/policy.png`` (utility and alert burden against the threshold). With
``--write-card`` the chosen policy goes into a model card's ``alert_policy``.

Raises ``FileNotFoundError`` for a missing data folder or fold file and ``ValueError``
when a fold file does not match the patients it should hold; nothing is retried.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from inference import physionet_data as pdata
from inference.alert_metrics import alert_metrics, policy_states, rising_edges, table_cells
from inference.alert_policy import AlertPolicy
from inference.utility import best_alarms, stay_utility

F64 = npt.NDArray[np.float64]


# The policy the stream served before it was tuned (threshold margin 0.05, capped at half
# the threshold; NEWS2 >= 7 enters, >= 5 stays): the measured 0.198 on unseen patients.
def plain() -> Candidate:
    """The policy whose alert state is exactly risk >= the build's threshold."""
    return Candidate(1.0, 1.0, 0.0, None, None)


def legacy() -> Candidate:
    """The policy v2 was served with: the 0.05 margin, capped at half the threshold
    (0.5x); NEWS2 >= 7 enters and >= 5 stays."""
    return Candidate(1.0, 0.5, 0.0, 7, 5)


SCALES = (0.7, 0.8, 0.9, 1.0, 1.1, 1.25, 1.4, 1.6, 1.8, 2.0)
CLEAR_RATIOS = (1.0, 0.85, 0.7, 0.5)
HOLD_HOURS = (0.0, 2.0, 4.0)
NEWS2_RULES: tuple[tuple[int | None, int | None], ...] = ((None, None), (7, None), (7, 5))
TIE = 0.001


@dataclass(frozen=True)
class Candidate:
    """A policy relative to a fold's threshold: ``scale`` times it."""

    scale: float
    clear_ratio: float
    hold_hours: float
    news2_enter: int | None
    news2_stay: int | None

    def policy(self, threshold: float, suppress_hours: float = 6.0) -> AlertPolicy:
        return AlertPolicy(
            threshold=min(self.scale * threshold, 0.999),
            clear_ratio=self.clear_ratio,
            hold_hours=self.hold_hours,
            news2_enter=self.news2_enter,
            news2_stay=self.news2_stay,
            suppress_hours=suppress_hours,
        )

    def label(self) -> str:
        n2 = "no NEWS2" if self.news2_enter is None else f"NEWS2 enter {self.news2_enter}"
        if self.news2_stay is not None:
            n2 += f", stay {self.news2_stay}"
        return (
            f"{self.scale:g}x threshold, clear below {self.clear_ratio:g}x, "
            f"hold {self.hold_hours:g} h, {n2}"
        )


def policy_grid() -> list[Candidate]:
    """Every candidate: threshold multiple x clear ratio x hold hours x NEWS2 rule."""
    return [
        Candidate(s, c, h, n2[0], n2[1])
        for s, c, h, n2 in itertools.product(SCALES, CLEAR_RATIOS, HOLD_HOURS, NEWS2_RULES)
    ]


@dataclass
class Fold:
    """One fold's held-out stays: hourly labels, risks, NEWS2 (-1 = null), and the
    threshold the fold's ensemble build chose."""

    labels: list[npt.NDArray[np.int8]]
    risks: list[F64]
    news2: list[F64]
    threshold: float


def load_folds(
    crossval_dir: Path,
    data_dir: Path,
    *,
    folds: int = 5,
    seed: int = 0,
    split_seed: int = 2019,
    feature_set: int = 1,
    max_patients: int | None = None,
) -> list[Fold]:
    """The held-out stays of each fold of a crossval run, with their hourly NEWS2.

    Raises ``FileNotFoundError`` for a missing data folder or fold file, ``ValueError``
    when a fold file's labels are not those of the stays it should hold (another data
    set, seed or patient limit)."""
    from inference.crossval import assign_folds
    from inference.ensemble import _load_stays
    from inference.evaluate import _split_by_stay, rule_scores

    if not data_dir.exists():
        raise FileNotFoundError(f"no PhysioNet data at {data_dir}")
    stays = _load_stays(data_dir, split_seed, max_patients, ("train",))
    fold_of = assign_folds([s.stem for s in stays], folds, seed)
    codes = tuple(pdata.PSV_CODES.values())
    out = []
    for k in range(folds):
        path = crossval_dir / "folds" / f"fold-{k}.npz"
        if not path.exists():
            raise FileNotFoundError(f"no fold file {path}: run python -m inference.crossval")
        with np.load(path, allow_pickle=False) as z:
            labels, stay_of = z["labels"], z["stay_of"]
            risk = z[f"p_ensemble_{feature_set}"].astype(np.float64)
            threshold = float(z[f"th_ensemble_{feature_set}"])
        held = [s for s, f in zip(stays, fold_of, strict=True) if f == k]
        want = np.concatenate([s.labels for s in held])
        if want.shape != labels.shape or not np.array_equal(want, labels):
            raise ValueError(f"{path} holds other patients than fold {k} of {data_dir}")
        out.append(
            Fold(
                labels=_split_by_stay(labels, stay_of),
                risks=_split_by_stay(risk, stay_of),
                news2=[rule_scores(s.matrix, codes)[0] for s in held],
                threshold=threshold,
            )
        )
    return out


@dataclass
class Table:
    """Per held-out stay (all folds in order): its fold, the utility of the best alarms and
    of none, and for each candidate its alert state's utility and its alerts raised."""

    fold: npt.NDArray[np.int64]
    best: F64
    inaction: F64
    observed: dict[Candidate, F64]
    alerts: dict[Candidate, F64]

    def utility(self, c: Candidate, pick: npt.NDArray[np.bool_]) -> float:
        """Normalised utility of ``c`` over the stays ``pick``."""
        denom = float(self.best[pick].sum() - self.inaction[pick].sum())
        return float(self.observed[c][pick].sum() - self.inaction[pick].sum()) / denom

    def in_folds(self, folds: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
        """The stays of the folds marked in ``folds``."""
        picked: npt.NDArray[np.bool_] = folds[self.fold]
        return picked


def score_grid(folds: Sequence[Fold], grid: Sequence[Candidate]) -> Table:
    """Each candidate's utility and alerts raised per held-out stay. Raises nothing."""
    labels = [y for f in folds for y in f.labels]
    table = Table(
        fold=np.concatenate([np.full(len(f.labels), k) for k, f in enumerate(folds)]),
        best=np.array([stay_utility(y, best_alarms(y)) for y in labels]),
        inaction=np.array([stay_utility(y, np.zeros(y.size, np.int8)) for y in labels]),
        observed={},
        alerts={},
    )
    for c in grid:
        obs: list[float] = []
        alerts: list[float] = []
        for f in folds:
            states, raised = policy_states(c.policy(f.threshold), f.risks, f.news2)
            obs += [stay_utility(y, st) for y, st in zip(f.labels, states, strict=True)]
            alerts += [float(r.sum()) for r in raised]
        table.observed[c] = np.array(obs)
        table.alerts[c] = np.array(alerts)
    return table


def choose_best(table: Table, pick: npt.NDArray[np.bool_]) -> Candidate:
    """Rule 1: highest pooled utility over the stays ``pick``; within :data:`TIE` of it,
    fewest alerts raised (then the first in grid order). Raises nothing."""
    util = {c: table.utility(c, pick) for c in table.observed}
    top = max(util.values())
    close = [c for c in util if util[c] >= top - TIE]
    return min(close, key=lambda c: (table.alerts[c][pick].sum(), -util[c]))


def improvement_interval(
    table: Table,
    a: Candidate,
    b: Candidate,
    pick: npt.NDArray[np.bool_],
    n_boot: int,
    rng: np.random.Generator,
) -> tuple[float, float, float]:
    """Utility of ``b`` minus ``a`` over the stays ``pick`` and its 95 % percentile
    interval over paired patient resamples. Raises nothing."""
    idx = np.flatnonzero(pick)
    draws = idx[rng.integers(0, idx.size, (n_boot, idx.size))]
    best, none = table.best[draws].sum(1), table.inaction[draws].sum(1)
    ok = best != none  # a resample without a septic stay has no utility
    denom = (best - none)[ok]
    diff = (table.observed[b][draws].sum(1)[ok] - table.observed[a][draws].sum(1)[ok]) / denom
    lo, hi = np.percentile(diff, [2.5, 97.5])
    return table.utility(b, pick) - table.utility(a, pick), float(lo), float(hi)


def choose_guarded(
    table: Table, pick: npt.NDArray[np.bool_], n_boot: int, rng: np.random.Generator
) -> Candidate:
    """Rule 2: rule 1's choice replaces the plain policy (:func:`plain`: the alert state is
    risk >= the build's threshold) only when the paired patient bootstrap's 95 % lower
    bound of its improvement over the stays ``pick`` is above zero. Raises nothing."""
    top = choose_best(table, pick)
    if top == plain():
        return top
    _, lo, _ = improvement_interval(table, plain(), top, pick, n_boot, rng)
    return top if lo > 0 else plain()


def _method_metrics(
    folds: Sequence[Fold], per_fold: Sequence[Candidate | str], suppress_hours: float = 6.0
) -> dict[str, Any]:
    """Pooled alert-state metrics when fold k uses ``per_fold[k]`` (a candidate policy,
    or the rules "risk" = risk >= threshold and "news2" = NEWS2 >= 5)."""
    labels, states, raised = [], [], []
    per_fold_u = []
    for f, c in zip(folds, per_fold, strict=True):
        if isinstance(c, Candidate):
            s, r = policy_states(c.policy(f.threshold, suppress_hours), f.risks, f.news2)
        elif c == "risk":
            s = [x >= f.threshold for x in f.risks]
            r = [rising_edges(x) for x in s]
        else:
            s = [x >= 5 for x in f.news2]
            r = [rising_edges(x) for x in s]
        per_fold_u.append(alert_metrics(f.labels, s, r).utility)
        labels += f.labels
        states += s
        raised += r
    m = alert_metrics(labels, states, raised).to_dict()
    m["utility_per_fold"] = [round(u, 4) for u in per_fold_u]
    return m


def tune(
    folds: Sequence[Fold],
    grid: Sequence[Candidate] | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The policy chosen by rule 2 on all folds, the nested estimates of both rules, and
    the comparison methods' metrics on the same rows. Raises ``ValueError`` when no stay
    is septic."""
    grid = list(grid or policy_grid())
    if plain() not in grid:
        grid.append(plain())
    table = score_grid(folds, grid)
    k = len(folds)
    rng = np.random.default_rng(seed)
    every = table.in_folds(np.ones(k, dtype=bool))
    others = [table.in_folds(np.arange(k) != i) for i in range(k)]
    nested_best = [choose_best(table, pick) for pick in others]
    nested_guarded = [choose_guarded(table, pick, n_boot, rng) for pick in others]
    chosen = choose_guarded(table, every, n_boot, rng)
    best = choose_best(table, every)
    diff, lo, hi = improvement_interval(table, plain(), best, every, n_boot, rng)
    methods = {
        "rule 2, nested (the served rule)": _method_metrics(folds, nested_guarded),
        "rule 1, nested": _method_metrics(folds, nested_best),
        "risk >= threshold": _method_metrics(folds, ["risk"] * k),
        "previous policy (as v2 was served)": _method_metrics(folds, [legacy()] * k),
        "NEWS2 >= 5": _method_metrics(folds, ["news2"] * k),
        "rule 1's pick, in-sample (all folds)": _method_metrics(folds, [best] * k),
    }
    # utility and burden against the threshold, the other settings as chosen
    curve = []
    for sc in SCALES:
        c = replace(chosen, scale=sc)
        if c not in table.observed:
            continue
        curve.append(
            {
                "scale": sc,
                "utility": round(table.utility(c, every), 4),
                "alerts_per_100_patient_days": round(
                    100 * float(table.alerts[c].sum()) / _patient_days(folds), 2
                ),
            }
        )
    rule_curve = [
        {
            "scale": sc,
            "utility": _method_metrics(folds, [replace(plain(), scale=sc)] * k)["utility"],
        }
        for sc in SCALES
    ]
    suppression = [
        {
            "suppress_hours": h,
            "alerts_per_100_patient_days": _method_metrics(folds, [chosen] * k, suppress_hours=h)[
                "alerts_per_100_patient_days"
            ],
        }
        for h in (0.0, 6.0, 12.0, 24.0)
    ]
    top = sorted(table.observed, key=lambda c: -table.utility(c, every))[:10]
    return {
        "chosen": {**chosen.__dict__, "label": chosen.label()},
        "rule_1_pick": {
            "label": best.label(),
            "improvement_over_plain": round(diff, 4),
            "ci95": [round(lo, 4), round(hi, 4)],
        },
        "nested_choices": {
            "rule 1": [c.label() for c in nested_best],
            "rule 2": [c.label() for c in nested_guarded],
        },
        "methods": methods,
        "threshold_curve": curve,
        "risk_threshold_curve": rule_curve,
        "suppression": suppression,
        "top_candidates": [
            {"label": c.label(), "utility": round(table.utility(c, every), 4)} for c in top
        ],
        "grid_size": len(grid),
        "fold_thresholds": [round(f.threshold, 6) for f in folds],
        "n_patients": sum(len(f.labels) for f in folds),
        "n_septic_patients": sum(int(y.any()) for f in folds for y in f.labels),
        "patient_days": round(_patient_days(folds), 1),
        "rules": {
            "rule 1": "highest pooled utility of the alert state; within 0.001, fewest alerts",
            "rule 2": "rule 1's pick replaces the plain policy (state = risk >= the build's "
            "threshold) only when the paired patient bootstrap's 95 % lower bound of its "
            "improvement is above zero",
        },
        "served_rule": "rule 2",
        "bootstrap": {"resamples": n_boot, "unit": "patient", "seed": seed},
        "validation_read": False,
    }


def _patient_days(folds: Sequence[Fold]) -> float:
    return sum(y.size for f in folds for y in f.labels) / 24.0


def render_markdown(r: dict[str, Any], command: str) -> str:
    """The report as Markdown. Raises ``KeyError`` for an incomplete result."""
    lines = [
        "# The alert policy, chosen by cross-validation on the alert state",
        "",
        f"{r['n_patients']} train-split patients ({r['n_septic_patients']} septic, "
        f"{r['patient_days']} patient-days), each scored by a cross-validated ensemble "
        "that never saw them (`inference.crossval` fold files); hourly NEWS2 from the "
        "stream's functions. Every one of "
        f"{r['grid_size']} candidate policies was run through the worker's own alert "
        "policy code. The validation split was not read.",
        "",
        f"Command: `{command}`",
        "",
        "Rules, each written down before its run: rule 1, "
        f"{r['rules']['rule 1']}; rule 2 (written after rule 1's nested estimate came in "
        f"below the plain policy), {r['rules']['rule 2']}. Served: {r['served_rule']}.",
        "",
        f"**Chosen: {r['chosen']['label']}.** Rule 1's pick on all folds, "
        f"{r['rule_1_pick']['label']}, is "
        f"{r['rule_1_pick']['improvement_over_plain']:+.4f} over the plain policy (95 % "
        f"{r['rule_1_pick']['ci95'][0]:+.4f}..{r['rule_1_pick']['ci95'][1]:+.4f}).",
        "",
        "| method | utility | per fold | alerts / 100 patient-days | septic alerted in the "
        "24 h before onset | median lead (h) | PPV per alert | alert hours |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in r["methods"].items():
        cells = table_cells(m)
        cells.insert(1, ", ".join(f"{u:.3f}" for u in m["utility_per_fold"]))
        lines.append(f"| {name} | {' | '.join(cells)} |")
    lines += [
        "",
        "The nested rows are the honest estimates of each rule: each fold's policy was "
        "chosen on the other folds and scored on that fold. Rule 1's choices per fold: "
        + "; ".join(r["nested_choices"]["rule 1"])
        + ". Rule 2's: "
        + "; ".join(r["nested_choices"]["rule 2"])
        + ".",
        "",
        "Alerts raised per 100 patient-days by the chosen policy against the suppression "
        "window (the alert state, and so the utility, does not depend on it): "
        + ", ".join(
            f"{x['suppress_hours']:g} h: {x['alerts_per_100_patient_days']:.1f}"
            for x in r["suppression"]
        )
        + ".",
        "",
        "Best candidates on all folds pooled:",
        "",
        *[f"* {c['label']}: {c['utility']:.4f}" for c in r["top_candidates"]],
        "",
        "![utility and alert burden against the threshold](policy.png)",
        "",
        "Definitions (`inference.alert_metrics`): utility is the PhysioNet 2019 normalised "
        "utility of the hourly alert state; onset is the first positive label + 6 h; a "
        "septic patient counts as alerted when the state was on in the 24 h before onset, "
        "and the lead time runs from the first such hour; an alert raised counts as true "
        "when it falls on a septic patient between 24 h before and 3 h after onset. The "
        "rules (risk >= threshold, NEWS2 >= 5) raise one alert per rising edge.",
        "",
    ]
    return "\n".join(lines)


def plot(r: dict[str, Any], path: Path) -> None:
    """Utility and alerts per 100 patient-days against the threshold multiple."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = r["threshold_curve"]
    xs = [c["scale"] for c in curve]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(xs, [c["utility"] for c in curve], "o-", color="#3182bd", label="alert state")
    ax.plot(
        [c["scale"] for c in r["risk_threshold_curve"]],
        [c["utility"] for c in r["risk_threshold_curve"]],
        "s--",
        color="#9ecae1",
        label="risk >= threshold",
    )
    ax.axhline(0.40, ls=":", color="grey", label="target 0.40")
    ax.set_xlabel("threshold, as a multiple of the build's threshold")
    ax.set_ylabel("normalised utility (held-out)")
    ax2 = ax.twinx()
    ax2.plot(
        xs, [c["alerts_per_100_patient_days"] for c in curve], "^-", color="#e6550d", alpha=0.7
    )
    ax2.set_ylabel("alerts raised per 100 patient-days", color="#e6550d")
    ax.legend(loc="lower left")
    ax.set_title(
        "Alert policy: utility and burden against the threshold (other settings as chosen)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_card(card_path: Path, result: dict[str, Any], base_rate: float) -> dict[str, Any]:
    """Put the chosen policy into a model card's ``alert_policy``, its threshold the
    chosen multiple of the card's ``alert_threshold``. Raises ``FileNotFoundError`` for a
    missing card, ``KeyError`` for one without a threshold."""
    card: dict[str, Any] = json.loads(card_path.read_text())
    c = result["chosen"]
    policy = Candidate(
        c["scale"], c["clear_ratio"], c["hold_hours"], c["news2_enter"], c["news2_stay"]
    ).policy(float(card["alert_threshold"]))
    nested = result["methods"]["rule 2, nested (the served rule)"]
    card["alert_policy"] = {
        **replace(policy, base_rate=round(base_rate, 6)).to_dict(),
        "rule": result["rules"][result["served_rule"]],
        "chosen": c["label"],
        "tuned_by": "python -m inference.policy_tuning (inference/reports/policy/report.md)",
        "crossval": {
            k: nested[k]
            for k in (
                "utility",
                "utility_per_fold",
                "alerts_per_100_patient_days",
                "septic_alerted_before_onset",
                "median_lead_hours",
                "ppv_per_alert",
            )
        },
    }
    card_path.write_text(json.dumps(card, indent=1) + "\n")
    return card


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m inference.policy_tuning",
        description="\n\n".join(
            part
            for part in (__doc__ or "").split("\n\n")
            if part.startswith(("Choose", "Decision"))
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--crossval", type=Path, default=Path("var/crossval"), help="crossval run")
    p.add_argument("--data-dir", type=Path, default=pdata.PHYSIONET_DIR)
    p.add_argument("--out", type=Path, default=Path("var/policy"), help="report folder")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0, help="the crossval run's fold seed")
    p.add_argument("--feature-set", type=int, default=1, help="the ensemble's feature set")
    p.add_argument("--max-patients", type=int, default=None, help="as the crossval run's")
    p.add_argument("--resamples", type=int, default=1000, help="paired bootstrap resamples")
    p.add_argument(
        "--write-card", type=Path, default=None, help="model card to write alert_policy into"
    )
    a = p.parse_args(argv)
    t0 = time.monotonic()
    folds = load_folds(
        a.crossval,
        a.data_dir,
        folds=a.folds,
        seed=a.seed,
        feature_set=a.feature_set,
        max_patients=a.max_patients,
    )
    result = tune(folds, n_boot=a.resamples)
    positives = sum(int(y.sum()) for f in folds for y in f.labels)
    rows = sum(y.size for f in folds for y in f.labels)
    result["base_rate"] = round(positives / rows, 6)
    result["wall_seconds"] = round(time.monotonic() - t0, 1)
    command = f"python -m inference.policy_tuning --crossval {a.crossval}"
    # every option that changes the result, so the line reproduces it
    for dest in ("feature_set", "folds", "seed", "max_patients", "resamples"):
        if getattr(a, dest) != p.get_default(dest):
            command += f" --{dest.replace('_', '-')} {getattr(a, dest)}"
    command += f" --out {a.out}"
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "policy.json").write_text(json.dumps(result, indent=1) + "\n")
    (a.out / "report.md").write_text(render_markdown(result, command))
    plot(result, a.out / "policy.png")
    if a.write_card is not None:
        write_card(a.write_card, result, result["base_rate"])
    print(json.dumps({k: result[k] for k in ("chosen", "methods")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
