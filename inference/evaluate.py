"""``wardwatch evaluate``: the evaluation report of the exported risk model.

On one split of the PhysioNet stays (default: the validation split, held out from every
training choice), hour by hour, it scores

* the exported model (the newest version in the model folder, run with
  :class:`~inference.runtime.LocalTorchModel`, at the model card's alert threshold),
* NEWS2 >= 5 and qSOFA >= 2 (:mod:`inference.early_warning`, from the latest readings of
  each hour, 12 h staleness; PhysioNet has no consciousness record, so both are partial),
* a gradient-boosting baseline (scikit-learn ``HistGradientBoostingClassifier``) on the
  same window: its last hour plus summaries of it (:data:`GBM_FEATURE_SET`: set 1 is
  :func:`window_gbm_features`, 48 h and 6 h means and the 6 h change, the default; set 2
  is :func:`inference.window_features.window_features`, which adds 24 h means, 12/24 h
  changes, 24/48 h min and max, 24 h standard deviations and measurement counts), fitted
  on the train split (seeded, deterministic), its threshold chosen like the model's (best
  utility on the test split),
* an ensemble of the two (:class:`Stacking`): logistic stacking of the transformer's
  calibrated logit and the gradient boosting's logit, its three weights fitted on the test
  split and its threshold the best utility on the test split.

When the evaluated model is itself such an ensemble (model card ``"ensemble"``, built by
:mod:`inference.ensemble`), its components come from the served TorchScript file
(:meth:`~inference.runtime.LocalTorchModel.components`) instead of being refitted, so the
report describes exactly what Triton serves.

and writes a report folder: ``metrics.json``, ``report.md`` and PNG plots (ROC,
precision-recall, calibration, utility against threshold).

Metrics: hourly AUROC and AUPRC with 95 % bootstrap intervals (patients resampled with
replacement, percentile intervals), the PhysioNet 2019 normalised utility at the threshold,
and alerts per patient-day (rising edges of ``score >= threshold``: an alarm that stays on
counts once, the way the stream's alert policy raises one alert per episode).

Raises ``FileNotFoundError`` when the data or model folder is missing; nothing is retried.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score

from fhir.events import Reading
from inference.alert_metrics import HORIZON_HOURS, alert_metrics, policy_states, table_cells
from inference.alert_metrics import rising_edges as am_rising_edges
from inference.alert_policy import AlertPolicy
from inference.calibration import LOGIT_EPS, calibration_bins, clipped_logit
from inference.early_warning import news2, qsofa
from inference.features import WINDOW, FeatureSpec
from inference.runtime import LocalTorchModel
from inference.utility import best_threshold, normalized_utility
from inference.window_features import bank_window_features, lab_mask

F64 = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]
_T0 = datetime(2026, 1, 1, tzinfo=UTC)
_RULE_CODES = (
    "respiratory_rate",
    "spo2",
    "systolic_bp",
    "heart_rate",
    "temperature",
    "fio2",
    "o2_flow",
    "gcs_total",
)


@dataclass
class Scored:
    """One method's hourly scores on the evaluated rows, and its alarm threshold."""

    name: str
    score: F64
    threshold: float
    probability: bool  # a calibrated probability (calibration plot) or a points score


def rule_scores(matrix: npt.NDArray[np.float64], codes: Sequence[str]) -> tuple[F64, F64]:
    """Hourly (NEWS2, qSOFA) of one stay's hourly matrix, with the stream's functions.

    NEWS2 is -1 where it is null (a required parameter stale or never measured): it
    never alarms and ranks below every real score. qSOFA counts the criteria known to be
    met. Raises nothing.
    """
    n = matrix.shape[0]
    idx = {c: codes.index(c) for c in _RULE_CODES if c in codes}
    last = {}
    for c, k in idx.items():
        seen = np.where(~np.isnan(matrix[:, k]), np.arange(n), -1)
        last[c] = np.maximum.accumulate(seen) if n else seen
    n2 = np.empty(n)
    qs = np.empty(n)
    for t in range(n):
        as_of = _T0 + timedelta(hours=t)
        latest = {
            c: Reading(time=_T0 + timedelta(hours=int(last[c][t])), value=matrix[last[c][t], k])
            for c, k in idx.items()
            if last[c][t] >= 0
        }
        r = news2(latest, as_of)
        n2[t] = -1 if r.total is None else r.total
        q = qsofa(latest, as_of)
        qs[t] = sum(v for v in q.breakdown.values() if v is not None)
    return n2, qs


def window_gbm_features(windows: F32, n_codes: int) -> F32:
    """Gradient-boosting features of model windows ``float32[B, WINDOW, F]``: the last
    hour (all F features), the 48 h and 6 h means of the values and measured-masks (the
    first ``2 * n_codes`` features) and the 6 h change of each value -> ``float32[B,
    F + 5 * n_codes]``.

    Means are summed in float64 and rounded once to float32, so the result does not depend
    on the batch; :mod:`inference.ensemble` computes the same numbers in TorchScript for
    the served ensemble. Raises ``ValueError`` on a window shorter than 7 hours.
    """
    w = np.asarray(windows, dtype=np.float32)
    if w.ndim != 3 or w.shape[1] < 7:
        raise ValueError(f"windows must be [B, >=7, F], got {list(w.shape)}")
    c2 = 2 * n_codes
    last = w[:, -1, :]
    mean48 = (w[:, :, :c2].sum(axis=1, dtype=np.float64) / w.shape[1]).astype(np.float32)
    mean6 = (w[:, -6:, :c2].sum(axis=1, dtype=np.float64) / 6.0).astype(np.float32)
    delta6 = w[:, -1, :n_codes] - w[:, -7, :n_codes]
    out: F32 = np.concatenate([last, mean48, mean6, delta6], axis=1).astype(np.float32)
    return out


def gbm_features(rows: F32, starts: npt.NDArray[np.int64], n_codes: int, chunk: int = 4096) -> F32:
    """:func:`window_gbm_features` of every sample row of a bank (``rows``/``starts`` as
    in ``train.Bank``), a chunk of windows at a time so memory stays small."""
    width = rows.shape[1] + 5 * n_codes
    parts = [np.zeros((0, width), np.float32)]
    for i in range(0, starts.size, chunk):
        gather = starts[i : i + chunk, None] + np.arange(WINDOW)[None, :]
        parts.append(window_gbm_features(rows[gather], n_codes))
    return np.concatenate(parts, axis=0)


# The gradient-boosting baseline and the ensemble's component share one fit rule.
# Feature set 1 (window_gbm_features) with these parameters is model version 2's.
GBM_PARAMS: dict[str, Any] = {
    "max_iter": 300,
    "learning_rate": 0.05,
    "max_leaf_nodes": 31,
    "l2_regularization": 1.0,
    "early_stopping": True,
    "validation_fraction": 0.1,
    "n_iter_no_change": 20,
}
# Feature set 2 (inference.window_features) with these parameters is candidate version
# 3's: version 2's parameters (no parameter search fitted in its time box); its features
# and labels were chosen on the test split (inference/reports/candidate-3/), never on
# validation. Not served: see that folder's README.
GBM_PARAMS_V3: dict[str, Any] = dict(GBM_PARAMS)
GBM_PARAMS_BY_SET: dict[int, dict[str, Any]] = {1: GBM_PARAMS, 2: GBM_PARAMS_V3}
# Hours by which the gradient boosting's training labels are moved earlier, per feature
# set (see early_labels); 0 = SepsisLabel as it is.
GBM_EARLY_LABEL_HOURS: dict[int, int] = {1: 0, 2: 6}
# The default feature set of new fits (the evaluation's baseline, `inference.ensemble
# build`): version 2's, so the existing commands (make model) still reproduce their models;
# version 4 is built with --feature-set 2 (make model).
GBM_FEATURE_SET = 1


def gbm_bank_features(
    rows: F32, starts: npt.NDArray[np.int64], codes: Sequence[str], feature_set: int
) -> F32:
    """The gradient boosting's features of every sample row of a bank: feature set 1
    (:func:`gbm_features`) or 2 (:func:`inference.window_features.bank_window_features`).
    Raises ``ValueError`` for an unknown feature set."""
    if feature_set == 1:
        return gbm_features(rows, starts, len(codes))
    if feature_set == 2:
        return bank_window_features(rows, starts, len(codes), lab_mask(codes))
    raise ValueError(f"unknown feature set {feature_set}")


def early_labels(
    labels: npt.NDArray[Any], stay_of: npt.NDArray[np.int64], hours: int
) -> npt.NDArray[np.int8]:
    """``labels`` with each septic stay's positives starting ``hours`` earlier (rows from
    its first positive row minus ``hours`` on are 1; other stays unchanged). The utility
    rewards alarms from 6 h before the first ``SepsisLabel``, so a model may be trained
    to raise them there. Raises ``ValueError`` for negative hours or mismatched arrays."""
    if hours < 0 or labels.shape != stay_of.shape:
        raise ValueError("hours must be >= 0 and labels and stay_of of one shape")
    out = labels.astype(np.int8).copy()
    if hours == 0 or out.size == 0:
        return out
    bounds = np.flatnonzero(np.diff(stay_of)) + 1
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, out.size], strict=True):
        pos = np.flatnonzero(out[lo:hi])
        if pos.size:
            out[lo + max(0, int(pos[0]) - hours) : hi] = 1
    return out


def fit_gbm(
    rows: F32,
    starts: npt.NDArray[np.int64],
    labels: npt.NDArray[Any],
    codes: Sequence[str],
    seed: int,
    feature_set: int = GBM_FEATURE_SET,
    stay_of: npt.NDArray[np.int64] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> HistGradientBoostingClassifier:
    """The gradient-boosting model on a bank's rows (the train split), seeded: the same
    data and seed give the same trees. Parameters: :data:`GBM_PARAMS_BY_SET`; labels moved
    earlier by :data:`GBM_EARLY_LABEL_HOURS` (which needs ``stay_of``); ``overrides``
    replace parameters (for cross-validated experiments, ``inference.crossval``). Raises
    ``ValueError`` for an unknown feature set, a missing ``stay_of`` or labels of one
    class (scikit-learn)."""
    if feature_set not in GBM_PARAMS_BY_SET:
        raise ValueError(f"unknown feature set {feature_set}")
    hours = GBM_EARLY_LABEL_HOURS[feature_set]
    if hours:
        if stay_of is None:
            raise ValueError("moving labels earlier needs stay_of")
        labels = early_labels(labels, stay_of, hours)
    params = GBM_PARAMS_BY_SET[feature_set] | dict(overrides or {})
    gbm = HistGradientBoostingClassifier(**params, random_state=seed)
    gbm.fit(gbm_bank_features(rows, starts, codes, feature_set), labels)
    return gbm


# Probabilities are clipped before the logit so 0 and 1 stay finite (float32 saturates).
@dataclass(frozen=True)
class Stacking:
    """Logistic stacking of the transformer and gradient-boosting probabilities:
    ``sigmoid(intercept + w_transformer * logit(p_t) + w_gbm * logit(p_g))``, with the
    alarm threshold on that probability."""

    intercept: float
    w_transformer: float
    w_gbm: float
    threshold: float

    def predict(self, p_transformer: npt.ArrayLike, p_gbm: npt.ArrayLike) -> F64:
        """The ensemble's probability, float64. Raises nothing."""
        z = (
            self.intercept
            + self.w_transformer * clipped_logit(p_transformer)
            + self.w_gbm * clipped_logit(p_gbm)
        )
        out: F64 = 1.0 / (1.0 + np.exp(-z))
        return out

    def to_dict(self) -> dict[str, float]:
        return {
            "intercept": self.intercept,
            "w_transformer": self.w_transformer,
            "w_gbm": self.w_gbm,
            "threshold": self.threshold,
        }


def fit_stacking(
    labels: npt.NDArray[Any],
    stay_of: npt.NDArray[np.int64],
    p_transformer: npt.ArrayLike,
    p_gbm: npt.ArrayLike,
) -> Stacking:
    """Fit the stacking weights by (nearly unpenalised) logistic regression on the given
    rows, then the alarm threshold with the best normalised utility on the same stays.
    Call it with the test split only. Raises ``ValueError`` when the rows have one class
    or no septic stay."""
    x = np.column_stack([clipped_logit(p_transformer), clipped_logit(p_gbm)])
    # C large: three weights on tens of thousands of rows need no shrinkage, and a
    # penalty would pull the output away from a calibrated probability.
    lr = LogisticRegression(C=1e4).fit(x, labels)
    partial = Stacking(
        float(lr.intercept_[0]), float(lr.coef_[0, 0]), float(lr.coef_[0, 1]), threshold=1.0
    )
    p = partial.predict(p_transformer, p_gbm)
    th, _ = best_threshold(_split_by_stay(labels, stay_of), _split_by_stay(p, stay_of))
    return Stacking(partial.intercept, partial.w_transformer, partial.w_gbm, th)


def rising_edges(alarms: Sequence[npt.NDArray[np.bool_]]) -> int:
    """How many times an alarm switches on (per stay, the first hour counts if on)."""
    return int(sum(np.count_nonzero(am_rising_edges(a)) for a in alarms))


def bootstrap_ci(
    labels: Sequence[npt.NDArray[np.int8]],
    scores: Sequence[F64],
    metric: Callable[[Any, Any], float],
    n_boot: int,
    rng: np.random.Generator,
) -> tuple[float, float]:
    """95 % percentile interval of ``metric`` over patient-level bootstrap resamples."""
    n = len(labels)
    vals = []
    for _ in range(n_boot):
        pick = rng.integers(0, n, n)
        y = np.concatenate([labels[i] for i in pick])
        if y.min() == y.max():
            continue
        vals.append(metric(y, np.concatenate([scores[i] for i in pick])))
    lo, hi = np.percentile(vals, [2.5, 97.5])
    return float(lo), float(hi)


def _split_by_stay(values: npt.NDArray[Any], stay_of: npt.NDArray[np.int64]) -> list[Any]:
    bounds = np.flatnonzero(np.diff(stay_of)) + 1
    return list(np.split(values, bounds))


def evaluate(
    model_dir: Path,
    data_dir: Path,
    out_dir: Path | None = None,
    *,
    split: str = "validation",
    n_boot: int = 200,
    max_patients: int | None = None,
    threads: int = 2,
    seed: int = 0,
    progress: bool = True,
    policy: AlertPolicy | None = None,
) -> dict[str, Any]:
    """Write the report folder (default ``var/report/<model version>``); returns metrics.

    ``policy`` (default: the model card's, :meth:`AlertPolicy.from_card`) is run over the
    model's hourly risks and NEWS2 with the worker's own code
    (:func:`inference.alert_metrics.simulate`); the report's ``alert_state`` gives what a
    clinician sees (utility of the alert state, alerts raised per 100 patient-days, septic
    patients alerted before onset, lead time, PPV per alert) beside the same measures of
    risk >= threshold and NEWS2 >= 5 on the same rows, and ``alert_state.png`` plots
    utility and alert burden against the threshold.

    Raises ``FileNotFoundError`` when the model or data is missing, ``ValueError`` when the
    split has no positive rows.
    """
    import torch

    # deferred: train imports the model code (transformers), which the CLI need not load
    from inference import train as tr

    t0 = time.monotonic()
    torch.set_num_threads(threads)
    model = LocalTorchModel.from_dir(model_dir)
    card = model.card
    spec: FeatureSpec = model.spec
    split_seed = int(card.get("split", {}).get("seed", 2019))
    out = out_dir or Path("var") / "report" / str(card["version"])
    out.mkdir(parents=True, exist_ok=True)
    if not data_dir.exists():
        raise FileNotFoundError(f"no PhysioNet data at {data_dir}")

    stays = tr.load_stays(data_dir, split_seed, max_patients)
    fit = [s for s in stays if s.split == "train"]
    tune = [s for s in stays if s.split == "test"]
    evals = [s for s in stays if s.split == split]
    if not evals:
        raise ValueError(f"no stays in split {split!r}")
    bank = tr.make_bank(evals, spec)
    y = bank.labels.astype(np.int8)
    if not y.any():
        raise ValueError(f"split {split!r} has no positive rows")

    # the exported model
    probs = _in_chunks(model.predict, bank).astype(np.float64)
    model_name = f"{card['name']} v{card['version']}"
    model_method = Scored(model_name, probs, model.alert_threshold, True)

    # rules, with the stream's own functions
    n2s, qss = [], []
    for s in evals:
        a, b = rule_scores(s.matrix, spec.codes)
        n2s.append(a)
        qss.append(b)
    news2_method = Scored("NEWS2 >= 5", np.concatenate(n2s), 5.0, False)
    qsofa_method = Scored("qSOFA >= 2", np.concatenate(qss), 2.0, False)

    ens_card: dict[str, Any] | None = card.get("ensemble")
    if ens_card is None:
        # gradient boosting on the same features, and the ensemble of it with the model:
        # fitted on the train split, weights and thresholds chosen on the test split
        fit_bank, tune_bank = tr.make_bank(fit, spec), tr.make_bank(tune, spec)
        fs = GBM_FEATURE_SET
        gbm = fit_gbm(
            fit_bank.rows, fit_bank.starts, fit_bank.labels, spec.codes, seed, fs, fit_bank.stay_of
        )
        tune_pg = gbm.predict_proba(
            gbm_bank_features(tune_bank.rows, tune_bank.starts, spec.codes, fs)
        )[:, 1]
        gbm_th, _ = best_threshold(
            _split_by_stay(tune_bank.labels, tune_bank.stay_of),
            _split_by_stay(tune_pg, tune_bank.stay_of),
        )
        gbm_p = gbm.predict_proba(gbm_bank_features(bank.rows, bank.starts, spec.codes, fs))[:, 1]
        tune_pt = _in_chunks(model.predict, tune_bank).astype(np.float64)
        stacking = fit_stacking(tune_bank.labels, tune_bank.stay_of, tune_pt, tune_pg)
        ens_p = stacking.predict(probs, gbm_p)
        gbm_info: dict[str, Any] = {"n_iter": int(gbm.n_iter_), "seed": seed, "feature_set": fs}
        methods = [
            model_method,
            news2_method,
            qsofa_method,
            Scored(GBM_NAME, gbm_p.astype(np.float64), gbm_th, True),
            Scored(ENSEMBLE_NAME, ens_p, stacking.threshold, True),
        ]
        ensemble_info = {
            "method": "logistic stacking of logit(transformer) and logit(gradient boosting)",
            "fitted_on": "test",
            **stacking.to_dict(),
        }
    else:
        # the model is the ensemble: report its served components, not a refit
        parts = _components_in_chunks(model, bank)
        gbm_info = {**ens_card.get("gbm", {}), "source": "the served model's component"}
        methods = [
            model_method,
            news2_method,
            qsofa_method,
            Scored(GBM_NAME, parts["gbm"], float(ens_card["gbm_threshold"]), True),
            Scored(
                f"transformer component ({ens_card['transformer']['name']})",
                parts["transformer"],
                float(ens_card["transformer_threshold"]),
                True,
            ),
        ]
        ensemble_info = {"method": "the evaluated model", **ens_card.get("stacking", {})}

    labels = _split_by_stay(y, bank.stay_of)
    patient_days = y.size / 24.0
    rng = np.random.default_rng(seed)
    results: dict[str, Any] = {}
    for m in methods:
        scores = _split_by_stay(m.score, bank.stay_of)
        alarms = [s >= m.threshold for s in scores]
        results[m.name] = {
            "auroc": float(roc_auc_score(y, m.score)),
            "auroc_ci95": bootstrap_ci(labels, scores, roc_auc_score, n_boot, rng),
            "auprc": float(average_precision_score(y, m.score)),
            "auprc_ci95": bootstrap_ci(labels, scores, average_precision_score, n_boot, rng),
            "threshold": m.threshold,
            "utility": normalized_utility(labels, alarms),
            "alerts_per_patient_day": rising_edges(alarms) / patient_days,
            "alarm_hours_fraction": float(np.mean(m.score >= m.threshold)),
        }
    if policy is None:
        policy = AlertPolicy.from_card(card)
    alert_state = _alert_state(policy, labels, model_method, news2_method, bank.stay_of)
    report = {
        "model": {"name": card["name"], "version": card["version"], "dir": str(model_dir)},
        "split": split,
        "split_seed": split_seed,
        "n_patients": len(evals),
        "n_rows": int(y.size),
        "positive_rows": int(y.sum()),
        "septic_patients": int(sum(int(x.any()) for x in labels)),
        "patient_days": patient_days,
        "bootstrap": {"resamples": n_boot, "unit": "patient", "interval": "percentile 95%"},
        "gbm": {**gbm_info, "threshold_rule": "best utility on the test split"},
        "ensemble": ensemble_info,
        "methods": results,
        "alert_policy": policy.to_dict(),
        "alert_state": alert_state,
        "targets": {"auroc": 0.85, "utility": 0.40},
        "wall_seconds": round(time.monotonic() - t0, 1),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    _plots(out, y, methods, labels, bank.stay_of)
    _alert_state_plot(out / "alert_state.png", alert_state["threshold_curve"], policy)
    (out / "metrics.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "report.md").write_text(render_markdown(report))
    return report


def _alert_state(
    policy: AlertPolicy,
    labels: list[npt.NDArray[np.int8]],
    model: Scored,
    news2_scores: Scored,
    stay_of: npt.NDArray[np.int64],
) -> dict[str, Any]:
    """The alert-state metrics of ``policy`` over the model's hourly risks, beside risk >=
    threshold and NEWS2 >= 5, and the policy's utility and burden at other thresholds
    (0.5x..3x). Raises ``ValueError`` when no stay is septic."""
    risks = _split_by_stay(model.score, stay_of)
    n2 = _split_by_stay(news2_scores.score, stay_of)
    states, raised = policy_states(policy, risks, n2)
    rows: dict[str, Any] = {
        "alert state (the policy)": alert_metrics(labels, states, raised).to_dict(),
        f"risk >= threshold ({policy.threshold:.4g})": alert_metrics(
            labels, [r >= policy.threshold for r in risks]
        ).to_dict(),
        "NEWS2 >= 5": alert_metrics(labels, [s >= 5 for s in n2]).to_dict(),
    }
    curve = []
    for scale in (0.5, 0.7, 0.85, 1.0, 1.2, 1.5, 2.0, 3.0):
        p = replace(policy, threshold=min(0.999, scale * policy.threshold))
        m = alert_metrics(labels, *policy_states(p, risks, n2))
        curve.append(
            {
                "threshold": p.threshold,
                "utility": round(m.utility, 4),
                "alerts_per_100_patient_days": round(m.alerts_per_100_patient_days, 2),
            }
        )
    return {"methods": rows, "threshold_curve": curve, "horizon_hours": HORIZON_HOURS}


VLine = tuple[float, str, str, str]  # (x, colour, line style, label)


def save_burden_plot(
    path: Path,
    curve: Sequence[Mapping[str, Any]],
    lines: Sequence[VLine],
    *,
    xlabel: str,
    ylabel: str,
    title: str,
) -> None:
    """Utility (left axis) and alerts per 100 patient-days (right axis) against the
    threshold in % (``curve``: dicts with ``threshold``, ``utility`` and
    ``alerts_per_100_patient_days``), with vertical ``lines`` at thresholds (fractions);
    written to ``path``. Raises ``OSError`` when it cannot be written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [100 * c["threshold"] for c in curve]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(xs, [c["utility"] for c in curve], "o-", color="tab:blue", label="utility")
    for x, colour, style, label in lines:
        ax.axvline(100 * x, color=colour, ls=style, label=label)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax2 = ax.twinx()
    ax2.plot(xs, [c["alerts_per_100_patient_days"] for c in curve], "^-", color="tab:orange")
    ax2.set_ylabel("alerts raised per 100 patient-days", color="tab:orange")
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _alert_state_plot(path: Path, curve: list[dict[str, Any]], policy: AlertPolicy) -> None:
    save_burden_plot(
        path,
        curve,
        [(policy.threshold, "grey", ":", "the card's threshold")],
        xlabel="alert threshold (% risk)",
        ylabel="normalised utility of the alert state",
        title="The alert state: utility and burden against the threshold",
    )


GBM_NAME = "gradient boosting (HistGradientBoosting)"
ENSEMBLE_NAME = "ensemble (transformer + gradient boosting, stacked on test)"


def _in_chunks(predict: Callable[[F32], Any], bank: Any, chunk: int = 1024) -> F64:
    """``predict`` over every window of a ``train.Bank``, ``chunk`` windows at a time."""
    n = int(bank.labels.size)
    parts = [np.zeros(0)]
    for i in range(0, n, chunk):
        parts.append(np.asarray(predict(bank.windows(np.arange(i, min(i + chunk, n))).numpy())))
    out: F64 = np.concatenate(parts).astype(np.float64)
    return out


def _components_in_chunks(model: LocalTorchModel, bank: Any, chunk: int = 1024) -> dict[str, F64]:
    """The ensemble model's per-component probabilities over every window of a bank.
    Raises ``ValueError`` when the model has no such components (not an ensemble)."""
    names = model.component_names()
    if set(names) != {"transformer", "gbm"}:
        raise ValueError(f"model card says ensemble, model has components {names}")
    n = int(bank.labels.size)
    parts: dict[str, list[F64]] = {k: [np.zeros(0)] for k in names}
    for i in range(0, n, chunk):
        got = model.components(bank.windows(np.arange(i, min(i + chunk, n))).numpy())
        for k in names:
            parts[k].append(got[k])
    return {k: np.concatenate(v).astype(np.float64) for k, v in parts.items()}


CalibrationCurve = tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], str, str, str]


def save_calibration_plot(
    path: Path, curves: Sequence[CalibrationCurve], *, xlabel: str, title: str
) -> None:
    """Predicted against observed, one ``(predicted, observed, marker, colour, label)``
    curve each, beside the diagonal, square and scaled to the largest value; written to
    ``path``. Raises ``OSError`` when it cannot be written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 6))
    top = 0.0
    for pred, obs, marker, colour, label in curves:
        ax.plot(pred, obs, marker, color=colour, label=label)
        top = max(top, float(pred.max()), float(obs.max()))
    top = min(1.0, top * 1.1 + 1e-3)
    ax.plot([0, top], [0, top], color="grey", ls=":", lw=1, label="perfect calibration")
    ax.set(
        xlabel=xlabel, ylabel="observed positive rate", title=title, xlim=(0, top), ylim=(0, top)
    )
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plots(
    out: Path,
    y: npt.NDArray[np.int8],
    methods: list[Scored],
    labels: list[npt.NDArray[np.int8]],
    stay_of: npt.NDArray[np.int64],
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve, roc_curve

    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    fig, ax = plt.subplots(figsize=(6, 6))
    for m, col in zip(methods, colours, strict=False):
        fpr, tpr, _ = roc_curve(y, m.score)
        ax.plot(fpr, tpr, color=col, label=f"{m.name} (AUROC {roc_auc_score(y, m.score):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate", title="ROC, hourly rows")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "roc.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 6))
    for m, col in zip(methods, colours, strict=False):
        prec, rec, _ = precision_recall_curve(y, m.score)
        ap = average_precision_score(y, m.score)
        ax.plot(rec, prec, color=col, label=f"{m.name} (AUPRC {ap:.3f})")
    ax.axhline(y.mean(), color="grey", ls=":", lw=1, label=f"prevalence {y.mean():.3f}")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall, hourly rows")
    ax.set_ylim(0, 0.4)  # the interesting part: precision is low at ~1.4 % prevalence
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "precision_recall.png", dpi=110)
    plt.close(fig)

    save_calibration_plot(
        out / "calibration.png",
        [
            (*calibration_bins(y, m.score), "o-", col, m.name)
            for m, col in zip(methods, colours, strict=False)
            if m.probability
        ],
        xlabel="mean predicted probability (decile bins)",
        title="Calibration",
    )

    fig, ax = plt.subplots(figsize=(7, 5))
    for m, col in zip(methods, colours, strict=False):
        if not m.probability:
            continue
        scores = _split_by_stay(m.score, stay_of)
        grid = np.unique(np.quantile(m.score, np.linspace(0.3, 0.999, 40)))
        us = [normalized_utility(labels, [s >= t for s in scores]) for t in grid]
        ax.plot(grid, us, color=col, label=m.name)
        chosen = normalized_utility(labels, [s >= m.threshold for s in scores])
        ax.plot([m.threshold], [chosen], "o", color=col, ms=8)
    for m, col in zip(methods, colours, strict=False):
        if m.probability:
            continue
        u = normalized_utility(labels, [s >= m.threshold for s in _split_by_stay(m.score, stay_of)])
        ax.axhline(u, color=col, ls="--", lw=1, label=f"{m.name}: {u:.3f}")
    ax.set_xscale("log")
    ax.set(
        xlabel="alert threshold (probability, log scale); dot = chosen threshold",
        ylabel="PhysioNet normalised utility",
        title="Utility against threshold",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "utility_vs_threshold.png", dpi=110)
    plt.close(fig)


def render_markdown(r: dict[str, Any]) -> str:
    """The report's ``report.md``. Raises nothing."""

    def ci(x: tuple[float, float]) -> str:
        return f"{x[0]:.3f}-{x[1]:.3f}"

    lines = [
        f"# Evaluation: {r['model']['name']} version {r['model']['version']}",
        "",
        f"Split **{r['split']}** (seed {r['split_seed']}): {r['n_patients']} patients, "
        f"{r['n_rows']} hourly rows, {r['positive_rows']} positive rows, "
        f"{r['septic_patients']} septic patients, {r['patient_days']:.0f} patient-days. "
        "Every choice (early stopping, calibration, ensemble weights, thresholds) was made on "
        "the train/test splits; this split is reported once.",
        "",
        "| method | AUROC (95% CI) | AUPRC (95% CI) | threshold | utility | "
        "alerts / patient-day | alarm hours |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in r["methods"].items():
        lines.append(
            f"| {name} | {m['auroc']:.3f} ({ci(m['auroc_ci95'])}) | "
            f"{m['auprc']:.3f} ({ci(m['auprc_ci95'])}) | {m['threshold']:.4g} | "
            f"{m['utility']:.3f} | {m['alerts_per_patient_day']:.2f} | "
            f"{m['alarm_hours_fraction']:.1%} |"
        )
    best = max(r["methods"].items(), key=lambda kv: kv[1]["auroc"])[0]
    model_name = f"{r['model']['name']} v{r['model']['version']}"
    best_u = max(r["methods"].items(), key=lambda kv: kv[1]["utility"])[0]
    mm = r["methods"][model_name]
    t = r["targets"]
    lines += [
        "",
        f"Targets: AUROC >= {t['auroc']} (model: {mm['auroc']:.3f}, "
        f"{'met' if mm['auroc'] >= t['auroc'] else 'not met'}), normalised utility >= "
        f"{t['utility']} (model: {mm['utility']:.3f}, "
        f"{'met' if mm['utility'] >= t['utility'] else 'not met'}).",
        *(
            [
                f"Ensemble: AUROC {em['auroc']:.3f} "
                f"({'met' if em['auroc'] >= t['auroc'] else 'not met'}), utility "
                f"{em['utility']:.3f} ({'met' if em['utility'] >= t['utility'] else 'not met'})."
            ]
            if (em := r["methods"].get(ENSEMBLE_NAME)) is not None
            else []
        ),
        f"Highest AUROC: **{best}**; highest utility: **{best_u}**."
        + (
            f" Gradient boosting beats {model_name} on "
            + " and ".join(
                k for k, b in (("AUROC", best), ("utility", best_u)) if b.startswith("gradient")
            )
            + " on this split."
            if best.startswith("gradient") or best_u.startswith("gradient")
            else ""
        ),
        "",
        "Notes",
        "",
        "* AUROC/AUPRC are over hourly rows; intervals are percentile intervals over "
        f"{r['bootstrap']['resamples']} bootstrap resamples of patients.",
        "* Utility: PhysioNet/CinC 2019 normalised utility of the hourly alarms "
        "`score >= threshold` (../shared/data/README.md).",
        "* Alerts per patient-day count alarm onsets (an alarm that stays on counts once); "
        "alarm hours is the share of rows at or above the threshold.",
        "* NEWS2 is null (never alarms) when a required parameter is stale (> 12 h) or never "
        "measured; PhysioNet has no consciousness record, so NEWS2 and qSOFA here are partial "
        "(mentation counted as normal).",
        "* The model's threshold is the model card's (best utility on the test split); the "
        "gradient-boosting baseline's is chosen the same way. The gradient boosting is fitted "
        f"on the train split (seed {r['gbm'].get('seed', '?')}, "
        f"{r['gbm'].get('n_iter', '?')} trees).",
        *(_ensemble_note(r["ensemble"]) if "ensemble" in r else []),
        "",
        *_alert_state_lines(r),
        "Plots: `roc.png`, `precision_recall.png`, `calibration.png`, `utility_vs_threshold.png`, "
        "`alert_state.png`.",
        "",
    ]
    return "\n".join(lines)


def _alert_state_lines(r: dict[str, Any]) -> list[str]:
    """The report's section on the alert state a clinician sees. Raises nothing."""
    a = r.get("alert_state")
    if not a:
        return []
    p = r["alert_policy"]
    n2 = "no NEWS2 entry" if p["news2_enter"] is None else f"NEWS2 >= {p['news2_enter']} enters"
    if p["news2_stay"] is not None:
        n2 += f", >= {p['news2_stay']} stays"
    lines = [
        "## The alert state (what a clinician sees)",
        "",
        f"Policy: alert at risk >= {100 * p['threshold']:.3g} %, clear below "
        f"{p['clear_ratio']:g}x that, hold {p['hold_hours']:g} h, {n2}, no repeat within "
        f"{p['suppress_hours']:g} h (NEWS2 >= 7 enters while the model is unavailable); run "
        "with the worker's own policy code.",
        "",
        f"| hourly state | utility | alerts / 100 patient-days | septic alerted in the "
        f"{a['horizon_hours']} h before onset | median lead (h) | PPV per alert | alert hours |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {name} | {' | '.join(table_cells(m))} |" for name, m in a["methods"].items()]
    ours = a["methods"]["alert state (the policy)"]["utility"]
    rule = next(v for k, v in a["methods"].items() if k.startswith("risk >="))["utility"]
    if ours < rule - 0.005:
        lines += [
            "",
            f"**Defect:** the alert state earns {ours:.3f}, less than its own threshold's "
            f"{rule:.3f}: the policy's hysteresis or NEWS2 rules keep alerts on in hours "
            "that cost more than they earn.",
        ]
    lines += [
        "",
        "An alert raised counts as true when it falls on a septic patient between "
        f"{a['horizon_hours']} h before and 3 h after onset (first positive label + 6 h); a "
        "rule raises one alert per rising edge.",
        "",
    ]
    return lines


def _ensemble_note(e: dict[str, Any]) -> list[str]:
    """The report's line on how the ensemble was made. Raises nothing."""
    if "intercept" not in e:
        return []
    who = "The evaluated model is" if e.get("method") == "the evaluated model" else "The"
    return [
        f"* {who} ensemble: `sigmoid({e['intercept']:.4f} + {e['w_transformer']:.4f} * "
        f"logit(p_transformer) + {e['w_gbm']:.4f} * logit(p_gbm))` (probabilities clipped to "
        f"[{LOGIT_EPS:g}, 1 - {LOGIT_EPS:g}]); the three weights are a logistic regression "
        "on the test split and its threshold the best utility on the test split."
    ]
