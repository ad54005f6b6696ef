"""What the scoring core keeps per patient: state, alert state and applied offsets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from inference.alert_policy import AlertState
from inference.state import PatientState


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
