"""PhysioNet 2019 stays as canonical events and hourly matrices (training and tests).

A stay goes through the same path as the live feed: psv row -> :class:`ClinicalEvent`
(``fhir.physionet.row_events``) -> hourly matrix built *from the events*, so training sees
the canonical codes, units and plausibility filtering that the stream sees.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from fhir import physionet
from fhir.codes import load_code_table
from fhir.events import ClinicalEvent
from inference.features import StayContext
from inference.state import PatientState

# psv column -> canonical code (the 34 measured columns); also the model's column order.
# Must equal fhir.physionet.column_map() (checked in the tests).
PSV_CODES: Final[dict[str, str]] = {
    "HR": "heart_rate",
    "O2Sat": "spo2",
    "Temp": "temperature",
    "SBP": "systolic_bp",
    "MAP": "mean_bp",
    "DBP": "diastolic_bp",
    "Resp": "respiratory_rate",
    "EtCO2": "etco2",
    "BaseExcess": "base_excess",
    "HCO3": "bicarbonate",
    "FiO2": "fio2",
    "pH": "ph",
    "PaCO2": "paco2",
    "SaO2": "sao2",
    "AST": "ast",
    "BUN": "bun",
    "Alkalinephos": "alkaline_phosphatase",
    "Calcium": "calcium",
    "Chloride": "chloride",
    "Creatinine": "creatinine",
    "Bilirubin_direct": "bilirubin_direct",
    "Glucose": "glucose",
    "Lactate": "lactate",
    "Magnesium": "magnesium",
    "Phosphate": "phosphate",
    "Potassium": "potassium",
    "Bilirubin_total": "bilirubin_total",
    "TroponinI": "troponin_i",
    "Hct": "hematocrit",
    "Hgb": "hemoglobin",
    "PTT": "ptt",
    "WBC": "wbc",
    "Fibrinogen": "fibrinogen",
    "Platelets": "platelets",
}
DEFAULT_STAY_START: Final = datetime(2026, 1, 1, tzinfo=UTC)
SHARED_DATA: Final = Path(__file__).resolve().parents[2] / "shared" / "data"
PHYSIONET_DIR: Final = SHARED_DATA / "physionet2019" / "training_setB"


def stay_events(
    path: Path, patient: str | None = None, stay_start: datetime = DEFAULT_STAY_START
) -> tuple[list[list[ClinicalEvent]], list[int]]:
    """Per-row event lists (``fhir.physionet.row_events``: the stream's own mapping, units
    and plausibility filter) and the SepsisLabel of each row of a stay file."""
    patient = patient or path.stem
    rows = physionet.read_psv(path.read_text())
    table = load_code_table()
    events = [physionet.row_events(patient, stay_start, h, r, table) for h, r in enumerate(rows)]
    labels = [int(r.get("SepsisLabel") or 0) for r in rows]
    return events, labels


def hourly_matrix(
    events: Iterable[ClinicalEvent],
    stay_start: datetime,
    n_hours: int,
    codes: Sequence[str],
) -> npt.NDArray[np.float64]:
    """``float64[n_hours, len(codes)]`` from events at whole hours after stay_start."""
    col = {c: i for i, c in enumerate(codes)}
    m = np.full((n_hours, len(codes)), np.nan)
    start = stay_start.timestamp()
    for ev in sorted(events, key=lambda e: e.time):
        k = col.get(ev.code)
        if k is None or ev.value is None or ev.status == "entered-in-error":
            continue
        h = (ev.time.timestamp() - start) / 3600.0
        if not h.is_integer() or not 0 <= h < n_hours:
            raise ValueError(f"event at {ev.time} is not on a whole stay hour")
        m[int(h), k] = ev.value
    return m


def stay_matrix(
    path: Path, codes: Sequence[str], stay_start: datetime = DEFAULT_STAY_START
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int8]]:
    """(hourly matrix in ``codes`` order, SepsisLabel per row) of a stay file."""
    events, labels = stay_events(path, stay_start=stay_start)
    flat = [e for row in events for e in row]
    return hourly_matrix(flat, stay_start, len(labels), codes), np.asarray(labels, np.int8)


def stay_context(
    rows: list[physionet.PsvRow], stay_start: datetime = DEFAULT_STAY_START
) -> StayContext:
    """The patient context of a stay as the stream would hold it: the Patient and Encounter
    that replay sends (``fhir.physionet.context_entries``), parsed by the edge's parser
    and applied to a patient state, read back as the features read it. Raises what
    ``fhir.parse.parse_resource`` raises for a malformed resource (a bug here)."""
    import orjson

    from fhir.parse import parse_resource

    entries = physionet.context_entries("pt-stay", stay_start, rows)
    if not entries:
        return StayContext()
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    state = PatientState()
    state.apply(parse_resource(orjson.dumps(bundle)).events)
    return StayContext.of_state(state)


def stay_data(
    path: Path, codes: Sequence[str], stay_start: datetime = DEFAULT_STAY_START
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int8], StayContext]:
    """:func:`stay_matrix` and :func:`stay_context` of a stay file, read once."""
    rows = physionet.read_psv(path.read_text())
    table = load_code_table()
    events = [
        e
        for h, r in enumerate(rows)
        for e in physionet.row_events(path.stem, stay_start, h, r, table)
    ]
    labels = np.asarray([int(r.get("SepsisLabel") or 0) for r in rows], np.int8)
    matrix = hourly_matrix(events, stay_start, len(rows), codes)
    return matrix, labels, stay_context(rows, stay_start)


def split_of(stem: str, seed: int) -> str:
    """Fixed patient-level split from a hash of the file stem: 70% train, 15% test,
    15% validation (held out until the final report)."""
    h = hashlib.sha256(f"{seed}:{stem}".encode()).digest()
    u = int.from_bytes(h[:8], "big") / 2**64
    return "train" if u < 0.70 else ("test" if u < 0.85 else "validation")


def stay_files(data_dir: Path, max_patients: int | None = None) -> list[Path]:
    files = sorted(data_dir.glob("p*.psv"))
    return files[:max_patients] if max_patients else files
