"""Conformance: `wardwatch convert` over ../shared/data accounts for every input, and the
context-event contract (Condition, Flag, Goal, MedicationAdministration, Encounter,
DocumentReference).

The pinned counts are what this code produced on the shared data when written; a change in
mapping shows up here first. Update them deliberately (and say why in the commit).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from fhir.parse import parse_resource
from streams.convert import convert
from streams.settings import Settings

from .conftest import shared_dir

EXPECTED_KINDS = {
    "fhir-json": {
        "files": 603,
        "inputs": 603,
        # Patients give birth_year and sex (23 files of nothing but a Patient before them)
        "with_events": 73,
        "rejected": 23,
        "nothing_clinical": 507,
        "events": 4533,
        "entry_rejects": 182,
    },
    "hl7v2": {
        "files": 70,
        "inputs": 70,
        "with_events": 5,
        "rejected": 65,
        "nothing_clinical": 0,
        "events": 15,
        "entry_rejects": 0,
    },
    "psv": {
        "files": 50,
        "inputs": 1942,
        "with_events": 1942,
        "rejected": 0,
        "nothing_clinical": 0,
        # + 4 per stay: the Patient and Encounter replay sends before the first Observation
        "events": 14049,
        "entry_rejects": 0,
    },
}
EXPECTED_VITALS = {
    "heart_rate": 1997,
    "systolic_bp": 1964,
    "diastolic_bp": 1963,
    "spo2": 1855,
    "mean_bp": 1847,
    "respiratory_rate": 1796,
    "temperature": 720,
    "etco2": 135,
    "fio2": 42,
    "gcs_total": 2,
}
EXPECTED_CONTEXT = {
    "admission": 739,
    "discharge": 685,
    "note": 685,
    "condition": 655,
    "birth_year": 335,
    "sex": 349,
    "icu_admission": 50,  # the PhysioNet stays' ICU location; no HL7 sample is in an ICU
}


@pytest.mark.shared
def test_convert_shared_data_accounts_for_everything(tmp_path: Path) -> None:
    inputs = [
        shared_dir("fhir-r4-examples"),
        shared_dir("synthea-r4"),
        shared_dir("hl7v2"),
        shared_dir("physionet2019") / "training_setB",
    ]
    out, rej = tmp_path / "events.ndjson", tmp_path / "rejects.ndjson"
    stats = convert(inputs, out, rej, Settings(), psv_sample=50, progress=False)
    assert stats.crashes == 0
    got = stats.as_dict()
    assert got["kinds"] == EXPECTED_KINDS
    codes = stats.codes
    assert {c: codes[c] for c in EXPECTED_VITALS} == EXPECTED_VITALS
    assert {c: codes[c] for c in EXPECTED_CONTEXT} == EXPECTED_CONTEXT
    for k in got["kinds"].values():  # type: ignore[attr-defined]
        assert k["inputs"] == k["with_events"] + k["rejected"] + k["nothing_clinical"]
    events = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert len(events) == sum(k["events"] for k in EXPECTED_KINDS.values())
    for e in events[:: max(len(events) // 500, 1)]:
        assert {"patient", "time", "code", "loinc", "value", "unit"} <= set(e)
        assert e["patient"].startswith("pt-") and "T" in e["time"]
    rejects = [orjson.loads(line) for line in rej.read_bytes().splitlines()]
    n_rejected = sum(k["rejected"] for k in EXPECTED_KINDS.values())
    assert len(rejects) >= n_rejected
    assert all(r["input"] and r["position"] and r["reason"] for r in rejects)


def test_convert_cli_on_small_inputs(tmp_path: Path) -> None:
    from streams.cli_edge import convert_cmd

    (tmp_path / "a.ndjson").write_text(
        orjson.dumps(OBS).decode() + "\n{broken\n" + orjson.dumps(CONDITION).decode() + "\n"
    )
    (tmp_path / "m.hl7").write_text(
        "MSH|^~\\&|L|H|W|W|20260101120000+0000||ORU^R01|1|P|2.5\n"
        "PID|||7^^^H\nOBX|1|NM|8867-4^^LN||70|/min|||||F|||20260101115500+0000\n"
        "MSH|^~\\&|L|H|W|W|20260101120000+0000||SIU^S12|2|P|2.5\nPID|||7^^^H\n"
    )
    out, rej = tmp_path / "o.ndjson", tmp_path / "r.ndjson"
    res = CliRunner().invoke(
        convert_cmd, [str(tmp_path), "--out", str(out), "--rejects", str(rej), "--no-progress"]
    )
    assert res.exit_code == 0, res.output
    assert "ndjson" in res.output and "hl7v2" in res.output and "heart_rate" in res.output
    codes = sorted(orjson.loads(x)["code"] for x in out.read_bytes().splitlines())
    assert codes == ["condition", "heart_rate", "heart_rate"]
    rejects = [orjson.loads(x) for x in rej.read_bytes().splitlines()]
    assert sorted(r["position"].rsplit("/", 1)[-1] for r in rejects) == [
        "a.ndjson:2",
        "m.hl7:message 2",
    ]


# ------------------------------------------------------------------ context event contract
OBS: dict[str, Any] = {
    "resourceType": "Observation",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
    "subject": {"reference": "Patient/p1"},
    "effectiveDateTime": "2026-01-01T00:00:00Z",
    "valueQuantity": {"value": 80, "unit": "/min", "code": "/min"},
}
SEPSIS = {"system": "http://snomed.info/sct", "code": "91302008"}
CONDITION: dict[str, Any] = {
    "resourceType": "Condition",
    "id": "c1",
    "subject": {"reference": "Patient/p1"},
    "code": {"coding": [SEPSIS]},
    "onsetDateTime": "2026-01-01",  # date only: skipped for recordedDate
    "recordedDate": "2026-01-01T10:00:00+01:00",
}


def one(resource: dict[str, Any]) -> Any:
    res = parse_resource(orjson.dumps(resource), strict=True)
    assert len(res.events) == 1, (res.events, res.ignored)
    return res.events[0]


def test_condition() -> None:
    e = one(CONDITION)
    assert (e.kind, e.code, e.value_code, e.status) == (
        "condition",
        "condition",
        "http://snomed.info/sct|91302008",
        "final",
    )
    assert e.time.isoformat() == "2026-01-01T09:00:00+00:00" and e.source == "Condition/c1"
    refuted = {
        **CONDITION,
        "verificationStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                    "code": "refuted",
                }
            ]
        },
    }
    assert one(refuted).status == "entered-in-error"
    no_time = {k: v for k, v in CONDITION.items() if k != "recordedDate"}
    with pytest.raises(Exception, match="time of day"):
        parse_resource(orjson.dumps(no_time), strict=True)


def test_flag_and_goal() -> None:
    flag = {
        "resourceType": "Flag",
        "status": "active",
        "code": {"coding": [{"system": "http://example.org/flags", "code": "copd-t2rf"}]},
        "subject": {"reference": "Patient/p1"},
        "period": {"start": "2026-01-01T00:00:00Z"},
    }
    e = one(flag)
    assert (e.kind, e.code, e.value_code) == ("flag", "flag", "http://example.org/flags|copd-t2rf")
    goal = {
        "resourceType": "Goal",
        "lifecycleStatus": "active",
        "description": {"coding": [{"system": "http://snomed.info/sct", "code": "1234"}]},
        "subject": {"reference": "Patient/p1"},
        "meta": {"lastUpdated": "2026-01-01T00:00:00Z"},
    }
    e = one(goal)
    assert (e.kind, e.code, e.value_code) == ("flag", "goal", "http://snomed.info/sct|1234")
    group = {**flag, "subject": {"reference": "Group/g1"}}
    res = parse_resource(orjson.dumps(group))
    assert res.events == [] and res.ignored and res.rejected == []


def test_medication_administration() -> None:
    ma = {
        "resourceType": "MedicationAdministration",
        "status": "completed",
        "medicationCodeableConcept": {
            "coding": [{"system": "http://www.whocc.no/atc", "code": "J01DD04"}]
        },
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2026-01-01T00:00:00Z",
    }
    e = one(ma)
    assert (e.kind, e.code, e.value_code) == (
        "medication",
        "antibiotic",
        "http://www.whocc.no/atc|J01DD04",
    )
    norad = {
        **ma,
        "medicationCodeableConcept": {
            "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "7512"}]
        },
    }
    assert one(norad).code == "vasopressor"
    paracetamol = {
        **ma,
        "medicationCodeableConcept": {
            "coding": [{"system": "http://www.whocc.no/atc", "code": "N02BE01"}]
        },
    }
    assert parse_resource(orjson.dumps(paracetamol)).events == []


def test_encounter_and_note() -> None:
    enc = {
        "resourceType": "Encounter",
        "id": "e1",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
        "subject": {"reference": "Patient/p1"},
        "period": {"start": "2026-01-01T00:00:00Z", "end": "2026-01-03T00:00:00Z"},
    }
    evs = parse_resource(orjson.dumps(enc), strict=True).events
    assert [(e.kind, e.code) for e in evs] == [
        ("encounter", "admission"),
        ("encounter", "discharge"),
    ]
    tagged = {
        **enc,
        "meta": {
            "tag": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0003", "code": "A11"}],
            "lastUpdated": "2026-01-02T00:00:00Z",
        },
    }
    e = one(tagged)
    assert (e.code, e.status) == ("admission", "entered-in-error")
    note = {
        "resourceType": "DocumentReference",
        "status": "current",
        "type": {"coding": [{"system": "http://loinc.org", "code": "11506-3"}]},
        "subject": {"reference": "Patient/p1"},
        "date": "2026-01-01T00:00:00Z",
        "content": [
            {
                "attachment": {
                    "contentType": "text/plain",
                    "data": base64.b64encode(b"febrile, rigors").decode(),
                }
            }
        ],
    }
    e = one(note)
    assert (e.kind, e.code, e.text) == ("note", "note", "febrile, rigors")
    assert "febrile" not in repr(e)  # text is kept out of reprs (and so of logs)
