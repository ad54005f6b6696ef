"""FHIR R4 JSON -> canonical clinical events (:class:`fhir.events.ClinicalEvent`).

Entry point: :func:`parse_resource`. It accepts one resource or a Bundle (batch, transaction,
collection, searchset, history, message, document, their responses and R4B
subscription-notification; nested Bundles up to :data:`MAX_DEPTH`), validates what it maps with
the same decisions as fhir.resources' R4B models (R4B reads R4; see "Validation" below), and
maps Observations -- vital signs including the
blood-pressure panel's components, SpO2, temperature, GCS, ACVPU, FiO2, O2 flow, and labs by
LOINC -- to events in the canonical units of ``fhir/data/codes.yaml``.

Result contract (:class:`ParseResult`):

* ``events``: the canonical events, in input order.
* ``ignored``: one human-readable line per *Observation* that was understood but gives no
  event (a code WardWatch does not use, status cancelled/registered/unknown, no value), and
  per context resource that gives none (below). Other resource types (Patient, Claim, ...)
  are skipped silently: counted in ``resources`` only.

Context resources (:data:`CONTEXT_TYPES`) give context events, ``value_code`` =
``"<system>|<code>"`` of the first coding: Condition -> kind/code ``condition`` (time
recordedDate, else onsetDateTime, else meta.lastUpdated; entered-in-error when
verificationStatus is entered-in-error or refuted); Flag -> ``flag``/``flag``; Goal ->
``flag``/``goal`` (description, else target measure); MedicationAdministration of a drug
listed under ``context_medications`` in codes.yaml -> ``medication``/``antibiotic`` or
``vasopressor``; Encounter -> ``encounter``/``admission``, ``transfer``, ``discharge`` (from
the HL7 v2 trigger tag the gateway sets, else period.start / period.end when finished;
value_code = class); DocumentReference -> ``note``/``note`` with the text of a text/*
attachment in ``text`` (absent after the edge's strip_phi, which drops attachment data; never
log it). Times must have a time of day and zone (date-only candidates are skipped). A context
resource that fails R4B validation, has no coded code or a non-Patient subject is noted in
``ignored``; no Patient subject at all or no usable time is a rejection.
* ``rejected``: for a Bundle, one :class:`~fhir.errors.PermanentInputError` per *entry* that
  is bad (invalid Observation, implausible value, unknown unit, missing subject, unknown
  resourceType, ...); the good entries still give their events, so the caller can dead-letter
  just the bad entries (each error names ``resource_type``/``resource_id``).

What raises (all :class:`~fhir.errors.PermanentInputError`: dead-letter, never retry; there
are no transient errors here): bytes that are not a JSON object (MalformedJson); no
``resourceType`` or an unknown one at the top (InvalidResource/UnsupportedResource); a Bundle
whose own structure is invalid (InvalidResource); a *single* (non-Bundle) resource with any
entry-level problem above; with ``strict=True`` also the first rejected Bundle entry.
Nothing else escapes: an unexpected exception inside is turned into InvalidResource.

Validation (``validation=``): Observations and Bundle shells (a Bundle without its entries'
resources, which are validated one by one) go first through the lean checks of
:mod:`fhir.lean` (``"lean"``, the default): hand-written checks of the shapes they fully
understand, a few microseconds against about 300 us for the pydantic models. When those checks
are not sure (extensions, ``contained``, primitive extensions ``_x``, JSON null, element types
they do not cover, ...) the full fhir.resources validation runs, so a decision is never looser
than the full path's; ``tests/unit/fhir/test_fhir_lean.py`` checks that both give the same
results on the conformance data and on mutated Observations. A lean rejection has the same
class as the full path's (InvalidTime when the first problem is in effective[x]/issued, else
InvalidResource) and names the element: ``not a valid R4B Observation: valueQuantity.value:
'abc' is not a decimal``. ``validation="full"`` always runs the pydantic models (the
differential test and the benchmarks use it). Context resources are always validated in full
(they are rare). ``python -m streams.bench_fhir`` times the two.

Checks added on top of fhir.resources (which lets these through): a missing ``resourceType``;
a JSON string where a number is required (``"value": "72"`` in valueQuantity); an unknown
resourceType in a Bundle entry (fhir.resources raises a bare KeyError).

The patient is the subject reference's id, taken as the pseudonym as-is (the edge has
pseudonymised it, see :mod:`fhir.pseudonym`): ``Patient/<id>``, an absolute
``.../Patient/<id>`` URL (``/_history/n`` dropped), or a ``urn:uuid:`` resolved against the
Bundle's Patient entries.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, cast

import orjson
import yaml

from fhir.codes import CODES_FILE, CodeSpec, CodeTable, load_code_table
from fhir.errors import (
    InvalidResource,
    InvalidTime,
    MalformedJson,
    MissingSubject,
    PermanentInputError,
    UnitError,
    UnknownCode,
    UnsupportedResource,
)
from fhir.events import DEMOGRAPHIC_EPOCH, ClinicalEvent, EventStatus
from fhir.lean import Problems, check_bundle_shell, check_observation

MAX_DEPTH = 3  # Bundles nested deeper than this are rejected
_STATUS: dict[str, EventStatus] = {
    "final": "final",
    "amended": "amended",
    "corrected": "corrected",
    "preliminary": "preliminary",
    "entered-in-error": "entered-in-error",
}
_SKIP_STATUS = frozenset({"cancelled", "registered", "unknown"})
_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_PATIENT_REF = re.compile(r"(?:^|/)Patient/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]*)?$")
# FHIR R4 (4.0.1) resource types that R4B removed: valid R4 input, never mapped; skipped.
R4_ONLY_TYPES = frozenset(
    {
        "EffectEvidenceSynthesis",
        "RiskEvidenceSynthesis",
        "MedicinalProduct",
        "MedicinalProductAuthorization",
        "MedicinalProductContraindication",
        "MedicinalProductIndication",
        "MedicinalProductIngredient",
        "MedicinalProductInteraction",
        "MedicinalProductManufactured",
        "MedicinalProductPackaged",
        "MedicinalProductPharmaceutical",
        "MedicinalProductUndesirableEffect",
        "SubstanceSpecification",
    }
)
BUNDLE_TYPES = frozenset(
    {
        "document",
        "message",
        "transaction",
        "transaction-response",
        "batch",
        "batch-response",
        "history",
        "searchset",
        "collection",
        "subscription-notification",  # R4B
    }
)
_TIME_FIELDS = ("effectiveDateTime", "effectiveInstant", "effectivePeriod", "issued")
_VALUE_KEYS = (
    "valueQuantity",
    "valueCodeableConcept",
    "valueString",
    "valueBoolean",
    "valueInteger",
    "valueRange",
    "valueRatio",
    "valueSampledData",
    "valueTime",
    "valueDateTime",
    "valuePeriod",
)


@dataclass(slots=True)
class ParseResult:
    """What :func:`parse_resource` found: see the module docstring for the contract."""

    events: list[ClinicalEvent] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    rejected: list[PermanentInputError] = field(default_factory=list)
    resources: int = 0  # resources looked at (Bundles not counted)
    observations: int = 0  # of which Observations

    def raise_if_rejected(self) -> None:
        """Raise the first rejected entry's PermanentInputError (not retryable), if any."""
        if self.rejected:
            raise self.rejected[0]

    def merge(self, other: ParseResult) -> None:
        """Append ``other``'s findings to this result; never raises."""
        self.events.extend(other.events)
        self.ignored.extend(other.ignored)
        self.rejected.extend(other.rejected)
        self.resources += other.resources
        self.observations += other.observations


# ------------------------------------------------------------------ fhir.resources access
_MODEL_CACHE: dict[str, Any] = {}


def _model_class(resource_type: str) -> Any:
    """The R4B model class, or raise UnsupportedResource (permanent)."""
    cls = _MODEL_CACHE.get(resource_type)
    if cls is None:
        if not resource_type.isascii() or not resource_type.isalpha():
            raise UnsupportedResource(f"resourceType {resource_type[:60]!r} is not a FHIR type")
        try:
            from fhir.resources.R4B import get_fhir_model_class

            cls = get_fhir_model_class(resource_type)
        except Exception:  # fhir.resources raises ValueError/KeyError/ImportError
            raise UnsupportedResource(
                f"resourceType {resource_type!r} is not a FHIR R4B resource type"
            ) from None
        if resource_type == "Resource" or resource_type == "DomainResource":
            raise UnsupportedResource(f"resourceType {resource_type!r} is abstract")
        _MODEL_CACHE[resource_type] = cls
    return cls


def _summarise(exc: BaseException) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            items = cast(list[dict[str, Any]], errors())
            parts = [
                f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}"
                for e in items[:3]
            ]
            more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
            return ("; ".join(parts) + more)[:400]
        except Exception:  # pragma: no cover - defensive: fall back to the plain message
            return f"{type(exc).__name__}: {str(exc)[:300]}"
    return f"{type(exc).__name__}: {str(exc)[:300]}"


Validation = Literal["lean", "full"]


def _lean_reason(resource_type: str, problems: Problems) -> str:
    parts = [f"{loc}: {msg}" for loc, msg in problems[:3]]
    more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
    return f"not a valid R4B {resource_type}: " + ("; ".join(parts) + more)[:400]


def _validate_observation(obs: Mapping[str, Any], rid: str | None, mode: Validation) -> None:
    """R4B validation of an Observation; raises InvalidTime (the first problem is in
    effective[x]/issued) or InvalidResource, both permanent (not retried).

    ``mode="lean"`` tries :func:`fhir.lean.check_observation` first and runs the full
    pydantic validation only when the lean checks are not sure, or when their problems fall
    in both error classes (then only pydantic's error order can say which comes first).
    """
    if mode == "lean":
        problems = check_observation(obs)
        if problems is not None:
            if not problems:
                return
            timed = {loc.startswith(_TIME_FIELDS) for loc, _ in problems}
            if len(timed) == 1:
                cls = InvalidTime if timed.pop() else InvalidResource
                raise cls(
                    _lean_reason("Observation", problems),
                    resource_type="Observation",
                    resource_id=rid,
                )
    try:
        _validate("Observation", obs, rid)
    except InvalidResource as exc:
        # The same classification for both paths: the reason's first location.
        if exc.reason.split(": ", 2)[1].startswith(_TIME_FIELDS):
            raise InvalidTime(exc.reason, resource_type="Observation", resource_id=rid) from None
        raise


def _validate_bundle_shell(shell_of: Mapping[str, Any], bid: str | None, mode: Validation) -> None:
    """R4B validation of a Bundle's own structure, entries' resources left out (each entry
    is validated on its own); raises InvalidResource (permanent, not retried)."""
    if mode == "lean":
        problems = check_bundle_shell(shell_of)  # skips entry.resource itself
        if problems is not None:
            if problems:
                raise InvalidResource(
                    _lean_reason("Bundle", problems), resource_type="Bundle", resource_id=bid
                )
            return
    entries = cast(list[dict[str, Any]], shell_of.get("entry", []))
    shell = {k: v for k, v in shell_of.items() if k != "entry"}
    shell_entries = [{k: v for k, v in e.items() if k != "resource"} for e in entries]
    if shell_entries:
        shell["entry"] = [e for e in shell_entries if e]
        if not shell["entry"]:
            del shell["entry"]
    _validate("Bundle", shell, bid)


def _validate(resource_type: str, doc: Mapping[str, Any], rid: str | None) -> None:
    cls = _model_class(resource_type)
    try:
        cls.model_validate(doc)
    except Exception as exc:  # pydantic ValidationError, and fhir.resources' own KeyErrors
        raise InvalidResource(
            f"not a valid R4B {resource_type}: {_summarise(exc)}",
            resource_type=resource_type,
            resource_id=rid,
        ) from None


# ------------------------------------------------------------------------- helpers
@dataclass(slots=True)
class _Ctx:
    table: CodeTable
    validate: bool
    validation: Validation
    patients: dict[str, str]  # Bundle fullUrl -> Patient id
    depth: int = 0


def _is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _check_json_types(obs: Mapping[str, Any], where: tuple[str, str | None]) -> None:
    """Reject JSON strings/booleans where FHIR requires numbers (fhir.resources coerces)."""

    def check(holder: object, path: str) -> None:
        if not isinstance(holder, dict):
            return
        q = holder.get("valueQuantity")
        if isinstance(q, dict) and "value" in q and not _is_number(q["value"]):
            raise InvalidResource(
                f"{path}valueQuantity.value must be a JSON number, got {type(q['value']).__name__}"
                f" {str(q['value'])[:40]!r}",
                resource_type=where[0],
                resource_id=where[1],
            )
        if "valueInteger" in holder:
            v = holder["valueInteger"]
            if not isinstance(v, int) or isinstance(v, bool):
                raise InvalidResource(
                    f"{path}valueInteger must be a JSON integer, got {type(v).__name__}",
                    resource_type=where[0],
                    resource_id=where[1],
                )

    check(obs, "")
    comps = obs.get("component")
    if isinstance(comps, list):
        for i, c in enumerate(comps):
            check(c, f"component[{i}].")


def _codings(cc: object) -> list[tuple[str, str]]:
    if not isinstance(cc, dict):
        return []
    out: list[tuple[str, str]] = []
    for c in cc.get("coding") or ():
        if isinstance(c, dict):
            system, code = c.get("system"), c.get("code")
            if isinstance(system, str) and isinstance(code, str):
                out.append((system, code))
    return out


def _resolve_code(
    cc: object, table: CodeTable, laboratory: bool
) -> tuple[str | None, str | None, list[tuple[str, str]]]:
    """(canonical code, matched LOINC or None, all codings) for a CodeableConcept.

    When codings map to different canonical codes, a mapping that does not depend on the
    laboratory category wins (59408-5 "by pulse oximetry" beats 2708-6), else the first.
    """
    codings = _codings(cc)
    best: tuple[str, str, str] | None = None  # canonical, system, code
    for system, code in codings:
        hit = table.lookup(system, code, laboratory=laboratory)
        if hit is None:
            continue
        context_free = (system, code) not in table.by_coding_lab
        if best is None or (context_free and (best[1], best[2]) in table.by_coding_lab):
            best = (hit, system, code)
    if best is None:
        return None, None, codings
    loinc = best[2] if best[1] == "http://loinc.org" else None
    return best[0], loinc, codings


def _describe(codings: list[tuple[str, str]]) -> str:
    if not codings:
        return "no coded code"
    shown = ", ".join(
        (f"LOINC {c}" if s == "http://loinc.org" else f"{s}|{c}") for s, c in codings[:3]
    )
    return shown + (" ..." if len(codings) > 3 else "")


def _is_laboratory(obs: Mapping[str, Any]) -> bool:
    cats = obs.get("category")
    if not isinstance(cats, list):
        return False
    return any(code == "laboratory" for cat in cats for _, code in _codings(cat))


def _subject(obs: Mapping[str, Any], ctx: _Ctx, where: tuple[str, str | None]) -> str:
    subj = obs.get("subject")
    ref = subj.get("reference") if isinstance(subj, dict) else None
    if not isinstance(ref, str) or not ref:
        raise MissingSubject(
            "no subject reference to a Patient (a logical identifier is not enough: the edge "
            "must send Patient/<pseudonym>)",
            resource_type=where[0],
            resource_id=where[1],
        )
    if ref.startswith("urn:uuid:"):
        pid = ctx.patients.get(ref)
        if pid is None:
            raise MissingSubject(
                f"subject {ref[:80]!r} is not a Patient entry of this Bundle",
                resource_type=where[0],
                resource_id=where[1],
            )
        return pid
    m = _PATIENT_REF.search(ref)
    if m is None:
        raise MissingSubject(
            f"subject {ref[:80]!r} is not a Patient reference",
            resource_type=where[0],
            resource_id=where[1],
        )
    return m.group(1)


def parse_fhir_time(value: object, what: str = "time") -> datetime:
    """A FHIR dateTime/instant string -> aware datetime.

    Raises InvalidTime (permanent) for a non-string, a date without a time, or a time without
    a time zone (FHIR requires one whenever hours are given).
    """
    if not isinstance(value, str) or not value:
        raise InvalidTime(f"{what} is not a FHIR dateTime string")
    if "T" not in value:
        raise InvalidTime(f"{what} {value[:40]!r} has no time of day (and so no time zone)")
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidTime(f"{what} {value[:40]!r} is not a valid dateTime") from None
    if t.tzinfo is None or t.utcoffset() is None:
        raise InvalidTime(f"{what} {value[:40]!r} has no time zone")
    return t


def _effective_time(obs: Mapping[str, Any], where: tuple[str, str | None]) -> datetime:
    for key in ("effectiveDateTime", "effectiveInstant"):
        if key in obs:
            return _timed(obs[key], key, where)
    period = obs.get("effectivePeriod")
    if isinstance(period, dict) and "start" in period:
        return _timed(period["start"], "effectivePeriod.start", where)
    if "issued" in obs:
        return _timed(obs["issued"], "issued", where)
    raise InvalidTime(
        "no effectiveDateTime, effectiveInstant, effectivePeriod.start or issued",
        resource_type=where[0],
        resource_id=where[1],
    )


def _timed(value: object, what: str, where: tuple[str, str | None]) -> datetime:
    try:
        return parse_fhir_time(value, what)
    except InvalidTime as exc:
        raise InvalidTime(exc.reason, resource_type=where[0], resource_id=where[1]) from None


def _numeric_value(
    holder: Mapping[str, Any],
    spec: CodeSpec,
    table: CodeTable,
    where: tuple[str, str | None],
) -> float | None:
    """The value of ``holder`` (Observation or component) in canonical units, or None."""
    q = holder.get("valueQuantity")
    if isinstance(q, dict):
        if "value" not in q:
            return None
        v = float(q["value"])
        code, unit = q.get("code"), q.get("unit")
        candidates = [u for u in (code, unit) if isinstance(u, str) and u]
        if not candidates:
            candidates = [""]
        first: UnitError | None = None
        for u in dict.fromkeys(candidates):
            try:
                return table.convert(spec.code, v, u)
            except UnitError as exc:
                first = first or exc
        assert first is not None
        raise UnitError(first.reason, resource_type=where[0], resource_id=where[1])
    if "valueInteger" in holder:
        try:
            return table.convert(spec.code, float(holder["valueInteger"]), "")
        except UnitError as exc:
            raise UnitError(exc.reason, resource_type=where[0], resource_id=where[1]) from None
    other = next((k for k in _VALUE_KEYS if k in holder), None)
    if other is not None:
        raise InvalidResource(
            f"{spec.code} needs valueQuantity, got {other}",
            resource_type=where[0],
            resource_id=where[1],
        )
    return None


def _categorical_value(
    holder: Mapping[str, Any],
    spec: CodeSpec,
    table: CodeTable,
    where: tuple[str, str | None],
    lenient: bool,
) -> tuple[bool, str | None]:
    """(has a value, canonical value_code) for a categorical code."""
    cc = holder.get("valueCodeableConcept")
    if cc is None:
        other = next((k for k in _VALUE_KEYS if k in holder), None)
        if other is None or lenient:
            return False, None
        raise InvalidResource(
            f"{spec.code} needs valueCodeableConcept, got {other}",
            resource_type=where[0],
            resource_id=where[1],
        )
    codings = _codings(cc)
    for system, code in codings:
        v = table.categorical_value(spec.code, system, code)
        if v is not None:
            return True, v
    if lenient:
        return True, None
    raise UnknownCode(
        f"{spec.code} value {_describe(codings)} is not in the code table",
        resource_type=where[0],
        resource_id=where[1],
    )


def _observation(obs: Mapping[str, Any], ctx: _Ctx, full_url: str | None) -> ParseResult:
    res = ParseResult(resources=1, observations=1)
    rid_raw = obs.get("id")
    rid = rid_raw if isinstance(rid_raw, str) and _FHIR_ID.match(rid_raw) else None
    where: tuple[str, str | None] = ("Observation", rid)
    _check_json_types(obs, where)
    if ctx.validate:
        _validate_observation(obs, rid, ctx.validation)
    if rid is not None:
        source = f"Observation/{rid}"
    elif full_url:
        source = full_url
    else:
        digest = hashlib.blake2b(orjson.dumps(obs, option=orjson.OPT_SORT_KEYS), digest_size=10)
        source = f"Observation/#{digest.hexdigest()}"
    label = source
    status_raw = obs.get("status")
    if status_raw in _SKIP_STATUS:
        res.ignored.append(f"{label}: status {status_raw}")
        return res
    status = _STATUS.get(status_raw) if isinstance(status_raw, str) else None
    if status is None:
        raise InvalidResource(
            f"unknown status {status_raw!r}", resource_type=where[0], resource_id=rid
        )
    table = ctx.table
    lab = _is_laboratory(obs)
    items: list[tuple[str, str | None, Mapping[str, Any]]] = []
    code, loinc, codings = _resolve_code(obs.get("code"), table, lab)
    if code is not None:
        items.append((code, loinc, obs))
    comps = obs.get("component")
    if isinstance(comps, list):
        for comp in comps:
            if isinstance(comp, dict):
                ccode, cloinc, _ = _resolve_code(comp.get("code"), table, lab)
                if ccode is not None:
                    items.append((ccode, cloinc, comp))
    if not items:
        res.ignored.append(f"{label}: no code WardWatch uses ({_describe(codings)})")
        return res
    patient = _subject(obs, ctx, where)
    time = _effective_time(obs, where)
    retracted = status == "entered-in-error"
    for code, loinc, holder in items:
        spec = table.specs[code]
        value: float | None = None
        value_code: str | None = None
        if spec.categorical:
            has, value_code = _categorical_value(holder, spec, table, where, retracted)
            if not has and not retracted:
                res.ignored.append(f"{label}: {code} has no value")
                continue
        else:
            try:
                value = _numeric_value(holder, spec, table, where)
            except PermanentInputError:
                if not retracted:
                    raise
                value = None
            if value is None and not retracted:
                res.ignored.append(f"{label}: {code} has no value")
                continue
            if value is not None and not retracted:
                table.check_plausible(code, value, where=f"Observation/{rid or ''}".rstrip("/"))
        res.events.append(
            ClinicalEvent(
                patient=patient,
                time=time,
                code=code,
                kind=spec.kind,
                value=value,
                unit=spec.unit,
                loinc=loinc,
                value_code=value_code,
                status=status,
                source=source,
            )
        )
    return res


# ------------------------------------------------------------------ context resources
# Resource types mapped to context events (kind != vital/lab); see :func:`_context`.
CONTEXT_TYPES = frozenset(
    {"Condition", "Flag", "Goal", "MedicationAdministration", "Encounter", "DocumentReference"}
)
_V2_EVENT = "http://terminology.hl7.org/CodeSystem/v2-0003"
# HL7 v2 trigger event (Encounter.meta.tag, set by fhir/hl7v2.py) -> (event code, retracts)
_ADT_EVENT: dict[str, tuple[str, bool]] = {
    "A01": ("admission", False),
    "A04": ("admission", False),
    "A02": ("transfer", False),
    "A03": ("discharge", False),
    "A11": ("admission", True),
    "A13": ("discharge", True),
}
MAX_NOTE_CHARS = 100_000


@lru_cache(maxsize=4)
def load_context_medications(path: Path | None = None) -> dict[str, tuple[str, ...]]:
    """``context_medications`` of codes.yaml: antibiotic/vasopressor -> "system|code" entries
    (a trailing ``*`` is a prefix). Cached. Raises ValueError (configuration error, not
    retryable) naming the entry when the section is malformed."""
    p = CODES_FILE if path is None else path
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{p}: cannot read context_medications: {exc}") from exc
    raw = (doc or {}).get("context_medications") or {}
    if not isinstance(raw, dict) or set(raw) - {"antibiotic", "vasopressor"}:
        raise ValueError(f"{p}: context_medications must have only antibiotic and vasopressor")
    out: dict[str, tuple[str, ...]] = {}
    for cat, entries in raw.items():
        if not isinstance(entries, list) or not all(
            isinstance(e, str) and "|" in e and e.split("|", 1)[1] for e in entries
        ):
            raise ValueError(f"{p}: context_medications.{cat} must list 'system|code' strings")
        out[cat] = tuple(entries)
    return out


@lru_cache(maxsize=4)
def load_icu_locations(path: Path | None = None) -> frozenset[str]:
    """``icu_locations`` of codes.yaml, upper-cased (cached). Raises ValueError
    (configuration error, not retryable) when the list is missing or malformed."""
    p = CODES_FILE if path is None else path
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{p}: cannot read icu_locations: {exc}") from exc
    raw = (doc or {}).get("icu_locations")
    if not isinstance(raw, list) or not raw or not all(_WORD.fullmatch(str(x)) for x in raw):
        raise ValueError(f"{p}: icu_locations must list ward codes (letters and digits)")
    return frozenset(str(x).upper() for x in raw)


_WORD = re.compile(r"[A-Za-z0-9]+")


def _is_icu(display: object) -> str | None:
    """The ICU word a location display starts with ("ICU-3 bed 4" -> "ICU"), or None."""
    if not isinstance(display, str):
        return None
    m = _WORD.match(display.strip())
    word = m.group(0).upper() if m else ""
    return word if word in load_icu_locations() else None


def _medication_class(cc: object) -> tuple[str | None, str | None]:
    """(antibiotic/vasopressor or None, "system|code" that matched)."""
    meds = load_context_medications()
    for system, code in _codings(cc):
        sc = f"{system}|{code}"
        for cat, entries in meds.items():
            for e in entries:
                if sc == e or (e.endswith("*") and sc.startswith(e[:-1])):
                    return cat, sc
    return None, None


def _first_time(
    doc: Mapping[str, Any],
    candidates: tuple[tuple[str, object], ...],
    where: tuple[str, str | None],
) -> datetime:
    """The first candidate that is a dateTime with time of day and zone; else InvalidTime."""
    present = [(what, v) for what, v in candidates if v is not None]
    for what, v in present:
        try:
            return parse_fhir_time(v, what)
        except InvalidTime:
            continue
    names = ", ".join(w for w, _ in candidates)
    raise InvalidTime(
        f"none of {names} is a dateTime with a time of day and time zone"
        + (f" (got {', '.join(f'{w}={str(v)[:30]!r}' for w, v in present)})" if present else ""),
        resource_type=where[0],
        resource_id=where[1],
    )


def _meta_updated(doc: Mapping[str, Any]) -> object:
    meta = doc.get("meta")
    return meta.get("lastUpdated") if isinstance(meta, dict) else None


def _first_coding(cc: object) -> str | None:
    codings = _codings(cc)
    return f"{codings[0][0]}|{codings[0][1]}" if codings else None


def _note_text(doc: Mapping[str, Any]) -> str | None:
    """Plain-text content of a DocumentReference (base64 ``data`` of a text/* attachment).
    The edge's strip_phi drops attachment data, so this is None for pseudonymised input."""
    import base64
    import binascii

    for c in doc.get("content") or ():
        att = c.get("attachment") if isinstance(c, dict) else None
        if not isinstance(att, dict):
            continue
        ct, data = att.get("contentType"), att.get("data")
        if isinstance(ct, str) and ct.startswith("text/") and isinstance(data, str):
            try:
                return base64.b64decode(data).decode("utf-8", "replace")[:MAX_NOTE_CHARS]
            except (binascii.Error, ValueError):
                return None
    return None


def _context(doc: Mapping[str, Any], ctx: _Ctx, rt: str, full_url: str | None) -> ParseResult:
    """Condition, Flag, Goal, MedicationAdministration (antibiotic/vasopressor), Encounter,
    DocumentReference -> context events. Raises PermanentInputError (permanent) for an
    invalid resource, a missing Patient subject or no usable time."""
    res = ParseResult(resources=1)
    rid_raw = doc.get("id")
    rid = rid_raw if isinstance(rid_raw, str) and _FHIR_ID.match(rid_raw) else None
    where: tuple[str, str | None] = (rt, rid)
    if ctx.validate:
        try:
            _validate(rt, doc, rid)
        except InvalidResource as exc:  # context is optional: note it, never reject for it
            res.ignored.append(f"{rt}/{rid or ''}: {exc.reason}")
            return res
    if rid is not None:
        source = f"{rt}/{rid}"
    elif full_url:
        source = full_url
    else:
        digest = hashlib.blake2b(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS), digest_size=10)
        source = f"{rt}/#{digest.hexdigest()}"
    status: EventStatus = "final"
    kind: str
    code: str
    value_code: str | None
    text: str | None = None
    if rt == "MedicationAdministration":
        cat, value_code = _medication_class(doc.get("medicationCodeableConcept"))
        if cat is None:
            res.ignored.append(f"{source}: not an antibiotic or vasopressor WardWatch knows")
            return res
        if doc.get("status") == "not-done":
            res.ignored.append(f"{source}: status not-done")
            return res
        kind, code = "medication", cat
        status = "entered-in-error" if doc.get("status") == "entered-in-error" else "final"
        cands: tuple[tuple[str, object], ...] = (
            ("effectiveDateTime", doc.get("effectiveDateTime")),
            ("effectivePeriod.start", (doc.get("effectivePeriod") or {}).get("start")),
        )
    elif rt == "Condition":
        kind, code = "condition", "condition"
        value_code = _first_coding(doc.get("code"))
        vs = {c for _, c in _codings(doc.get("verificationStatus"))}
        if vs & {"entered-in-error", "refuted"}:
            status = "entered-in-error"
        cands = (
            ("recordedDate", doc.get("recordedDate")),
            ("onsetDateTime", doc.get("onsetDateTime")),
            ("meta.lastUpdated", _meta_updated(doc)),
        )
    elif rt == "Flag":
        kind, code = "flag", "flag"
        value_code = _first_coding(doc.get("code"))
        if doc.get("status") == "inactive":
            res.ignored.append(f"{source}: inactive flag")
            return res
        if doc.get("status") == "entered-in-error":
            status = "entered-in-error"
        cands = (
            ("period.start", (doc.get("period") or {}).get("start")),
            ("meta.lastUpdated", _meta_updated(doc)),
        )
    elif rt == "Goal":
        kind, code = "flag", "goal"
        value_code = _first_coding(doc.get("description"))
        if value_code is None:
            targets = doc.get("target") or []
            t0 = targets[0] if targets and isinstance(targets[0], dict) else {}
            value_code = _first_coding(t0.get("measure"))
        if doc.get("lifecycleStatus") in ("entered-in-error", "cancelled", "rejected"):
            status = "entered-in-error"
        cands = (
            ("statusDate", doc.get("statusDate")),
            ("startDate", doc.get("startDate")),
            ("meta.lastUpdated", _meta_updated(doc)),
        )
    elif rt == "DocumentReference":
        kind, code = "note", "note"
        value_code = _first_coding(doc.get("type"))
        if doc.get("status") == "entered-in-error":
            status = "entered-in-error"
        elif doc.get("docStatus") == "preliminary":
            status = "preliminary"
        text = _note_text(doc)
        cands = (("date", doc.get("date")), ("meta.lastUpdated", _meta_updated(doc)))
    else:  # Encounter
        return _encounter_events(doc, ctx, source, where)
    if value_code is None:
        res.ignored.append(f"{source}: no coded code")
        return res
    patient = _context_subject(doc, ctx, where, res, source)
    if patient is None:
        return res
    time = _first_time(doc, cands, where)
    res.events.append(
        ClinicalEvent(
            patient=patient,
            time=time,
            code=code,
            kind=cast(Any, kind),
            value_code=value_code,
            status=status,
            source=source,
            text=text,
        )
    )
    return res


def _context_subject(
    doc: Mapping[str, Any], ctx: _Ctx, where: tuple[str, str | None], res: ParseResult, label: str
) -> str | None:
    """The Patient of a context resource; None (noted in ``ignored``) when its subject is not
    a Patient (a Group, a Location); MissingSubject (permanent) when it has none."""
    subj = doc.get("subject")
    if isinstance(subj, dict) and isinstance(subj.get("reference"), str):
        ref = subj["reference"]
        if not ref.startswith("urn:uuid:") and _PATIENT_REF.search(ref) is None:
            res.ignored.append(f"{label}: subject is not a Patient")
            return None
    return _subject(doc, ctx, where)


def _encounter_events(
    doc: Mapping[str, Any], ctx: _Ctx, source: str, where: tuple[str, str | None]
) -> ParseResult:
    res = ParseResult(resources=1)
    st = doc.get("status")
    if st in ("planned", "unknown"):
        res.ignored.append(f"{source}: status {st}")
        return res
    retracted_all = st in ("entered-in-error", "cancelled")
    cls = doc.get("class")
    value_code = (
        f"{cls.get('system', '')}|{cls.get('code', '')}"
        if isinstance(cls, dict) and cls.get("code")
        else None
    )
    period = doc.get("period") if isinstance(doc.get("period"), dict) else {}
    assert isinstance(period, dict)
    meta = doc.get("meta")
    tags = meta.get("tag") if isinstance(meta, dict) else None
    trigger = next(
        (
            t.get("code")
            for t in (tags if isinstance(tags, list) else [])
            if isinstance(t, dict) and t.get("system") == _V2_EVENT
        ),
        None,
    )
    wanted: list[tuple[str, bool, tuple[tuple[str, object], ...]]] = []
    updated = ("meta.lastUpdated", _meta_updated(doc))
    event_cands: tuple[tuple[str, object], ...] = ()
    if isinstance(trigger, str):
        if trigger not in _ADT_EVENT:
            res.ignored.append(f"{source}: ADT {trigger} gives no encounter event")
            return res
        ev, retracts = _ADT_EVENT[trigger]
        if ev == "admission":
            cands: tuple[tuple[str, object], ...] = (("period.start", period.get("start")), updated)
        elif ev == "discharge":
            cands = (("period.end", period.get("end")), updated)
        else:
            cands = (updated, ("period.start", period.get("start")))
        wanted.append((ev, retracts, cands))
        if ev != "discharge":
            event_cands = cands  # the ADT event that put the patient where PV1-3 says
    else:
        if "start" in period:
            wanted.append(("admission", False, (("period.start", period.get("start")),)))
        if st == "finished" and "end" in period:
            wanted.append(("discharge", False, (("period.end", period.get("end")),)))
    wanted += _icu_admissions(doc, event_cands, source, res)
    if not wanted:
        res.ignored.append(f"{source}: no period.start")
        return res
    patient = _context_subject(doc, ctx, where, res, source)
    if patient is None:
        return res
    for ev, retracts, cands in wanted:
        res.events.append(
            ClinicalEvent(
                patient=patient,
                time=_first_time(doc, cands, where),
                code=ev,
                kind="encounter",
                # the state keeps context by value_code: an Encounter without a class
                # still dates the admission
                value_code=value_code or "encounter",
                status="entered-in-error" if (retracts or retracted_all) else "final",
                source=source,
            )
        )
    return res


def _icu_admissions(
    doc: Mapping[str, Any],
    event_cands: tuple[tuple[str, object], ...],
    source: str,
    res: ParseResult,
) -> list[tuple[str, bool, tuple[tuple[str, object], ...]]]:
    """``icu_admission`` for each of an Encounter's locations that is an ICU
    (:func:`load_icu_locations`): timed at the location's period.start, else at the ADT
    event that moved the patient there (``event_cands``). A planned location, or an ICU
    location with neither time, gives none (the latter noted in ``ignored``)."""
    out: list[tuple[str, bool, tuple[tuple[str, object], ...]]] = []
    locations = doc.get("location")
    for loc in locations if isinstance(locations, list) else ():
        if not isinstance(loc, dict) or loc.get("status") == "planned":
            continue
        ref = loc.get("location")
        if _is_icu(ref.get("display") if isinstance(ref, dict) else None) is None:
            continue
        lp = loc.get("period") if isinstance(loc.get("period"), dict) else {}
        assert isinstance(lp, dict)
        if "start" in lp:
            out.append(("icu_admission", False, (("location.period.start", lp.get("start")),)))
        elif event_cands:
            out.append(("icu_admission", False, event_cands))
        else:
            res.ignored.append(f"{source}: ICU location without a period.start")
    return out[-1:]  # the latest ICU location is where the patient is


def _resource(doc: Mapping[str, Any], ctx: _Ctx, full_url: str | None) -> ParseResult:
    rt = doc.get("resourceType")
    if not isinstance(rt, str) or not rt:
        raise InvalidResource("resource has no resourceType")
    if rt in R4_ONLY_TYPES:
        return ParseResult(resources=1)
    _model_class(rt)  # raises UnsupportedResource for unknown types
    if rt == "Bundle":
        return _bundle(doc, ctx)
    if rt == "Observation":
        return _observation(doc, ctx, full_url)
    if rt in CONTEXT_TYPES:
        return _context(doc, ctx, rt, full_url)
    if rt == "Patient":
        return _patient(doc, ctx)
    return ParseResult(resources=1)


_GENDERS = frozenset({"male", "female", "other", "unknown"})


def _patient(doc: Mapping[str, Any], ctx: _Ctx) -> ParseResult:
    """Patient -> demographic events: ``birth_year`` (the year of birthDate; the edge keeps
    no more) and ``sex`` (administrative gender), timed at meta.lastUpdated, else
    :data:`~fhir.events.DEMOGRAPHIC_EPOCH` (they hold for the whole stay). A Patient
    without an id, or one that fails R4B validation, gives none and is noted in
    ``ignored``: a patient without demographics is still scored. Raises nothing."""
    res = ParseResult(resources=1)
    rid = doc.get("id")
    if not isinstance(rid, str) or not _FHIR_ID.match(rid):
        res.ignored.append("Patient without a valid id: no demographics")
        return res
    source = f"Patient/{rid}"
    if ctx.validate:
        try:
            _validate("Patient", doc, rid)
        except InvalidResource as exc:
            res.ignored.append(f"{source}: {exc.reason}")
            return res
    time = DEMOGRAPHIC_EPOCH
    updated = _meta_updated(doc)
    if updated is not None:
        try:
            time = parse_fhir_time(updated, "meta.lastUpdated")
        except InvalidTime:
            res.ignored.append(f"{source}: meta.lastUpdated is not a dateTime; timed at 1900")
    bd = doc.get("birthDate")
    year = bd[:4] if isinstance(bd, str) and len(bd) >= 4 and bd[:4].isdigit() else None
    if year is not None and 1850 <= int(year) <= 2200:
        res.events.append(
            ClinicalEvent(
                patient=rid,
                time=time,
                code="birth_year",
                kind="demographic",
                value=float(year),
                unit="a",
                source=source,
            )
        )
    gender = doc.get("gender")
    if isinstance(gender, str) and gender in _GENDERS:
        res.events.append(
            ClinicalEvent(
                patient=rid,
                time=time,
                code="sex",
                kind="demographic",
                value_code=gender,
                source=source,
            )
        )
    if not res.events:
        res.ignored.append(f"{source}: no birthDate or gender")
    return res


def preload() -> CodeTable:
    """Load the code table and import the R4B model classes the stream parses (Bundle,
    Observation, Patient and the context types) now, as a worker does at start-up: the
    first message otherwise pays for both (0.4 s here, 0.15 s of it reading the YAML), and
    a broken code table stops the worker before it reads anything. Returns the table.

    Raises ``ValueError`` naming the file and entry when the code table is unreadable or
    inconsistent (a configuration error: not retried).
    """
    table = load_code_table()
    load_icu_locations()
    for rt in ("Bundle", "Observation", "Patient", *sorted(CONTEXT_TYPES)):
        _model_class(rt)
    return table


def _guard(fn: Callable[[], ParseResult], where: tuple[str | None, str | None]) -> ParseResult:
    """Run ``fn``; turn any non-PermanentInputError exception into InvalidResource."""
    try:
        return fn()
    except PermanentInputError:
        raise
    except RecursionError:
        raise InvalidResource(
            "resource nested too deeply", resource_type=where[0], resource_id=where[1]
        ) from None
    except Exception as exc:  # contract: nothing but PermanentInputError escapes
        raise InvalidResource(
            f"cannot map resource ({type(exc).__name__}: {str(exc)[:200]})",
            resource_type=where[0],
            resource_id=where[1],
        ) from None


def _bundle(doc: Mapping[str, Any], ctx: _Ctx) -> ParseResult:
    bid = doc.get("id") if isinstance(doc.get("id"), str) else None
    if ctx.depth >= MAX_DEPTH:
        raise UnsupportedResource(
            f"Bundles nested more than {MAX_DEPTH} deep", resource_type="Bundle", resource_id=bid
        )
    btype = doc.get("type")
    if btype not in BUNDLE_TYPES:
        raise InvalidResource(
            f"Bundle.type {str(btype)[:40]!r} is not a FHIR bundle type",
            resource_type="Bundle",
            resource_id=bid,
        )
    entries = doc.get("entry", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise InvalidResource(
            "Bundle.entry must be a list of objects", resource_type="Bundle", resource_id=bid
        )
    entries = cast(list[dict[str, Any]], entries)
    if ctx.validate:
        _validate_bundle_shell(doc, bid, ctx.validation)
    patients = dict(ctx.patients)
    for e in entries:
        r, full_url = e.get("resource"), e.get("fullUrl")
        if isinstance(r, dict) and r.get("resourceType") == "Patient" and isinstance(full_url, str):
            pid = r.get("id")
            if not (isinstance(pid, str) and _FHIR_ID.match(pid)):
                tail = full_url.rsplit("/", 1)[-1].rsplit(":", 1)[-1]
                pid = tail if _FHIR_ID.match(tail) else None
            if pid:
                patients[full_url] = pid
    sub = _Ctx(ctx.table, ctx.validate, ctx.validation, patients, ctx.depth + 1)
    out = ParseResult()
    for e in entries:
        r = e.get("resource")
        if r is None:
            continue  # e.g. a DELETE in a transaction, a response entry
        full_url = e.get("fullUrl") if isinstance(e.get("fullUrl"), str) else None
        if not isinstance(r, dict):
            out.rejected.append(InvalidResource("Bundle entry resource is not an object"))
            continue
        rd = cast(dict[str, Any], r)
        rtype = rd.get("resourceType")
        rid = rd.get("id")
        where = (rtype if isinstance(rtype, str) else None, rid if isinstance(rid, str) else None)
        try:
            out.merge(_guard(lambda rd=rd, fu=full_url: _resource(rd, sub, fu), where))  # type: ignore[misc]
        except PermanentInputError as exc:
            if exc.resource_type is None and where[0]:
                exc.resource_type, exc.resource_id = where[0], where[1] or exc.resource_id
            out.rejected.append(exc)
    return out


def parse_resource(
    raw: bytes | bytearray | memoryview | str,
    *,
    table: CodeTable | None = None,
    strict: bool = False,
    validate: bool = True,
    validation: Validation = "lean",
) -> ParseResult:
    """Parse one FHIR R4 JSON resource or Bundle into canonical events.

    ``table`` defaults to :func:`fhir.codes.load_code_table`. ``strict=True`` raises the first
    rejected Bundle entry instead of collecting it. ``validation`` is ``"lean"`` (default:
    lean checks, full R4B validation where they are not sure) or ``"full"`` (always the R4B
    models); both give the same results (module docstring). ``validate=False`` skips R4B
    validation altogether (the project's own checks still run) -- only for trusted, already
    validated input.

    Raises PermanentInputError (never retryable; dead-letter the input) as described in the
    module docstring; ValueError for a ``validation`` other than "lean"/"full" (a programming
    error, not an input error).
    """
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedJson(f"not JSON: {str(exc)[:200]}") from None
    except TypeError:
        raise MalformedJson(f"input must be bytes or str, got {type(raw).__name__}") from None
    if not isinstance(doc, dict):
        raise MalformedJson(f"top level is a JSON {type(doc).__name__}, not an object")
    if validation not in ("lean", "full"):
        raise ValueError(f"validation must be 'lean' or 'full', got {validation!r}")
    ctx = _Ctx(table or load_code_table(), validate, validation, {})
    rt = doc.get("resourceType")
    rid = doc.get("id")
    where = (rt if isinstance(rt, str) else None, rid if isinstance(rid, str) else None)
    result = _guard(lambda: _resource(doc, ctx, None), where)
    if strict:
        result.raise_if_rejected()
    return result


def parse_events(raw: bytes | bytearray | memoryview | str) -> list[ClinicalEvent]:
    """Strict shorthand: the events, raising the first rejected entry (PermanentInputError,
    not retryable) instead of returning it. Ignored Observations are dropped silently."""
    return parse_resource(raw, strict=True).events


__all__ = [
    "CONTEXT_TYPES",
    "MAX_DEPTH",
    "ParseResult",
    "load_context_medications",
    "load_icu_locations",
    "parse_events",
    "parse_fhir_time",
    "parse_resource",
    "preload",
]
