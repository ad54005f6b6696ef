"""What a clinician sees, measured: the alert state over hourly stays, and its metrics.

:func:`simulate` runs the alert policy (:func:`inference.alert_policy.transition`, the
same function the worker calls) over one stay's hourly risks and NEWS2, giving the alert
state hour by hour and the alerts raised. :func:`alert_metrics` then measures any such
hourly state with the same yardsticks, so the policy's state, "risk >= threshold" and
"NEWS2 >= 5" are compared on the same rows:

* ``utility``: the PhysioNet 2019 normalised utility of the hourly state;
* ``alerts_per_100_patient_days``: alert messages raised (a rule without a policy raises
  one per rising edge of its state);
* ``septic_alerted_before_onset``: the share of septic stays whose state was on at some
  hour in the :data:`HORIZON_HOURS` before onset (onset = first positive label + 6 h);
* ``median_lead_hours``: for those stays, onset minus the first such hour (so at most
  :data:`HORIZON_HOURS`);
* ``ppv_per_alert``: the share of raised alerts that fall on a septic stay between
  :data:`HORIZON_HOURS` before onset and :data:`~inference.utility.DT_LATE` hours after it;
* ``alert_hours_fraction``: the share of patient-hours spent in the alert state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from inference.alert_policy import AlertPolicy, AlertState, transition
from inference.utility import DT_LATE, DT_OPTIMAL, normalized_utility

F64 = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]
# An alert more than this long before onset is not counted as warning of it: a day is
# what a ward would call "before it happened", twice the utility's 12 h credit window.
HORIZON_HOURS = 24


def simulate(policy: AlertPolicy, risk: F64, news2: F64 | None = None) -> tuple[Bools, Bools]:
    """The hourly alert state and alerts raised for one stay scored once an hour.

    ``risk`` is the hourly risk (NaN = model unavailable); ``news2`` the hourly NEWS2 with
    -1 for null. Returns ``(state, raised)``, boolean arrays of the stay's length. Raises
    ``ValueError`` when the two arrays differ in length.
    """
    n = risk.shape[0]
    if news2 is not None and news2.shape[0] != n:
        raise ValueError(f"risk ({n} hours) and NEWS2 ({news2.shape[0]}) differ in length")
    state_out = np.zeros(n, dtype=bool)
    raised = np.zeros(n, dtype=bool)
    st = AlertState()
    risks = risk.tolist()
    scores = [-1.0] * n if news2 is None else news2.tolist()
    for h in range(n):
        r = risks[h]
        s = scores[h]
        st, sev = transition(
            st, h * 3600.0, None if r != r else r, None if s < 0 else int(s), policy
        )
        state_out[h] = st.active
        raised[h] = sev is not None
    return state_out, raised


def rising_edges(state: Bools) -> Bools:
    """The hours where a state switches on (the first hour counts when on)."""
    edges: Bools = np.diff(state.astype(np.int8), prepend=0) == 1
    return edges


@dataclass(frozen=True)
class AlertStateMetrics:
    """The metrics of one method's hourly alert state over a set of stays."""

    utility: float
    alerts_per_100_patient_days: float
    septic_alerted_before_onset: float
    median_lead_hours: float | None
    ppv_per_alert: float | None
    alert_hours_fraction: float
    alerts: int
    septic_stays: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "utility": round(self.utility, 4),
            "alerts_per_100_patient_days": round(self.alerts_per_100_patient_days, 2),
            "septic_alerted_before_onset": round(self.septic_alerted_before_onset, 4),
            "median_lead_hours": self.median_lead_hours,
            "ppv_per_alert": None if self.ppv_per_alert is None else round(self.ppv_per_alert, 4),
            "alert_hours_fraction": round(self.alert_hours_fraction, 4),
            "alerts": self.alerts,
            "septic_stays": self.septic_stays,
        }


def table_cells(m: Mapping[str, Any], *, alert_hours: bool = True) -> list[str]:
    """A metrics dict (:meth:`AlertStateMetrics.to_dict`) as the reports' table cells:
    utility, alerts / 100 patient-days, septic alerted, median lead, PPV per alert and
    (``alert_hours``) the share of alert hours. Raises ``KeyError`` for another dict."""
    lead = "-" if m["median_lead_hours"] is None else f"{m['median_lead_hours']:g}"
    ppv = "-" if m["ppv_per_alert"] is None else f"{100 * m['ppv_per_alert']:.1f} %"
    cells = [
        f"{m['utility']:.3f}",
        f"{m['alerts_per_100_patient_days']:.1f}",
        f"{100 * m['septic_alerted_before_onset']:.1f} %",
        lead,
        ppv,
    ]
    if alert_hours:
        cells.append(f"{100 * m['alert_hours_fraction']:.1f} %")
    return cells


def summary_line(name: str, m: Mapping[str, Any], width: int = 42) -> str:
    """One method's metrics dict as the commands print it. Raises ``KeyError`` for another
    dict."""
    lead = m["median_lead_hours"]
    return (
        f"{name:<{width}} utility {m['utility']:.3f}  alerts/100 patient-days "
        f"{m['alerts_per_100_patient_days']:.1f}  septic alerted before onset "
        f"{m['septic_alerted_before_onset']:.0%}  median lead "
        f"{'-' if lead is None else f'{lead:g} h'}"
    )


def alert_metrics(
    labels: Sequence[npt.NDArray[Any]],
    states: Sequence[Bools],
    raised: Sequence[Bools] | None = None,
) -> AlertStateMetrics:
    """Metrics (module docstring) of hourly ``states`` per stay against the stays' hourly
    SepsisLabels; ``raised`` defaults to the states' rising edges. Raises ``ValueError``
    when lengths differ or no stay is septic (utility undefined)."""
    if raised is None:
        raised = [rising_edges(s) for s in states]
    if not (len(labels) == len(states) == len(raised)):
        raise ValueError("one state and one raised sequence per stay")
    hours = 0
    n_alerts = 0
    true_alerts = 0
    septic = 0
    warned = 0
    leads: list[int] = []
    on_hours = 0
    for lab, st, rs in zip(labels, states, raised, strict=True):
        lab = np.asarray(lab).astype(bool)
        if not (lab.shape == st.shape == rs.shape):
            raise ValueError("a stay's labels, state and raised differ in length")
        hours += lab.size
        n_alerts += int(rs.sum())
        on_hours += int(st.sum())
        if not lab.any():
            continue
        septic += 1
        onset = int(np.argmax(lab)) - DT_OPTIMAL
        t = np.arange(lab.size)
        before = (t >= onset - HORIZON_HOURS) & (t <= onset) & st
        if before.any():
            warned += 1
            leads.append(onset - int(np.argmax(before)))
        true_alerts += int((rs & (t >= onset - HORIZON_HOURS) & (t <= onset + DT_LATE)).sum())
    return AlertStateMetrics(
        utility=normalized_utility(list(labels), list(states)),
        alerts_per_100_patient_days=100.0 * n_alerts / (hours / 24.0) if hours else 0.0,
        septic_alerted_before_onset=warned / septic if septic else 0.0,
        median_lead_hours=float(np.median(leads)) if leads else None,
        ppv_per_alert=true_alerts / n_alerts if n_alerts else None,
        alert_hours_fraction=on_hours / hours if hours else 0.0,
        alerts=n_alerts,
        septic_stays=septic,
    )


def policy_states(
    policy: AlertPolicy, risks: Sequence[F64], news2: Sequence[F64] | None = None
) -> tuple[list[Bools], list[Bools]]:
    """:func:`simulate` over many stays: (states, raised), one array each per stay."""
    states, raised = [], []
    for i, r in enumerate(risks):
        s, a = simulate(policy, r, None if news2 is None else news2[i])
        states.append(s)
        raised.append(a)
    return states, raised
