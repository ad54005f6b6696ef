"""The code table: completeness, conversions, plausibility, start-up validation."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from fhir.codes import CODES_FILE, CodeTable, load_code_table, parse_code_table
from fhir.errors import ImplausibleValue, UnitError, UnknownCode
from fhir.events import CATEGORICAL_CODES, LAB_CODES, NUMERIC_CODES, VITAL_CODES
from fhir.physionet import COLUMNS, column_map

# The PhysioNet 2019 challenge units (the model trains on them), by canonical code.
PHYSIONET_UNITS = {
    "heart_rate": "/min", "spo2": "%", "temperature": "Cel", "systolic_bp": "mm[Hg]",
    "mean_bp": "mm[Hg]", "diastolic_bp": "mm[Hg]", "respiratory_rate": "/min",
    "etco2": "mm[Hg]", "base_excess": "mmol/L", "bicarbonate": "mmol/L", "fio2": "1",
    "ph": "[pH]", "paco2": "mm[Hg]", "sao2": "%", "ast": "U/L", "bun": "mg/dL",
    "alkaline_phosphatase": "U/L", "calcium": "mg/dL", "chloride": "mmol/L",
    "creatinine": "mg/dL", "bilirubin_direct": "mg/dL", "glucose": "mg/dL",
    "lactate": "mmol/L", "magnesium": "mg/dL", "phosphate": "mg/dL", "potassium": "mmol/L",
    "bilirubin_total": "mg/dL", "troponin_i": "ng/mL", "hematocrit": "%",
    "hemoglobin": "g/dL", "ptt": "s", "wbc": "10*3/uL", "fibrinogen": "mg/dL",
    "platelets": "10*3/uL",
}  # fmt: skip


def _doc() -> dict[str, Any]:
    return dict(yaml.safe_load(CODES_FILE.read_text()))


def test_every_canonical_code_is_defined(table: CodeTable) -> None:
    assert set(table.specs) == set(VITAL_CODES) | set(LAB_CODES) | set(CATEGORICAL_CODES)
    for code in LAB_CODES:
        assert table.specs[code].kind == "lab"
    for code in VITAL_CODES + CATEGORICAL_CODES:
        assert table.specs[code].kind == "vital"


def test_canonical_units_are_physionet_units(table: CodeTable) -> None:
    for code, unit in PHYSIONET_UNITS.items():
        assert table.specs[code].unit == unit, code
    assert set(column_map()) == set(COLUMNS[:34])
    assert set(column_map().values()) == set(PHYSIONET_UNITS)


def test_every_numeric_code_has_a_primary_loinc_and_range(table: CodeTable) -> None:
    for code in NUMERIC_CODES:
        spec = table.specs[code]
        assert spec.primary_loinc, code
        assert spec.low is not None
        assert spec.high is not None


@pytest.mark.parametrize(
    ("system", "code", "laboratory", "expected"),
    [
        ("http://loinc.org", "8867-4", False, "heart_rate"),
        ("http://loinc.org", "59408-5", False, "spo2"),
        ("http://loinc.org", "2708-6", False, "spo2"),
        ("http://loinc.org", "2708-6", True, "sao2"),
        ("http://loinc.org", "8310-5", False, "temperature"),
        ("http://loinc.org", "8480-6", False, "systolic_bp"),
        ("http://loinc.org", "8462-4", False, "diastolic_bp"),
        ("http://loinc.org", "8478-0", False, "mean_bp"),
        ("http://loinc.org", "9279-1", False, "respiratory_rate"),
        ("http://loinc.org", "19889-5", False, "etco2"),
        ("http://loinc.org", "9269-2", False, "gcs_total"),
        ("http://loinc.org", "3150-0", False, "fio2"),
        ("http://loinc.org", "3151-8", False, "o2_flow"),
        ("http://loinc.org", "80288-4", False, "consciousness"),
        ("http://loinc.org", "2524-7", True, "lactate"),
        ("http://wardwatch.local/CodeSystem/observation", "o2-device", False, "o2_device"),
        ("http://loinc.org", "29463-7", False, None),
        ("http://snomed.info/sct", "8867-4", False, None),
    ],
)
def test_lookup(
    table: CodeTable, system: str, code: str, laboratory: bool, expected: str | None
) -> None:
    assert table.lookup(system, code, laboratory=laboratory) == expected


@pytest.mark.parametrize(
    ("code", "value", "unit", "expected"),
    [
        ("temperature", 98.6, "[degF]", 37.0),
        ("temperature", 212.0, "degF", 100.0),
        ("temperature", 37.2, "Cel", 37.2),
        ("temperature", 37.2, "°C", 37.2),
        ("creatinine", 88.42, "umol/L", 1.0),
        ("bilirubin_total", 17.1, "umol/L", 1.0),
        ("bilirubin_direct", 34.2, "umol/L", 2.0),
        ("glucose", 5.0, "mmol/L", 90.08),
        ("fio2", 40.0, "%", 0.4),
        ("fio2", 0.4, "1", 0.4),
        ("spo2", 0.95, "1", 95.0),
        ("paco2", 5.0, "kPa", 37.5031),
        ("etco2", 4.0, "kPa", 30.00248),
        ("hemoglobin", 120.0, "g/L", 12.0),
        ("heart_rate", 72.0, "{beats}/min", 72.0),
        ("heart_rate", 72.0, "bpm", 72.0),
        ("respiratory_rate", 18.0, "{breaths}/min", 18.0),
        ("systolic_bp", 120.0, "mmHg", 120.0),
        ("wbc", 12.0, "10*9/L", 12.0),
        ("troponin_i", 50.0, "ng/L", 0.05),
        ("gcs_total", 14.0, "", 14.0),
        ("ph", 7.4, None, 7.4),
        ("lactate", 18.0, "mg/dL", 1.99818),
    ],
)
def test_convert(
    table: CodeTable, code: str, value: float, unit: str | None, expected: float
) -> None:
    assert table.convert(code, value, unit) == pytest.approx(expected, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize(
    ("code", "unit"),
    [("heart_rate", "mm[Hg]"), ("temperature", "K"), ("fio2", ""), ("creatinine", None)],
)
def test_convert_rejects_wrong_units(table: CodeTable, code: str, unit: str | None) -> None:
    with pytest.raises(UnitError):
        table.convert(code, 1.0, unit)


def test_convert_unknown_code_and_nan(table: CodeTable) -> None:
    with pytest.raises(UnknownCode):
        table.convert("shoe_size", 1.0, "1")
    with pytest.raises(UnitError):
        table.convert("heart_rate", float("nan"), "/min")


@pytest.mark.parametrize(
    ("code", "value", "ok"),
    [
        ("heart_rate", 0, True), ("heart_rate", 350, True), ("heart_rate", 351, False),
        ("heart_rate", -1, False), ("temperature", 19.9, False), ("temperature", 46, True),
        ("spo2", 100.5, False), ("fio2", 0.2, False), ("fio2", 1.0, True), ("fio2", 21, False),
        ("gcs_total", 2, False), ("ph", 7.4, True), ("ph", 74, False),
    ],
)  # fmt: skip
def test_plausibility(table: CodeTable, code: str, value: float, ok: bool) -> None:
    assert table.is_plausible(code, value) is ok
    if ok:
        table.check_plausible(code, value)
    else:
        with pytest.raises(ImplausibleValue) as info:
            table.check_plausible(code, value, where="Observation/x")
        assert info.value.resource_id == "x"


def test_load_is_cached() -> None:
    assert load_code_table() is load_code_table()


def _broken(mutate: Any) -> str:
    doc = copy.deepcopy(_doc())
    mutate(doc)
    with pytest.raises(ValueError, match=r"codes\.yaml") as info:
        parse_code_table(doc, CODES_FILE)
    return str(info.value)


def test_validation_missing_code() -> None:
    msg = _broken(lambda d: d["codes"].pop("lactate"))
    assert "lactate" in msg


def test_validation_duplicate_loinc() -> None:
    msg = _broken(lambda d: d["codes"]["lactate"]["loinc"].append("8867-4"))
    assert "8867-4" in msg
    assert "codes.lactate" in msg


def test_validation_bad_range_and_unit() -> None:
    assert "range" in _broken(lambda d: d["codes"]["spo2"].update(range=[100, 0]))
    assert "canonical unit" in _broken(lambda d: d["codes"]["spo2"]["units"].pop("%"))
    assert "kind" in _broken(lambda d: d["codes"]["lactate"].update(kind="vital"))
    assert "not canonical" in _broken(lambda d: d["codes"].update(shoe={"kind": "lab"}))
    assert "local_codes" in _broken(
        lambda d: d["local_codes"].append({"system": "x", "code": "y", "canonical": "nope"})
    )


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read"):
        load_code_table(tmp_path / "nope.yaml")
