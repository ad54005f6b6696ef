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
from typing import Final

import numpy as np
import numpy.typing as npt

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
    best_t, best_u = 1.0, -np.inf
    for th in cands:
        u = normalized_utility(labels, [np.asarray(s) >= th for s in scores])
        if u > best_u:
            best_t, best_u = float(th), u
    return best_t, float(best_u)
