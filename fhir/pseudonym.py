"""Pseudonymisation at the edge: patient identity out, stable pseudonyms in.

``pseudonymise`` turns an identifier into ``pt-`` + 20 lower-case base32 characters of
HMAC-SHA256(key, system + "|" + identifier): 100 bits, deterministic for one key, not
reversible without the key (``Settings.pseudonym_key``). ``strip_phi`` applies it to FHIR
resources: the pseudonym of a Patient is that of its logical id (``Patient.id``, the id every
``Patient/<id>`` reference carries), so a Patient and the Observations that point at it agree
whether they arrive together or apart.

Pure and fast: dict/list walks and one HMAC per distinct patient; no I/O.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, unquote

PREFIX = "pt-"
LENGTH = 20  # base32 characters after the prefix (100 bits)

_PATIENT_REF = re.compile(r"(?:^|/)Patient/([^/?#]+)(?:/_history/[^/]*)?$")
_PATIENT_SEARCH = re.compile(r"(?:^|/)Patient\?(.*)$")
# Patient elements kept (birthDate is truncated to the year); everything else goes.
_PATIENT_KEEP = ("gender", "birthDate", "deceasedBoolean")
# Free-text and identity-typed elements dropped everywhere: WardWatch maps none of them, and
# they carry identity in real feeds (Synthea's SDOH Observation has the address as valueString).
_DROPPED = frozenset(
    {"valueString", "valueAddress", "valueHumanName", "valueContactPoint", "note", "photo"}
)


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


class _Stripper:
    def __init__(self, key: bytes) -> None:
        self.key = key
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

    def patient(self, r: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"resourceType": "Patient"}
        pid = r.get("id")
        if isinstance(pid, str) and pid:
            out["id"] = self.pseudo(pid)
        for k in _PATIENT_KEEP:
            if k in r:
                out[k] = r[k]
        bd = out.get("birthDate")
        if isinstance(bd, str):
            out["birthDate"] = bd[:4]
        if "deceasedDateTime" in r:
            out["deceasedBoolean"] = True
        return out

    def walk(self, node: Any) -> Any:
        if isinstance(node, list):
            return [self.walk(x) for x in node]
        if not isinstance(node, dict):
            return node
        rt = node.get("resourceType")
        if rt == "Patient":
            return self.patient(node)
        if rt == "Bundle":
            return self.bundle(node)
        out: dict[str, Any] = {}
        ref = node.get("reference")
        new_ref = self.reference(ref) if isinstance(ref, str) else None
        for k, v in node.items():
            if isinstance(rt, str) and k == "text":
                continue  # narrative: free text that often names the patient
            if new_ref is not None and k in ("display", "identifier"):
                continue  # a Patient reference's display is the patient's name
            if k in _DROPPED:
                continue
            if k == "data" and "contentType" in node:
                continue  # Attachment payload (notes, images): may hold identity
            out[k] = self.walk(v)
        if new_ref is not None:
            out["reference"] = new_ref
        return out

    def bundle(self, b: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in b.items():
            if k != "entry" or not isinstance(v, list):
                out[k] = self.walk(v) if k != "text" else None
                continue
            entries: list[Any] = []
            for e in v:
                if not isinstance(e, dict):
                    entries.append(e)
                    continue
                r = e.get("resource")
                ne = {k2: self.walk(v2) for k2, v2 in e.items() if k2 not in ("fullUrl", "request")}
                fu = e.get("fullUrl")
                if isinstance(r, dict) and r.get("resourceType") == "Patient":
                    pseudo = ne["resource"].get("id")
                    if isinstance(pseudo, str):
                        ne_full = _pseudo_uuid(pseudo)
                        ne = {"fullUrl": ne_full, **ne}
                        if "request" in e:
                            ne["request"] = {"method": "PUT", "url": f"Patient/{pseudo}"}
                    entries.append(ne)
                    continue
                if isinstance(fu, str):
                    ne = {"fullUrl": fu, **ne}
                if "request" in e:
                    ne["request"] = self.walk(e["request"])
                entries.append(ne)
            out[k] = entries
        return {k: v for k, v in out.items() if v is not None}


def strip_phi(resource: Mapping[str, Any], key: bytes) -> dict[str, Any]:
    """A copy of a FHIR resource (or Bundle) with the patient's identity replaced.

    * Patient resources (top level, Bundle entries, contained) are reduced to
      ``id`` = pseudonym, ``gender``, ``birthDate`` truncated to the year and
      ``deceasedBoolean``: no name, address, telecom, identifier, photo, contact, narrative.
    * Every Reference to a Patient (``Patient/<id>``, ``.../Patient/<id>``, a Bundle's
      ``urn:uuid:`` fullUrl of a Patient entry, ``Patient?identifier=sys|value``) becomes
      ``Patient/<pseudonym>``; its ``display`` and ``identifier`` are dropped.
    * A Patient entry's ``fullUrl`` becomes a urn:uuid derived from the pseudonym and its
      transaction ``request`` a ``PUT Patient/<pseudonym>`` (no ``ifNoneExist`` identifiers).
    * Narratives (``text``), Attachment payloads (``data``), free text (``note``,
      ``valueString``) and identity-typed values (``valueAddress``, ``valueHumanName``,
      ``valueContactPoint``) are dropped everywhere.

    The input is not modified. Raises ValueError (not retryable) for an empty key.
    """
    if not key:
        raise ValueError("pseudonymisation key is empty")
    s = _Stripper(key)
    s.collect(resource)
    result = s.walk(dict(resource))
    assert isinstance(result, dict)
    return result


__all__ = ["LENGTH", "PREFIX", "pseudonymise", "strip_phi"]
