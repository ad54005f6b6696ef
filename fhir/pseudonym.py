"""Pseudonymisation at the edge: patient identity out, stable pseudonyms in.

``pseudonymise`` turns an identifier into ``pt-`` + 20 lower-case base32 characters of
HMAC-SHA256(key, system + "|" + identifier): 100 bits, deterministic for one key, not
reversible without the key (``Settings.pseudonym_key``). ``strip_phi`` applies it to FHIR
resources: the pseudonym of a Patient is that of its logical id (``Patient.id``, the id every
``Patient/<id>`` reference carries), so a Patient and the Observations that point at it agree
whether they arrive together or apart.

``strip_phi`` works from an allow-list per resource type, ``fhir/data/phi_allow.yaml``
(:func:`load_phi_allow`, read and checked once at import: a malformed table raises
ValueError before the edge reads anything): what is not listed there is dropped.

Pure and fast after import: dict/list walks and one HMAC per distinct patient; no I/O.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

import yaml

PREFIX = "pt-"
LENGTH = 20  # base32 characters after the prefix (100 bits)
ALLOW_FILE = Path(__file__).resolve().parent / "data" / "phi_allow.yaml"

_PATIENT_REF = re.compile(r"(?:^|/)Patient/([^/?#]+)(?:/_history/[^/]*)?$")
_PATIENT_SEARCH = re.compile(r"(?:^|/)Patient\?(.*)$")
_ELEMENT = re.compile(r"[a-z][A-Za-z0-9]*")
_TYPE = re.compile(r"[A-Z][A-Za-z0-9]*")
_FIRST_WORD = re.compile(r"[A-Za-z0-9]+")
# Element names that carry identity or free text wherever they occur. The allow-list may
# keep one only through a reduction (a location's display -> its ward code), never as it is:
# a table edited to keep Observation.identifier fails at start-up.
NEVER_KEPT = frozenset(
    {
        "identifier",
        "name",
        "telecom",
        "address",
        "contact",
        "photo",
        "text",
        "div",
        "note",
        "display",
        "extension",
        "modifierExtension",
        "contained",
        "performer",
        "valueString",
        "valueIdentifier",
        "valueAddress",
        "valueHumanName",
        "valueContactPoint",
        "valueAttachment",
        "url",
    }
)
# Reductions: element -> (key, value) kept, or None to drop. ``_Stripper`` applies the
# context-dependent ones (reference, patient_pseudonym); these names are what the table may use.
REDUCTIONS = frozenset(
    {"reference", "patient_pseudonym", "year", "deceased", "ward_code", "no_query"}
)
# Which NEVER_KEPT names a reduction may keep: only those whose output carries no identity.
_REDUCIBLE = {"display": frozenset({"ward_code"}), "url": frozenset({"no_query"})}
_PRIMITIVE = "primitive"

Spec = Mapping[str, "str | Spec"]  # element -> "primitive", a reduction, or a nested spec


@dataclass(frozen=True, slots=True)
class PhiAllowList:
    """The checked allow-list of ``fhir/data/phi_allow.yaml`` (see :func:`load_phi_allow`):
    per resource type, element -> ``"primitive"``, a reduction name, or a nested spec."""

    resources: Mapping[str, Spec]
    default: Spec
    bundle_entry: Spec
    source: str = str(ALLOW_FILE)

    def spec(self, resource_type: object) -> Spec:
        """The spec of ``resource_type`` (the ``default`` one for types not listed)."""
        if isinstance(resource_type, str):
            return self.resources.get(resource_type, self.default)
        return self.default


def _resolve(
    path: Path, where: str, raw: object, datatypes: Mapping[str, object], seen: tuple[str, ...]
) -> dict[str, Any]:
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"{path}: {where} must map element names to what is kept")
    out: dict[str, Any] = {}
    for el, what in raw.items():
        at = f"{where}.{el}"
        if not isinstance(el, str) or not _ELEMENT.fullmatch(el):
            raise ValueError(f"{path}: {at}: {el!r} is not a FHIR element name")
        if not isinstance(what, str):
            raise ValueError(f"{path}: {at} must name primitive, a datatype or a reduction")
        if el in NEVER_KEPT and what not in _REDUCIBLE.get(el, frozenset()):
            raise ValueError(
                f"{path}: {at}: {el!r} carries identity or free text and may not be kept "
                f"as {what!r}"
                + (f" (only as {sorted(_REDUCIBLE[el])})" if _REDUCIBLE.get(el) else "")
            )
        if what == _PRIMITIVE or what in REDUCTIONS:
            out[el] = what
        elif what in datatypes:
            if what in seen:
                raise ValueError(f"{path}: {at}: datatype {what} contains itself")
            out[el] = _resolve(path, f"datatypes.{what}", datatypes[what], datatypes, (*seen, what))
        else:
            raise ValueError(
                f"{path}: {at}: {what!r} is not primitive, a datatype under `datatypes` or a "
                f"reduction ({', '.join(sorted(REDUCTIONS))})"
            )
    return out


def parse_phi_allow(doc: object, path: Path = ALLOW_FILE) -> PhiAllowList:
    """Check and build the allow-list from a parsed phi_allow.yaml document.

    Raises ValueError (a configuration error, not retryable) naming the file and entry: not
    ``version: 1``, unknown top-level keys, an element name that is not one, a spec that is
    neither primitive, a datatype nor a reduction, a recursive datatype, an element of
    :data:`NEVER_KEPT` kept other than through its allowed reduction, or a Patient whose
    ``id`` is not pseudonymised.
    """
    if not isinstance(doc, dict) or doc.get("version") != 1:
        raise ValueError(f"{path}: expected a mapping with `version: 1`")
    unknown = set(doc) - {"version", "datatypes", "resources", "default", "bundle_entry"}
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}")
    datatypes = doc.get("datatypes") or {}
    if not isinstance(datatypes, dict) or not all(
        isinstance(k, str) and _TYPE.fullmatch(k) for k in datatypes
    ):
        raise ValueError(f"{path}: `datatypes` must map capitalised type names to specs")
    raw_resources = doc.get("resources")
    if not isinstance(raw_resources, dict) or not raw_resources:
        raise ValueError(f"{path}: `resources` must map resource types to specs")
    resources: dict[str, Spec] = {}
    for rt, spec in raw_resources.items():
        if not isinstance(rt, str) or not _TYPE.fullmatch(rt):
            raise ValueError(f"{path}: resources: {rt!r} is not a resource type name")
        resources[rt] = _resolve(path, f"resources.{rt}", spec, datatypes, ())
    patient = resources.get("Patient")
    if patient is None or patient.get("id") != "patient_pseudonym":
        raise ValueError(f"{path}: resources.Patient.id must be patient_pseudonym")
    for rt, spec in resources.items():
        if rt != "Patient" and "patient_pseudonym" in spec.values():
            raise ValueError(f"{path}: patient_pseudonym is for resources.Patient.id only")
    return PhiAllowList(
        resources=resources,
        default=_resolve(path, "default", doc.get("default"), datatypes, ()),
        bundle_entry=_resolve(path, "bundle_entry", doc.get("bundle_entry"), datatypes, ()),
        source=str(path),
    )


@lru_cache(maxsize=4)
def load_phi_allow(path: Path | None = None) -> PhiAllowList:
    """Load and check ``fhir/data/phi_allow.yaml`` (cached). Raises ValueError (configuration
    error, not retryable) when it is unreadable or malformed (see :func:`parse_phi_allow`)."""
    p = ALLOW_FILE if path is None else Path(path)
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{p}: cannot read the PHI allow-list: {exc}") from exc
    return parse_phi_allow(doc, p)


# Loaded at import, so that a broken table stops the gateway, `replay`, `convert` and
# `dlq replay` before they read anything (they all import this module).
_DEFAULT = load_phi_allow()


def pseudonymise(identifier: str, key: bytes, system: str = "") -> str:
    """The pseudonym of ``identifier`` (in identifier ``system``, "" for a resource id).

    Deterministic: the same (key, system, identifier) always gives the same pseudonym, e.g.
    ``pt-k3v7...`` (23 characters, a valid FHIR id). Raises ValueError (a programming or
    configuration error, not retryable) for an empty key or identifier.
    """
    if not key:
        raise ValueError("pseudonymisation key is empty")
    if not identifier:
        raise ValueError("cannot pseudonymise an empty identifier")
    mac = hmac.new(key, f"{system}|{identifier}".encode(), hashlib.sha256).digest()
    return PREFIX + base64.b32encode(mac).decode("ascii")[:LENGTH].lower()


def _pseudo_uuid(pseudonym: str) -> str:
    """A urn:uuid for a pseudonymised Patient's Bundle fullUrl (derived only from the pseudonym)."""
    return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, 'wardwatch:' + pseudonym)}"


def _year(value: object) -> object:
    return value[:4] if isinstance(value, str) else None


def _ward_code(value: object) -> object:
    m = _FIRST_WORD.match(value.strip()) if isinstance(value, str) else None
    return m.group(0) if m else None


def _no_query(value: object) -> object:
    return value.split("?", 1)[0] if isinstance(value, str) else None


def _is_primitive(value: object) -> bool:
    if isinstance(value, list):
        return all(isinstance(v, str | int | float | bool) for v in value)
    return isinstance(value, str | int | float | bool)


class _Stripper:
    def __init__(self, key: bytes, allow: PhiAllowList) -> None:
        self.key = key
        self.allow = allow
        self.full_urls: dict[str, str] = {}  # Bundle fullUrl of a Patient -> Patient id
        self.cache: dict[tuple[str, str], str] = {}

    def pseudo(self, identifier: str, system: str = "") -> str:
        k = (system, identifier)
        p = self.cache.get(k)
        if p is None:
            p = self.cache[k] = pseudonymise(identifier, self.key, system)
        return p

    def collect(self, node: Any) -> None:
        """Find Patient entries (and their fullUrls) in Bundles, recursively."""
        if isinstance(node, dict) and node.get("resourceType") == "Bundle":
            for e in node.get("entry") or ():
                if not isinstance(e, dict):
                    continue
                r, fu = e.get("resource"), e.get("fullUrl")
                if isinstance(r, dict):
                    if r.get("resourceType") == "Patient" and isinstance(fu, str):
                        pid = r.get("id")
                        if not isinstance(pid, str) or not pid:
                            pid = fu.rsplit("/", 1)[-1].rsplit(":", 1)[-1]
                        self.full_urls[fu] = pid
                    self.collect(r)

    def reference(self, ref: str) -> str | None:
        """The pseudonymised form of a reference if it points at a Patient, else None."""
        pid = self.full_urls.get(ref)
        if pid is not None:
            return f"Patient/{self.pseudo(pid)}"
        m = _PATIENT_REF.search(ref)
        if m is not None:
            return f"Patient/{self.pseudo(unquote(m.group(1)))}"
        m = _PATIENT_SEARCH.search(ref)
        if m is not None:  # conditional reference Patient?identifier=system|value
            for ident in parse_qs(m.group(1)).get("identifier", []):
                system, bar, value = ident.rpartition("|")
                return f"Patient/{self.pseudo(value, system if bar else '')}"
            return "Patient/unknown"
        return None

    def reduce(self, how: str, key: str, value: object) -> tuple[str, object] | None:
        """(key, value) kept of one element by a reduction, or None to drop it."""
        out: object
        if how == "reference":
            if not isinstance(value, str):
                return None
            pseudo = self.reference(value)
            # a conditional reference to anything else searches by identifiers: cut them off
            out = pseudo if pseudo is not None else _no_query(value)
        elif how == "patient_pseudonym":
            out = self.pseudo(value) if isinstance(value, str) and value else None
        elif how == "year":
            out = _year(value)
        elif how == "deceased":
            return ("deceasedBoolean", True) if value is not None else None
        elif how == "ward_code":
            out = _ward_code(value)
        elif how == "no_query":
            out = _no_query(value)
        else:  # pragma: no cover - parse_phi_allow admits only the names above
            raise AssertionError(how)
        return None if out is None or out == "" else (key, out)

    def element(self, spec: str | Spec, key: str, value: Any) -> tuple[str, Any] | None:
        if isinstance(spec, str):
            if spec == _PRIMITIVE:
                return (key, value) if _is_primitive(value) else None
            return self.reduce(spec, key, value)
        if isinstance(value, list):
            items = [x for x in (self.complex(spec, v) for v in value) if x is not None]
            return (key, items) if items or not value else None
        kept = self.complex(spec, value)
        return None if kept is None else (key, kept)

    def complex(self, spec: Spec, node: Any) -> dict[str, Any] | None:
        """The allowed part of a complex element, None when it is not a JSON object.

        An object with nothing allowed in it stays as ``{}``: R4B accepts an empty element,
        so a required one (Observation.code with only a ``text``) stays present and the
        resource is judged as before; ``{}`` carries nothing.
        """
        if not isinstance(node, dict):
            return None
        out: dict[str, Any] = {}
        for k, v in node.items():
            sub = spec.get(k)
            if sub is None:
                continue
            kept = self.element(sub, k, v)
            if kept is not None:
                out[kept[0]] = kept[1]
        return out

    def resource(self, node: Any) -> Any:
        """The allowed part of a resource: by its type's spec; Bundles by :meth:`bundle`."""
        if not isinstance(node, dict):
            return node  # not a resource: parse rejects it; nothing in it is kept as is
        rt = node.get("resourceType")
        if rt == "Bundle":
            return self.bundle(node)
        out = self.complex(self.allow.spec(rt), node) or {}
        if isinstance(rt, str):
            return {"resourceType": rt, **out}
        return out

    def bundle(self, b: Mapping[str, Any]) -> dict[str, Any]:
        out = self.complex(self.allow.spec("Bundle"), b) or {}
        out = {"resourceType": "Bundle", **out}
        entries = b.get("entry")
        if not isinstance(entries, list):
            if entries is not None:
                out["entry"] = None  # parse still rejects the Bundle for it
            return out
        kept: list[Any] = []
        for e in entries:
            if not isinstance(e, dict):
                kept.append(None)  # parse rejects the Bundle for it; keep it visible
                continue
            ne = self.complex(self.allow.bundle_entry, e) or {}
            r = e.get("resource")
            if "resource" in e:
                ne["resource"] = self.resource(r)
            fu = e.get("fullUrl")
            if isinstance(r, dict) and r.get("resourceType") == "Patient":
                pseudo = ne["resource"].get("id")
                if isinstance(pseudo, str):
                    ne = {"fullUrl": _pseudo_uuid(pseudo), **ne}
                    if "request" in e:  # no ifNoneExist identifiers
                        ne["request"] = {"method": "PUT", "url": f"Patient/{pseudo}"}
                else:
                    ne.pop("request", None)
            elif isinstance(fu, str):
                # parse's event source when the resource has no id; a Patient's fullUrl
                # (maybe its MRN) never gets here
                ne = {"fullUrl": _no_query(fu), **ne}
            kept.append(ne)
        out["entry"] = kept
        return out


def strip_phi(
    resource: Mapping[str, Any], key: bytes, allow: PhiAllowList | None = None
) -> dict[str, Any]:
    """A copy of a FHIR resource (or Bundle) that keeps only what the allow-list keeps.

    ``allow`` defaults to the packaged ``fhir/data/phi_allow.yaml`` (:func:`load_phi_allow`);
    docs/gateway.md lists what it keeps per resource type. Everything not listed goes, at any
    depth: identifiers, names, telecom, addresses, narratives, notes, display names,
    ``code.text``, extensions (``valueIdentifier`` ...), contained resources, attachment data.

    * Patient resources (top level, Bundle entries) keep ``id`` = pseudonym, ``gender``,
      ``birthDate`` truncated to the year and ``deceasedBoolean``.
    * Every Reference to a Patient (``Patient/<id>``, ``.../Patient/<id>``, a Bundle's
      ``urn:uuid:`` fullUrl of a Patient entry, ``Patient?identifier=sys|value``) becomes
      ``Patient/<pseudonym>``; other references keep their value without a search query.
    * A Patient entry's ``fullUrl`` becomes a urn:uuid derived from the pseudonym and its
      transaction ``request`` a ``PUT Patient/<pseudonym>`` (no ``ifNoneExist`` identifiers).
    * An Encounter location's ``display`` is reduced to its first word, the ward code that
      :mod:`fhir.parse` needs to date ICU admissions.
    * Resource types not listed keep only ``id``, ``meta`` (lastUpdated, tag codes) and
      their ``subject``/``patient`` reference.

    The input is not modified. Raises ValueError (not retryable) for an empty key.
    """
    if not key:
        raise ValueError("pseudonymisation key is empty")
    s = _Stripper(key, _DEFAULT if allow is None else allow)
    s.collect(resource)
    result = s.resource(dict(resource))
    assert isinstance(result, dict)
    return result


__all__ = [
    "ALLOW_FILE",
    "LENGTH",
    "NEVER_KEPT",
    "PREFIX",
    "PhiAllowList",
    "load_phi_allow",
    "parse_phi_allow",
    "pseudonymise",
    "strip_phi",
]
