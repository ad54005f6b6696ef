"""The alert policy: when a patient enters, stays in and leaves the alert state.

Pure functions over a small per-patient :class:`AlertState`. The worker, ``wardwatch
score``, the evaluation and the policy's cross-validation all call :func:`transition`,
so the alert state a report measures is the one a clinician sees. The policy is stated in
full because a clinician must be able to predict it:

* **enter** when the model's risk reaches the threshold; or NEWS2 reaches
  :attr:`AlertPolicy.news2_enter` (when set); or, while the model is unavailable (no
  risk), NEWS2 reaches :data:`NEWS2_DEGRADED_ENTER` (the RCP's "high" band, an emergency
  response whatever the model says: this keeps alerts flowing while the model is away);
* **stay** while risk >= :attr:`AlertPolicy.clear_below` (hysteresis), or risk reached the
  threshold less than :attr:`AlertPolicy.hold_hours` ago, or NEWS2 >=
  :attr:`AlertPolicy.news2_stay` (when set), or an entry condition still holds; a
  missing risk (model unavailable) never clears an alert on its own;
* **raise** an alert message on entering, unless one was raised less than the
  suppression window ago at the same or higher severity; an escalation of severity while
  in the alert state raises again;
* **clear** when none of the conditions to stay holds.

Which of these are switched on, and at what values, is chosen by cross-validation on
held-out patients (:mod:`inference.policy_tuning`) and written in the model card's
``alert_policy``; :meth:`AlertPolicy.from_card` reads it.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal

Severity = Literal["info", "warning", "critical"]
_RANK: dict[str, int] = {"info": 0, "warning": 1, "critical": 2}
# NEWS2 "high" (RCP 2017): an emergency response. It makes an alert critical when the
# model's risk is high too, and enters the alert state while the model is unavailable.
NEWS2_DEGRADED_ENTER = 7


@dataclass(frozen=True, slots=True)
class AlertPolicy:
    """The policy's settings (from the model card's ``alert_policy``, or settings).

    ``base_rate`` is the share of patient-hours at risk in the data the model was
    trained on (the calibrated risk's mean): alerts state the risk as a multiple of it.
    """

    threshold: float
    clear_ratio: float = 1.0
    hold_hours: float = 0.0
    news2_enter: int | None = None
    news2_stay: int | None = None
    suppress_hours: float = 6.0
    base_rate: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"alert threshold must be in (0, 1), got {self.threshold}")
        if not 0.0 < self.clear_ratio <= 1.0:
            raise ValueError(f"clear_ratio must be in (0, 1], got {self.clear_ratio}")
        if self.hold_hours < 0 or self.suppress_hours < 0:
            raise ValueError("hold_hours and suppress_hours must not be negative")

    @property
    def clear_below(self) -> float:
        """The risk under which an alert may clear: ``threshold * clear_ratio``."""
        return self.threshold * self.clear_ratio

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "clear_ratio": self.clear_ratio,
            "hold_hours": self.hold_hours,
            "news2_enter": self.news2_enter,
            "news2_stay": self.news2_stay,
            "suppress_hours": self.suppress_hours,
            "base_rate": self.base_rate,
        }

    @classmethod
    def from_card(cls, card: dict[str, Any], **overrides: Any) -> AlertPolicy:
        """The policy a model card states (``alert_policy``; a card without one, from
        before the policy was tuned, gets its ``alert_threshold`` and the defaults), with
        ``overrides`` (None values ignored) on top. Raises ``KeyError`` for a card with
        neither, ``ValueError`` for values out of range (permanent: the worker must not
        start with a policy it cannot state)."""
        block = dict(card.get("alert_policy") or {"threshold": card["alert_threshold"]})
        known = {k: block[k] for k in cls.__dataclass_fields__ if k in block}
        known |= {k: v for k, v in overrides.items() if v is not None}
        return cls(**known)


@dataclass(frozen=True, slots=True)
class AlertState:
    """Where one patient stands: in the alert state or not, the last alert raised, and
    when the risk last reached the threshold (for :attr:`AlertPolicy.hold_hours`)."""

    active: bool = False
    severity: Severity | None = None
    last_raised_s: float | None = None
    last_raised_severity: Severity | None = None
    last_high_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "active": self.active,
            "severity": self.severity,
            "last_raised_s": self.last_raised_s,
            "last_raised_severity": self.last_raised_severity,
            "last_high_s": self.last_high_s,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> AlertState:
        """Reads :meth:`to_dict`'s output; records written before ``last_high_s``
        existed read as never high. Raises nothing."""
        if not d:
            return cls()
        return cls(
            active=bool(d.get("active", False)),
            severity=d.get("severity"),
            last_raised_s=d.get("last_raised_s"),
            last_raised_severity=d.get("last_raised_severity"),
            last_high_s=d.get("last_high_s"),
        )


@dataclass(frozen=True, slots=True)
class AlertDecision:
    """An alert to raise now."""

    alert_id: str
    patient: str
    raised_at: datetime
    severity: Severity
    risk: float | None
    news2: int | None
    reason: str


def _severity(risk_high: bool, news2_high: bool) -> Severity:
    return "critical" if risk_high and news2_high else "warning"


def transition(
    state: AlertState,
    now_s: float,
    risk: float | None,
    news2: int | None,
    policy: AlertPolicy,
) -> tuple[AlertState, Severity | None]:
    """Advance one patient's alert state by one score at ``now_s`` (epoch seconds).

    Returns the new state and the severity of the alert raised now, or None when none is
    raised. Pure; raises nothing. A NaN risk counts as no risk.
    """
    if risk is not None and math.isnan(risk):
        risk = None
    risk_high = risk is not None and risk >= policy.threshold
    news2_high = news2 is not None and news2 >= NEWS2_DEGRADED_ENTER
    news2_enters = news2 is not None and (
        (policy.news2_enter is not None and news2 >= policy.news2_enter)
        or (risk is None and news2_high)
    )
    last_high = now_s if risk_high else state.last_high_s
    if not state.active:
        if not (risk_high or news2_enters):
            return state, None  # the risk is not high, so last_high_s is unchanged
        severity = _severity(risk_high, news2_high)
        new = replace(state, active=True, severity=severity, last_high_s=last_high)
    else:
        held = last_high is not None and now_s - last_high < policy.hold_hours * 3600.0
        stay = (
            risk_high
            or news2_enters
            or risk is None  # the model being away never clears an alert by itself
            or risk >= policy.clear_below
            or held
            or (policy.news2_stay is not None and news2 is not None and news2 >= policy.news2_stay)
        )
        if not stay:
            return replace(state, active=False, severity=None, last_high_s=last_high), None
        severity = _severity(risk_high, news2_high)
        if state.severity is not None and _RANK[severity] < _RANK[state.severity]:
            severity = state.severity  # severity only falls when the alert clears
        new = replace(state, severity=severity, last_high_s=last_high)

    suppressed = (
        state.last_raised_s is not None
        and now_s - state.last_raised_s < policy.suppress_hours * 3600.0
        and state.last_raised_severity is not None
        and _RANK[severity] <= _RANK[state.last_raised_severity]
    )
    escalated = (
        state.active and state.severity is not None and _RANK[severity] > _RANK[state.severity]
    )
    if (state.active and not escalated) or suppressed:
        return new, None
    return replace(new, last_raised_s=now_s, last_raised_severity=severity), severity


def percent(p: float, digits: int = 2) -> str:
    """``p`` as a percentage with ``digits`` significant digits (at least one decimal
    under 10 %), e.g. 0.01485 -> "1.5%", 0.2 -> "20%". Raises nothing."""
    v = 100.0 * p
    if v == 0.0:
        return "0%"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(v))))
    return f"{v:.{decimals}f}%"


def risk_phrase(risk: float, policy: AlertPolicy) -> str:
    """The risk as a clinician reads it at a glance: a percentage, its multiple of the
    base rate, and the threshold with enough digits that the comparison is visible, e.g.
    "sepsis risk 4.1% (2.3x base rate 1.8%), alert at 1.49%". Raises nothing."""
    digits = 2
    while percent(risk, digits) == percent(policy.threshold, digits) and digits < 6:
        digits += 1  # never print "1.5% >= 1.5%" for 1.52% against 1.49%
    text = f"sepsis risk {percent(risk, digits)}"
    if policy.base_rate:
        text += f" ({risk / policy.base_rate:.1f}x base rate {percent(policy.base_rate)})"
    return text + f", alert at {percent(policy.threshold, max(digits, 3))}"


def step(
    state: AlertState,
    *,
    patient: str,
    as_of: datetime,
    risk: float | None,
    news2: int | None,
    policy: AlertPolicy,
) -> tuple[AlertState, AlertDecision | None]:
    """:func:`transition` at ``as_of``, with the decision of the alert raised (its id and
    reason) when one is. Pure; raises nothing."""
    new, severity = transition(state, as_of.timestamp(), risk, news2, policy)
    if severity is None:
        return new, None
    reasons = []
    if risk is not None and not math.isnan(risk) and risk >= policy.threshold:
        reasons.append(risk_phrase(risk, policy))
    if news2 is not None and (
        news2 >= NEWS2_DEGRADED_ENTER
        or (policy.news2_enter is not None and news2 >= policy.news2_enter)
    ):
        reasons.append(f"NEWS2 {news2}" + (" with the model unavailable" if risk is None else ""))
    decision = AlertDecision(
        alert_id=alert_id(patient, as_of, severity),
        patient=patient,
        raised_at=as_of,
        severity=severity,
        risk=risk,
        news2=news2,
        reason="; ".join(reasons) or "escalation",
    )
    return new, decision


def alert_id(patient: str, at: datetime, severity: str) -> str:
    """Deterministic id: a redelivered score raises the same alert, stored once."""
    raw = f"{patient}|{at.astimezone(UTC).isoformat()}|{severity}"
    return hashlib.blake2b(raw.encode(), digest_size=12).hexdigest()
