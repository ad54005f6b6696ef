"""parse_resource: mapping, conversions, statuses, and what is rejected."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from fhir.errors import (
    ImplausibleValue,
    InvalidResource,
    InvalidTime,
    MalformedJson,
    MissingSubject,
    PermanentInputError,
    UnitError,
    UnknownCode,
    UnsupportedResource,
)
from fhir.parse import ParseResult, parse_events, parse_resource

from .conftest import ObsFactory, observation


def parse(doc: Any, **kw: Any) -> ParseResult:
    return parse_resource(orjson.dumps(doc), **kw)


def one(doc: Any) -> Any:
    res = parse(doc)
    assert not res.rejected, res.rejected
    assert len(res.events) == 1, (res.events, res.ignored)
    return res.events[0]


LAB_CATEGORY = [
    {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                "code": "laboratory",
            }
        ]
    }
]


@pytest.mark.parametrize(
    ("loinc", "value", "unit", "code", "expected", "canonical_unit"),
    [
        ("8867-4", 72, "/min", "heart_rate", 72.0, "/min"),
        ("8867-4", 72, "{beats}/min", "heart_rate", 72.0, "/min"),
        ("59408-5", 95, "%", "spo2", 95.0, "%"),
        ("2708-6", 0.95, "1", "spo2", 95.0, "%"),
        ("8310-5", 98.6, "[degF]", "temperature", 37.0, "Cel"),
        ("8331-1", 37.5, "Cel", "temperature", 37.5, "Cel"),
        ("8480-6", 120, "mm[Hg]", "systolic_bp", 120.0, "mm[Hg]"),
        ("8462-4", 80, "mm[Hg]", "diastolic_bp", 80.0, "mm[Hg]"),
        ("8478-0", 93, "mm[Hg]", "mean_bp", 93.0, "mm[Hg]"),
        ("9279-1", 18, "{breaths}/min", "respiratory_rate", 18.0, "/min"),
        ("19889-5", 4.8, "kPa", "etco2", 36.002976, "mm[Hg]"),
        ("9269-2", 13, "{score}", "gcs_total", 13.0, "{score}"),
        ("3150-0", 40, "%", "fio2", 0.4, "1"),
        ("3151-8", 2, "L/min", "o2_flow", 2.0, "L/min"),
    ],
)
def test_vitals(
    loinc: str,
    value: float,
    unit: str,
    code: str,
    expected: float,
    canonical_unit: str,
) -> None:
    ev = one(observation(loinc, value, unit))
    assert ev.code == code
    assert ev.kind == "vital"
    assert ev.value == pytest.approx(expected, rel=1e-9)
    assert ev.unit == canonical_unit
    assert ev.loinc == loinc
    assert ev.patient == "pt-abc"
    assert ev.time == datetime(2026, 1, 1, 9, 0, tzinfo=UTC)
    assert ev.source == "Observation/obs-1"
    assert ev.status == "final"


@pytest.mark.parametrize(
    ("loinc", "value", "unit", "code", "expected"),
    [
        ("2160-0", 1.2, "mg/dL", "creatinine", 1.2),
        ("14682-9", 88.42, "umol/L", "creatinine", 1.0),
        ("1975-2", 17.1, "umol/L", "bilirubin_total", 1.0),
        ("14749-6", 5.5, "mmol/L", "glucose", 99.088),
        ("2524-7", 2.5, "mmol/L", "lactate", 2.5),
        ("6690-2", 12.5, "10*3/uL", "wbc", 12.5),
        ("777-3", 150, "10*9/L", "platelets", 150.0),
        ("718-7", 120, "g/L", "hemoglobin", 12.0),
        ("2019-8", 6, "kPa", "paco2", 45.00372),
        ("2708-6", 97, "%", "sao2", 97.0),
        ("2744-1", 7.31, "[pH]", "ph", 7.31),
    ],
)
def test_labs(loinc: str, value: float, unit: str, code: str, expected: float) -> None:
    ev = one(observation(loinc, value, unit, category=LAB_CATEGORY))
    assert (ev.code, ev.kind) == (code, "lab")
    assert ev.value == pytest.approx(expected, rel=1e-9)


def test_pulse_oximetry_code_wins_over_lab_context() -> None:
    obs = observation("2708-6", 96, "%", category=LAB_CATEGORY)
    obs["code"]["coding"].append({"system": "http://loinc.org", "code": "59408-5"})
    assert one(obs).code == "spo2"


def test_display_unit_used_when_code_absent() -> None:
    obs = observation("8480-6", 120, None)
    obs["valueQuantity"].update(unit="mmHg")
    assert one(obs).value == 120.0


def test_bp_panel_components() -> None:
    obs = observation("85354-9", None, None)
    obs["component"] = [
        {
            "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
            "valueQuantity": {"value": 107, "unit": "mmHg", "code": "mm[Hg]"},
        },
        {
            "code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
            "valueQuantity": {"value": 60, "code": "mm[Hg]"},
        },
        {
            "code": {"coding": [{"system": "http://loinc.org", "code": "8478-0"}]},
            "dataAbsentReason": {"text": "not measured"},
        },
    ]
    res = parse(obs)
    assert {e.code: e.value for e in res.events} == {"systolic_bp": 107.0, "diastolic_bp": 60.0}
    assert len({e.event_id for e in res.events}) == 2
    assert res.ignored == ["Observation/obs-1: mean_bp has no value"]


def test_pulse_ox_with_fio2_and_flow_components() -> None:
    obs = observation("59408-5", 95, "%")
    obs["component"] = [
        {
            "code": {"coding": [{"system": "http://loinc.org", "code": "3151-8"}]},
            "valueQuantity": {"value": 6, "unit": "liters/min", "code": "L/min"},
        },
        {
            "code": {"coding": [{"system": "http://loinc.org", "code": "3150-0"}]},
            "valueQuantity": {"value": 40, "code": "%"},
        },
    ]
    got = {e.code: e.value for e in parse(obs).events}
    assert got == {"spo2": 95.0, "o2_flow": 6.0, "fio2": pytest.approx(0.4)}


@pytest.mark.parametrize(
    ("system", "code", "letter"),
    [
        ("http://snomed.info/sct", "248234008", "A"),
        ("http://snomed.info/sct", "300202002", "V"),
        ("http://snomed.info/sct", "450847001", "P"),
        ("http://snomed.info/sct", "422768004", "U"),
        ("http://wardwatch.local/CodeSystem/acvpu", "C", "C"),
    ],
)
def test_acvpu(system: str, code: str, letter: str) -> None:
    obs = observation("80288-4", None, None)
    obs["valueCodeableConcept"] = {"coding": [{"system": system, "code": code}]}
    ev = one(obs)
    assert (ev.code, ev.value, ev.value_code, ev.unit) == ("consciousness", None, letter, "")


def test_acvpu_unknown_value_is_rejected() -> None:
    obs = observation("80288-4", None, None)
    obs["valueCodeableConcept"] = {"coding": [{"system": "http://snomed.info/sct", "code": "1"}]}
    with pytest.raises(UnknownCode):
        parse(obs)


def test_o2_device_local_code() -> None:
    obs = observation(
        "o2-device", None, None, system="http://wardwatch.local/CodeSystem/observation"
    )
    obs["valueCodeableConcept"] = {
        "coding": [{"system": "http://wardwatch.local/CodeSystem/o2-device", "code": "hfnc"}]
    }
    ev = one(obs)
    assert (ev.code, ev.value_code, ev.loinc) == ("o2_device", "hfnc", None)


def test_gcs_value_integer() -> None:
    obs = observation("9269-2", None, None, valueInteger=9)
    assert one(obs).value == 9.0


@pytest.mark.parametrize(
    ("loinc", "value", "unit"),
    [
        ("8867-4", 400, "/min"),
        ("8310-5", 120, "Cel"),
        ("59408-5", 101, "%"),
        ("3150-0", 0.4, "%"),  # FiO2 0.4 % = 0.004: not possible
        ("9269-2", 1, "{score}"),
    ],
)
def test_implausible_values_rejected(loinc: str, value: float, unit: str) -> None:
    with pytest.raises(ImplausibleValue) as info:
        parse(observation(loinc, value, unit))
    assert info.value.resource_id == "obs-1"


def test_wrong_unit_rejected() -> None:
    with pytest.raises(UnitError):
        parse(observation("8867-4", 72, "mm[Hg]"))
    with pytest.raises(UnitError):
        parse(observation("3150-0", 0.4, None))


@pytest.mark.parametrize("status", ["final", "amended", "corrected", "preliminary"])
def test_statuses(status: str) -> None:
    assert one(observation(status=status)).status == status


def test_entered_in_error_keeps_source_and_skips_range() -> None:
    ev = one(observation("8867-4", 999, "/min", status="entered-in-error"))
    assert (ev.status, ev.value, ev.source) == ("entered-in-error", 999.0, "Observation/obs-1")
    ev = one(observation("8867-4", None, None, status="entered-in-error"))
    assert ev.value is None


@pytest.mark.parametrize("status", ["cancelled", "registered", "unknown"])
def test_skipped_statuses(status: str) -> None:
    res = parse(observation(status=status))
    assert res.events == []
    assert res.ignored == [f"Observation/obs-1: status {status}"]


def test_unknown_code_is_ignored_visibly() -> None:
    res = parse(observation("29463-7", 70, "kg"))
    assert res.events == []
    assert not res.rejected
    assert res.ignored == ["Observation/obs-1: no code WardWatch uses (LOINC 29463-7)"]
    assert res.observations == 1


def test_non_observation_resources_are_skipped() -> None:
    res = parse({"resourceType": "Organization", "id": "o", "name": "Ward"})
    assert (res.events, res.ignored, res.rejected, res.resources) == ([], [], [], 1)


def test_patient_gives_birth_year_and_sex_only() -> None:
    res = parse(
        {
            "resourceType": "Patient",
            "id": "p",
            "gender": "female",
            "birthDate": "1961-04-03",
            "meta": {"lastUpdated": "2026-01-01T08:00:00Z"},
        }
    )
    got = {e.code: e for e in res.events}
    assert set(got) == {"birth_year", "sex"} and res.ignored == []
    assert got["birth_year"].value == 1961.0 and got["birth_year"].kind == "demographic"
    assert got["sex"].value_code == "female" and got["sex"].time.hour == 8
    assert all(e.source == "Patient/p" and e.patient == "p" for e in res.events)
    bare = parse({"resourceType": "Patient", "id": "p"})
    assert bare.events == [] and bare.ignored == ["Patient/p: no birthDate or gender"]
    assert parse({"resourceType": "Patient", "gender": "male"}).events == []


def test_encounter_icu_location_gives_the_icu_admission() -> None:
    enc = {
        "resourceType": "Encounter",
        "id": "e1",
        "status": "in-progress",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
        "subject": {"reference": "Patient/p"},
        "period": {"start": "2026-01-01T00:00:00Z"},
        "location": [
            {"location": {"display": "Ward 3"}, "period": {"start": "2026-01-01T00:00:00Z"}},
            {"location": {"display": "micu-2 bed 4"}, "period": {"start": "2026-01-02T05:00:00Z"}},
        ],
    }
    got = {e.code: e for e in parse(enc).events}
    assert set(got) == {"admission", "icu_admission"}
    assert got["icu_admission"].time.isoformat() == "2026-01-02T05:00:00+00:00"
    assert got["admission"].time.isoformat() == "2026-01-01T00:00:00+00:00"
    ward_only = {**enc, "location": enc["location"][:1]}
    assert {e.code for e in parse(ward_only).events} == {"admission"}
    no_time = {**enc, "location": [{"location": {"display": "ICU"}}]}
    res = parse(no_time)
    assert {e.code for e in res.events} == {"admission"}
    assert res.ignored == ["Encounter/e1: ICU location without a period.start"]


def test_time_sources() -> None:
    base = observation()
    del base["effectiveDateTime"]
    assert one({**base, "effectivePeriod": {"start": "2026-01-01T08:00:00Z"}}).time.hour == 8
    assert one({**base, "issued": "2026-01-01T07:00:00.123+00:00"}).time.hour == 7
    with pytest.raises(InvalidTime):
        parse(base)


@pytest.mark.parametrize("when", ["2026-01-01T10:00:00", "2026-01-01", "2026"])
def test_naive_or_partial_time_rejected(when: str) -> None:
    with pytest.raises(InvalidTime):
        parse(observation(effectiveDateTime=when))


@pytest.mark.parametrize(
    "subject",
    [
        None,
        {"reference": "Group/g1"},
        {"identifier": {"value": "123"}},
        {"reference": "urn:uuid:1"},
    ],
)
def test_missing_subject(subject: Any) -> None:
    obs = observation()
    if subject is None:
        del obs["subject"]
    else:
        obs["subject"] = subject
    with pytest.raises(MissingSubject):
        parse(obs)


def test_absolute_and_versioned_subject() -> None:
    obs = observation(subject={"reference": "https://ehr.example/fhir/Patient/pt-x/_history/3"})
    assert one(obs).patient == "pt-x"


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"", MalformedJson),
        (b"{not json", MalformedJson),
        (b"[1, 2]", MalformedJson),
        (b'"Observation"', MalformedJson),
        (b"\xff\xfe", MalformedJson),
        (b'{"status": "final"}', InvalidResource),
        (b'{"resourceType": 5}', InvalidResource),
        (b'{"resourceType": "Foo"}', UnsupportedResource),
        (b'{"resourceType": "Observation"}', InvalidResource),
    ],
)
def test_rejects(raw: bytes, error: type[PermanentInputError]) -> None:
    with pytest.raises(error):
        parse_resource(raw)


def test_missing_resource_type_rejected_even_if_otherwise_valid() -> None:
    obs = observation()
    del obs["resourceType"]
    with pytest.raises(InvalidResource, match="resourceType"):
        parse(obs)


def test_string_as_number_rejected() -> None:
    with pytest.raises(InvalidResource, match="JSON number"):
        parse(observation(value="72"))
    comp = observation("85354-9", None, None)
    comp["component"] = [
        {
            "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
            "valueQuantity": {"value": "120", "code": "mm[Hg]"},
        }
    ]
    with pytest.raises(InvalidResource, match=r"component\[0\]"):
        parse(comp)
    with pytest.raises(InvalidResource):
        parse(observation(value=True))


def test_r4b_validation_errors_are_permanent() -> None:
    with pytest.raises(InvalidResource, match="not a valid R4B Observation"):
        parse(observation(status="final", code="heart rate"))


def bundle(*resources: dict[str, Any], type_: str = "transaction") -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": type_,
        "entry": [
            {
                "fullUrl": f"urn:uuid:00000000-0000-4000-8000-{i:012d}",
                "resource": r,
                "request": {"method": "POST", "url": r.get("resourceType", "x")},
            }
            for i, r in enumerate(resources)
        ],
    }


def test_bundle_with_urn_uuid_patient() -> None:
    patient = {"resourceType": "Patient", "id": "pt-42"}
    obs = observation(subject={"reference": "urn:uuid:00000000-0000-4000-8000-000000000000"})
    res = parse(bundle(patient, obs))
    assert [e.patient for e in res.events] == ["pt-42"]
    assert res.resources == 2


def test_unknown_bundle_entry_type_rejected_per_entry_or_strictly() -> None:
    doc = bundle(observation(), {"resourceType": "Foo", "id": "f"})
    res = parse(doc)
    assert len(res.events) == 1
    assert len(res.rejected) == 1
    assert isinstance(res.rejected[0], UnsupportedResource)
    assert "Foo" in res.rejected[0].reason
    with pytest.raises(UnsupportedResource):
        parse(doc, strict=True)
    with pytest.raises(UnsupportedResource):
        parse_events(orjson.dumps(doc))


def test_bad_entries_do_not_spoil_good_ones() -> None:
    bad = observation("8867-4", 999, "/min", id="bad")
    res = parse(bundle(observation(), bad, {"resourceType": "Encounter", "status": "x"}))
    assert len(res.events) == 1
    assert [type(e) for e in res.rejected] == [ImplausibleValue]
    assert res.rejected[0].resource_id == "bad"


def test_invalid_bundle_itself_raises() -> None:
    with pytest.raises(InvalidResource):
        parse({"resourceType": "Bundle", "type": "nonsense", "entry": []})
    with pytest.raises(InvalidResource):
        parse({"resourceType": "Bundle", "type": "batch", "entry": {"resource": {}}})


@pytest.mark.parametrize(
    "type_", ["batch", "transaction", "collection", "searchset", "history", "message"]
)
def test_bundle_types(type_: str) -> None:
    doc = bundle(observation(), type_=type_)
    if type_ in ("collection", "searchset", "message"):
        for e in doc["entry"]:
            del e["request"]
    if type_ == "message":
        header = {
            "resourceType": "MessageHeader",
            "eventCoding": {"system": "http://example.org", "code": "x"},
            "source": {"endpoint": "http://example.org"},
        }
        doc["entry"].insert(0, {"fullUrl": "urn:uuid:1", "resource": header})
    if type_ == "history":
        for e in doc["entry"]:
            e["response"] = {"status": "200"}
            e.pop("request")
    assert len(parse(doc).events) == 1


def test_subscription_notification_bundle() -> None:
    status = {
        "resourceType": "SubscriptionStatus",
        "status": "active",
        "type": "event-notification",
        "subscription": {"reference": "Subscription/s1"},
    }
    doc = {
        "resourceType": "Bundle",
        "type": "subscription-notification",
        "entry": [
            {"fullUrl": "urn:uuid:s", "resource": status},
            {"fullUrl": "https://ehr.example/fhir/Observation/obs-1", "resource": observation()},
        ],
    }
    res = parse(doc)
    assert [e.code for e in res.events] == ["heart_rate"]


def test_nested_bundles_limited() -> None:
    doc: dict[str, Any] = bundle(observation(), type_="collection")
    for _ in range(5):
        doc = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": doc}]}
    res = parse(doc)
    assert res.events == []
    assert any(isinstance(e, UnsupportedResource) for e in res.rejected)


def test_source_without_id_is_stable(make_obs: ObsFactory) -> None:
    obs = make_obs()
    del obs["id"]
    a, b = one(obs), one(obs)
    assert a.source == b.source
    assert a.source.startswith("Observation/#")


def test_preload_loads_the_table_and_model_classes() -> None:
    from fhir import parse
    from fhir.codes import load_code_table

    table = parse.preload()
    assert table is load_code_table()
    for rt in ("Bundle", "Observation", "Patient", *parse.CONTEXT_TYPES):
        assert rt in parse._MODEL_CACHE
