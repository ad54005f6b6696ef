"""Reading a site's outcome labels: CSV, NDJSON and FHIR Conditions, and their errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fhir.pseudonym import pseudonymise
from inference import site_labels as sl

T0 = datetime(2026, 3, 1, 0, 0, tzinfo=UTC)
H = timedelta(hours=1)


def test_csv_labels_read_onsets_in_utc(tmp_path: Path) -> None:
    p = tmp_path / "labels.csv"
    p.write_text(
        "Patient,onset,ward\n"
        "pt-a,2026-03-01T10:00:00Z,icu\n"
        "pt-b,,icu\n"
        "pt-c,2026-03-02T08:30:00+02:00,ward\n"
        "pt-d,2026-03-01T05:00:00,ward\n"
    )
    got = sl.read_labels(p)
    assert got.source == "csv" and got.records == 4
    assert got.onsets == {
        "pt-a": T0 + 10 * H,
        "pt-b": None,
        "pt-c": datetime(2026, 3, 2, 6, 30, tzinfo=UTC),
        "pt-d": T0 + 5 * H,  # no zone: UTC
    }


def test_csv_label_errors_name_the_line(tmp_path: Path) -> None:
    p = tmp_path / "labels.csv"
    p.write_text("patient,onset\npt-a,2026-03-01T10:00Z\npt-b,yesterday\n")
    with pytest.raises(sl.LabelError, match=r"labels\.csv:3: onset 'yesterday'"):
        sl.read_labels(p)
    p.write_text("patient,onset\npt-a,2026-03-01T10:00Z\n,2026-03-01\n")
    with pytest.raises(sl.LabelError, match=r":3: no patient"):
        sl.read_labels(p)
    p.write_text("patient,onset_time\npt-a,2026-03-01\n")
    with pytest.raises(sl.LabelError, match=r":1: the header must name"):
        sl.read_labels(p)
    p.write_text("patient,onset\npt-a,2026-03-01T10:00Z\npt-a,\n")
    with pytest.raises(sl.LabelError, match=r":3: this patient has another onset on .*:2"):
        sl.read_labels(p)
    with pytest.raises(FileNotFoundError, match=r"nope\.csv"):
        sl.read_labels(tmp_path / "nope.csv")
    (tmp_path / "labels.txt").write_text("x")
    with pytest.raises(sl.LabelError, match=r"must be \.csv"):
        sl.read_labels(tmp_path / "labels.txt")


def test_ndjson_label_rows(tmp_path: Path) -> None:
    p = tmp_path / "labels.ndjson"
    p.write_text(
        '{"patient": "pt-a", "onset": "2026-03-01T10:00Z"}\n\n'
        '{"patient": "pt-b"}\n{"patient": "pt-c", "onset": null}\n'
    )
    got = sl.read_labels(p)
    assert got.onsets == {"pt-a": T0 + 10 * H, "pt-b": None, "pt-c": None}
    p.write_text('{"patient": "pt-a"}\n{"patient": "pt-b", "onset": \n')
    with pytest.raises(sl.LabelError, match=r"labels\.ndjson:2: not JSON"):
        sl.read_labels(p)


def _condition(patient: str, code: str, **extra: object) -> dict[str, object]:
    system = "http://snomed.info/sct" if code[0].isdigit() else "http://hl7.org/fhir/sid/icd-10-cm"
    return {
        "resourceType": "Condition",
        "subject": {"reference": f"Patient/{patient}"},
        "code": {"coding": [{"system": system, "code": code}]},
        **extra,
    }


def test_fhir_conditions_give_the_earliest_sepsis_onset(tmp_path: Path) -> None:
    folder = tmp_path / "conditions"
    folder.mkdir()
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"resource": _condition("pt-a", "91302008", onsetDateTime="2026-03-01T12:00:00Z")},
            {"resource": _condition("pt-a", "76571007", onsetDateTime="2026-03-01T10:00:00Z")},
            {"resource": _condition("pt-b", "38341003", onsetDateTime="2026-03-01T10:00:00Z")},
        ],
    }
    (folder / "bundle.json").write_text(json.dumps(bundle))
    lines = [
        _condition("pt-c", "A41.9", recordedDate="2026-03-02T00:00:00Z"),
        _condition(
            "pt-d",
            "91302008",
            onsetDateTime="2026-03-01T01:00:00Z",
            verificationStatus={"coding": [{"code": "refuted"}]},
        ),
        {"resourceType": "Patient", "id": "pt-e"},
    ]
    (folder / "more.ndjson").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    got = sl.read_labels(folder)
    assert got.source == "fhir"
    assert got.onsets == {
        "pt-a": T0 + 10 * H,  # the earlier of two sepsis Conditions
        "pt-b": None,  # hypertension only: an outcome given, never septic
        "pt-c": T0 + 24 * H,  # recordedDate when there is no onsetDateTime
    }  # pt-d's sepsis was refuted; pt-e has no Condition: no outcome given


def test_fhir_condition_errors(tmp_path: Path) -> None:
    p = tmp_path / "c.ndjson"
    p.write_text(json.dumps(_condition("pt-a", "91302008")) + "\n")
    with pytest.raises(sl.LabelError, match=r"c\.ndjson:1: sepsis Condition without"):
        sl.read_labels(p)
    bad = _condition("pt-a", "91302008", onsetDateTime="2026-03-01")
    bad["subject"] = {"reference": "Group/7"}
    p.write_text(json.dumps(bad) + "\n")
    with pytest.raises(sl.LabelError, match="without a subject"):
        sl.read_labels(p)
    p.write_text(json.dumps(_condition("pt-a", "91302008", onsetDateTime="2026-03")) + "\n")
    with pytest.raises(sl.LabelError, match="'2026-03' is not an ISO 8601 time"):
        sl.read_labels(p)


def test_the_sepsis_code_list_is_data(tmp_path: Path) -> None:
    codes = sl.load_sepsis_codes()
    assert "http://snomed.info/sct|91302008" in codes
    p = tmp_path / "c.json"
    p.write_text(json.dumps(_condition("pt-a", "LOCAL-7", onsetDateTime="2026-03-01T03:00Z")))
    assert sl.read_labels(p).onsets == {"pt-a": None}
    local = frozenset({"http://hl7.org/fhir/sid/icd-10-cm|LOCAL-7"})
    assert sl.read_labels(p, local).onsets == {"pt-a": T0 + 3 * H}
    bad = tmp_path / "codes.yaml"
    bad.write_text("sepsis:\n  - 91302008\n")
    with pytest.raises(ValueError, match=r"system\|code"):
        sl.load_sepsis_codes(bad)


def test_labels_by_the_sites_own_identifiers_meet_the_pseudonyms(tmp_path: Path) -> None:
    p = tmp_path / "labels.csv"
    p.write_text("patient,onset\nMRN-1,2026-03-01T10:00:00Z\nMRN-2,\n")
    key = b"a-site-key-of-enough-length-0123"
    got = sl.pseudonymised(sl.read_labels(p), lambda raw: pseudonymise(raw, key, "HOSP"))
    assert got.onsets == {
        pseudonymise("MRN-1", key, "HOSP"): T0 + 10 * H,
        pseudonymise("MRN-2", key, "HOSP"): None,
    }
    assert not any("MRN" in k for k in got.onsets)
    # two identifiers that are one pseudonym must agree
    clash = sl.SiteLabels({"a": T0, "b": None}, "csv", 2)
    with pytest.raises(sl.LabelError, match="one pseudonym with two onsets"):
        sl.pseudonymised(clash, lambda raw: "pt-same")


def test_upper_case_suffixes_are_read_as_their_kind(tmp_path: Path) -> None:
    # An EHR export named CONDITIONS.JSON holds one pretty-printed resource, not NDJSON.
    p = tmp_path / "CONDITIONS.JSON"
    p.write_text(
        json.dumps(_condition("pt-a", "91302008", onsetDateTime="2026-03-01T10:00Z"), indent=2)
    )
    assert sl.read_labels(p).onsets == {"pt-a": T0 + 10 * H}
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "ONE.JSON").write_text(p.read_text())
    assert sl.read_labels(folder).onsets == {"pt-a": T0 + 10 * H}
