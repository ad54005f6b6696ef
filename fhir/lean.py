"""A lean R4B validator for the hot path: Observations and Bundle shells, checked by hand.

Full validation with fhir.resources' pydantic models costs about 300 us per Observation; the
checks here answer the same question for the shapes they fully understand in a few
microseconds, and say "not sure" for everything else, so that :mod:`fhir.parse` falls back to
the full models. They mirror what fhir.resources 8 (R4B) actually enforces -- not the FHIR
specification's wider rules -- because the goal is *the same accept/reject decision* as the
full path (``tests/unit/fhir/test_fhir_lean.py`` checks this on the conformance data):

* JSON types: strings where fhir.resources wants ``str`` (a number is refused, not coerced),
  objects for complex types, lists for repeating elements, JSON numbers or decimal strings
  for ``decimal``;
* primitive formats with fhir.resources' own patterns: ``string`` (some non-blank
  character), ``code`` (no leading/trailing/double whitespace), ``id`` (``[A-Za-z0-9.-]``,
  1..255 characters), ``decimal``, ``dateTime`` and ``instant`` (the FHIR regexes plus a
  calendar check: 2026-02-30 is refused);
* required elements (Observation.code and .status, component.code, Narrative.status/div,
  Bundle.entry.request.method/url, ...) and choice exclusivity (one ``effective[x]``, one
  ``value[x]``);
* unknown keys (fhir.resources forbids extra keys).

It is *not sure* -- and the caller must run the full validation -- about: JSON ``null``
anywhere, extensions and modifierExtensions, ``contained``, primitive extensions ``_x``,
``fhir_comments``, nested ``resourceType`` keys, strings in place of objects (fhir.resources
parses them as JSON), numbers or timestamps where pydantic's lax mode might coerce them
(integers as floats, booleans as strings, dateTimes as epoch numbers), leap seconds,
non-ASCII codes and strings made only of unusual whitespace, and every element type not
listed in the tables below (Timing, Range, Ratio, SampledData, Signature, ...). Status values
outside the FHIR value set are *not* checked here, because fhir.resources does not check
them either (:mod:`fhir.parse` rejects them afterwards on both paths).

Public API: :func:`check_observation` and :func:`check_bundle_shell` return ``None`` (not
sure), ``[]`` (valid) or the problems found, ``[(loc, message), ...]``, where ``loc`` is the
dotted path pydantic would report (``"valueQuantity.value"``, ``""`` for the whole
resource). Field problems come before whole-resource problems (choice exclusivity, a missing
``status``), which, as in pydantic, are only reported when there are no field problems.
Nothing here raises: an unexpected shape is "not sure".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

Problem = tuple[str, str]  # (dotted location, message)
Problems = list[Problem]


class _Unsure(Exception):  # noqa: N818 - an internal signal, never escapes this module
    """The lean checks do not fully understand this shape: use the full validation."""


# ------------------------------------------------------------------ primitive checks
# Each returns None (valid) or a message (invalid), or raises _Unsure.
_ASCII_GRAPH = re.compile(r"[\x20-\x7e\t\r\n]")
# fhir_core's code pattern ^[^\s]+(\s[^\s]+)*$ runs on the Rust regex engine, whose \s in
# ASCII is [\t\n\v\f\r ]; restricted to ASCII input the two agree exactly.
_CODE_ASCII = re.compile(r"[^\t\n\x0b\x0c\r ]+(?:[\t\n\x0b\x0c\r ][^\t\n\x0b\x0c\r ]+)*")
_ID = re.compile(r"[A-Za-z0-9\-.]{1,255}")
_DECIMAL = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
# The FHIR dateTime and instant regexes exactly as fhir_core uses them (fullmatch).
_DATETIME = re.compile(
    r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|"
    r"[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|"
    r"3[0-1])(T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|"
    r"60)(\.[0-9]+)?(Z|([+\-])((0[0-9]|"
    r"1[0-3]):[0-5][0-9]|14:00)))?)?)?"
)
_INSTANT = re.compile(
    r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|"
    r"[1-9]000)-(0[1-9]|1[0-2])-(0[1-9]|[1-2][0-9]|"
    r"3[0-1])T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]"
    r"|60)(\.[0-9]+)?(Z|([+\-])((0[0-9]|"
    r"1[0-3]):[0-5][0-9]|14:00))"
)
_MONTH_DAYS = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_NOT_STR = "Input should be a valid string"


def _type_problem(v: object, want: str) -> str:
    """Invalid for a JSON number/boolean/list/object where a ``want`` is required; ``None``
    (JSON null, which fhir.resources treats in its own ways) is not sure."""
    if v is None:
        raise _Unsure
    return f"{want}, got a JSON {_json_type(v)}"


def _json_type(v: object) -> str:
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int | float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object" if isinstance(v, dict) else type(v).__name__


def _string(v: object) -> str | None:
    if type(v) is str:
        if v and "!" <= v[0] <= "~":  # the common case: starts with a visible ASCII char
            return None
        if v == "":
            return "String should not be empty"
        if _ASCII_GRAPH.search(v) is not None:
            return None
        raise _Unsure  # only unusual (Unicode) whitespace: leave it to pydantic's engine
    return _type_problem(v, _NOT_STR)


def _any_str(v: object) -> str | None:
    """uri, canonical, markdown, xhtml: fhir_core's patterns accept every string."""
    return None if type(v) is str else _type_problem(v, _NOT_STR)


def _code(v: object) -> str | None:
    if type(v) is str:
        if not v.isascii():
            raise _Unsure
        if _CODE_ASCII.fullmatch(v) is not None:
            return None
        return f"{v[:40]!r} is not a FHIR code (empty, or leading, trailing or double spaces)"
    return _type_problem(v, _NOT_STR)


def _id(v: object) -> str | None:
    if type(v) is str:
        if _ID.fullmatch(v) is not None:
            return None
        return f"{v[:40]!r} is not a FHIR id ([A-Za-z0-9.-], 1 to 255 characters)"
    return _type_problem(v, _NOT_STR)


def _decimal(v: object) -> str | None:
    t = type(v)
    if t is int or t is float:  # orjson never yields nan/inf; str() of these fits the regex
        return None
    if t is str:
        assert isinstance(v, str)
        return None if _DECIMAL.fullmatch(v) is not None else f"{v[:40]!r} is not a decimal"
    if v is None:
        raise _Unsure
    return f"a decimal must be a JSON number, got a JSON {_json_type(v)}"


def _bool(v: object) -> str | None:
    if type(v) is bool:
        return None
    raise _Unsure  # pydantic's lax mode turns "true", 1, ... into booleans


def _int(v: object) -> str | None:
    if type(v) is int and -2147483648 <= v <= 2147483647:
        return None
    raise _Unsure  # 72.0, "72", True and out-of-range values: leave them to pydantic


def _unsigned_int(v: object) -> str | None:
    if type(v) is int and 0 <= v <= 2147483647:
        return None
    raise _Unsure


# Strings already checked, per kind: a Bundle's entries share their timestamps. Bounded.
_TIME_OK: dict[tuple[bool, str], str | None] = {}
_TIME_CACHE_MAX = 4096


def _calendar(v: str) -> str | None:
    """A regex-valid date(time) string whose day may not exist in its month."""
    if len(v) < 10:
        return None  # YYYY or YYYY-MM: kept as a string by fhir_core, nothing more to check
    if len(v) > 19 and v[17:19] == "60":
        raise _Unsure  # a leap second: fhir_core re-validates it with 59 seconds
    year, month, day = int(v[0:4]), int(v[5:7]), int(v[8:10])
    if day > _MONTH_DAYS[month] or (
        month == 2 and day == 29 and not (year % 4 == 0 and (year % 100 != 0 or year % 400 == 0))
    ):
        return f"{v[:40]!r}: day value is outside expected range"
    return None


def _time(v: object, instant: bool) -> str | None:
    if type(v) is not str:
        raise _Unsure  # pydantic takes epoch numbers for datetimes: leave them to it
    assert isinstance(v, str)
    key = (instant, v)
    try:
        return _TIME_OK[key]
    except KeyError:
        pass
    if (_INSTANT if instant else _DATETIME).fullmatch(v) is None:
        what = "an instant (YYYY-MM-DDThh:mm:ss with a time zone)" if instant else "a dateTime"
        out: str | None = f"{v[:40]!r} is not {what}"
    else:
        out = _calendar(v)
    if len(_TIME_OK) >= _TIME_CACHE_MAX:
        _TIME_OK.clear()
    _TIME_OK[key] = out
    return out


def _datetime(v: object) -> str | None:
    return _time(v, False)


def _instant(v: object) -> str | None:
    return _time(v, True)


# ------------------------------------------------------------------ complex elements
Check = Callable[[object, str, Problems], None]  # (value, location, problems out)
Ok = Callable[[object], bool]  # True valid, False invalid, or raise _Unsure


class _Kind:
    """How to check one element value, two ways: ``ok`` is the fast pass for the common case
    (valid input: no locations, no messages), ``check`` the slow pass that names the
    problems; both raise _Unsure where the lean checks cannot decide."""

    __slots__ = ("check", "ok")

    def __init__(self, ok: Ok, check: Check) -> None:
        self.ok = ok
        self.check = check


def _prim(fn: Callable[[object], str | None], fast: Ok | None = None) -> _Kind:
    def check(v: object, loc: str, out: Problems) -> None:
        msg = fn(v)
        if msg is not None:
            out.append((loc, msg))

    def ok(v: object) -> bool:
        return fn(v) is None

    return _Kind(fast or ok, check)


def _list(item: _Kind) -> _Kind:
    item_ok, item_check = item.ok, item.check

    def ok(v: object) -> bool:
        if type(v) is not list:
            if v is None:
                raise _Unsure
            return False
        assert isinstance(v, list)
        for x in v:  # noqa: SIM110 - a plain loop: all() over a generator is slower here
            if not item_ok(x):
                return False
        return True

    def check(v: object, loc: str, out: Problems) -> None:
        if type(v) is not list:
            if v is None:
                raise _Unsure
            out.append((loc, f"Input should be a valid list, got a JSON {_json_type(v)}"))
            return
        assert isinstance(v, list)
        for i, x in enumerate(v):
            item_check(x, f"{loc}.{i}", out)

    return _Kind(ok, check)


class _Type:
    """One complex type: the keys it handles, required keys, choice groups. Its ``kind`` is
    what a parent element uses to check a value of this type."""

    __slots__ = (
        "checks",
        "choices",
        "fast",
        "kind",
        "known",
        "name",
        "required",
        "required_after",
        "required_field",
    )

    def __init__(
        self,
        name: str,
        model: str,
        required_field: tuple[str, ...] = (),
        required_after: tuple[str, ...] = (),
        choices: tuple[tuple[str, ...], ...] = (),
    ) -> None:
        self.name = name
        self.required_field = required_field  # pydantic "Field required" (field phase)
        self.required_after = required_after  # fhir.resources' required primitives (after)
        self.required = frozenset(required_field + required_after)
        self.choices = tuple(frozenset(g) for g in choices)
        # Every key the model accepts (aliases and, populate_by_name, field names); a key
        # outside it is an "extra input" (invalid), a known key not handled is "not sure".
        # "resourceType" is accepted inside any element when it names the element's own type
        # (fhir_core pops it): rare enough to leave to the full path.
        self.known = _model_keys(model) | {"resourceType"}
        self.checks: dict[str, Check] = {}
        self.fast: dict[str, Ok] = {}
        self.kind = _Kind(self.ok, self.check)

    def handle(self, kinds: dict[str, _Kind]) -> None:
        """Set the keys this type checks (after all types exist: they refer to each other)."""
        self.checks = {k: kd.check for k, kd in kinds.items()}
        self.fast = {k: kd.ok for k, kd in kinds.items()}

    def ok(self, v: object) -> bool:
        if type(v) is not dict:
            if v is None or isinstance(v, str | bytes):
                raise _Unsure  # fhir.resources parses a string as JSON
            return False
        assert isinstance(v, dict)
        fast = self.fast
        for key, val in v.items():
            fn = fast.get(key)
            if fn is None:
                if key in self.known:
                    raise _Unsure  # extension, _x, contained, an element type not handled
                return False
            if not fn(val):
                return False
        if self.required and not self.required <= v.keys():
            return False
        for group in self.choices:  # noqa: SIM110 - a plain loop is faster than all()
            if len(group & v.keys()) > 1:
                return False
        return True

    def check(self, v: object, loc: str, out: Problems) -> None:
        if type(v) is not dict:
            if v is None or isinstance(v, str | bytes):
                raise _Unsure
            out.append((loc, f"{self.name} must be a JSON object, got a JSON {_json_type(v)}"))
            return
        assert isinstance(v, dict)
        before = len(out)
        checks = self.checks
        prefix = f"{loc}." if loc else ""
        for key, val in v.items():
            fn = checks.get(key)
            if fn is None:
                if key in self.known:
                    raise _Unsure
                out.append((prefix + key, "Extra inputs are not permitted"))
                continue
            fn(val, prefix + key, out)
        for key in self.required_field:
            if key not in v:
                out.append((prefix + key, "Field required"))
        if len(out) > before:
            return  # pydantic runs the model's after-validators only on valid fields
        for key in self.required_after:
            if key not in v:
                out.append((prefix + key, f"Value for the field {key!r} is required."))
        for group in self.choices:
            present = sorted(group & v.keys())
            if len(present) > 1:
                out.append((loc, f"only one of {', '.join(present)} is allowed"))


def _skip_ok(v: object) -> bool:
    return True


def _skip_check(v: object, loc: str, out: Problems) -> None:
    """A key validated elsewhere (a Bundle entry's resource: each is validated on its own)."""


_SKIP = _Kind(_skip_ok, _skip_check)


def _resource_type(expected: str) -> _Kind:
    def ok(v: object) -> bool:
        if v != expected:
            raise _Unsure  # the caller routes by resourceType; anything else is odd
        return True

    def check(v: object, loc: str, out: Problems) -> None:
        ok(v)

    return _Kind(ok, check)


@cache
def _model_keys(model: str) -> frozenset[str]:
    """Every key fhir.resources' R4B model ``model`` (module.Class) accepts."""
    import importlib

    mod, cls_name = model.rsplit(".", 1)
    cls = getattr(importlib.import_module(f"fhir.resources.R4B.{mod}"), cls_name)
    keys: set[str] = set()
    for name, f in cls.model_fields.items():
        keys.add(name)
        if f.alias:
            keys.add(f.alias)
    return frozenset(keys)


def _string_ok(v: object) -> bool:
    if type(v) is str and v and "!" <= v[0] <= "~":
        return True
    return _string(v) is None


# Codes that passed, for the fast pass: a feed repeats a few dozen codes. Bounded.
_GOOD_CODES: set[str] = set()


def _code_ok(v: object) -> bool:
    if type(v) is str and v in _GOOD_CODES:
        return True
    if _code(v) is not None:
        return False
    if len(_GOOD_CODES) < 4096:
        _GOOD_CODES.add(v)  # type: ignore[arg-type]
    return True


def _any_str_ok(v: object) -> bool:
    return type(v) is str or _any_str(v) is None


def _decimal_ok(v: object) -> bool:
    t = type(v)
    return t is float or t is int or _decimal(v) is None


def _datetime_ok(v: object) -> bool:
    return _time(v, False) is None


_S, _C = _prim(_string, _string_ok), _prim(_code, _code_ok)
_ID_, _URI = _prim(_id), _prim(_any_str, _any_str_ok)
_DT, _INST, _DEC = _prim(_datetime, _datetime_ok), _prim(_instant), _prim(_decimal, _decimal_ok)
_BOOL, _INT, _UINT = _prim(_bool), _prim(_int), _prim(_unsigned_int)
_VALUE_GROUP = (
    "valueBoolean",
    "valueCodeableConcept",
    "valueDateTime",
    "valueInteger",
    "valuePeriod",
    "valueQuantity",
    "valueRange",
    "valueRatio",
    "valueSampledData",
    "valueString",
    "valueTime",
)


@cache
def _types() -> dict[str, _Type]:
    """The complex types the lean path understands, built once on first use (this imports
    fhir.resources' R4B models to learn which keys each type accepts)."""
    defs = [
        _Type("Coding", "coding.Coding"),
        _Type("CodeableConcept", "codeableconcept.CodeableConcept"),
        _Type("Identifier", "identifier.Identifier"),
        _Type("Reference", "reference.Reference"),
        _Type("Quantity", "quantity.Quantity"),
        _Type("Period", "period.Period"),
        _Type("Meta", "meta.Meta"),
        _Type("Narrative", "narrative.Narrative", required_after=("div", "status")),
        _Type(
            "Annotation",
            "annotation.Annotation",
            required_after=("text",),
            choices=(("authorReference", "authorString"),),
        ),
        _Type("ObservationReferenceRange", "observation.ObservationReferenceRange"),
        _Type(
            "ObservationComponent",
            "observation.ObservationComponent",
            required_field=("code",),
            choices=(_VALUE_GROUP,),
        ),
        _Type(
            "Observation",
            "observation.Observation",
            required_field=("code",),
            required_after=("status",),
            choices=(
                ("effectiveDateTime", "effectiveInstant", "effectivePeriod", "effectiveTiming"),
                _VALUE_GROUP,
            ),
        ),
        _Type("BundleLink", "bundle.BundleLink", required_after=("relation", "url")),
        _Type("BundleEntryRequest", "bundle.BundleEntryRequest", required_after=("method", "url")),
        _Type("BundleEntryResponse", "bundle.BundleEntryResponse", required_after=("status",)),
        _Type("BundleEntrySearch", "bundle.BundleEntrySearch"),
        _Type("BundleEntry", "bundle.BundleEntry"),
        _Type("Bundle", "bundle.Bundle", required_after=("type",)),
    ]
    t = {d.name: d for d in defs}
    coding, cc, ref = t["Coding"].kind, t["CodeableConcept"].kind, t["Reference"].kind
    quantity, period, refs = t["Quantity"].kind, t["Period"].kind, _list(t["Reference"].kind)
    ranges = _list(t["ObservationReferenceRange"].kind)
    t["Coding"].handle(
        {"id": _S, "system": _URI, "version": _S, "code": _C, "display": _S, "userSelected": _BOOL}
    )
    t["CodeableConcept"].handle({"id": _S, "coding": _list(coding), "text": _S})
    t["Identifier"].handle(
        {
            "id": _S,
            "use": _C,
            "type": cc,
            "system": _URI,
            "value": _S,
            "period": period,
            "assigner": ref,
        }
    )
    t["Reference"].handle(
        {"id": _S, "reference": _S, "type": _URI, "identifier": t["Identifier"].kind, "display": _S}
    )
    t["Quantity"].handle(
        {"id": _S, "value": _DEC, "comparator": _C, "unit": _S, "system": _URI, "code": _C}
    )
    t["Period"].handle({"id": _S, "start": _DT, "end": _DT})
    t["Meta"].handle(
        {
            "id": _S,
            "versionId": _ID_,
            "lastUpdated": _INST,
            "source": _URI,
            "profile": _list(_URI),
            "security": _list(coding),
            "tag": _list(coding),
        }
    )
    # xhtml and markdown: fhir_core checks nothing but that they are strings
    t["Narrative"].handle({"id": _S, "status": _C, "div": _URI})
    t["Annotation"].handle(
        {"id": _S, "authorReference": ref, "authorString": _S, "time": _DT, "text": _URI}
    )
    t["ObservationReferenceRange"].handle(
        {
            "id": _S,
            "low": quantity,
            "high": quantity,
            "type": cc,
            "appliesTo": _list(cc),
            "text": _S,
        }
    )
    values = {
        "valueQuantity": quantity,
        "valueCodeableConcept": cc,
        "valueString": _S,
        "valueBoolean": _BOOL,
        "valueInteger": _INT,
        "valueDateTime": _DT,
        "valuePeriod": period,
    }
    t["ObservationComponent"].handle(
        {
            "id": _S,
            "code": cc,
            **values,
            "dataAbsentReason": cc,
            "interpretation": _list(cc),
            "referenceRange": ranges,
        }
    )
    t["Observation"].handle(
        {
            "resourceType": _resource_type("Observation"),
            "id": _ID_,
            "meta": t["Meta"].kind,
            "implicitRules": _URI,
            "language": _C,
            "text": t["Narrative"].kind,
            "identifier": _list(t["Identifier"].kind),
            "basedOn": refs,
            "partOf": refs,
            "status": _C,
            "category": _list(cc),
            "code": cc,
            "subject": ref,
            "focus": refs,
            "encounter": ref,
            "effectiveDateTime": _DT,
            "effectivePeriod": period,
            "effectiveInstant": _INST,
            "issued": _INST,
            "performer": refs,
            **values,
            "dataAbsentReason": cc,
            "interpretation": _list(cc),
            "note": _list(t["Annotation"].kind),
            "bodySite": cc,
            "method": cc,
            "specimen": ref,
            "device": ref,
            "referenceRange": ranges,
            "hasMember": refs,
            "derivedFrom": refs,
            "component": _list(t["ObservationComponent"].kind),
        }
    )
    links = _list(t["BundleLink"].kind)
    t["BundleLink"].handle({"id": _S, "relation": _S, "url": _URI})
    t["BundleEntryRequest"].handle(
        {
            "id": _S,
            "method": _C,
            "url": _URI,
            "ifNoneMatch": _S,
            "ifModifiedSince": _INST,
            "ifMatch": _S,
            "ifNoneExist": _S,
        }
    )
    t["BundleEntryResponse"].handle(
        {"id": _S, "status": _S, "location": _URI, "etag": _S, "lastModified": _INST}
    )
    t["BundleEntrySearch"].handle({"id": _S, "mode": _C, "score": _DEC})
    t["BundleEntry"].handle(
        {
            "id": _S,
            "link": links,
            "fullUrl": _URI,
            "request": t["BundleEntryRequest"].kind,
            "response": t["BundleEntryResponse"].kind,
            "search": t["BundleEntrySearch"].kind,
            "resource": _SKIP,  # the shell: entries' resources are validated one by one
        }
    )
    t["Bundle"].handle(
        {
            "resourceType": _resource_type("Bundle"),
            "id": _ID_,
            "meta": t["Meta"].kind,
            "implicitRules": _URI,
            "language": _C,
            "identifier": t["Identifier"].kind,
            "type": _C,
            "timestamp": _INST,
            "total": _UINT,
            "link": links,
            "entry": _list(t["BundleEntry"].kind),
        }
    )
    return t


# Tests set this to see the lean checks' own bugs; in production a bug here must only cost
# time (the full validation decides), never change a decision.
RAISE_INTERNAL_ERRORS = False


def _run(type_name: str, doc: Mapping[str, Any]) -> Problems | None:
    t = _types()[type_name]
    out: Problems = []
    try:
        if t.ok(doc):
            return out
        t.check(doc, "", out)  # the slow pass names the problems, or finds it is not sure
    except (_Unsure, RecursionError):  # absurdly deep input: the full path handles it
        return None
    except Exception:
        if RAISE_INTERNAL_ERRORS:
            raise
        return None
    if not out and RAISE_INTERNAL_ERRORS:
        raise AssertionError("the fast pass found a problem the slow pass did not")
    return out or None  # the passes disagree (a bug): let the full validation decide


def check_observation(obs: Mapping[str, Any]) -> Problems | None:
    """Lean R4B validation of one Observation: ``None`` when not sure (run the full
    validation), ``[]`` when valid, else the problems ``[(loc, message), ...]`` (field
    problems first; see the module docstring). Never raises."""
    return _run("Observation", obs)


def check_bundle_shell(bundle: Mapping[str, Any]) -> Problems | None:
    """Lean R4B validation of a Bundle without its entries' resources (each is validated on
    its own): ``None`` when not sure, ``[]`` when valid, else the problems. Never raises."""
    return _run("Bundle", bundle)


__all__ = ["Problem", "Problems", "check_bundle_shell", "check_observation"]
