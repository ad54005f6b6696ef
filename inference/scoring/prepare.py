"""Apply one envelope to a patient's state and compute what scoring needs: the rule
scores (NEWS2, qSOFA, SIRS) and the model's feature window, as a :class:`Pending` that
waits for the model's risk (:mod:`.batch` asks the model port for a chunk at once).
Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from inference.context import uses_spo2_scale2
from inference.early_warning import news2, qsofa, sirs
from inference.features import FeatureSpec, feature_window

from .applied import already_applied
from .envelope import Envelope
from .record import PatientRecord

# Event kinds that update the state without being a time to score at.
_CONTEXT_ONLY_KINDS = frozenset({"demographic", "encounter"})
# Observations older than this are dropped from the state; the model looks back 48 h and
# a vital goes stale after 12 h, so 72 h keeps every value that can still matter.
STATE_KEEP_HOURS = 72.0


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


def stack_windows(pendings: Sequence[Pending]) -> npt.NDArray[np.float32]:
    """The model's input for a batch: float32 [B, WINDOW, F]."""
    out: npt.NDArray[np.float32] = np.stack([p.window for p in pendings]).astype(
        np.float32, copy=False
    )
    return out


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
