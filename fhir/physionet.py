"""PhysioNet/CinC 2019 challenge ``.psv`` files: rows -> canonical events or FHIR Bundles.

Pure: functions take text and rows, never paths. The column -> canonical code map is the
packaged ``fhir/data/physionet.yaml`` (loaded and validated once, like codes.yaml).

The key invariant (tested on real files)::

    parse_resource(orjson.dumps(row_bundle(p, t0, h, row))).events  ==  row_events(p, t0, h, row)

(same code, value, unit, time, patient, source, kind, loinc, status). Values outside the
possible range of codes.yaml (the challenge data holds e.g. FiO2 = -50 or 2.0) are dropped by
both functions: they are what :func:`fhir.parse.parse_resource` would reject as implausible.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from fhir.codes import LOINC_SYSTEM, UCUM_SYSTEM, CodeTable, load_code_table
from fhir.errors import MalformedPsv
from fhir.events import ClinicalEvent

PHYSIONET_FILE = Path(__file__).resolve().parent / "data" / "physionet.yaml"

# The 41 columns of the challenge files, in file order.
COLUMNS: tuple[str, ...] = (
    "HR", "O2Sat", "Temp", "SBP", "MAP", "DBP", "Resp", "EtCO2",
    "BaseExcess", "HCO3", "FiO2", "pH", "PaCO2", "SaO2", "AST", "BUN", "Alkalinephos",
    "Calcium", "Chloride", "Creatinine", "Bilirubin_direct", "Glucose", "Lactate",
    "Magnesium", "Phosphate", "Potassium", "Bilirubin_total", "TroponinI", "Hct", "Hgb",
    "PTT", "WBC", "Fibrinogen", "Platelets",
    "Age", "Gender", "Unit1", "Unit2", "HospAdmTime", "ICULOS", "SepsisLabel",
)  # fmt: skip
DEMOGRAPHIC_COLUMNS: tuple[str, ...] = COLUMNS[34:]

OBS_CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/observation-category"
_CATEGORY_DISPLAY = {"vital-signs": "Vital Signs", "laboratory": "Laboratory"}
# Namespace for the deterministic urn:uuid fullUrls of row_bundle.
_NS = uuid.UUID("5b0c7d1e-4f0e-4a57-9c1d-7a3f5e2b9d10")

PsvRow = dict[str, float | None]


@lru_cache(maxsize=1)
def column_map() -> Mapping[str, str]:
    """PhysioNet column -> canonical code, from the packaged physionet.yaml (cached).

    Validated against :data:`COLUMNS` and the code table; raises ValueError (start-up
    configuration error, not retryable) naming the file and entry.
    """
    path = PHYSIONET_FILE
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot load: {exc}") from exc
    cols = doc.get("columns") if isinstance(doc, dict) else None
    if not isinstance(cols, dict):
        raise ValueError(f"{path}: columns: expected a mapping column -> canonical code")
    table = load_code_table()
    out: dict[str, str] = {}
    for col, code in cols.items():
        if col not in COLUMNS or col in DEMOGRAPHIC_COLUMNS:
            raise ValueError(f"{path}: columns.{col}: not a measurement column of the challenge")
        if not isinstance(code, str) or code not in table.specs:
            raise ValueError(f"{path}: columns.{col}: {code!r} is not a canonical code")
        if code in out.values():
            raise ValueError(f"{path}: columns.{col}: {code} is mapped twice")
        out[col] = code
    missing = [c for c in COLUMNS[:34] if c not in out]
    if missing:
        raise ValueError(f"{path}: columns: measurement columns missing: {missing}")
    return out


def read_psv(text: str) -> list[PsvRow]:
    """Parse the text of one challenge ``.psv`` file into rows (column -> float, NaN -> None).

    The header must be the challenge's 41 columns in order. Raises MalformedPsv (permanent,
    not retryable) on a wrong header, a row with the wrong number of fields or a field that
    is not a number.
    """
    lines = text.splitlines()
    if not lines:
        raise MalformedPsv("empty psv text")
    header = tuple(h.strip() for h in lines[0].split("|"))
    if header != COLUMNS:
        raise MalformedPsv(f"psv header is not the PhysioNet 2019 header: {lines[0][:120]!r}")
    rows: list[PsvRow] = []
    n = len(COLUMNS)
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) != n:
            raise MalformedPsv(f"line {lineno}: {len(fields)} fields, expected {n}")
        row: PsvRow = {}
        for col, f in zip(COLUMNS, fields, strict=True):
            try:
                x = float(f)
            except ValueError:
                raise MalformedPsv(f"line {lineno}: {col} = {f!r} is not a number") from None
            row[col] = None if math.isnan(x) else x
        rows.append(row)
    return rows


def _measured(row: Mapping[str, float | None], table: CodeTable) -> Iterable[tuple[str, float]]:
    """(canonical code, value) for every measured, finite, plausible mapped value."""
    for col, code in column_map().items():
        v = row.get(col)
        if v is None or not math.isfinite(v):
            continue
        if table.is_plausible(code, v):
            yield code, float(v)


def observation_id(patient: str, hour: int, code: str) -> str:
    """The deterministic Observation id for one value: ``<patient>-<hour>-<code>``.

    Underscores of the canonical code become hyphens (FHIR ids allow ``[A-Za-z0-9.-]``).
    """
    return f"{patient}-{hour}-{code.replace('_', '-')}"


def _check_start(stay_start: datetime) -> None:
    if stay_start.tzinfo is None:
        raise ValueError("stay_start must carry a time zone")


def row_events(
    patient: str,
    stay_start: datetime,
    hour: int,
    row: Mapping[str, float | None],
    table: CodeTable | None = None,
) -> list[ClinicalEvent]:
    """Canonical events for one psv row: one per measured value of a mapped column.

    ``time`` = ``stay_start`` + ``hour`` hours; ``source`` = ``Observation/<patient>-<hour>-
    <code>`` (see :func:`observation_id`); ``kind`` from the code table; status final.
    Implausible values are dropped (see the module docstring). Raises ValueError if
    ``stay_start`` has no time zone (a programming error).
    """
    _check_start(stay_start)
    t = table or load_code_table()
    time = stay_start + timedelta(hours=hour)
    out: list[ClinicalEvent] = []
    for code, value in _measured(row, t):
        spec = t.specs[code]
        out.append(
            ClinicalEvent(
                patient=patient,
                time=time,
                code=code,
                kind=spec.kind,
                value=value,
                unit=spec.unit,
                loinc=spec.primary_loinc,
                status="final",
                source=f"Observation/{observation_id(patient, hour, code)}",
            )
        )
    return out


def _observation(
    patient: str, hour: int, code: str, value: float, when: str, table: CodeTable
) -> dict[str, Any]:
    spec = table.specs[code]
    oid = observation_id(patient, hour, code)
    loinc = spec.primary_loinc
    coding = [{"system": LOINC_SYSTEM, "code": loinc, "display": spec.display}] if loinc else []
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": OBS_CATEGORY_SYSTEM,
                        "code": spec.category,
                        "display": _CATEGORY_DISPLAY[spec.category],
                    }
                ]
            }
        ],
        "code": {"coding": coding, "text": spec.display},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": when,
        "valueQuantity": {
            "value": value,
            "unit": spec.unit,
            "system": UCUM_SYSTEM,
            "code": spec.unit,
        },
    }


def _finite(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) else None


def context_entries(
    patient_pseudonym: str, stay_start: datetime, rows: list[PsvRow]
) -> list[dict[str, Any]]:
    """Transaction entries for a stay's patient context, as a hospital sends it: a Patient
    (``gender`` from Gender, 1 = male and 0 = female; ``birthDate`` the year only, the
    stay start's year minus Age, so an age computed from it is Age's whole years) and an
    Encounter (``period.start`` = the hospital admission, HospAdmTime hours from the ICU
    admission; one ICU ``location``, MICU for Unit1, SICU for Unit2, else ICU, whose
    ``period.start`` is the ICU admission that the first row's ICULOS implies: row 0 is
    ICULOS hours after it). Values the file lacks (NaN) are left out; an empty list when
    it has no rows. Raises ValueError if ``stay_start`` has no time zone."""
    _check_start(stay_start)
    if not rows:
        return []
    first = rows[0]
    patient: dict[str, Any] = {"resourceType": "Patient", "id": patient_pseudonym}
    gender, age = _finite(first.get("Gender")), _finite(first.get("Age"))
    if gender in (0.0, 1.0):
        patient["gender"] = "male" if gender == 1.0 else "female"
    if age is not None and 0 <= age < 150:
        patient["birthDate"] = f"{stay_start.year - int(age):04d}"
    iculos, hosp = _finite(first.get("ICULOS")), _finite(first.get("HospAdmTime"))
    icu_start = stay_start - timedelta(hours=iculos if iculos is not None else 0.0)
    unit = "MICU" if first.get("Unit1") == 1.0 else "SICU" if first.get("Unit2") == 1.0 else "ICU"
    enc_id = f"{patient_pseudonym}-stay"
    encounter: dict[str, Any] = {
        "resourceType": "Encounter",
        "id": enc_id,
        "status": "in-progress",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
        "subject": {"reference": f"Patient/{patient_pseudonym}"},
    }
    if hosp is not None:
        encounter["period"] = {"start": (icu_start + timedelta(hours=hosp)).isoformat()}
    if iculos is not None:
        encounter["location"] = [
            {"location": {"display": unit}, "period": {"start": icu_start.isoformat()}}
        ]
    return [
        {
            "fullUrl": f"urn:uuid:{uuid.uuid5(_NS, 'Patient/' + patient_pseudonym)}",
            "resource": patient,
            "request": {"method": "PUT", "url": f"Patient/{patient_pseudonym}"},
        },
        {
            "fullUrl": f"urn:uuid:{uuid.uuid5(_NS, 'Encounter/' + enc_id)}",
            "resource": encounter,
            "request": {"method": "PUT", "url": f"Encounter/{enc_id}"},
        },
    ]


def row_bundle(
    patient_pseudonym: str,
    stay_start: datetime,
    hour: int,
    row: Mapping[str, float | None],
    table: CodeTable | None = None,
    context: list[dict[str, Any]] | None = None,
) -> dict[str, Any] | None:
    """A FHIR R4 ``transaction`` Bundle with one Observation per measured value of the row,
    after the ``context`` entries (:func:`context_entries`) when given.

    LOINC-coded (primary LOINC of codes.yaml), UCUM units, category vital-signs or
    laboratory, subject ``Patient/<patient_pseudonym>``, effectiveDateTime = ``stay_start`` +
    ``hour`` h, status final, deterministic ids (entries PUT ``Observation/<id>``, fullUrl a
    uuid5 of the id). Returns None when the row has nothing measured (nothing to send).
    Raises ValueError if ``stay_start`` has no time zone (a programming error).
    """
    _check_start(stay_start)
    t = table or load_code_table()
    when = (stay_start + timedelta(hours=hour)).isoformat()
    entries: list[dict[str, Any]] = []
    for code, value in _measured(row, t):
        obs = _observation(patient_pseudonym, hour, code, value, when, t)
        entries.append(
            {
                "fullUrl": f"urn:uuid:{uuid.uuid5(_NS, obs['id'])}",
                "resource": obs,
                "request": {"method": "PUT", "url": f"Observation/{obs['id']}"},
            }
        )
    if not entries:
        return None
    entries = [*(context or []), *entries]
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid5(_NS, f"{patient_pseudonym}-{hour}")),
        "type": "transaction",
        "entry": entries,
    }


__all__ = [
    "COLUMNS",
    "DEMOGRAPHIC_COLUMNS",
    "PsvRow",
    "column_map",
    "context_entries",
    "observation_id",
    "read_psv",
    "row_bundle",
    "row_events",
]
