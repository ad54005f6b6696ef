"""Site validation: a site's stored scores against the outcomes it provides.

``wardwatch validate-site`` (``streams/cli_site.py``) reads a site's scores from the
WardWatch database (:mod:`storage.site_scores`) and its outcome labels from a file
(:mod:`inference.site_labels`); this module does the rest, with no database access:
hourly rows per patient, the metrics of ``wardwatch evaluate`` (:mod:`inference.evaluate`,
:mod:`inference.alert_metrics`), a logistic recalibration (:mod:`inference.calibration`)
and a threshold, each with its effect estimated by patient-grouped cross-validation.
:mod:`inference.site_report` writes the report; :mod:`inference.recalibrated_version`
builds the new model version a site adopts.

Hourly rows (:func:`hourly_stays`): scores are bucketed by UTC clock hour (as the
``v_hourly_scores`` view does) and **the last score in each hour** is that hour's row,
so a patient has at most one row per hour. Hours without a score between two scored
hours carry the previous row forward (what the ward saw: the last risk and alert state
stay on the screen until the next score); a gap of more than :data:`MAX_GAP_HOURS` ends a
stay and the next score starts a new one (a readmission). A row's time is its score's
``scored_at`` (the hour's start for a carried-forward row).

Labels per row (:func:`hourly_labels`), as PhysioNet 2019 defines ``SepsisLabel``: 1 when
the row's time is at or after ``onset - 6 h``, else 0; 0 throughout for a patient never
septic. :mod:`inference.utility` then puts onset at the first positive row + 6 h, which
is the given onset to within the hour. A septic patient whose scores all end more than
6 h before onset has no positive row and counts as a negative stay, as in PhysioNet.

Raises: :class:`SiteValidationError` (a ``ValueError``, permanent) when the data cannot
be validated (no scores, no septic patient).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt
from sklearn.metrics import average_precision_score, roc_auc_score

from inference.alert_metrics import HORIZON_HOURS, alert_metrics
from inference.alert_policy import AlertPolicy
from inference.calibration import (
    LOGIT_EPS,
    brier,
    calibration_bins,
    calibration_error,
    log_loss,
    platt_fit_risk,
    recalibrate,
)
from inference.evaluate import bootstrap_ci
from inference.site_labels import SiteLabels
from inference.utility import DT_OPTIMAL, StayUtilities, best_threshold, paired_bootstrap

F64 = npt.NDArray[np.float64]
I8 = npt.NDArray[np.int8]
Bools = npt.NDArray[np.bool_]

# Rows are positive from this many hours before onset (PhysioNet's SepsisLabel).
LABEL_LEAD_HOURS: Final = -DT_OPTIMAL
# A stay ends after this many hours without a score; the next score starts a new stay.
MAX_GAP_HOURS: Final = 24
FOLDS: Final = 5
NEWS2_ALERT: Final = 5
_HOUR = timedelta(hours=1)
_CURVE_SCALES = (0.5, 0.7, 0.85, 1.0, 1.2, 1.5, 2.0, 3.0)
STORED_STATE = "alert state (stored)"
MODEL_NAME = "model risk"
NEWS2_NAME = "NEWS2"


class SiteValidationError(ValueError):
    """The site's scores and labels cannot be validated (no scores, no septic patient)."""


class StoredScore(Protocol):
    """One stored score (``storage.site_scores.SiteScore`` is one): risk None = degraded."""

    @property
    def scored_at(self) -> datetime: ...

    @property
    def risk(self) -> float | None: ...

    @property
    def news2(self) -> int | None: ...

    @property
    def alert(self) -> bool: ...


@dataclass(frozen=True)
class HourlyStay:
    """One stay of one patient as consecutive hourly rows (module docstring).

    ``risk`` is NaN where the hour's score was degraded (no model risk); ``news2`` is -1
    where it was null; ``filled`` marks hours carried forward from the previous row.
    """

    patient: str
    times: list[datetime]
    risk: F64
    news2: F64
    alert: Bools
    filled: Bools
    scores: int  # stored scores in this stay (more than the scored hours when several per hour)

    def __len__(self) -> int:
        return len(self.times)


def _hour_of(t: datetime) -> datetime:
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"naive score time {t.isoformat()}")
    return t.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def hourly_stays(
    patient: str, scores: Sequence[StoredScore], max_gap_hours: int = MAX_GAP_HOURS
) -> list[HourlyStay]:
    """One patient's scores as hourly stays: the last score of each UTC clock hour, hours
    without a score carried forward from the previous row, a new stay after a gap of more
    than ``max_gap_hours`` (module docstring). Scores may come in any order (they are
    sorted by time, stably, so of two at one time the later given wins).

    Raises ``ValueError`` for a score time without a zone.
    """
    ordered = sorted(scores, key=lambda s: s.scored_at)
    last: dict[datetime, StoredScore] = {}
    counts: dict[datetime, int] = {}
    for s in ordered:
        h = _hour_of(s.scored_at)
        last[h] = s
        counts[h] = counts.get(h, 0) + 1
    hours = sorted(last)
    groups: list[list[datetime]] = []
    for h in hours:
        if groups and (h - groups[-1][-1]) <= timedelta(hours=max_gap_hours):
            groups[-1].append(h)
        else:
            groups.append([h])
    stays = []
    for g in groups:
        n = int((g[-1] - g[0]) / _HOUR) + 1
        times: list[datetime] = []
        risk = np.empty(n)
        news2 = np.empty(n)
        alert = np.zeros(n, dtype=bool)
        filled = np.zeros(n, dtype=bool)
        for i in range(n):
            h = g[0] + i * _HOUR
            got = last.get(h)
            if got is None:  # never the first hour of a group
                times.append(h)
                risk[i], news2[i], alert[i] = risk[i - 1], news2[i - 1], alert[i - 1]
                filled[i] = True
                continue
            times.append(got.scored_at.astimezone(UTC))
            risk[i] = np.nan if got.risk is None else float(got.risk)
            news2[i] = -1.0 if got.news2 is None else float(got.news2)
            alert[i] = bool(got.alert)
        stays.append(
            HourlyStay(patient, times, risk, news2, alert, filled, sum(counts[h] for h in g))
        )
    return stays


def hourly_labels(times: Sequence[datetime], onset: datetime | None) -> I8:
    """PhysioNet-style hourly labels: 1 where the row's time >= ``onset - 6 h``, else 0
    (all 0 when ``onset`` is None). Raises ``TypeError`` when naive and aware times mix."""
    out = np.zeros(len(times), dtype=np.int8)
    if onset is None:
        return out
    start = onset - timedelta(hours=LABEL_LEAD_HOURS)
    for i, t in enumerate(times):
        out[i] = t >= start
    return out


@dataclass
class SiteData:
    """The validated rows: hourly stays with their labels, and the counts of what was
    read, kept or left out."""

    stays: list[HourlyStay]
    labels: list[I8]
    onsets: dict[str, datetime | None]
    counts: dict[str, int] = field(default_factory=dict)
    unlabelled_negative: bool = False


def assemble(
    patient_scores: Iterable[tuple[str, Sequence[StoredScore]]],
    labels: SiteLabels,
    *,
    unlabelled_negative: bool = False,
    max_gap_hours: int = MAX_GAP_HOURS,
) -> SiteData:
    """Hourly stays and labels of every patient with scores and an outcome (patients
    without a label are left out and counted, or taken as never septic with
    ``unlabelled_negative``). ``patient_scores`` is read once, one patient at a time.

    Raises :class:`SiteValidationError` when there are no scores, no septic patient among
    those kept, or no septic patient with a positive hour (utility undefined);
    ``ValueError`` for a score time without a zone.
    """
    counts = dict.fromkeys(
        (
            "patients_with_scores",
            "scores_read",
            "patients_no_outcome_given",
            "scores_of_patients_left_out",
            "scores_dropped_same_hour",
            "scored_hours",
            "carried_forward_hours",
            "degraded_hours",
            "stays",
        ),
        0,
    )
    stays: list[HourlyStay] = []
    out_labels: list[I8] = []
    onsets: dict[str, datetime | None] = {}
    seen: set[str] = set()
    for patient, scores in patient_scores:
        seen.add(patient)
        counts["patients_with_scores"] += 1
        counts["scores_read"] += len(scores)
        if patient not in labels.onsets:
            counts["patients_no_outcome_given"] += 1
            if not unlabelled_negative:
                counts["scores_of_patients_left_out"] += len(scores)
                continue
        onset = labels.onsets.get(patient)
        onsets[patient] = onset
        for st in hourly_stays(patient, scores, max_gap_hours):
            stays.append(st)
            out_labels.append(hourly_labels(st.times, onset))
            scored = int((~st.filled).sum())
            counts["scored_hours"] += scored
            counts["scores_dropped_same_hour"] += st.scores - scored
            counts["carried_forward_hours"] += int(st.filled.sum())
            counts["degraded_hours"] += int(np.isnan(st.risk).sum())
            counts["stays"] += 1
    if counts["scores_read"] == 0:
        raise SiteValidationError("no scores to validate")
    counts["labels_without_scores"] = sum(1 for p in labels.onsets if p not in seen)
    counts["patients"] = len(onsets)
    counts["septic_patients"] = sum(1 for t in onsets.values() if t is not None)
    pos = {st.patient for st, y in zip(stays, out_labels, strict=True) if y.any()}
    counts["septic_patients_with_positive_hours"] = len(pos)
    counts["septic_patients_without_positive_hours"] = counts["septic_patients"] - len(pos)
    counts["septic_stays_positive_from_first_hour"] = sum(
        1 for y in out_labels if y.size and y[0] == 1
    )
    counts["rows"] = int(sum(len(st) for st in stays))
    counts["positive_rows"] = int(sum(int(y.sum()) for y in out_labels))
    if counts["septic_patients"] == 0:
        raise SiteValidationError(
            f"no septic patient among the {len(onsets)} labelled patients with scores "
            f"({counts['patients_no_outcome_given']} patients had no outcome given): the "
            "metrics need at least one onset"
        )
    if not pos:
        raise SiteValidationError(
            f"none of the {counts['septic_patients']} septic patients has a score from "
            f"{LABEL_LEAD_HOURS} h before onset on: the metrics need at least one positive hour"
        )
    return SiteData(stays, out_labels, onsets, counts, unlabelled_negative)


# ------------------------------------------------------------------ recalibration


def _calibration_summary(y: I8, p: F64) -> dict[str, float]:
    return {
        "brier": round(brier(y, p), 6),
        "log_loss": round(log_loss(y, p), 6),
        "calibration_error": round(calibration_error(y, p), 6),
        "mean_risk": round(float(p.mean()), 6),
        "observed_rate": round(float(y.mean()), 6),
    }


def patient_folds(
    patients: Sequence[str], septic: Iterable[str], k: int, seed: int = 0
) -> dict[str, int]:
    """Each patient's fold (0..k-1): septic and other patients each shuffled (seeded) and
    dealt round-robin, so every fold holds septic patients when there are at least ``k``.
    Raises ``ValueError`` for ``k < 2``."""
    if k < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {k}")
    rng = np.random.default_rng(seed)
    sep = set(septic)
    out: dict[str, int] = {}
    for group in (sorted(p for p in set(patients) if p in sep), sorted(set(patients) - sep)):
        order = rng.permutation(len(group))
        for i, j in enumerate(order):
            out[group[int(j)]] = i % k
    return out


@dataclass(frozen=True)
class RiskRows:
    """Finite-risk rows of a set of stays, with each row's patient."""

    y: I8
    p: F64
    patient: npt.NDArray[np.str_]


def _finite_rows(stays: Sequence[HourlyStay], labels: Sequence[I8]) -> RiskRows:
    ys, ps, who = [np.zeros(0, np.int8)], [np.zeros(0)], [np.zeros(0, dtype="<U1")]
    for st, y in zip(stays, labels, strict=True):
        ok = ~np.isnan(st.risk)
        ys.append(y[ok])
        ps.append(st.risk[ok])
        who.append(np.full(int(ok.sum()), st.patient))
    return RiskRows(np.concatenate(ys), np.concatenate(ps), np.concatenate(who))


def cross_validated_recalibration(
    rows: RiskRows, folds: Mapping[str, int], k: int
) -> dict[str, Any]:
    """Platt recalibration fitted on k-1 folds of patients and measured on the held-out
    fold, pooled over folds: the served risk's and the recalibrated risk's Brier score,
    log loss, calibration error and mean on the same held-out rows, and each fold's
    ``a``, ``b``. A fold whose training rows have one class is skipped (counted). Raises
    nothing."""
    fold_of = np.array([folds[p] for p in rows.patient], dtype=np.int64)
    held_y, held_p, held_q = [np.zeros(0, np.int8)], [np.zeros(0)], [np.zeros(0)]
    per_fold = []
    skipped = 0
    for f in range(k):
        train, test = fold_of != f, fold_of == f
        if not test.any() or rows.y[train].min(initial=1) == rows.y[train].max(initial=0):
            skipped += 1
            continue
        a, b = platt_fit_risk(rows.p[train], rows.y[train])
        per_fold.append({"fold": f, "a": round(a, 6), "b": round(b, 6), "rows": int(test.sum())})
        held_y.append(rows.y[test])
        held_p.append(rows.p[test])
        held_q.append(recalibrate(rows.p[test], a, b))
    y, p, q = np.concatenate(held_y), np.concatenate(held_p), np.concatenate(held_q)
    return {
        "folds": k,
        "unit": "patient",
        "folds_skipped": skipped,
        "held_out_rows": int(y.size),
        "served": _calibration_summary(y, p) if y.size else None,
        "recalibrated": _calibration_summary(y, q) if y.size else None,
        "per_fold": per_fold,
        "_pooled": (y, p, q),
    }


# ------------------------------------------------------------------ threshold


def _threshold_candidates(risks: Sequence[F64], served: float) -> F64:
    finite = np.concatenate([r[~np.isnan(r)] for r in risks] or [np.zeros(0)])
    grid = np.quantile(finite, np.linspace(0.5, 0.999, 120)) if finite.size else np.zeros(0)
    out: F64 = np.unique(np.r_[grid[(grid > 0) & (grid < 1)], served]).astype(np.float64)
    return out


def cross_validated_threshold(
    stays: Sequence[HourlyStay],
    labels: Sequence[I8],
    folds: Mapping[str, int],
    k: int,
    served: float,
    n_boot: int,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """The utility-best threshold chosen on k-1 folds of patients and applied to the
    held-out fold, against the served threshold on the same held-out stays: pooled
    normalised utility of each, and a paired patient-bootstrap 95 % interval of the
    difference (``n_boot`` resamples; None when 0). The rule: a tuned threshold is
    proposed only when that interval's lower bound is above 0. Raises ``ValueError``
    when a fold's training stays hold no septic stay (cannot happen with folds from
    :func:`patient_folds` and ``k`` at most the septic patients)."""
    risks = [st.risk for st in stays]
    fold_of = [folds[st.patient] for st in stays]
    tuned_alarms: list[Bools] = [np.zeros(0, bool)] * len(stays)
    per_fold = []
    for f in range(k):
        tr = [i for i, g in enumerate(fold_of) if g != f]
        te = [i for i, g in enumerate(fold_of) if g == f]
        if not te:
            continue
        th, u = best_threshold(
            [labels[i] for i in tr],
            [risks[i] for i in tr],
            _threshold_candidates([risks[i] for i in tr], served),
        )
        per_fold.append({"fold": f, "threshold": th, "train_utility": round(u, 4)})
        for i in te:
            tuned_alarms[i] = risks[i] >= th
    tuned_u = StayUtilities.of(labels, tuned_alarms)
    served_u = StayUtilities.of(labels, [r >= served for r in risks])
    u_t, u_s = tuned_u.normalised(), served_u.normalised()
    ci: list[float] | None = None
    if n_boot > 0:
        # paired bootstrap over patients: a patient's stays go together
        patients = sorted({st.patient for st in stays})
        index = {p: i for i, p in enumerate(patients)}
        pid = np.array([index[st.patient] for st in stays])

        def per_patient(u: StayUtilities) -> StayUtilities:
            def by(x: F64) -> F64:
                out: F64 = np.bincount(pid, x, len(patients)).astype(np.float64)
                return out

            return StayUtilities(by(u.observed), by(u.best), by(u.inaction))

        pair = per_patient(served_u), per_patient(tuned_u)
        try:
            _, lo, hi, _ = paired_bootstrap(*pair, n_boot, rng)
            ci = [round(lo, 4), round(hi, 4)]
        except ValueError:  # no resample held a septic patient
            ci = None
    return {
        "folds": k,
        "unit": "patient",
        "utility_served_threshold": round(u_s, 4),
        "utility_tuned_per_fold": round(u_t, 4),
        "difference": round(u_t - u_s, 4),
        "difference_ci95": ci,
        "better": ci is not None and ci[0] > 0,
        "per_fold": per_fold,
        "rule": "a tuned threshold replaces the served one only when the paired patient "
        "bootstrap's 95 % lower bound of its held-out utility gain is above 0",
    }


# ------------------------------------------------------------------ the report


def _by_patient(
    stays: Sequence[HourlyStay], labels: Sequence[I8], values: Sequence[F64], finite: bool
) -> tuple[list[I8], list[F64]]:
    """Labels and values concatenated per patient (the bootstrap's unit), NaN rows
    dropped when ``finite``."""
    ys: dict[str, list[I8]] = {}
    vs: dict[str, list[F64]] = {}
    for st, y, v in zip(stays, labels, values, strict=True):
        keep = ~np.isnan(v) if finite else np.ones(v.size, bool)
        ys.setdefault(st.patient, []).append(y[keep])
        vs.setdefault(st.patient, []).append(v[keep])
    names = sorted(ys)
    return [np.concatenate(ys[p]) for p in names], [np.concatenate(vs[p]) for p in names]


def _ci(
    labels: list[I8], scores: list[F64], metric: Any, n_boot: int, rng: np.random.Generator
) -> list[float] | None:
    if n_boot <= 0:
        return None
    try:
        lo, hi = bootstrap_ci(labels, scores, metric, n_boot, rng)
    except IndexError:  # every resample had one class
        return None
    return [round(lo, 4), round(hi, 4)]


def _discrimination(
    data: SiteData, n_boot: int, rng: np.random.Generator
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, values, finite in (
        (MODEL_NAME, [st.risk for st in data.stays], True),
        (f"{NEWS2_NAME} (points; null = -1)", [st.news2 for st in data.stays], False),
    ):
        ys, vs = _by_patient(data.stays, data.labels, values, finite)
        y, v = np.concatenate(ys), np.concatenate(vs)
        if y.size == 0 or y.min() == y.max():
            out[name] = {"rows": int(y.size), "auroc": None, "auprc": None}
            continue
        out[name] = {
            "rows": int(y.size),
            "positive_rows": int(y.sum()),
            "auroc": round(float(roc_auc_score(y, v)), 4),
            "auroc_ci95": _ci(ys, vs, roc_auc_score, n_boot, rng),
            "auprc": round(float(average_precision_score(y, v)), 4),
            "auprc_ci95": _ci(ys, vs, average_precision_score, n_boot, rng),
        }
    return out


def _alert_state(data: SiteData, threshold: float) -> dict[str, Any]:
    """The stored alert state, risk >= threshold and NEWS2 >= 5, measured like
    ``inference.evaluate._alert_state`` (alerts = rising edges of each hourly state)."""
    labels = data.labels
    rows = {
        STORED_STATE: alert_metrics(labels, [st.alert for st in data.stays]).to_dict(),
        f"risk >= threshold ({threshold:.4g})": alert_metrics(
            labels, [st.risk >= threshold for st in data.stays]
        ).to_dict(),
        f"NEWS2 >= {NEWS2_ALERT}": alert_metrics(
            labels, [st.news2 >= NEWS2_ALERT for st in data.stays]
        ).to_dict(),
    }
    return {"methods": rows, "horizon_hours": HORIZON_HOURS}


def _threshold_curve(data: SiteData, threshold: float) -> list[dict[str, float]]:
    curve = []
    for scale in _CURVE_SCALES:
        t = min(0.999, scale * threshold)
        m = alert_metrics(data.labels, [st.risk >= t for st in data.stays])
        curve.append(
            {
                "threshold": t,
                "utility": round(m.utility, 4),
                "alerts_per_100_patient_days": round(m.alerts_per_100_patient_days, 2),
            }
        )
    return curve


def validate(
    data: SiteData,
    policy: AlertPolicy,
    *,
    model: Mapping[str, Any],
    n_boot: int = 200,
    seed: int = 0,
    folds: int = FOLDS,
    warnings: Sequence[str] = (),
) -> dict[str, Any]:
    """The site validation report (a JSON-able dict; :func:`write_report` writes it):
    discrimination with patient-bootstrap intervals, calibration and its cross-validated
    Platt recalibration, the threshold chosen by cross-validation, the alert-state table,
    and the ``recalibration`` block for ``recalibration.json``. ``policy`` is the served
    alert policy (its threshold is the served threshold); ``model`` names the scored
    model (name, version, card version). Cross-validation uses ``min(folds, septic
    patients with a positive hour)`` folds and is skipped below 2.

    Raises :class:`SiteValidationError` when the rows with a model risk have one class
    (every positive hour degraded).
    """
    rng = np.random.default_rng(seed)
    t = policy.threshold
    rows = _finite_rows(data.stays, data.labels)
    if rows.y.size == 0 or rows.y.min() == rows.y.max():
        raise SiteValidationError("the hours with a model risk are all of one class")
    patient_days = data.counts["rows"] / 24.0
    discrimination = _discrimination(data, n_boot, rng)
    pred, obs = calibration_bins(rows.y, rows.p)
    a, b = platt_fit_risk(rows.p, rows.y)

    septic = {st.patient for st, y in zip(data.stays, data.labels, strict=True) if y.any()}
    k = min(folds, len(septic))
    cv_cal: dict[str, Any] | None = None
    cv_thr: dict[str, Any] | None = None
    pooled: tuple[I8, F64, F64] | None = None
    if k >= 2:
        fold_of = patient_folds(sorted(data.onsets), septic, k, seed)
        cv_cal = cross_validated_recalibration(rows, fold_of, k)
        pooled = cv_cal.pop("_pooled")
        cv_thr = cross_validated_threshold(data.stays, data.labels, fold_of, k, t, n_boot, rng)

    risks = [st.risk for st in data.stays]
    if cv_thr is not None and cv_thr["better"] and a > 0:
        proposed, _ = best_threshold(data.labels, risks, _threshold_candidates(risks, t))
        decision = "tuned: better on held-out patients"
    else:
        proposed = t
        decision = (
            "kept: no cross-validation (fewer than 2 septic patients)"
            if cv_thr is None
            else "kept: a recalibration with a <= 0 ranks backwards"
            if a <= 0
            else "kept: a tuned threshold was not reliably better on held-out patients"
        )
    recal_space = float(recalibrate(proposed, a, b)) if a > 0 else None
    site_rate = float(rows.y.mean())
    card_policy = policy.to_dict() | {"threshold": recal_space, "base_rate": round(site_rate, 6)}
    recal = {
        "method": "platt",
        "formula": "risk_recalibrated = sigmoid(a * logit(risk) + b), risk clipped to "
        f"[{LOGIT_EPS:g}, 1 - {LOGIT_EPS:g}]",
        "a": a,
        "b": b,
        "adoptable": a > 0,
        "model": dict(model),
        "fitted_on": {
            "patients": data.counts["patients"],
            "septic_patients": len(septic),
            "rows": int(rows.y.size),
            "positive_rows": int(rows.y.sum()),
        },
        "cross_validation": cv_cal,
        "threshold": {
            "served": t,
            "proposed_served_space": proposed,
            "proposed_recalibrated_space": recal_space,
            "changed": proposed != t,
            "decision": decision,
            "cross_validation": cv_thr,
            "note": "proposed_served_space compared with the served model's risk raises the "
            "same alerts as proposed_recalibrated_space compared with the recalibrated "
            "risk (the map is increasing when a > 0); "
            "served = inverse(recalibrated) = sigmoid((logit(q) - b) / a)",
        },
        "card_block": {
            "recalibration": {
                "method": "platt",
                "a": a,
                "b": b,
                "applied_to": f"{model.get('name')} version {model.get('version')} risk",
                "source": "wardwatch validate-site",
            },
            "alert_policy": card_policy,
        },
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    report: dict[str, Any] = {
        "model": dict(model),
        "counts": dict(data.counts),
        "patient_days": patient_days,
        "unlabelled_negative": data.unlabelled_negative,
        "hourly_rows": {
            "bucket": "UTC clock hour; the last score in each hour",
            "carried_forward": "hours without a score between scored hours repeat the "
            f"previous row; a gap of more than {MAX_GAP_HOURS} h starts a new stay",
            "label": f"1 from {LABEL_LEAD_HOURS} h before onset on (PhysioNet SepsisLabel); "
            f"utility onset = first positive row + {LABEL_LEAD_HOURS} h",
        },
        "bootstrap": {"resamples": n_boot, "unit": "patient", "interval": "percentile 95%"},
        "discrimination": discrimination,
        "calibration": {
            "bins": [
                {"predicted": round(float(x), 6), "observed": round(float(o), 6)}
                for x, o in zip(pred, obs, strict=True)
            ],
            "served": _calibration_summary(rows.y, rows.p),
            "platt_in_sample": {"a": a, "b": b},
            "cross_validation": cv_cal,
        },
        "threshold": recal["threshold"],
        "alert_policy": policy.to_dict(),
        "alert_state": _alert_state(data, t),
        "threshold_curve": _threshold_curve(data, t),
        "recalibration": recal,
        "warnings": list(warnings),
        "created": recal["created"],
    }
    report["_plot"] = {"rows": rows, "pooled": pooled}
    return report
