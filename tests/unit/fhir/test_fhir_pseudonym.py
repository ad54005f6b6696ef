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


# ------------------------------------------------------------------ the allow-list
PLANT = "PLNT"  # every planted identity string contains this; nothing kept may
# Kinds every DomainResource may carry; the rest (note, performer, ...) per type below, so
# that each planted resource is valid R4B and its events can be compared with the stripped one
PLANTED_KINDS = {
    "identifier": [{"system": "urn:hosp:id", "value": f"{PLANT}-ID-1"}],
    "text": {"status": "generated", "div": f"<div>{PLANT} narrative</div>"},
    "extension": [
        {"url": "urn:x:visit", "valueIdentifier": {"value": f"{PLANT}-VISIT"}},
        {"url": "urn:x:name", "valueString": f"{PLANT} string"},
    ],
    "contained": [{"resourceType": "Patient", "id": "c1", "name": [{"family": PLANT}]}],
    "language": "en",
}
NOTE = [{"text": f"{PLANT} note", "authorString": f"{PLANT} author"}]
PERFORMER = [{"reference": "Practitioner/dr1", "display": f"Dr {PLANT}"}]
ENCOUNTER = {"reference": "Encounter/e1", "display": f"visit {PLANT}"}
STATUS_EXT = {"extension": [{"url": "urn:x", "valueString": f"{PLANT} primitive ext"}]}


def _planted(rt: str, **fields: Any) -> dict[str, Any]:
    """A resource of type ``rt`` with every kind of identifier the issue names planted."""
    return {
        "resourceType": rt,
        "id": f"{rt.lower()}-1",
        "meta": {
            "lastUpdated": "2026-01-01T10:00:00Z",
            "tag": [{"system": "urn:x", "code": "t", "display": f"{PLANT} tag"}],
            "source": f"urn:{PLANT}",
        },
        **PLANTED_KINDS,
        "subject": {
            "reference": "Patient/MRN-PLNT-1",
            "display": f"{PLANT} Shaw",
            "identifier": {"value": f"{PLANT}-MRN"},
        },
        **fields,
    }


def _code(system: str, code: str) -> dict[str, Any]:
    return {
        "coding": [{"system": system, "code": code, "display": f"{PLANT} coding"}],
        "text": f"{PLANT} code text",
    }


LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"


def _planted_resources() -> list[dict[str, Any]]:
    return [
        {
            "resourceType": "Patient",
            "id": "MRN-PLNT-1",
            **PLANTED_KINDS,
            "name": [{"family": f"{PLANT}son", "given": [f"{PLANT}a"]}],
            "telecom": [{"system": "phone", "value": f"555-{PLANT}"}],
            "address": [{"line": [f"1 {PLANT} Lane"], "city": "Leeds"}],
            "contact": [{"name": {"family": f"{PLANT}mother"}}],
            "photo": [{"data": "UExOVA=="}],
            "generalPractitioner": [{"display": f"Dr {PLANT}"}],
            "birthDate": "1957-03-14",
            "gender": "female",
        },
        _planted(
            "Observation",
            status="final",
            category=[
                _code("http://terminology.hl7.org/CodeSystem/observation-category", "vital-signs")
            ],
            code=_code(LOINC, "8867-4"),
            effectiveDateTime="2026-01-01T11:55:00Z",
            valueQuantity={
                "value": 88,
                "unit": "/min",
                "system": "http://unitsofmeasure.org",
                "code": "/min",
                "extension": [{"url": "urn:x", "valueString": PLANT}],
            },
            interpretation=[_code("urn:x", "N")],
            device={"display": f"{PLANT} monitor"},
            note=NOTE,
            performer=PERFORMER,
            encounter=ENCOUNTER,
            _status=STATUS_EXT,
            component=[
                {
                    "code": _code(LOINC, "8480-6"),
                    "valueQuantity": {"value": 120, "unit": "mm[Hg]"},
                    "extension": PLANTED_KINDS["extension"],
                }
            ],
        ),
        _planted(
            "Encounter",
            status="in-progress",
            **{"class": {"system": "urn:x", "code": "IMP", "display": f"{PLANT} class"}},
            period={"start": "2026-01-01T10:00:00Z"},
            location=[
                {
                    "location": {"reference": "Location/icu3", "display": f"ICU-3 bed 4 {PLANT}"},
                    "period": {"start": "2026-01-01T10:30:00Z"},
                }
            ],
            serviceProvider={"reference": "Organization/o1", "display": f"{PLANT} clinic"},
            participant=[{"individual": {"display": f"Dr {PLANT}"}}],
            hospitalization={"preAdmissionIdentifier": {"value": f"{PLANT}-PRE"}},
            _status=STATUS_EXT,
        ),
        _planted(
            "Condition",
            clinicalStatus=_code(
                "http://terminology.hl7.org/CodeSystem/condition-clinical", "active"
            ),
            code=_code(SNOMED, "65710008"),
            recordedDate="2026-01-01T09:00:00Z",
            recorder={"display": f"Dr {PLANT}"},
            onsetString=f"{PLANT} onset",
            note=NOTE,
            encounter=ENCOUNTER,
            asserter={"display": f"Dr {PLANT}"},
        ),
        _planted(
            "Flag",
            status="active",
            code=_code(SNOMED, "1"),
            period={"start": "2026-01-01T09:00:00Z"},
            author={"display": PLANT},
            encounter=ENCOUNTER,
            _status=STATUS_EXT,
        ),
        _planted(
            "Goal",
            lifecycleStatus="active",
            description=_code(SNOMED, "2"),
            startDate="2026-01-01",
            expressedBy={"display": PLANT},
            note=NOTE,
            _lifecycleStatus=STATUS_EXT,
        ),
        _planted(
            "MedicationAdministration",
            status="completed",
            medicationCodeableConcept=_code("http://www.nlm.nih.gov/research/umls/rxnorm", "1"),
            effectiveDateTime="2026-01-01T09:00:00Z",
            dosage={"text": f"{PLANT} dosage"},
            note=NOTE,
            performer=[{"actor": PERFORMER[0]}],
            context=ENCOUNTER,
            _status=STATUS_EXT,
        ),
        _planted(
            "MedicationRequest",
            status="active",
            intent="order",
            medicationCodeableConcept=_code("urn:x", "1"),
            requester={"display": PLANT},
            note=NOTE,
            encounter=ENCOUNTER,
        ),
        _planted(
            "Procedure",
            status="completed",
            code=_code(SNOMED, "3"),
            performedDateTime="2026-01-01T09:00:00Z",
            note=NOTE,
            performer=[{"actor": PERFORMER[0]}],
            encounter=ENCOUNTER,
        ),
        _planted(
            "DocumentReference",
            status="current",
            type=_code(LOINC, "11506-3"),
            date="2026-01-01T09:00:00Z",
            content=[
                {
                    "attachment": {
                        "contentType": "text/plain",
                        "data": "UExOVCBub3Rl",
                        "url": f"urn:{PLANT}",
                        "title": f"{PLANT} title",
                    }
                }
            ],
            author=[{"display": PLANT}],
            context={"encounter": [ENCOUNTER]},
        ),
        _planted("Organization", name=f"{PLANT} hospital", telecom=[{"value": PLANT}]),
        _planted(
            "SubscriptionStatus",
            status="active",
            type="event-notification",
            notificationEvent=[
                {"eventNumber": "1", "focus": {"reference": "Observation/o1", "display": PLANT}}
            ],
        ),
    ]


def _planted_bundle(btype: str) -> dict[str, Any]:
    resources = _planted_resources()
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": "urn:uuid:PLNT-patient",
            "resource": resources[0],
            "request": {
                "method": "POST",
                "url": "Patient",
                "ifNoneExist": f"identifier=urn:hosp|{PLANT}",
            },
        }
    ]
    for r in resources[1:]:
        entries.append(
            {
                "fullUrl": f"urn:uuid:{r['id']}",
                "resource": {
                    **r,
                    "subject": {"reference": "urn:uuid:PLNT-patient", "display": PLANT},
                },
                "request": {"method": "PUT", "url": f"{r['resourceType']}?identifier={PLANT}"},
            }
        )
    return {
        "resourceType": "Bundle",
        "type": btype,
        "identifier": {"value": f"{PLANT}-BUNDLE"},
        "link": [{"relation": "self", "url": f"https://ehr/Patient?name={PLANT}"}],
        "signature": {"who": {"display": PLANT}},
        "entry": entries,
    }


@pytest.mark.parametrize("rt", [r["resourceType"] for r in _planted_resources()])
def test_planted_identifiers_never_survive_any_resource_type(rt: str) -> None:
    doc = next(r for r in _planted_resources() if r["resourceType"] == rt)
    assert PLANT in orjson.dumps(doc).decode()
    out = strip_phi(doc, KEY)
    text = orjson.dumps(out).decode()
    assert PLANT not in text, text
    assert out["resourceType"] == rt
    if rt == "Patient":
        assert out["id"] == pseudonymise("MRN-PLNT-1", KEY)
    else:
        assert out["id"] == f"{rt.lower()}-1"
        if rt != "Organization":
            assert out["subject"] == {"reference": f"Patient/{pseudonymise('MRN-PLNT-1', KEY)}"}
    for kind in ("identifier", "text", "note", "extension", "contained", "performer"):
        assert kind not in out


@pytest.mark.parametrize(
    "btype", ["transaction", "batch", "collection", "subscription-notification", "history"]
)
def test_planted_identifiers_never_survive_a_bundle(btype: str) -> None:
    out = strip_phi(_planted_bundle(btype), KEY)
    text = orjson.dumps(out).decode()
    assert PLANT not in text, text
    res = parse_resource(text.encode())
    pseudo = pseudonymise("PLNT-patient", KEY)  # a Patient entry's id wins over its fullUrl
    assert {e.patient for e in res.events} == {pseudonymise("MRN-PLNT-1", KEY)} != {pseudo}
    assert out["entry"][0]["request"] == {
        "method": "PUT",
        "url": f"Patient/{pseudonymise('MRN-PLNT-1', KEY)}",
    }
    assert out["entry"][1]["request"] == {"method": "PUT", "url": "Observation"}


def test_what_scoring_needs_survives() -> None:
    resources = {r["resourceType"]: r for r in _planted_resources()}
    obs = strip_phi(resources["Observation"], KEY)
    assert obs["valueQuantity"] == {
        "value": 88,
        "unit": "/min",
        "system": "http://unitsofmeasure.org",
        "code": "/min",
    }
    assert obs["effectiveDateTime"] == "2026-01-01T11:55:00Z"
    assert obs["code"] == {"coding": [{"system": LOINC, "code": "8867-4"}]}
    assert obs["status"] == "final"
    assert obs["component"][0]["valueQuantity"] == {"value": 120, "unit": "mm[Hg]"}
    assert obs["meta"] == {
        "lastUpdated": "2026-01-01T10:00:00Z",
        "tag": [{"system": "urn:x", "code": "t"}],
    }
    enc = strip_phi(resources["Encounter"], KEY)
    # parse dates ICU admissions by the location's first word: kept, the rest is free text
    assert enc["location"] == [
        {
            "location": {"reference": "Location/icu3", "display": "ICU"},
            "period": {"start": "2026-01-01T10:30:00Z"},
        }
    ]
    assert enc["class"] == {"system": "urn:x", "code": "IMP"}
    patient = strip_phi(resources["Patient"], KEY)
    assert patient == {
        "resourceType": "Patient",
        "id": pseudonymise("MRN-PLNT-1", KEY),
        "gender": "female",
        "birthDate": "1957",
    }
    # the planted resources are valid R4B: stripped, they map to the same events (but for
    # the patient's pseudonym, also in a Patient's source), ignored and rejected lines
    mapped = {"Observation", "Encounter", "Condition", "Flag", "Goal", "DocumentReference"}
    for rt, r in resources.items():
        raw = parse_resource(orjson.dumps(r))
        clean = parse_resource(orjson.dumps(strip_phi(r, KEY)))
        assert (rt in mapped | {"Patient"}) == bool(raw.events), (rt, raw.ignored)
        blank: dict[str, Any] = {"patient": ""}
        if rt == "Patient":
            blank["source"] = ""
        if rt == "DocumentReference":  # the note's text never passes the edge (as before)
            assert raw.events[0].text == "PLNT note" and clean.events[0].text is None
            blank["text"] = None
        assert [e.to_dict() | blank for e in clean.events] == [
            e.to_dict() | blank for e in raw.events
        ], rt
        assert clean.ignored == raw.ignored, rt
        assert [str(x) for x in clean.rejected] == [str(x) for x in raw.rejected], rt
        assert {e.patient for e in clean.events} <= {pseudonymise("MRN-PLNT-1", KEY)}
    codes = [e.code for e in parse_resource(orjson.dumps(enc)).events]
    assert codes == ["admission", "icu_admission"]


def test_empty_required_elements_stay_so_validation_is_unchanged() -> None:
    # Observation.code is required: one with only a text stays {} (ignored, not rejected)
    obs = observation(code={"text": "MRN 12345 eye colour"})
    out = strip_phi(obs, KEY)
    assert out["code"] == {}
    assert "12345" not in orjson.dumps(out).decode()
    assert parse_resource(orjson.dumps(out)).ignored == parse_resource(orjson.dumps(obs)).ignored


def test_references_that_are_not_patients() -> None:
    obs = observation(
        subject={"reference": "Group?identifier=urn:x|G-PLNT"},
        hasMember=[{"reference": "Observation/o2"}],
    )
    out = strip_phi(obs, KEY)
    assert out["subject"] == {"reference": "Group"}  # the search by identifier cut off
    assert "hasMember" not in out  # not allow-listed


def _table() -> dict[str, Any]:
    import yaml

    from fhir.pseudonym import ALLOW_FILE

    doc: dict[str, Any] = yaml.safe_load(ALLOW_FILE.read_text())
    return doc


def test_packaged_allow_list_loads() -> None:
    from fhir.pseudonym import load_phi_allow

    allow = load_phi_allow()
    assert allow.spec("Observation")["valueQuantity"] == {
        "value": "primitive",
        "comparator": "primitive",
        "unit": "primitive",
        "system": "primitive",
        "code": "primitive",
    }
    assert allow.spec("Claim") == allow.default


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(version=2), "version: 1"),
        (lambda d: d.update(extra={}), "unknown keys"),
        (lambda d: d["resources"]["Observation"].update(identifier="primitive"), "identifier"),
        (lambda d: d["resources"]["Observation"].update(code="Identifier"), "not primitive"),
        (lambda d: d["datatypes"]["Coding"].update(display="primitive"), "display"),
        (lambda d: d["datatypes"]["Coding"].update(display="ward_code"), None),
        (lambda d: d["resources"]["Encounter"].update(text="year"), "text"),
        (lambda d: d["resources"]["Patient"].update(id="primitive"), "patient_pseudonym"),
        (lambda d: d["resources"]["Flag"].update(id="patient_pseudonym"), "Patient.id only"),
        (lambda d: d["datatypes"]["Coding"].update(nested="Coding"), "contains itself"),
        (lambda d: d["resources"].update(observation={"id": "primitive"}), "resource type"),
        (lambda d: d["resources"]["Observation"].update({"value-x": "primitive"}), "element"),
        (lambda d: d["resources"].update(Flag=[]), "must map"),
        (lambda d: d.pop("default"), "default"),
    ],
)
def test_malformed_allow_list_raises(edit: Any, message: str | None) -> None:
    from pathlib import Path

    from fhir.pseudonym import parse_phi_allow

    doc = _table()
    edit(doc)
    if message is None:  # a NEVER_KEPT name through its allowed reduction is fine
        parse_phi_allow(doc, Path("x.yaml"))
        return
    with pytest.raises(ValueError, match=message):
        parse_phi_allow(doc, Path("x.yaml"))


def test_unreadable_allow_list_raises(tmp_path: Any) -> None:
    from fhir.pseudonym import load_phi_allow

    bad = tmp_path / "phi_allow.yaml"
    bad.write_text("version: [1\n")
    with pytest.raises(ValueError, match="cannot read"):
        load_phi_allow(bad)
    with pytest.raises(ValueError, match="cannot read"):
        load_phi_allow(tmp_path / "absent.yaml")


def test_broken_allow_list_stops_the_import(tmp_path: Any) -> None:
    """The edge imports fhir.pseudonym before it reads anything: a broken table stops it."""
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    code = textwrap.dedent(
        """
        import pathlib
        import fhir.codes
        real = pathlib.Path.read_text
        def read_text(self, *a, **k):
            if self.name == "phi_allow.yaml":
                return real(self, *a, **k).replace("id: patient_pseudonym", "id: primitive")
            return real(self, *a, **k)
        pathlib.Path.read_text = read_text
        import fhir.pseudonym
        """
    )
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60
    )
    assert r.returncode != 0
    assert "resources.Patient.id must be patient_pseudonym" in r.stderr
