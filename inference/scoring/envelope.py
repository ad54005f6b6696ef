"""Envelopes: one inbound message's canonical events for one patient, and the
normalising of raw FHIR into them (the mapping itself is :mod:`fhir.parse`'s)."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

import orjson

from fhir.events import ClinicalEvent
from fhir.parse import parse_resource
from fhir.pseudonym import LENGTH, PREFIX


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


_PSEUDONYM = re.compile(rf"{re.escape(PREFIX)}[a-z2-7]{{{LENGTH}}}")


def is_pseudonym(patient: str) -> bool:
    """True for an id the edge's :func:`fhir.pseudonym.pseudonymise` could have made."""
    return _PSEUDONYM.fullmatch(patient) is not None
