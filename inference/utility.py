"""The PhysioNet/CinC 2019 normalised utility score (how the challenge ranked entries).

Onset = first ``SepsisLabel == 1`` hour + 6 (labels were shifted 6 h early). With
``d = t - onset``, an alarm at hour t is worth: for a septic stay, a linear rise from 0 at
d = -12 to +1 at d = -6, then a linear fall to 0 at d = +3, and -0.05 when earlier than
d = -12; a missed hour costs 0 until d = -6, then falls linearly to -2 at d = +3; after
d = +3 nothing counts. For a non-septic stay every alarm hour costs -0.05.
Normalised utility = (U - U_no_alarms) / (U_best - U_no_alarms), summed over stays.
Follows the challenge's ``compute_prediction_utility`` (evaluate_sepsis_score.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]

DT_EARLY: Final = -12
DT_OPTIMAL: Final = -6
DT_LATE: Final = 3
MAX_U_TP: Final = 1.0
MIN_U_FN: Final = -2.0
U_FP: Final = -0.05
U_TN: Final = 0.0

ArrayLike = npt.ArrayLike


def stay_utility(labels: ArrayLike, alarms: ArrayLike) -> float:
    """Utility of one stay's hourly alarms (0/1) given its hourly SepsisLabel."""
    lab = np.asarray(labels).astype(bool)
    pred = np.asarray(alarms).astype(bool)
    if lab.shape != pred.shape or lab.ndim != 1:
        raise ValueError(f"labels {lab.shape} and alarms {pred.shape} must be equal 1-d")
    n = lab.size
    if not lab.any():
        return float(np.where(pred, U_FP, U_TN).sum())
    t_sepsis = int(np.argmax(lab)) - DT_OPTIMAL
    m1 = MAX_U_TP / (DT_OPTIMAL - DT_EARLY)
    b1 = -m1 * DT_EARLY
    m2 = -MAX_U_TP / (DT_LATE - DT_OPTIMAL)
    b2 = -m2 * DT_LATE
    m3 = MIN_U_FN / (DT_LATE - DT_OPTIMAL)
    b3 = -m3 * DT_OPTIMAL
    d = np.arange(n) - t_sepsis
    counted = d <= DT_LATE
    early = d <= DT_OPTIMAL
    tp = np.where(early, np.maximum(m1 * d + b1, U_FP), m2 * d + b2)
    fn = np.where(early, 0.0, m3 * d + b3)
    u = np.where(pred, tp, fn)
    return float(np.where(counted, u, 0.0).sum())


def best_alarms(labels: ArrayLike) -> npt.NDArray[np.int8]:
    """The alarms of a perfect predictor: on from onset-12 h to onset+3 h."""
    lab = np.asarray(labels).astype(bool)
    out = np.zeros(lab.size, dtype=np.int8)
    if lab.any():
        t_sepsis = int(np.argmax(lab)) - DT_OPTIMAL
        out[max(0, t_sepsis + DT_EARLY) : min(t_sepsis + DT_LATE + 1, lab.size)] = 1
    return out


def normalized_utility(labels: Sequence[ArrayLike], alarms: Sequence[ArrayLike]) -> float:
    """Normalised utility over stays (1 = perfect, 0 = never alarm)."""
    if len(labels) != len(alarms):
        raise ValueError("one alarm sequence per stay")
    observed = best = inaction = 0.0
    for lab, pred in zip(labels, alarms, strict=True):
        lab_a = np.asarray(lab)
        observed += stay_utility(lab_a, pred)
        best += stay_utility(lab_a, best_alarms(lab_a))
        inaction += stay_utility(lab_a, np.zeros(lab_a.size, dtype=np.int8))
    if best == inaction:
        raise ValueError("no septic stay: normalised utility is undefined")
    return (observed - inaction) / (best - inaction)


def best_threshold(
    labels: Sequence[ArrayLike],
    scores: Sequence[ArrayLike],
    candidates: ArrayLike | None = None,
) -> tuple[float, float]:
    """(threshold, normalised utility) maximising utility for alarms ``score >= threshold``."""
    cands = (
        np.asarray(candidates, dtype=np.float64)
        if candidates is not None
        else np.unique(
            np.quantile(
                np.concatenate([np.asarray(s) for s in scores]), np.linspace(0.5, 0.999, 120)
            )
        )
    )
    # The best and no-alarm utilities do not depend on the threshold: summed once, in the
    # order normalized_utility sums them (Python floats, left to right), so every value
    # compared below is the one normalized_utility would give.
    ys = [np.asarray(y) for y in labels]
    best = inaction = 0.0
    for y in ys:
        best += stay_utility(y, best_alarms(y))
        inaction += stay_utility(y, np.zeros(y.size, dtype=np.int8))
    arrays = [np.asarray(s) for s in scores]
    if len(ys) != len(arrays):
        raise ValueError("one alarm sequence per stay")
    best_t, best_u = 1.0, -np.inf
    for th in cands:
        if best == inaction:
            raise ValueError("no septic stay: normalised utility is undefined")
        observed = 0.0
        for y, s in zip(ys, arrays, strict=True):
            observed += stay_utility(y, s >= th)
        u = (observed - inaction) / (best - inaction)
        if u > best_u:
            best_t, best_u = float(th), u
    return best_t, float(best_u)


@dataclass(frozen=True)
class StayUtilities:
    """Per stay: utility of the alarms, of the best alarms and of no alarm (the three sums
    of the normalised utility), so that bootstrap resamples are sums of rows.
    :func:`inference.utility.normalized_utility` keeps its own running sums on purpose:
    ``best_threshold`` compares its values with ``>``, and numpy's pairwise sums could
    move a served model's threshold on a float-level tie."""

    observed: F64
    best: F64
    inaction: F64

    @classmethod
    def of(
        cls, labels: Sequence[npt.NDArray[Any]], alarms: Sequence[npt.NDArray[Any]]
    ) -> StayUtilities:
        """Raises ``ValueError`` when a stay's labels and alarms differ in length."""
        obs = [stay_utility(y, a) for y, a in zip(labels, alarms, strict=True)]
        best = [stay_utility(y, best_alarms(y)) for y in labels]
        none = [stay_utility(y, np.zeros(len(y), np.int8)) for y in labels]
        return cls(np.array(obs), np.array(best), np.array(none))

    def normalised(self, pick: npt.NDArray[np.int64] | None = None) -> float:
        """Normalised utility over all stays (or the stays ``pick``, repeats allowed).
        Raises ``ValueError`` when no picked stay is septic."""
        o, b, n = (self.observed, self.best, self.inaction)
        if pick is not None:
            o, b, n = o[pick], b[pick], n[pick]
        denom = float(b.sum() - n.sum())
        if denom == 0.0:
            raise ValueError("no septic stay: normalised utility is undefined")
        return float(o.sum() - n.sum()) / denom


def paired_bootstrap(
    a: StayUtilities, b: StayUtilities, n_boot: int, rng: np.random.Generator
) -> tuple[float, float, float, float]:
    """Utility of ``b`` minus ``a`` on the same stays, with the 95 % percentile interval
    over patient-level resamples (both configurations scored on each resample) and the
    fraction of resamples where ``b`` is ahead. Raises ``ValueError`` for stays that
    differ in number, or when no resample holds a septic stay."""
    if a.best.shape != b.best.shape:
        raise ValueError("the two configurations must be scored on the same stays")
    n = a.best.size
    diffs = []
    for _ in range(n_boot):
        pick = rng.integers(0, n, n)
        if a.best[pick].sum() == a.inaction[pick].sum():
            continue  # a resample without a septic stay has no utility
        diffs.append(b.normalised(pick) - a.normalised(pick))
    if not diffs:
        raise ValueError("no resample holds a septic stay: no interval")
    d = np.asarray(diffs)
    lo, hi = np.percentile(d, [2.5, 97.5])
    return b.normalised() - a.normalised(), float(lo), float(hi), float((d > 0).mean())
