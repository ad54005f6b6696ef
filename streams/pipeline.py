"""The stream's logic as plain functions: normalise, score, alert.

The Faust agents in :mod:`streams.app` and the offline ``wardwatch score`` command both
call these, so the stream and the offline scores cannot drift apart. Nothing here does
I/O: the model is called by the caller between :func:`prepare` and :func:`finish` (the
stream batches those calls into one Triton request).
"""

from __future__ import annotations

import bisect
import functools
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
from aiokafka.partitioner import murmur2

from fhir.events import ClinicalEvent
from fhir.parse import parse_resource
from fhir.pseudonym import LENGTH, PREFIX
from inference.alert_policy import AlertDecision, AlertPolicy, AlertState, step
from inference.attribution import TOP_K, Attribution
from inference.context import uses_spo2_scale2
from inference.early_warning import news2, qsofa, sirs
from inference.features import FeatureSpec, feature_window
from inference.state import PatientState

from .alerting import build_card, risk_assessment

# Explains one window (float32[WINDOW, F]) for an alert's card: see inference.attribution.
Explainer = Callable[[npt.NDArray[np.float32]], Attribution]

# Event kinds that update the state without being a time to score at.
_CONTEXT_ONLY_KINDS = frozenset({"demographic", "encounter"})
# Observations older than this are dropped from the state; the model looks back 48 h and
# a vital goes stale after 12 h, so 72 h keeps every value that can still matter.
STATE_KEEP_HOURS = 72.0


@dataclass(slots=True)
class PatientRecord:
    """Everything the stream keeps per patient (one Faust table value)."""

    state: PatientState = field(default_factory=PatientState)
    alert: AlertState = field(default_factory=AlertState)
    # Per source partition ("topic/partition"): the latest offsets applied to this record
    # (ascending, at most APPLIED_KEEP) and the newest message timestamp (ms) applied
    # from it (see :func:`already_applied`).
    applied: dict[str, tuple[list[int], int | None]] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        """The record as compact JSON: ``{"s": <state>, "a": <alert state>, "o": <applied
        offsets>}`` ("o" only once a Kafka-sourced envelope was applied). Raises nothing."""
        out: dict[str, Any] = {
            "s": orjson.Fragment(self.state.to_json()),
            "a": self.alert.to_dict(),
        }
        if self.applied:
            out["o"] = self.applied
        return orjson.dumps(out)

    def to_json(self) -> str:
        """:meth:`to_bytes` as text (the Faust table's value type). Raises nothing."""
        return self.to_bytes().decode()

    @classmethod
    def from_json(cls, raw: str | None) -> PatientRecord:
        """Inverse of :meth:`to_json`; a new record for None or "". Reads every state schema
        :meth:`PatientState.from_dict` reads. Raises ``ValueError`` (JSON or schema) or
        ``KeyError``/``TypeError`` for a malformed record (permanent: not retried)."""
        return cls._from_obj(orjson.loads(raw)) if raw else cls()

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> PatientRecord:
        """Inverse of :meth:`to_bytes`; raises what :meth:`from_json` raises."""
        return cls._from_obj(orjson.loads(raw)) if raw else cls()

    @classmethod
    def _from_obj(cls, d: dict[str, Any]) -> PatientRecord:
        # One parse of the whole record: the state is built from the parsed dict (it used
        # to be dumped back to bytes and parsed a second time).
        return cls(
            state=PatientState.from_dict(d["s"]),
            alert=AlertState.from_dict(d["a"]),
            applied={
                tp: ([int(o) for o in offs], None if t is None else int(t))
                for tp, (offs, t) in d.get("o", {}).items()
            },
        )


@dataclass(frozen=True, slots=True)
class Envelope:
    """The canonical events of one inbound message for one patient (``clinical.events``)."""

    patient: str
    source: str
    inbound_ts_ms: int | None
    events: tuple[ClinicalEvent, ...]

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "patient": self.patient,
                "source": self.source,
                "inbound_ts_ms": self.inbound_ts_ms,
                "events": [e.to_dict() for e in self.events],
            }
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> Envelope:
        """Raises ``ValueError``/``KeyError`` on a malformed envelope (permanent)."""
        d = orjson.loads(raw)
        return cls(
            patient=d["patient"],
            source=d["source"],
            inbound_ts_ms=d.get("inbound_ts_ms"),
            events=tuple(ClinicalEvent.from_dict(e) for e in d["events"]),
        )


@dataclass(frozen=True, slots=True)
class Normalised:
    """One inbound message, normalised: envelopes per patient, and what was refused.

    ``rejected`` holds the reasons of Bundle entries that could not be taken while the
    rest of the Bundle could; the caller dead-letters the whole message (its original
    bytes) with those reasons and still forwards the good entries' events (their effects
    are idempotent, so a later re-drive of the fixed message does no harm).
    """

    envelopes: list[Envelope]
    rejected: list[str]


def normalise(raw: bytes, *, source: str, inbound_ts_ms: int | None) -> Normalised:
    """Raw FHIR bytes to one envelope per patient, events in time order.

    Raises :class:`fhir.errors.PermanentInputError` when the message as a whole is bad
    (dead-letter it); never raises anything transient.
    """
    result = parse_resource(raw)
    by_patient: dict[str, list[ClinicalEvent]] = defaultdict(list)
    for e in result.events:
        by_patient[e.patient].append(e)
    rejected = [str(r) for r in result.rejected]
    envelopes = []
    for p, evs in by_patient.items():
        if not is_pseudonym(p):
            # Identity must never reach the state, the scores or the logs: input that
            # skipped the edge is refused (the reason does not repeat the id).
            rejected.append(
                f"{len(evs)} events for a subject that is not a WardWatch pseudonym: "
                "publish through the edge (wardwatch gateway), which pseudonymises identity"
            )
            continue
        envelopes.append(
            Envelope(p, source, inbound_ts_ms, tuple(sorted(evs, key=lambda e: e.time)))
        )
    return Normalised(envelopes, rejected)


@functools.lru_cache(maxsize=1 << 16)
def home_partition(patient: str, partitions: int) -> int:
    """The partition a patient's records live on when ``partitions`` is the topic's
    partition count: Kafka's Java partitioner (murmur2 of the pseudonym), which Faust's
    producer and the edge's (``murmur2_random``) use, so the events topic, the state
    table's changelog and an edge-keyed inbound message all agree. Raises
    ``ZeroDivisionError`` for ``partitions`` 0."""
    hashed: int = murmur2(patient.encode())  # aiokafka ships no type hints
    return (hashed & 0x7FFFFFFF) % partitions


def route(
    envelopes: Sequence[Envelope], partition: int, partitions: int | None
) -> tuple[list[Envelope], list[Envelope]]:
    """Split an inbound message's envelopes into those that can be scored where they
    are (``partition`` is the patient's home partition) and those that must travel
    through the events topic to their home partition.

    ``partitions`` is the shared partition count of the inbound topic, the events topic
    and the state table, or None when they differ (then the worker owning an inbound
    partition need not own the same-numbered table partition, and everything is
    forwarded). Raises nothing.
    """
    if not partitions:
        return [], list(envelopes)
    local: list[Envelope] = []
    forward: list[Envelope] = []
    for env in envelopes:
        (local if home_partition(env.patient, partitions) == partition else forward).append(env)
    return local, forward


_PSEUDONYM = re.compile(rf"{re.escape(PREFIX)}[a-z2-7]{{{LENGTH}}}")


def is_pseudonym(patient: str) -> bool:
    """True for an id the edge's :func:`fhir.pseudonym.pseudonymise` could have made."""
    return _PSEUDONYM.fullmatch(patient) is not None


@dataclass(frozen=True, slots=True)
class Pending:
    """A patient scored by the rules, waiting for the model's risk."""

    patient: str
    as_of: datetime
    window: npt.NDArray[np.float32]
    news2: Any
    qsofa: Any
    sirs: Any
    source: str
    inbound_ts_ms: int | None
    basis: tuple[str, ...]
    readings: dict[str, Any]
    context: dict[str, list[str]] = field(default_factory=dict)


def prepare(
    record: PatientRecord,
    env: Envelope,
    *,
    spec: FeatureSpec,
    staleness_hours: float,
    as_of: datetime | None = None,
) -> Pending | None:
    """Apply one envelope to the patient's state and compute the rule scores.

    The scoring time is the latest event time of the envelope (patient context, events
    of the kinds in :data:`_CONTEXT_ONLY_KINDS` — demographics and encounter admission,
    transfer and discharge — excepted: an envelope of only those is applied and not
    scored), or ``as_of`` when given
    (offline scoring of a PhysioNet row with no measurement scores the unchanged state at
    that row's hour). NEWS2 uses SpO2 scale 2 when the patient's context (a Flag/Goal or
    Condition listed in ``inference/data/news2_scale2.yaml``) says so. ``basis`` lists the
    envelope's sources, then the sources of the fresh observations the scores read.
    Returns None when there is nothing to score at. Mutates ``record.state``. Raises
    nothing for valid envelopes (``OSError``/``ValueError`` only if the packaged scale-2
    table is unreadable).
    """
    if env.events:
        record.state.apply(env.events)
        if as_of is None:
            # patient context (who the patient is, when the stay began) updates the state
            # for the next score but is no scoring time itself: a Patient's facts are
            # timed at 1900 when it carries no lastUpdated
            as_of = max(
                (e.time for e in env.events if e.kind not in _CONTEXT_ONLY_KINDS), default=None
            )
        if as_of is not None:
            record.state.prune(as_of, STATE_KEEP_HOURS)
    if as_of is None:
        return None
    state = record.state
    latest = state.latest_readings(as_of)
    used = state.latest_sources(as_of, max_age_hours=staleness_hours)
    scale2 = uses_spo2_scale2(state, as_of)
    context = {
        code: sorted(state.context(code, as_of))
        for code in ("condition", "flag", "goal", "antibiotic", "vasopressor")
    }
    return Pending(
        patient=env.patient,
        as_of=as_of,
        window=feature_window(state, as_of, spec),
        news2=news2(latest, as_of, staleness_hours=staleness_hours, spo2_scale2=scale2),
        qsofa=qsofa(latest, as_of, staleness_hours=staleness_hours),
        sirs=sirs(latest, as_of, staleness_hours=staleness_hours),
        source=env.source,
        inbound_ts_ms=env.inbound_ts_ms,
        basis=tuple(dict.fromkeys([*(e.source for e in env.events if e.source), *used.values()])),
        readings={
            code: r.value if r.value is not None else r.value_code for code, r in latest.items()
        },
        context={k: v for k, v in context.items() if v},
    )


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """Which model scored: its name and version (from the model card)."""

    name: str
    version: str


def advance(
    record: PatientRecord,
    pending: Pending,
    risk: float | None,
    *,
    model: ModelInfo,
    policy: AlertPolicy,
) -> tuple[dict[str, Any], AlertDecision | None]:
    """Combine rule scores and the model's risk and advance the alert state.

    ``risk`` is None when the model was unavailable: the score is then marked degraded.
    Returns the score record (``risk.scores``) and the alert decision when an alert is
    raised (turn it into a RiskAssessment with :func:`alert_resource`). Mutates
    ``record.alert``. Raises nothing.
    """
    n2 = pending.news2
    record.alert, decision = step(
        record.alert,
        patient=pending.patient,
        as_of=pending.as_of,
        risk=risk,
        news2=n2.total,
        policy=policy,
    )
    score = {
        "patient": pending.patient,
        "time": pending.as_of.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "model": model.name,
        "model_version": model.version,
        "risk": None if risk is None else float(risk),
        "degraded": risk is None,
        "news2": n2.total,
        "news2_band": n2.band,
        "news2_breakdown": n2.breakdown,
        "qsofa": pending.qsofa.total,
        "sirs": pending.sirs.total,
        "alert": record.alert.active,
        "source": pending.source,
        "inbound_ts_ms": pending.inbound_ts_ms,
        "features": {
            **pending.readings,
            "news2_spo2_scale": n2.spo2_scale,
            "news2_on_oxygen": n2.on_oxygen,
            "news2_partial": n2.partial,
            "news2_red_flag": n2.red_flag,
        },
    }
    return score, decision


def alert_resource(
    decision: AlertDecision,
    pending: Pending,
    attribution: Attribution | str | None,
    *,
    model: ModelInfo,
    policy: AlertPolicy,
) -> dict[str, Any]:
    """The FHIR RiskAssessment for a raised alert, carrying its CDS Hooks card.

    ``attribution`` gives the card its top-five contributing features; a string says why
    none is available (the card states it); None means none was asked for. Raises nothing.
    """
    top: list[dict[str, Any]] = []
    method: str | None = None
    if isinstance(attribution, Attribution):
        top = [c.to_dict() for c in attribution.top(TOP_K)]
        method = attribution.method
    elif attribution is not None:
        method = f"unavailable ({attribution})"
    card = build_card(
        decision,
        model=model.name,
        model_version=model.version,
        policy=policy,
        news2=pending.news2.to_dict(),
        top_features=top,
        attribution_method=method,
        readings=pending.readings,
        context=pending.context,
    )
    return risk_assessment(
        decision,
        model=model.name,
        model_version=model.version,
        basis=list(pending.basis),
        card=card,
    )


def finish(
    record: PatientRecord,
    pending: Pending,
    risk: float | None,
    *,
    model: ModelInfo,
    policy: AlertPolicy,
    explain: Explainer | None = None,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """:func:`advance`, then :func:`alert_resource` with ``explain``'s attribution when an
    alert is raised (``explain`` is called for alerts with a risk only; when it is None or
    fails, the card says no attribution is available). Used where the model runs
    in-process (offline scoring); the stream explains a batch's alerts in one server
    request instead. Mutates ``record.alert``. Raises nothing (an ``explain`` failure is
    stated in the card).
    """
    score, decision = advance(record, pending, risk, model=model, policy=policy)
    if decision is None:
        return score, None
    attribution: Attribution | str | None = None
    if explain is not None and risk is not None:
        try:
            attribution = explain(pending.window)
        except Exception as exc:  # an explanation must never stop an alert
            attribution = f"{type(exc).__name__}: {exc}"
    return score, alert_resource(decision, pending, attribution, model=model, policy=policy)


def stack_windows(pendings: Sequence[Pending]) -> npt.NDArray[np.float32]:
    """The model's input for a batch: float32 [B, WINDOW, F]."""
    out: npt.NDArray[np.float32] = np.stack([p.window for p in pendings]).astype(
        np.float32, copy=False
    )
    return out


# topic/partition/offset; Kafka topic names are 1-249 of [a-zA-Z0-9._-].
_KAFKA_SOURCE = re.compile(r"([A-Za-z0-9._-]{1,249}/[0-9]+)/([0-9]+)")


def source_position(source: str) -> tuple[str, int] | None:
    """``("topic/partition", offset)`` of a Kafka source (``topic/partition/offset``, as
    the stream names an inbound message), None for any other kind of source (a file, an
    offline row). Kafka topic names cannot contain "/". Raises nothing."""
    m = _KAFKA_SOURCE.fullmatch(source)
    return None if m is None else (m[1], int(m[2]))


# Offsets remembered per source partition and patient: a replay after a rebalance reads
# again from the committed offset, at most a few seconds (the commit interval) behind, so
# at most a few dozen of one patient's messages even in a backlog.
APPLIED_KEEP = 64


def already_applied(record: PatientRecord, env: Envelope) -> bool:
    """Whether ``env`` is already part of ``record``, and if not, mark it applied.

    Why: a worker's table is restored from the changelog, which may run ahead of the
    committed offsets (the record is written when a batch is durable, its offsets are
    committed later). After a rebalance or restart the new owner reads again messages
    whose effects the record already holds. Applying one twice is harmless to the
    observations but not to the alert state, which would step from a later state: an
    alert cleared at 02:00 made a replayed 00:00 NEWS2 of 7 raise an alert the patient
    never had. Scores and alerts of an applied envelope are durable before its record is
    written (the agent awaits their acks first), so skipping it loses nothing.

    An envelope counts as applied when its source offset is one of the last
    :data:`APPLIED_KEEP` applied from that source partition **and** its message timestamp
    is not newer than every one applied from it. Exact offsets, not a high watermark: a
    partition's records applied out of order (a later one first, around a rebalance)
    must not make the earlier ones look applied, or they would be lost rather than
    late. Offsets that restart (a topic deleted and created again) with newer messages
    are applied and start the list again. An older replay than the list remembers is
    applied again (the fault above, never a loss). Envelopes without a Kafka source are
    never skipped. Mutates ``record.applied``. Raises nothing.
    """
    pos = source_position(env.source)
    if pos is None:
        return False
    tp, offset = pos
    ts = env.inbound_ts_ms
    seen = record.applied.get(tp)
    if seen is None:
        record.applied[tp] = ([offset], ts)
        return False
    offsets, latest_ts = seen
    newer = ts is not None and latest_ts is not None and ts > latest_ts
    if not newer and offset in offsets:
        return True
    if newer and offset <= offsets[-1]:
        offsets = [offset]  # offsets started again with newer messages: a new topic
    else:
        bisect.insort(offsets, offset)
        del offsets[:-APPLIED_KEEP]
    if latest_ts is not None:
        ts = latest_ts if ts is None else max(ts, latest_ts)
    record.applied[tp] = (offsets, ts)
    return False


def score_envelopes(
    records: dict[str, PatientRecord],
    envelopes: Iterable[Envelope],
    *,
    spec: FeatureSpec,
    staleness_hours: float,
    replayed: list[Envelope] | None = None,
) -> list[tuple[PatientRecord, Pending]]:
    """:func:`prepare` over a batch, in order, creating records as patients appear.
    Envelopes their record already holds (:func:`already_applied`) are left out and, when
    ``replayed`` is given, appended to it. Raises what :func:`prepare` raises."""
    out: list[tuple[PatientRecord, Pending]] = []
    for env in envelopes:
        rec = records.get(env.patient)
        if rec is None:
            rec = records[env.patient] = PatientRecord()
        if already_applied(rec, env):
            if replayed is not None:
                replayed.append(env)
            continue
        pending = prepare(rec, env, spec=spec, staleness_hours=staleness_hours)
        if pending is not None:
            out.append((rec, pending))
    return out
