"""Logistic (Platt) calibration of risks, and how calibrated risks are: pure numpy.

``sigmoid(a * logit(p) + b)``: :func:`platt_fit` fits ``(a, b)`` on logits (training
calibrates the transformer's logits with it), :func:`platt_fit_risk` on risks (a site
recalibrating the served model's output, ``wardwatch validate-site``). Logits of risks are
clipped at ``LOGIT_EPS`` as the served ensemble clips them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.linear_model import LogisticRegression

F64 = npt.NDArray[np.float64]

LOGIT_EPS = 1e-6


def clipped_logit(p: npt.ArrayLike) -> F64:
    """``log(p / (1 - p))`` of ``p`` clipped to ``[LOGIT_EPS, 1 - LOGIT_EPS]``, float64."""
    q = np.clip(np.asarray(p, dtype=np.float64), LOGIT_EPS, 1.0 - LOGIT_EPS)
    out: F64 = np.log(q) - np.log1p(-q)
    return out


def calibration_bins(y: npt.NDArray[np.int8], p: F64, bins: int = 10) -> tuple[F64, F64]:
    """Mean predicted vs observed rate in ``bins`` quantile bins of ``p``."""
    edges = np.unique(np.quantile(p, np.linspace(0, 1, bins + 1)))
    which = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, len(edges) - 2)
    pred = np.array([p[which == b].mean() for b in range(len(edges) - 1) if (which == b).any()])
    obs = np.array([y[which == b].mean() for b in range(len(edges) - 1) if (which == b).any()])
    return pred, obs


def sigmoid(x: npt.ArrayLike) -> F64:
    """``1 / (1 + exp(-x))`` in float64. Raises nothing."""
    out: F64 = 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))
    return out


def platt_fit(logits: npt.ArrayLike, labels: npt.ArrayLike) -> tuple[float, float]:
    """Platt scaling: ``(a, b)`` so that ``sigmoid(a * logit + b)`` is calibrated on these
    rows (a nearly unpenalised logistic regression). Raises ``ValueError`` when the
    labels have one class."""
    platt = LogisticRegression(C=1e4).fit(np.asarray(logits)[:, None], np.asarray(labels))
    return float(platt.coef_[0, 0]), float(platt.intercept_[0])


def platt_fit_risk(risk: npt.ArrayLike, labels: npt.ArrayLike) -> tuple[float, float]:
    """``(a, b)`` with ``sigmoid(a * logit(risk) + b)`` calibrated on these rows (the
    clipped logit of the risk, then :func:`platt_fit`). Raises ``ValueError`` when
    ``labels`` has one class."""
    return platt_fit(clipped_logit(risk), labels)


def recalibrate(risk: npt.ArrayLike, a: float, b: float) -> F64:
    """The recalibrated risk ``sigmoid(a * logit(risk) + b)`` (risk clipped to
    ``[LOGIT_EPS, 1 - LOGIT_EPS]``). Raises nothing."""
    return sigmoid(a * clipped_logit(risk) + b)


def inverse_recalibrate(q: npt.ArrayLike, a: float, b: float) -> F64:
    """The served risk whose recalibrated risk is ``q``: ``sigmoid((logit(q) - b) / a)``.
    Raises ``ValueError`` when ``a`` is 0 (the recalibration is then not invertible)."""
    if a == 0:
        raise ValueError("a = 0: the recalibration is constant and has no inverse")
    return sigmoid((clipped_logit(q) - b) / a)


def brier(y: npt.NDArray[Any], p: F64) -> float:
    """Mean squared difference of ``p`` and ``y``. Raises nothing (NaN when empty)."""
    return float(np.mean((p - y) ** 2)) if p.size else math.nan


def log_loss(y: npt.NDArray[Any], p: F64) -> float:
    """Mean negative log-likelihood, ``p`` clipped to ``[LOGIT_EPS, 1 - LOGIT_EPS]``."""
    q = np.clip(p, LOGIT_EPS, 1 - LOGIT_EPS)
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log1p(-q))) if p.size else math.nan


def calibration_error(y: npt.NDArray[np.int8], p: F64, bins: int = 10) -> float:
    """Mean absolute gap between predicted and observed rate over the quantile bins of
    :func:`calibration_bins` (bins hold about equal rows, so this is
    close to the expected calibration error). Raises nothing (NaN when empty)."""
    if not p.size:
        return math.nan
    pred, obs = calibration_bins(y, p, bins)
    return float(np.mean(np.abs(pred - obs)))
