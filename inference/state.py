"""Per-patient state kept by the stream (one Faust table row per patient).

The state holds, per canonical code, the time-ordered observations the stream has seen
(numeric codes: ``value``; categorical codes: ``value_code``), so that the scores and the
model's feature window (:mod:`inference.features`) can be computed *as of* any time.

Rules (all order-independent: the same set of events, applied in any order, gives the same
state, and applying an event twice changes nothing):

* An observation is identified by ``(code, source)``; an event without ``source`` is
  identified by ``(code, time)``.
* ``status`` ranks: preliminary < final < amended = corrected. A delivery of the same
  observation replaces the stored one (value *and* time) when its rank is higher; between
  equal ranks the larger ``(time, value)`` wins (a deterministic tie-break, since events
  carry no version number).
* ``entered-in-error`` removes what that ``source`` put there, in every code, and leaves a
  tombstone so a late delivery of the retracted observation is not added again. An
  entered-in-error event without ``source`` removes ``(code, time)``.
* ``first_seen`` is the earliest time of any valued *numeric* observation (retracted ones
  included, so it does not depend on arrival order). Categorical and context events do
  not move it: an old Condition must not shift the model's stay-time feature.
* Context facts (:data:`fhir.events.CONTEXT_CODES`: conditions, flags, goals,
  antibiotics, vasopressors; ``value_code`` = ``"<system>|<code>"``) are kept by the same
  identity/status/retraction rules, in their own series that :meth:`PatientState.prune`
  never shortens (a Condition recorded days ago still holds). Read them with
  :meth:`PatientState.context`.

* Patient context (:data:`fhir.events.STAY_CODES`: birth year, sex, hospital and ICU
  admission) is kept the same way, never pruned either: ``birth_year`` keeps its numeric
  value, the others their ``value_code``. Read it with :meth:`PatientState.stay_fact` and
  :meth:`PatientState.stay_times`. It does not move ``first_seen``.

Events of other kinds/codes (discharges, notes, ...) and non-finite values are ignored.
Times are kept as UTC epoch seconds (float).
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from fhir.events import (
    CATEGORICAL_CODES,
    CONTEXT_CODES,
    NUMERIC_CODES,
    STAY_CODES,
    ClinicalEvent,
    Reading,
)

TimeLike = datetime | float | int

_NUMERIC: Final = frozenset(NUMERIC_CODES)
_CATEGORICAL: Final = frozenset(CATEGORICAL_CODES)
_CONTEXT: Final = frozenset(CONTEXT_CODES)
_STAY: Final = frozenset(STAY_CODES)
_KEPT: Final = _CONTEXT | _STAY  # series that prune never shortens
# Codes whose values are numbers: the measurements, and the birth year among the stay facts.
_VALUED: Final = _NUMERIC | {"birth_year"}
_RANK: Final[dict[str, int]] = {"preliminary": 0, "final": 1, "amended": 2, "corrected": 2}
_SCHEMA: Final = 3
_SCHEMA_V2: Final = 2  # still read: the same layout, without patient context
_SCHEMA_V1: Final = 1  # still read: see PatientState's serialising section


def to_epoch(t: TimeLike) -> float:
    """UTC epoch seconds of a datetime (must be time-zone aware) or a number."""
    if isinstance(t, datetime):
        if t.tzinfo is None:
            raise ValueError(f"time {t.isoformat()} has no time zone")
        return t.timestamp()
    return float(t)


def from_epoch(t: float) -> datetime:
    """UTC datetime of epoch seconds."""
    return datetime.fromtimestamp(t, tz=UTC)


def _compact(t: float) -> float | int:
    t = round(t, 3)
    return int(t) if t.is_integer() else t


class _Series:
    """Observations of one code, sorted by (time, source). Columnar."""

    __slots__ = ("ranks", "sources", "times", "values")

    def __init__(self) -> None:
        self.times: list[float] = []
        self.values: list[Any] = []  # float for numeric codes, str for categorical
        self.sources: list[str] = []
        self.ranks: list[int] = []

    def __len__(self) -> int:
        return len(self.times)

    def index_of(self, source: str) -> int:
        try:
            return self.sources.index(source)
        except ValueError:
            return -1

    def delete(self, i: int) -> None:
        del self.times[i], self.values[i], self.sources[i], self.ranks[i]

    def insert(self, t: float, value: Any, source: str, rank: int) -> None:
        lo = bisect_left(self.times, t)
        hi = bisect_right(self.times, t, lo)
        i = lo
        while i < hi and self.sources[i] < source:
            i += 1
        self.times.insert(i, t)
        self.values.insert(i, value)
        self.sources.insert(i, source)
        self.ranks.insert(i, rank)

    def last_at_or_before(self, t: float) -> int:
        """Index of the newest observation with time <= t, or -1."""
        return bisect_right(self.times, t) - 1


class PatientState:
    """Observations of one patient, per canonical code. See the module docstring."""

    __slots__ = ("_series", "_tombstones", "first_seen", "patient")

    def __init__(self, patient: str = "") -> None:
        self.patient = patient
        self.first_seen: float | None = None
        self._series: dict[str, _Series] = {}
        self._tombstones: dict[str, float] = {}  # retracted source -> its event time

    # ------------------------------------------------------------------ updating
    def apply(self, events: Iterable[ClinicalEvent]) -> int:
        """Apply events (any order, duplicates allowed). Returns how many changed the state."""
        changed = 0
        for ev in events:
            changed += self._apply_one(ev)
        return changed

    def _apply_one(self, ev: ClinicalEvent) -> int:
        code = ev.code
        numeric = code in _VALUED
        context = code in _KEPT
        if not numeric and not context and code not in _CATEGORICAL:
            return 0
        if not self.patient:
            self.patient = ev.patient
        t = round(ev.time.timestamp(), 3)  # millisecond resolution, exact JSON round trip
        source = ev.source or f"@{code}@{_compact(t)}"
        if context and not ev.source and ev.value_code:
            source += f"@{ev.value_code}"  # two codes recorded at once are two facts
        if ev.status == "entered-in-error":
            return self._retract(source, code if not ev.source else None, t)
        value: Any
        if numeric:
            if ev.value is None or not math.isfinite(ev.value):
                return 0
            value = float(ev.value)
        else:
            if not ev.value_code:
                return 0
            value = ev.value_code
        if numeric and not context and (self.first_seen is None or t < self.first_seen):
            self.first_seen = t
        if source in self._tombstones:
            return 0
        rank = _RANK.get(ev.status, 1)
        series = self._series.get(code)
        if series is None:
            series = self._series[code] = _Series()
        i = series.index_of(source)
        if i >= 0:
            old = (series.ranks[i], series.times[i], series.values[i])
            if (rank, t, value) <= old:
                return 0
            series.delete(i)
        series.insert(t, value, source, rank)
        return 1

    def _retract(self, source: str, only_code: str | None, t: float) -> int:
        prev = self._tombstones.get(source)
        self._tombstones[source] = t if prev is None else max(prev, t)
        removed = 0
        codes = [only_code] if only_code is not None else list(self._series)
        for code in codes:
            series = self._series.get(code)
            if series is None:
                continue
            i = series.index_of(source)
            while i >= 0:
                series.delete(i)
                removed += 1
                i = series.index_of(source)
            if not series:
                del self._series[code]
        return removed + (prev is None)

    def prune(self, now: TimeLike, keep_hours: float) -> int:
        """Forget observations older than ``now - keep_hours``, keeping per code the newest
        one at or before that cut-off (so carry-forward values and "hours since last" stay
        exact for any as-of time >= cut-off + the feature window). Returns how many went.

        Use ``keep_hours >= features.WINDOW + staleness window``.
        """
        cutoff = to_epoch(now) - keep_hours * 3600.0
        removed = 0
        for code, series in self._series.items():
            if code in _KEPT:
                continue  # context holds until retracted
            keep_from = series.last_at_or_before(cutoff)  # this one stays
            if keep_from > 0:
                del series.times[:keep_from], series.values[:keep_from]
                del series.sources[:keep_from], series.ranks[:keep_from]
                removed += keep_from
        old = [s for s, t in self._tombstones.items() if t < cutoff]
        for s in old:
            del self._tombstones[s]
        return removed

    # ------------------------------------------------------------------ reading
    @property
    def codes(self) -> list[str]:
        """Codes with at least one observation (context codes not included)."""
        return sorted(c for c in self._series if c not in _KEPT)

    def context(self, code: str, as_of: TimeLike | None = None) -> frozenset[str]:
        """The ``value_code`` s of context ``code`` (e.g. ``"condition"``, ``"flag"``,
        ``"goal"``) recorded at or before ``as_of`` (any time when None) and not
        retracted. Raises nothing."""
        if code not in _CONTEXT:
            return frozenset()
        s = self._series.get(code)
        if s is None:
            return frozenset()
        n = len(s) if as_of is None else s.last_at_or_before(to_epoch(as_of)) + 1
        return frozenset(str(v) for v in s.values[:n])

    def stay_fact(self, code: str) -> Any:
        """The newest value of patient-context ``code`` (:data:`fhir.events.STAY_CODES`),
        whatever its time (a birth year or sex holds for the whole stay), or None.
        Raises nothing."""
        s = self._series.get(code) if code in _STAY else None
        return s.values[-1] if s else None

    def stay_times(self, code: str) -> list[float]:
        """The times (epoch seconds, ascending) of patient-context ``code``, e.g. every
        ``icu_admission`` (a shared list: do not modify). Raises nothing."""
        s = self._series.get(code) if code in _STAY else None
        return s.times if s else []

    @property
    def last_seen(self) -> float | None:
        """Epoch seconds of the newest stored observation, or None."""
        ts = [s.times[-1] for c, s in self._series.items() if s.times and c not in _KEPT]
        return max(ts) if ts else None

    def series(self, code: str) -> tuple[list[float], list[Any]]:
        """(times, values) of one code, time-ordered (shared lists: do not modify)."""
        s = self._series.get(code)
        if s is None:
            return [], []
        return s.times, s.values

    def concatenated(self, codes: Iterable[str]) -> tuple[list[float], list[Any], list[int]]:
        """The observations of ``codes``, code after code: (times, values) in new lists, each
        code's stretch time-ordered as in :meth:`series`, and each code's count (0 when it
        has none). One call instead of one :meth:`series` per code, for the feature window.
        Raises nothing."""
        times: list[float] = []
        values: list[Any] = []
        lens: list[int] = []
        get = self._series.get
        for code in codes:
            s = get(code)
            if s is None:
                lens.append(0)
            else:
                times += s.times
                values += s.values
                lens.append(len(s.times))
        return times, values, lens

    def __len__(self) -> int:
        return sum(len(s) for s in self._series.values())

    def latest(
        self, code: str, as_of: TimeLike, max_age_hours: float | None = None
    ) -> Reading | None:
        """Newest observation of ``code`` with time <= as_of (and, if given, not older than
        ``max_age_hours``), or None."""
        s = self._series.get(code)
        if s is None:
            return None
        ts = to_epoch(as_of)
        i = s.last_at_or_before(ts)
        if i < 0:
            return None
        t = s.times[i]
        if max_age_hours is not None and ts - t > max_age_hours * 3600.0:
            return None
        v = s.values[i]
        if isinstance(v, str):
            return Reading(time=from_epoch(t), value_code=v)
        return Reading(time=from_epoch(t), value=v)

    def latest_sources(self, as_of: TimeLike, max_age_hours: float | None = None) -> dict[str, str]:
        """The ``source`` (e.g. ``Observation/<id>``) of each code's newest observation at
        or before ``as_of`` (not older than ``max_age_hours`` when given); observations
        delivered without a source are left out. Raises nothing."""
        ts = to_epoch(as_of)
        out: dict[str, str] = {}
        for code in self.codes:
            s = self._series[code]
            i = s.last_at_or_before(ts)
            if i < 0 or (max_age_hours is not None and ts - s.times[i] > max_age_hours * 3600.0):
                continue
            if not s.sources[i].startswith("@"):
                out[code] = s.sources[i]
        return out

    def latest_readings(
        self, as_of: TimeLike, max_age_hours: float | None = None
    ) -> dict[str, Reading]:
        """``latest`` of every code that has a value at or before as_of."""
        out: dict[str, Reading] = {}
        for code in self.codes:
            r = self.latest(code, as_of, max_age_hours)
            if r is not None:
                out[code] = r
        return out

    # ------------------------------------------------------------------ serialising
    # Schema 2 (written since the hot-path work) stores absolute epoch seconds as JSON
    # floats: orjson writes the shortest text that reads back as the same float, so a
    # round trip is exact with no per-observation work either way. Schema 1 stored times
    # relative to first_seen, rounded to the millisecond, which needed a Python-level
    # round() per observation on both sides (most of the codec's cost); it is still read,
    # since records of that schema stay in changelogs until their patient is rewritten.
    # Both give the same state: a schema-1 round trip was exact too (times are kept at
    # millisecond resolution). Schema 3 has schema 2's layout and may also hold patient
    # context (STAY_CODES); a schema-2 record reads as a state with none. The number
    # changed so that a worker of before it, which would prune those series as if they
    # were observations, refuses a schema-3 record loudly rather than losing them.

    def _payload(self) -> dict[str, Any]:
        """The schema-3 form, sharing this state's lists (serialise it at once)."""
        series = self._series
        return {
            "v": _SCHEMA,
            "p": self.patient,
            "f": self.first_seen,
            "o": {
                code: [s.times, s.values, s.sources, s.ranks] for code, s in sorted(series.items())
            },
            "x": dict(sorted(self._tombstones.items())),
        }

    def to_dict(self) -> dict[str, Any]:
        """Canonical JSON-ready form (schema 3: absolute epoch seconds), in new lists."""
        d = self._payload()
        d["o"] = {code: [list(x) for x in cols] for code, cols in d["o"].items()}
        return d

    def to_json(self) -> bytes:
        """Compact JSON bytes (the Faust table value / changelog record). Raises nothing."""
        return orjson.dumps(self._payload())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PatientState:
        """Inverse of :meth:`to_dict`; also reads schema 1 (times relative to first_seen).

        Raises ``ValueError`` for an unknown schema and ``KeyError``/``TypeError``/
        ``ValueError`` for a malformed one (permanent: not retried).
        """
        v = d.get("v")
        if v in (_SCHEMA, _SCHEMA_V2):  # v2 is v3 without patient context
            return cls._from_v2(d)
        if v == _SCHEMA_V1:
            return cls._from_v1(d)
        raise ValueError(f"unknown PatientState schema {v!r}")

    @classmethod
    def _from_v2(cls, d: dict[str, Any]) -> PatientState:
        st = cls(d.get("p", ""))
        first = d.get("f")
        st.first_seen = None if first is None else float(first)
        for code, (times, values, sources, ranks) in d.get("o", {}).items():
            s = _Series()
            # list(): new lists (C-level copies), so the state never shares d's lists.
            s.times = list(times)
            s.values = list(values)
            s.sources = list(sources)
            s.ranks = list(ranks)
            st._series[code] = s
        st._tombstones = dict(d.get("x", {}))
        return st

    @classmethod
    def _from_v1(cls, d: dict[str, Any]) -> PatientState:
        st = cls(d.get("p", ""))
        first = d.get("f")
        st.first_seen = None if first is None else float(first)
        base = st.first_seen or 0.0
        for code, (times, values, sources, ranks) in d.get("o", {}).items():
            s = _Series()
            s.times = [round(base + t, 3) for t in times]
            s.values = [v if isinstance(v, str) else float(v) for v in values]
            s.sources = list(sources)
            s.ranks = [int(r) for r in ranks]
            st._series[code] = s
        st._tombstones = {k: round(base + t, 3) for k, t in d.get("x", {}).items()}
        return st

    @classmethod
    def from_json(cls, data: bytes | str) -> PatientState:
        """Inverse of :meth:`to_json` (either schema). Raises what :meth:`from_dict` raises,
        and ``orjson.JSONDecodeError`` (a ``ValueError``) for text that is not JSON."""
        return cls.from_dict(orjson.loads(data))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PatientState):
            return NotImplemented
        return self._payload() == other._payload()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"PatientState(patient={self.patient!r}, codes={len(self._series)}, obs={len(self)})"
