"""A site's outcome labels, read for ``wardwatch validate-site``.

Labels (:func:`read_labels`): a CSV or NDJSON file of ``patient`` (the pseudonym, as the
scores table stores it) and ``onset`` (ISO 8601 time of sepsis onset; empty or absent =
never septic), or FHIR Condition resources (a ``.json`` resource or Bundle, an NDJSON
file, or a folder of them) whose ``subject`` is ``Patient/<pseudonym>``. A Condition
coded with one of :data:`SEPSIS_CODES_FILE`'s codes is a sepsis label with onset
``onsetDateTime``, else ``recordedDate`` (the earliest, when a patient has several); a
patient with Conditions but none of them sepsis was never septic; a patient with no
Condition at all has no outcome given. Refuted and entered-in-error Conditions are
skipped. Times without a zone are read as UTC.

A site whose labels name patients by its own identifiers (an MRN, a FHIR Patient id)
maps them with :func:`pseudonymised` and the edge's pseudonymiser, so the labels and the
scores meet on the pseudonym; error messages name the file and line, never a patient.

Raises: :class:`LabelError` (a ``ValueError``) for a label file that cannot be read as
labels, naming the file and line. Pure: reads the label file, nothing else.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain
from pathlib import Path
from typing import Any, Final

import yaml

SEPSIS_CODES_FILE: Final = Path(__file__).resolve().parent / "data" / "sepsis_codes.yaml"
_SKIPPED_VERIFICATION = frozenset({"refuted", "entered-in-error"})


class LabelError(ValueError):
    """A label file, or one of its lines, cannot be read as outcome labels (permanent)."""


@dataclass(frozen=True, slots=True)
class SiteLabels:
    """Each labelled patient's sepsis onset (None = never septic), and where from."""

    onsets: dict[str, datetime | None]
    source: str  # "csv", "ndjson" or "fhir"
    records: int  # label rows or Condition resources read


def load_sepsis_codes(path: Path = SEPSIS_CODES_FILE) -> frozenset[str]:
    """The ``system|code`` strings of ``path``'s ``sepsis`` list, systems lower-cased.
    Raises ``OSError`` when it cannot be read, ``ValueError`` for an entry that is not
    ``system|code``."""
    data = yaml.safe_load(path.read_text()) or {}
    out = set()
    for entry in data.get("sepsis") or []:
        system, sep, code = str(entry).partition("|")
        if not sep or not system.strip() or not code.strip():
            raise ValueError(f"{path}: {entry!r} is not 'system|code'")
        out.add(f"{system.strip().lower()}|{code.strip()}")
    return frozenset(out)


def parse_onset(value: Any, where: str) -> datetime | None:
    """An onset value: None or "" -> None; an ISO 8601 date or date-time -> an aware UTC
    datetime (no zone = UTC). Raises :class:`LabelError` naming ``where`` otherwise."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise LabelError(f"{where}: onset {value!r} is not an ISO 8601 time")
    try:
        t = datetime.fromisoformat(value.strip())
    except ValueError as exc:
        raise LabelError(f"{where}: onset {value!r} is not an ISO 8601 time") from exc
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


class _Rows:
    """Label rows gathered one by one: a patient given twice must agree with itself."""

    def __init__(self) -> None:
        self.onsets: dict[str, datetime | None] = {}
        self.first_at: dict[str, str] = {}
        self.records = 0

    def add(self, patient: Any, onset: Any, where: str) -> None:
        if not isinstance(patient, str) or not patient.strip():
            raise LabelError(f"{where}: no patient pseudonym")
        p = patient.strip()
        t = parse_onset(onset, where)
        self.records += 1
        if p in self.onsets and self.onsets[p] != t:
            raise LabelError(
                f"{where}: this patient has another onset on {self.first_at[p]}; give one "
                "per patient"
            )
        self.onsets.setdefault(p, t)
        self.first_at.setdefault(p, where)


def _csv_labels(path: Path) -> SiteLabels:
    rows = _Rows()
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        names = [(n or "").strip().lower() for n in (reader.fieldnames or [])]
        if "patient" not in names or "onset" not in names:
            raise LabelError(
                f"{path}:1: the header must name the columns 'patient' and 'onset' (found "
                f"{', '.join(repr(n) for n in names) or 'none'})"
            )
        reader.fieldnames = names
        try:
            for rec in reader:
                if not any((v or "").strip() for v in rec.values() if isinstance(v, str)):
                    continue  # a blank line
                rows.add(rec.get("patient"), rec.get("onset"), f"{path}:{reader.line_num}")
        except csv.Error as exc:
            raise LabelError(f"{path}:{reader.line_num}: {exc}") from exc
    return SiteLabels(rows.onsets, "csv", rows.records)


def _json_lines(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, object) per non-blank line. Raises LabelError for a line that is not JSON."""
    with path.open(encoding="utf-8-sig") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as exc:
                raise LabelError(f"{where}: not JSON ({exc.msg})") from exc


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


class _Conditions:
    """FHIR Condition resources gathered: the earliest sepsis onset per patient."""

    def __init__(self, codes: frozenset[str]) -> None:
        self.codes = codes
        self.onsets: dict[str, datetime | None] = {}
        self.records = 0

    def add(self, resource: Any, where: str) -> None:
        if not isinstance(resource, dict) or "resourceType" not in resource:
            raise LabelError(f"{where}: not a FHIR resource")
        kind = resource["resourceType"]
        if kind == "Bundle":
            for i, entry in enumerate(_list(resource.get("entry"))):
                if isinstance(entry, dict) and isinstance(entry.get("resource"), dict):
                    self.add(entry["resource"], f"{where} entry {i}")
            return
        if kind != "Condition":
            return  # other resources carry no outcome
        codings = _obj(resource.get("verificationStatus")).get("coding")
        if any(_obj(c).get("code") in _SKIPPED_VERIFICATION for c in _list(codings)):
            return
        ref = _obj(resource.get("subject")).get("reference")
        if not isinstance(ref, str) or not ref.startswith("Patient/") or len(ref) <= 8:
            raise LabelError(f"{where}: Condition without a subject 'Patient/<pseudonym>'")
        patient = ref.removeprefix("Patient/")
        self.records += 1
        self.onsets.setdefault(patient, None)
        if not self._is_sepsis(resource):
            return
        raw = resource.get("onsetDateTime") or resource.get("recordedDate")
        onset = parse_onset(raw, where)
        if onset is None:
            raise LabelError(f"{where}: sepsis Condition without onsetDateTime or recordedDate")
        known = self.onsets[patient]
        if known is None or onset < known:
            self.onsets[patient] = onset

    def _is_sepsis(self, resource: dict[str, Any]) -> bool:
        for c in _list(_obj(resource.get("code")).get("coding")):
            if not isinstance(c, dict):
                continue
            key = f"{str(c.get('system') or '').strip().lower()}|{str(c.get('code') or '').strip()}"
            if key in self.codes:
                return True
        return False


def _fhir_file(conds: _Conditions, path: Path) -> None:
    if path.suffix.lower() == ".json":
        try:
            resource = json.loads(path.read_text(encoding="utf-8-sig"))
        except json.JSONDecodeError as exc:
            raise LabelError(f"{path}:{exc.lineno}: not JSON ({exc.msg})") from exc
        conds.add(resource, str(path))
    else:
        for where, obj in _json_lines(path):
            conds.add(obj, where)


def read_labels(path: Path, codes: frozenset[str] | None = None) -> SiteLabels:
    """The outcome labels in ``path`` (module docstring): a ``.csv`` of patient,onset;
    an ``.ndjson``/``.jsonl`` of ``{"patient", "onset"}`` objects or of FHIR resources
    (decided by its first line); a ``.json`` FHIR resource or Bundle; or a folder of FHIR
    ``.json``/``.ndjson``/``.jsonl`` files. ``codes`` are the sepsis codes (default
    :func:`load_sepsis_codes`).

    Raises ``FileNotFoundError`` when ``path`` does not exist; :class:`LabelError` for a
    file of another kind or a line that cannot be read (which file and line, and why); a
    patient given twice with different onsets is such a line.
    """
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such labels file or folder")
    sepsis = load_sepsis_codes() if codes is None else codes
    if path.is_dir():
        conds = _Conditions(sepsis)
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and p.suffix.lower() in (".json", ".ndjson", ".jsonl")
        )
        if not files:
            raise LabelError(f"{path}: no .json, .ndjson or .jsonl files of FHIR Conditions")
        for p in files:
            _fhir_file(conds, p)
        return SiteLabels(conds.onsets, "fhir", conds.records)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _csv_labels(path)
    if suffix == ".json":
        conds = _Conditions(sepsis)
        _fhir_file(conds, path)
        return SiteLabels(conds.onsets, "fhir", conds.records)
    if suffix in (".ndjson", ".jsonl"):
        lines = _json_lines(path)
        first = next(lines, None)
        if first is None:
            return SiteLabels({}, "ndjson", 0)
        if isinstance(first[1], dict) and "resourceType" in first[1]:
            conds = _Conditions(sepsis)
            for where, obj in chain([first], lines):
                conds.add(obj, where)
            return SiteLabels(conds.onsets, "fhir", conds.records)
        rows = _Rows()
        for where, obj in chain([first], lines):
            if not isinstance(obj, dict):
                raise LabelError(f"{where}: not an object with 'patient' and 'onset'")
            if "resourceType" in obj:
                raise LabelError(f"{where}: a FHIR resource among label rows")
            rows.add(obj.get("patient"), obj.get("onset"), where)
        return SiteLabels(rows.onsets, "ndjson", rows.records)
    raise LabelError(f"{path}: labels must be .csv, .ndjson, .jsonl, .json or a folder")


def pseudonymised(labels: SiteLabels, pseudonym: Callable[[str], str]) -> SiteLabels:
    """``labels`` with each patient named by ``pseudonym(patient)`` instead (the labels
    gave the site's own identifiers). Raises :class:`LabelError` when two identifiers
    map to one pseudonym with different onsets (they would be the same patient), and
    whatever ``pseudonym`` raises (``ValueError`` for an empty identifier)."""
    out: dict[str, datetime | None] = {}
    for raw, onset in labels.onsets.items():
        p = pseudonym(raw)
        if p in out and out[p] != onset:
            raise LabelError("two identifiers in the labels map to one pseudonym with two onsets")
        out[p] = onset
    return SiteLabels(out, labels.source, labels.records)
