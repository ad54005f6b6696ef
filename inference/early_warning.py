"""Exact bedside early-warning scores from the latest readings: NEWS2, qSOFA and SIRS.

Pure functions, no I/O. Each takes the latest :class:`~fhir.events.Reading` per canonical
code (``latest``), the scoring time ``as_of`` and a staleness window, and returns a frozen
result with a ``to_dict()`` for JSON.

Rules shared by all three scores
--------------------------------
* **Freshness.** A reading counts when ``as_of - staleness_hours <= reading.time <= as_of``:
  a reading exactly at the edge of the window counts, one older than the window or
  later than ``as_of`` is ignored (treated as never recorded).
* **Unusable values.** A numeric reading whose ``value`` is ``None``, NaN, infinite or
  negative is ignored like a missing one. A categorical reading (``consciousness``,
  ``o2_device``) is read from ``value_code``, case-insensitively; an ACVPU code other
  than A, C, V, P or U is ignored.
* **Resolution.** The charts are written in whole numbers (respiratory rate, SpO2,
  systolic BP, heart rate, GCS, PaCO2) and in tenths (temperature, WBC). Real-valued
  readings are first rounded *half up* to that resolution and then banded, so every real
  number falls in exactly one band and the bands are those printed on the chart:
  RR 20.49 -> 20 (0 points), RR 20.5 -> 21 (2 points); SpO2 91.5 -> 92 (2 points);
  temperature 35.04 -> 35.0 (3 points), 35.05 -> 35.1 (1 point); SIRS HR 90.4 -> 90
  (not met), 90.5 -> 91 (met). Rounding uses the shortest decimal form of the float
  (``repr``), so 35.05 rounds to 35.1 even though the binary double is slightly below.

Nothing here is retried or does I/O; the only exception raised is :class:`ValueError` for
a programming error (a naive datetime, a negative or NaN staleness window), which the
caller should let propagate.

Decision support, not a diagnosis.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Literal

from fhir.events import Reading

News2Band = Literal["low", "low-medium", "medium", "high"]

# NEWS2 parameters in chart order; the first five are required for a total.
NEWS2_REQUIRED: tuple[str, ...] = (
    "respiratory_rate",
    "spo2",
    "systolic_bp",
    "heart_rate",
    "temperature",
)
NEWS2_PARAMETERS: tuple[str, ...] = (
    "respiratory_rate",
    "spo2",
    "air_or_oxygen",
    "systolic_bp",
    "heart_rate",
    "consciousness",
    "temperature",
)
ACVPU: frozenset[str] = frozenset({"A", "C", "V", "P", "U"})
# o2_device codes meaning "no supplemental oxygen" (compared case-insensitively).
ROOM_AIR_DEVICES: frozenset[str] = frozenset({"air", "room-air", "room_air", "none", ""})

_WHOLE = Decimal("1")
_TENTH = Decimal("0.1")


def _round_half_up(value: float, step: Decimal) -> Decimal:
    return Decimal(repr(value)).quantize(step, rounding=ROUND_HALF_UP)


class _Window:
    """The freshness test for one scoring call."""

    def __init__(self, latest: Mapping[str, Reading], as_of: datetime, hours: float) -> None:
        if as_of.tzinfo is None or as_of.utcoffset() is None:
            raise ValueError(f"as_of {as_of.isoformat()} has no time zone")
        if not math.isfinite(hours) or hours < 0:
            raise ValueError(f"staleness_hours must be a finite number >= 0, got {hours!r}")
        self.latest = latest
        self.as_of = as_of
        self.earliest = as_of - timedelta(hours=hours)

    def reading(self, code: str) -> Reading | None:
        r = self.latest.get(code)
        if r is None:
            return None
        if r.time.tzinfo is None or r.time.utcoffset() is None:
            raise ValueError(f"reading {code} at {r.time.isoformat()} has no time zone")
        if r.time > self.as_of or r.time < self.earliest:
            return None
        return r

    def number(self, code: str, step: Decimal = _WHOLE) -> Decimal | None:
        """The fresh value of ``code`` rounded half up to ``step``; None if unusable."""
        r = self.reading(code)
        if r is None or r.value is None:
            return None
        v = float(r.value)
        if not math.isfinite(v) or v < 0:
            return None
        return _round_half_up(v, step)

    def raw(self, code: str) -> float | None:
        """The fresh, finite, non-negative value of ``code`` without rounding."""
        r = self.reading(code)
        if r is None or r.value is None:
            return None
        v = float(r.value)
        return v if math.isfinite(v) and v >= 0 else None

    def code(self, code: str) -> tuple[str, Reading] | None:
        """The fresh ``value_code`` of ``code`` (stripped, upper case) and its reading."""
        r = self.reading(code)
        if r is None or r.value_code is None:
            return None
        return r.value_code.strip().upper(), r

    def altered_mentation(self) -> bool | None:
        """True if ACVPU is C/V/P/U or GCS < 15; False if alert; None if never recorded."""
        acvpu = self.code("consciousness")
        letter = acvpu[0] if acvpu is not None and acvpu[0] in ACVPU else None
        gcs = self.number("gcs_total")
        if letter is None and gcs is None:
            return None
        return (letter is not None and letter != "A") or (gcs is not None and gcs < 15)

    def on_oxygen(self) -> bool:
        """Whether the patient is on supplemental oxygen (see :func:`news2`)."""
        evidence: list[tuple[datetime, bool]] = []
        device = self.code("o2_device")
        if device is not None:
            evidence.append((device[1].time, device[0].lower() not in ROOM_AIR_DEVICES))
        flow_r = self.reading("o2_flow")
        flow = self.raw("o2_flow")
        if flow_r is not None and flow is not None:
            evidence.append((flow_r.time, flow > 0))
        fio2_r = self.reading("fio2")
        fio2 = self.raw("fio2")
        if fio2_r is not None and fio2 is not None:
            evidence.append((fio2_r.time, fio2 > 0.21))
        if not evidence:
            return False
        newest = max(t for t, _ in evidence)
        # Among the newest records, any sign of oxygen wins (the conservative reading).
        return any(oxygen for t, oxygen in evidence if t == newest)


# ---------------------------------------------------------------------------- NEWS2


def _respiration_points(rr: Decimal) -> int:
    if rr <= 8:
        return 3
    if rr <= 11:
        return 1
    if rr <= 20:
        return 0
    if rr <= 24:
        return 2
    return 3


def _spo2_scale1_points(spo2: Decimal) -> int:
    if spo2 <= 91:
        return 3
    if spo2 <= 93:
        return 2
    if spo2 <= 95:
        return 1
    return 0


def _spo2_scale2_points(spo2: Decimal, oxygen: bool) -> int:
    if spo2 <= 83:
        return 3
    if spo2 <= 85:
        return 2
    if spo2 <= 87:
        return 1
    if spo2 <= 92 or not oxygen:
        return 0
    if spo2 <= 94:
        return 1
    if spo2 <= 96:
        return 2
    return 3


def _systolic_points(sbp: Decimal) -> int:
    if sbp <= 90:
        return 3
    if sbp <= 100:
        return 2
    if sbp <= 110:
        return 1
    if sbp <= 219:
        return 0
    return 3


def _pulse_points(hr: Decimal) -> int:
    if hr <= 40:
        return 3
    if hr <= 50:
        return 1
    if hr <= 90:
        return 0
    if hr <= 110:
        return 1
    if hr <= 130:
        return 2
    return 3


def _temperature_points(t: Decimal) -> int:
    if t <= Decimal("35.0"):
        return 3
    if t <= Decimal("36.0"):
        return 1
    if t <= Decimal("38.0"):
        return 0
    if t <= Decimal("39.0"):
        return 1
    return 2


@dataclass(frozen=True, slots=True)
class News2Result:
    """A NEWS2 score.

    ``total`` is None when a required parameter (RR, SpO2, systolic BP, heart rate,
    temperature) is missing or stale; ``breakdown`` has the points of every parameter of
    :data:`NEWS2_PARAMETERS` (None where missing). ``red_flag`` is True when any
    parameter that *could* be scored scores 3 (so it may be True while ``total`` is
    None). ``partial`` is True when consciousness was never recorded (scored as Alert).
    ``missing`` lists, in chart order, every parameter that had no usable reading,
    including ``consciousness`` when ``partial``.
    """

    total: int | None
    breakdown: dict[str, int | None]
    red_flag: bool
    band: News2Band | None
    partial: bool
    missing: tuple[str, ...]
    spo2_scale: Literal[1, 2] = 1
    on_oxygen: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "total": self.total,
            "breakdown": dict(self.breakdown),
            "red_flag": self.red_flag,
            "band": self.band,
            "partial": self.partial,
            "missing": list(self.missing),
            "spo2_scale": self.spo2_scale,
            "on_oxygen": self.on_oxygen,
        }


def news2_band(total: int | None, red_flag: bool) -> News2Band | None:
    """The RCP clinical-risk band: 0-4 low (low-medium if any single parameter scores 3),
    5-6 medium, 7 or more high; None when ``total`` is None. Raises nothing."""
    if total is None:
        return None
    if total >= 7:
        return "high"
    if total >= 5:
        return "medium"
    return "low-medium" if red_flag else "low"


def news2(
    latest: Mapping[str, Reading],
    as_of: datetime,
    staleness_hours: float = 12.0,
    spo2_scale2: bool = False,
) -> News2Result:
    """National Early Warning Score 2 (Royal College of Physicians, 2017).

    ``spo2_scale2`` selects SpO2 scale 2 (hypercapnic respiratory failure, target
    88-92 %, chosen by a clinician). Oxygen: a fresh ``o2_device`` other than air/room-air/
    none, a fresh ``o2_flow`` > 0 L/min or a fresh ``fio2`` > 0.21 means oxygen; no fresh
    record of any of these means air. When several such records disagree, the newest one
    decides (a later "room-air" device record ends an earlier flow), and on a tie any sign
    of oxygen wins. Consciousness scores 3 for ACVPU C/V/P/U or GCS < 15 ("new
    confusion"), 0 for A; never recorded counts as Alert and marks the result partial.

    Raises :class:`ValueError` (not retried: a programming error) when ``as_of`` or a
    reading's time is naive, or ``staleness_hours`` is negative or not finite.
    """
    w = _Window(latest, as_of, staleness_hours)
    oxygen = w.on_oxygen()
    breakdown: dict[str, int | None] = dict.fromkeys(NEWS2_PARAMETERS)

    rr = w.number("respiratory_rate")
    if rr is not None:
        breakdown["respiratory_rate"] = _respiration_points(rr)
    spo2 = w.number("spo2")
    if spo2 is not None:
        breakdown["spo2"] = (
            _spo2_scale2_points(spo2, oxygen) if spo2_scale2 else _spo2_scale1_points(spo2)
        )
    breakdown["air_or_oxygen"] = 2 if oxygen else 0
    sbp = w.number("systolic_bp")
    if sbp is not None:
        breakdown["systolic_bp"] = _systolic_points(sbp)
    hr = w.number("heart_rate")
    if hr is not None:
        breakdown["heart_rate"] = _pulse_points(hr)
    altered = w.altered_mentation()
    partial = altered is None
    breakdown["consciousness"] = 3 if altered else 0
    temp = w.number("temperature", _TENTH)
    if temp is not None:
        breakdown["temperature"] = _temperature_points(temp)

    missing = tuple(
        p
        for p in NEWS2_PARAMETERS
        if (p == "consciousness" and partial) or (p in NEWS2_REQUIRED and breakdown[p] is None)
    )
    red_flag = any(v == 3 for v in breakdown.values())
    complete = all(breakdown[p] is not None for p in NEWS2_REQUIRED)
    total = sum(v for v in breakdown.values() if v is not None) if complete else None
    return News2Result(
        total=total,
        breakdown=breakdown,
        red_flag=red_flag,
        band=news2_band(total, red_flag),
        partial=partial,
        missing=missing,
        spo2_scale=2 if spo2_scale2 else 1,
        on_oxygen=oxygen,
    )


# ---------------------------------------------------------------------------- qSOFA


@dataclass(frozen=True, slots=True)
class QsofaResult:
    """A qSOFA score (Seymour et al., JAMA 2016).

    ``total`` (0-3) is None when respiratory rate or systolic BP is missing or stale.
    ``breakdown`` maps ``respiratory_rate``, ``systolic_bp`` and ``mentation`` to 1 (met),
    0 (not met) or None (missing). ``positive`` is True when at least two criteria are
    known to be met (so it can be True while ``total`` is None). ``partial`` is True when
    mentation (ACVPU or GCS) was never recorded; it then counts as not met.
    """

    total: int | None
    breakdown: dict[str, int | None] = field(default_factory=dict)
    positive: bool = False
    partial: bool = False
    missing: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "total": self.total,
            "breakdown": dict(self.breakdown),
            "positive": self.positive,
            "partial": self.partial,
            "missing": list(self.missing),
        }


def qsofa(
    latest: Mapping[str, Reading],
    as_of: datetime,
    staleness_hours: float = 12.0,
) -> QsofaResult:
    """quick SOFA: RR >= 22/min, systolic BP <= 100 mmHg, altered mentation (GCS < 15 or
    ACVPU other than A); one point each. Values are rounded half up to whole numbers first.

    Raises :class:`ValueError` (not retried: a programming error) on a naive datetime or
    an invalid ``staleness_hours``.
    """
    w = _Window(latest, as_of, staleness_hours)
    rr = w.number("respiratory_rate")
    sbp = w.number("systolic_bp")
    altered = w.altered_mentation()
    breakdown: dict[str, int | None] = {
        "respiratory_rate": None if rr is None else int(rr >= 22),
        "systolic_bp": None if sbp is None else int(sbp <= 100),
        "mentation": int(bool(altered)),
    }
    missing = tuple(k for k, v in (("respiratory_rate", rr), ("systolic_bp", sbp)) if v is None)
    if altered is None:
        missing += ("mentation",)
    met = sum(v for v in breakdown.values() if v is not None)
    total = None if rr is None or sbp is None else met
    return QsofaResult(
        total=total,
        breakdown=breakdown,
        positive=met >= 2,
        partial=altered is None,
        missing=missing,
    )


# ---------------------------------------------------------------------------- SIRS


@dataclass(frozen=True, slots=True)
class SirsResult:
    """SIRS criteria (ACCP/SCCM 1992).

    ``total`` is the number of criteria met (0-4); None when temperature or heart rate is
    missing or stale, or the respiratory criterion cannot be judged (no RR and no PaCO2
    below 32). ``breakdown`` maps ``temperature``,
    ``heart_rate``, ``respiratory`` and ``wbc`` to 1/0/None. ``met`` is True when at least
    two criteria are known to be met. ``partial`` is True when WBC is absent (it then
    counts as not met); immature band forms (> 10 %) are not available and never counted.
    """

    total: int | None
    breakdown: dict[str, int | None] = field(default_factory=dict)
    met: bool = False
    partial: bool = False
    missing: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "total": self.total,
            "breakdown": dict(self.breakdown),
            "met": self.met,
            "partial": self.partial,
            "missing": list(self.missing),
        }


def sirs(
    latest: Mapping[str, Reading],
    as_of: datetime,
    staleness_hours: float = 12.0,
) -> SirsResult:
    """SIRS: temperature > 38 or < 36 Cel; heart rate > 90/min; respiratory rate > 20/min
    or PaCO2 < 32 mmHg; WBC > 12 or < 4 10*3/uL. Temperature and WBC are rounded half up
    to one decimal, the others to whole numbers, before comparing. PaCO2 is optional (its
    absence does not make the result partial); the respiratory criterion is met when either
    RR or PaCO2 meets it.

    Raises :class:`ValueError` (not retried: a programming error) on a naive datetime or
    an invalid ``staleness_hours``.
    """
    w = _Window(latest, as_of, staleness_hours)
    temp = w.number("temperature", _TENTH)
    hr = w.number("heart_rate")
    rr = w.number("respiratory_rate")
    paco2 = w.number("paco2")
    wbc = w.number("wbc", _TENTH)
    resp: int | None
    if (rr is not None and rr > 20) or (paco2 is not None and paco2 < 32):
        resp = 1
    elif rr is not None:
        resp = 0
    else:
        resp = None
    breakdown: dict[str, int | None] = {
        "temperature": None if temp is None else int(temp > 38 or temp < 36),
        "heart_rate": None if hr is None else int(hr > 90),
        "respiratory": resp,
        "wbc": None if wbc is None else int(wbc > 12 or wbc < 4),
    }
    missing = tuple(
        code
        for code, v in (
            ("temperature", temp),
            ("heart_rate", hr),
            ("respiratory_rate", resp),
            ("wbc", wbc),
        )
        if v is None
    )
    met = sum(v for v in breakdown.values() if v is not None)
    total = None if temp is None or hr is None or resp is None else met
    return SirsResult(
        total=total,
        breakdown=breakdown,
        met=met >= 2,
        partial=wbc is None,
        missing=missing,
    )
