"""PhysioNet psv support and the row_bundle/row_events round trip."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from fhir.codes import CodeTable
from fhir.errors import MalformedPsv
from fhir.events import ClinicalEvent
from fhir.parse import parse_resource
from fhir.physionet import COLUMNS, read_psv, row_bundle, row_events
from fhir.synthetic import generate_stays

from .conftest import shared_dir

START = datetime(2026, 1, 1, tzinfo=UTC)
HEADER = "|".join(COLUMNS)


def _key(e: ClinicalEvent) -> tuple[object, ...]:
    return (e.patient, e.code, e.unit, e.time, e.kind, e.loinc, e.status, e.source)


def assert_round_trip(patient: str, rows: list[dict[str, float | None]], table: CodeTable) -> int:
    n = 0
    for hour, row in enumerate(rows):
        expected = row_events(patient, START, hour, row, table)
        doc = row_bundle(patient, START, hour, row, table)
        if doc is None:
            assert expected == []
            continue
        res = parse_resource(orjson.dumps(doc), table=table)
        assert not res.rejected
        assert not res.ignored
        assert [_key(e) for e in res.events] == [_key(e) for e in expected]
        for got, want in zip(res.events, expected, strict=True):
            assert got.value is not None
            assert want.value is not None
            assert abs(got.value - want.value) <= 1e-9
        n += len(expected)
    return n


def test_read_psv() -> None:
    nan_row = "|".join(["NaN"] * 41)
    row = "|".join(["80", "97.5"] + ["NaN"] * 32 + ["70", "1", "0", "1", "-1.5", "1", "0"])
    rows = read_psv(f"{HEADER}\n{row}\n{nan_row}\n")
    assert rows[0]["HR"] == 80.0
    assert rows[0]["O2Sat"] == 97.5
    assert rows[0]["Temp"] is None
    assert rows[0]["Age"] == 70.0
    assert rows[1]["HR"] is None
    assert len(rows) == 2


@pytest.mark.parametrize(
    "text",
    ["", "HR|O2Sat\n1|2\n", f"{HEADER}\n1|2|3\n", f"{HEADER}\n" + "|".join(["x"] * 41)],
)
def test_read_psv_rejects(text: str) -> None:
    with pytest.raises(MalformedPsv):
        read_psv(text)


def test_row_events_and_bundle(table: CodeTable) -> None:
    row: dict[str, float | None] = dict.fromkeys(COLUMNS, None)
    row.update(HR=88.0, FiO2=0.5, SaO2=97.0, Lactate=2.1, Age=60.0, SepsisLabel=1.0)
    events = row_events("pt-x", START, 5, row, table)
    assert {e.code: (e.value, e.kind) for e in events} == {
        "heart_rate": (88.0, "vital"),
        "fio2": (0.5, "vital"),
        "sao2": (97.0, "lab"),
        "lactate": (2.1, "lab"),
    }
    assert all(e.time == START + timedelta(hours=5) for e in events)
    assert events[0].source == "Observation/pt-x-5-heart-rate"
    doc = row_bundle("pt-x", START, 5, row, table)
    assert doc is not None
    assert doc["type"] == "transaction"
    obs = [e["resource"] for e in doc["entry"]]
    assert {o["valueQuantity"]["system"] for o in obs} == {"http://unitsofmeasure.org"}
    assert {o["subject"]["reference"] for o in obs} == {"Patient/pt-x"}
    cats = {o["id"]: o["category"][0]["coding"][0]["code"] for o in obs}
    assert cats["pt-x-5-heart-rate"] == "vital-signs"
    assert cats["pt-x-5-lactate"] == "laboratory"
    assert doc == row_bundle("pt-x", START, 5, row, table)  # deterministic
    assert assert_round_trip("pt-x", [row], table) == 4


def test_empty_and_implausible_rows(table: CodeTable) -> None:
    row: dict[str, float | None] = dict.fromkeys(COLUMNS, None)
    row["Age"] = 50.0
    assert row_bundle("p", START, 0, row, table) is None
    assert row_events("p", START, 0, row, table) == []
    row["FiO2"] = -50.0  # occurs in training_setB
    assert row_bundle("p", START, 0, row, table) is None
    with pytest.raises(ValueError, match="time zone"):
        row_events("p", datetime(2026, 1, 1), 0, row, table)


@pytest.mark.shared
def test_round_trip_on_real_files(table: CodeTable) -> None:
    d = shared_dir("physionet2019/training_setB")
    files = sorted(d.glob("p*.psv"))
    assert len(files) >= 20
    picked = random.Random(2019).sample(files, 20)
    total = 0
    for f in picked:
        total += assert_round_trip(f.stem, read_psv(f.read_text()), table)
    assert total > 1000


def test_round_trip_on_synthetic_stays(table: CodeTable) -> None:
    total = 0
    for pid, text in generate_stays(5, seed=7):
        total += assert_round_trip(pid, read_psv(text), table)
    assert total > 100
