"""Pseudonyms and PHI stripping."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest

from fhir.parse import parse_resource
from fhir.pseudonym import pseudonymise, strip_phi

from .conftest import observation, shared_dir

KEY = b"test-key"


def test_pseudonym_is_deterministic_keyed_and_id_safe() -> None:
    p = pseudonymise("12345", KEY)
    assert p == pseudonymise("12345", KEY)
    assert re.fullmatch(r"pt-[a-z2-7]{20}", p)
    assert p != pseudonymise("12345", b"other-key")
    assert p != pseudonymise("12345", KEY, system="urn:oid:1.2.3")
    assert p != pseudonymise("12346", KEY)
    with pytest.raises(ValueError, match="key"):
        pseudonymise("1", b"")
    with pytest.raises(ValueError, match="empty"):
        pseudonymise("", KEY)


def test_patient_is_reduced() -> None:
    patient = {
        "resourceType": "Patient",
        "id": "p1",
        "identifier": [{"system": "urn:mrn", "value": "MRN-7"}],
        "name": [{"family": "Shaw", "given": ["Amy"]}],
        "telecom": [{"system": "phone", "value": "555-1234"}],
        "address": [{"line": ["1 Main St"], "city": "Springfield"}],
        "photo": [{"data": "AAAA"}],
        "contact": [{"name": {"family": "Shaw"}}],
        "gender": "female",
        "birthDate": "1987-02-20",
        "text": {"status": "generated", "div": "<div>Amy Shaw</div>"},
    }
    out = strip_phi(patient, KEY)
    assert out == {
        "resourceType": "Patient",
        "id": pseudonymise("p1", KEY),
        "gender": "female",
        "birthDate": "1987",
    }
    assert patient["name"]  # input untouched


@pytest.mark.parametrize(
    "ref", ["Patient/p1", "https://ehr.example/fhir/Patient/p1", "Patient/p1/_history/2"]
)
def test_references_are_replaced(ref: str) -> None:
    obs = observation(subject={"reference": ref, "display": "Amy Shaw"})
    out = strip_phi(obs, KEY)
    assert out["subject"] == {"reference": f"Patient/{pseudonymise('p1', KEY)}"}
    assert "text" not in out


def test_bundle_urn_uuid_consistent_and_parseable() -> None:
    patient = {"resourceType": "Patient", "id": "p9", "name": [{"family": "Zed"}]}
    obs = observation(subject={"reference": "urn:uuid:aaa", "display": "Zed"})
    doc = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:aaa",
                "resource": patient,
                "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=x|1"},
            },
            {
                "fullUrl": "urn:uuid:bbb",
                "resource": obs,
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
    out = strip_phi(doc, KEY)
    text = orjson.dumps(out).decode()
    assert "Zed" not in text
    assert "aaa" not in text
    assert "p9" not in text
    pseudo = pseudonymise("p9", KEY)
    assert out["entry"][0]["request"] == {"method": "PUT", "url": f"Patient/{pseudo}"}
    res = parse_resource(orjson.dumps(out))
    assert [e.patient for e in res.events] == [pseudo]


def test_conditional_reference() -> None:
    obs = observation(subject={"reference": "Patient?identifier=urn:mrn|MRN-7"})
    out = strip_phi(obs, KEY)
    assert out["subject"]["reference"] == f"Patient/{pseudonymise('MRN-7', KEY, 'urn:mrn')}"


def _identity_strings(patient: dict[str, Any]) -> list[str]:
    out = [patient["id"]]
    for n in patient.get("name", []):
        out += [*n.get("given", []), n.get("family", "")]
    out += [i["value"] for i in patient.get("identifier", []) if len(i.get("value", "")) > 4]
    for a in patient.get("address", []):
        out += a.get("line", [])
    out += [t["value"] for t in patient.get("telecom", [])]
    return [s for s in out if s and len(s) > 3]


@pytest.mark.shared
def test_synthea_bundles_keep_no_identity() -> None:
    files = sorted(shared_dir("synthea-r4").glob("*.json"))
    checked = 0
    for f in files:
        doc = orjson.loads(f.read_bytes())
        patients = [
            e["resource"]
            for e in doc.get("entry", [])
            if e.get("resource", {}).get("resourceType") == "Patient"
        ]
        if not patients:
            continue
        text = orjson.dumps(strip_phi(doc, KEY)).decode()
        for p in patients:
            leaked = [s for s in _identity_strings(p) if s in text]
            assert not leaked, (f.name, leaked)
        res = parse_resource(text.encode())
        assert all(e.patient.startswith("pt-") for e in res.events)
        checked += 1
    assert checked >= 20
