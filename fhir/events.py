"""The canonical clinical event: what every feed is mapped to before scoring.

Everything downstream of the edge (the per-patient state, the scores, the model's
features) sees only these events, never raw FHIR or HL7. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

EventKind = Literal[
    "vital", "lab", "encounter", "condition", "medication", "note", "flag", "demographic"
]
EventStatus = Literal["final", "amended", "corrected", "preliminary", "entered-in-error"]

# The canonical names of the numeric observations the project understands. The mapping
# table (fhir/data/codes.yaml) must define exactly these; it is checked at start-up.
VITAL_CODES: tuple[str, ...] = (
    "heart_rate",
    "spo2",
    "temperature",
    "systolic_bp",
    "mean_bp",
    "diastolic_bp",
    "respiratory_rate",
    "etco2",
    "gcs_total",
    "fio2",
    "o2_flow",
)
# Consciousness is categorical (ACVPU); its value travels in ``value_code``.
CATEGORICAL_CODES: tuple[str, ...] = ("consciousness", "o2_device")
LAB_CODES: tuple[str, ...] = (
    "base_excess",
    "bicarbonate",
    "ph",
    "paco2",
    "sao2",
    "ast",
    "bun",
    "alkaline_phosphatase",
    "calcium",
    "chloride",
    "creatinine",
    "bilirubin_direct",
    "glucose",
    "lactate",
    "magnesium",
    "phosphate",
    "potassium",
    "bilirubin_total",
    "troponin_i",
    "hematocrit",
    "hemoglobin",
    "ptt",
    "wbc",
    "fibrinogen",
    "platelets",
)
NUMERIC_CODES: tuple[str, ...] = VITAL_CODES + LAB_CODES
# Clinical context, not measurements: ``value_code`` is "<system>|<code>" of the FHIR
# Condition, Flag, Goal or medication; ``kind`` is condition/flag/medication. Mapping them
# is the edge's job; what the scores make of them (NEWS2 SpO2 scale 2) is inference's.
CONTEXT_CODES: tuple[str, ...] = ("condition", "flag", "goal", "antibiotic", "vasopressor")
# Patient context, as a hospital sends it: who the patient is and where the stay began.
# ``birth_year`` (kind demographic, ``value`` = the year: the edge never passes the full
# birth date) and ``sex`` (kind demographic, ``value_code`` = FHIR administrative gender)
# come from Patient (HL7 v2 PID-7, PID-8); ``admission`` (kind encounter, the hospital
# admission: Encounter.period.start, PV1-44) and ``icu_admission`` (kind encounter, an
# ICU location's period.start, or the ADT event that moved the patient there, PV1-3)
# from Encounter. The model's features read them (inference.features).
STAY_CODES: tuple[str, ...] = ("birth_year", "sex", "admission", "icu_admission")
# The time of a demographic fact whose Patient carries no meta.lastUpdated: a person's
# birth year and sex hold for the whole stay, whenever the Patient arrives.
DEMOGRAPHIC_EPOCH = datetime(1900, 1, 1, tzinfo=UTC)


def _utc(t: datetime) -> datetime:
    if t.tzinfo is None:
        raise ValueError(f"event time {t.isoformat()} has no time zone; FHIR requires one")
    return t.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class ClinicalEvent:
    """One measured or recorded fact about one (pseudonymised) patient.

    ``value`` is in the canonical unit ``unit`` (see fhir/data/codes.yaml) for numeric
    codes; ``value_code`` carries categorical values (ACVPU letter, device code).
    ``source`` names the resource it came from (``Observation/<id>``) so amendments and
    entered-in-error corrections can find what they replace.
    """

    patient: str
    time: datetime
    code: str
    kind: EventKind
    value: float | None = None
    unit: str = ""
    loinc: str | None = None
    value_code: str | None = None
    status: EventStatus = "final"
    source: str = ""
    text: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "time", _utc(self.time))

    @property
    def event_id(self) -> str:
        """A stable id: the same fact delivered twice has the same id (idempotency key)."""
        raw = f"{self.patient}|{self.source}|{self.code}|{self.time.isoformat()}"
        return hashlib.blake2b(raw.encode(), digest_size=12).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the conformance line of ``wardwatch convert``)."""
        d: dict[str, Any] = {
            "patient": self.patient,
            "time": self.time.isoformat().replace("+00:00", "Z"),
            "code": self.code,
            "kind": self.kind,
            "loinc": self.loinc,
            "value": self.value,
            "unit": self.unit,
            "status": self.status,
            "source": self.source,
        }
        if self.value_code is not None:
            d["value_code"] = self.value_code
        if self.text is not None:
            d["text"] = self.text
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClinicalEvent:
        """Inverse of :meth:`to_dict`. Raises KeyError/ValueError on a malformed dict."""
        return cls(
            patient=d["patient"],
            time=datetime.fromisoformat(d["time"]),
            code=d["code"],
            kind=d["kind"],
            value=d.get("value"),
            unit=d.get("unit", ""),
            loinc=d.get("loinc"),
            value_code=d.get("value_code"),
            status=d.get("status", "final"),
            source=d.get("source", ""),
            text=d.get("text"),
        )


@dataclass(frozen=True, slots=True)
class Reading:
    """The latest value of one code at a scoring time: what the early-warning scores read."""

    time: datetime
    value: float | None = None
    value_code: str | None = None
