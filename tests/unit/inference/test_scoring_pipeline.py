"""The stream's pure functions: normalise, prepare, finish, persist decoding, sources."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from fhir.errors import PermanentInputError
from fhir.events import NUMERIC_CODES, ClinicalEvent
from fhir.physionet import COLUMNS
from inference.alert_policy import AlertPolicy
from inference.features import WINDOW, FeatureSpec
from inference.scoring.alerts import finish
from inference.scoring.envelope import Envelope, normalise
from inference.scoring.model_info import ModelInfo
from inference.scoring.prepare import prepare, score_envelopes, stack_windows
from inference.scoring.record import PatientRecord
from streams.persist import alert_row, score_row
from streams.sources import fhir_message, messages, psv_messages

START = datetime(2026, 1, 1, tzinfo=UTC)
KEY = b"test-key"
SPEC = FeatureSpec(
    codes=NUMERIC_CODES, mean=(0.0,) * len(NUMERIC_CODES), std=(1.0,) * len(NUMERIC_CODES)
)
MODEL = ModelInfo("sepsis_transformer", "7")
POLICY = AlertPolicy(threshold=0.5)


def psv(rows: list[dict[str, float]]) -> str:
    lines = ["|".join(COLUMNS)]
    for r in rows:
        lines.append("|".join(str(r.get(c, "NaN")) for c in COLUMNS))
    return "\n".join(lines) + "\n"


@pytest.fixture
def stay(tmp_path: Path) -> Path:
    rows = [
        {"HR": 80, "O2Sat": 98, "Temp": 37.0, "SBP": 120, "Resp": 16},
        {},  # an hour with nothing measured
        {"HR": 135, "O2Sat": 90, "Temp": 39.5, "SBP": 88, "Resp": 26, "Lactate": 4.1},
    ]
    p = tmp_path / "p999001.psv"
    p.write_text(psv(rows))
    return p


def test_psv_rows_become_pseudonymised_bundles(stay: Path) -> None:
    msgs = list(psv_messages(stay, KEY, START))
    assert [m.hour for m in msgs] == [0, 2], "a row with no measurement sends nothing"
    for m in msgs:
        assert b"p999001" not in m.value and b"p999001" not in m.key, "no raw id leaves the edge"
        assert m.key.startswith(b"pt-")
        assert orjson.loads(m.value)["type"] == "transaction"


def test_normalise_prepare_finish(stay: Path) -> None:
    rec = PatientRecord()
    pendings = []
    for m in psv_messages(stay, KEY, START):
        result = normalise(m.value, source="t/0/1", inbound_ts_ms=5)
        assert result.rejected == []
        (env,) = result.envelopes
        assert env.patient == m.key.decode()
        p = prepare(rec, env, spec=SPEC, staleness_hours=12)
        assert p is not None
        pendings.append(p)
    first, last = pendings
    assert first.as_of == START and last.as_of == START + timedelta(hours=2)
    assert first.news2.total == 0
    # RR 26 (3) + SpO2 90 (3) + air (0) + SBP 88 (3) + HR 135 (3) + T 39.5 (2) + A (0)
    assert last.news2.total == 14 and last.news2.band == "high"
    assert last.qsofa.total == 2
    assert stack_windows(pendings).shape == (2, WINDOW, SPEC.n_features)

    score, alert = finish(rec, last, 0.9, model=MODEL, policy=POLICY)
    assert score["risk"] == 0.9 and score["alert"] is True and score["degraded"] is False
    assert score["time"] == "2026-01-01T02:00:00Z" and score["model_version"] == "7"
    assert alert is not None and alert["resourceType"] == "RiskAssessment"
    assert alert_row(alert).severity == "critical"
    row = score_row(orjson.loads(orjson.dumps(score)))
    assert row.scored_at == START + timedelta(hours=2) and row.news2 == 14


def test_model_unavailable_degrades_but_rules_continue(stay: Path) -> None:
    rec = PatientRecord()
    (m,) = list(psv_messages(stay, KEY, START))[:1]
    p = prepare(
        rec,
        normalise(m.value, source="s", inbound_ts_ms=None).envelopes[0],
        spec=SPEC,
        staleness_hours=12,
    )
    assert p is not None
    score, alert = finish(rec, p, None, model=MODEL, policy=POLICY)
    assert score["degraded"] is True and score["risk"] is None and score["news2"] == 0
    assert alert is None


def test_record_round_trips_through_bytes(stay: Path) -> None:
    records: dict[str, PatientRecord] = {}
    envs = [
        e
        for m in psv_messages(stay, KEY, START)
        for e in normalise(m.value, source="s", inbound_ts_ms=None).envelopes
    ]
    out = score_envelopes(records, envs, spec=SPEC, staleness_hours=12)
    assert len(out) == 2 and len(records) == 1
    rec = next(iter(records.values()))
    finish(rec, out[-1][1], 0.95, model=MODEL, policy=POLICY)
    again = PatientRecord.from_bytes(rec.to_bytes())
    assert again.state == rec.state and again.alert == rec.alert


# The record of the ``stay`` fixture after scoring it and finish(risk=0.95), as the stream
# wrote it before PatientState's schema 2 (state times relative to first_seen), verbatim:
# such records stay in the table's changelog until their patient is written again.
LEGACY_RECORD = (
    '{"s":{"v":1,"p":"pt-f3sbaniphzcsl6jxjvae","f":1767225600,"o":{"heart_rate":[[0,7'
    '200],[80.0,135.0],["Observation/pt-f3sbaniphzcsl6jxjvae-0-heart-rate","Observati'
    'on/pt-f3sbaniphzcsl6jxjvae-2-heart-rate"],[1,1]],"lactate":[[7200],[4.1],["Obser'
    'vation/pt-f3sbaniphzcsl6jxjvae-2-lactate"],[1]],"respiratory_rate":[[0,7200],[16'
    '.0,26.0],["Observation/pt-f3sbaniphzcsl6jxjvae-0-respiratory-rate","Observation/'
    'pt-f3sbaniphzcsl6jxjvae-2-respiratory-rate"],[1,1]],"spo2":[[0,7200],[98.0,90.0]'
    ',["Observation/pt-f3sbaniphzcsl6jxjvae-0-spo2","Observation/pt-f3sbaniphzcsl6jxj'
    'vae-2-spo2"],[1,1]],"systolic_bp":[[0,7200],[120.0,88.0],["Observation/pt-f3sban'
    'iphzcsl6jxjvae-0-systolic-bp","Observation/pt-f3sbaniphzcsl6jxjvae-2-systolic-bp'
    '"],[1,1]],"temperature":[[0,7200],[37.0,39.5],["Observation/pt-f3sbaniphzcsl6jxj'
    'vae-0-temperature","Observation/pt-f3sbaniphzcsl6jxjvae-2-temperature"],[1,1]]},'
    '"x":{}},"a":{"active":true,"severity":"critical","last_raised_s":1767232800.0,"l'
    'ast_raised_severity":"critical"}}'
)


def test_legacy_record_from_the_changelog_still_loads(stay: Path) -> None:
    records: dict[str, PatientRecord] = {}
    envs = [
        e
        for m in psv_messages(stay, KEY, START)
        for e in normalise(m.value, source="s", inbound_ts_ms=None).envelopes
    ]
    out = score_envelopes(records, envs, spec=SPEC, staleness_hours=12)
    rec = next(iter(records.values()))
    finish(rec, out[-1][1], 0.95, model=MODEL, policy=POLICY)
    # the legacy record predates AlertState.last_high_s (the hold time's clock): it reads
    # as never high, which only a policy with a hold time would notice
    assert rec.alert.last_high_s is not None
    rec.alert = replace(rec.alert, last_high_s=None)
    for old in (
        PatientRecord.from_json(LEGACY_RECORD),
        PatientRecord.from_bytes(LEGACY_RECORD.encode()),
    ):
        assert old.state == rec.state and old.alert == rec.alert
        assert old.to_json() == rec.to_json()
        assert orjson.loads(old.to_json())["s"]["v"] == 3
        # and it scores on exactly as the state it was saved from
        later = ClinicalEvent(
            patient=rec.state.patient,
            time=START + timedelta(hours=3),
            code="heart_rate",
            kind="vital",
            value=99.0,
            source="Observation/later",
        )
        env = Envelope(rec.state.patient, "s", None, (later,))
        p_old = prepare(old, env, spec=SPEC, staleness_hours=12)
        p_new = prepare(PatientRecord.from_json(rec.to_json()), env, spec=SPEC, staleness_hours=12)
        assert p_old is not None and p_new is not None
        assert p_old.window.tobytes() == p_new.window.tobytes()
        assert p_old.news2 == p_new.news2 and p_old.readings == p_new.readings
    assert PatientRecord.from_json(None) == PatientRecord.from_json("") == PatientRecord()


def test_envelope_round_trip(stay: Path) -> None:
    m = next(psv_messages(stay, KEY, START))
    env = normalise(m.value, source="fhir.inbound/3/42", inbound_ts_ms=17).envelopes[0]
    assert Envelope.from_bytes(env.to_bytes()) == env


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b"[1, 2]", b'{"resourceType": "Nope"}', b"\xff\xfe\x00"],
)
def test_bad_input_is_a_permanent_error(raw: bytes) -> None:
    with pytest.raises(PermanentInputError):
        normalise(raw, source="s", inbound_ts_ms=None)


def test_unparseable_input_is_passed_on_for_dead_lettering() -> None:
    m = fhir_message(b"{not json", KEY, origin="f:1", stem="f")
    assert m.key == b"unparsed" and m.value == b"{not json"


def test_fhir_files_and_ndjson_are_keyed_by_pseudonym(tmp_path: Path) -> None:
    obs = {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": "Patient/mrn-12345", "display": "Jane Doe"},
        "effectiveDateTime": "2026-01-01T10:00:00Z",
        "valueQuantity": {
            "value": 72,
            "unit": "/min",
            "system": "http://unitsofmeasure.org",
            "code": "/min",
        },
    }
    (tmp_path / "a.ndjson").write_bytes(orjson.dumps(obs) + b"\n" + orjson.dumps(obs) + b"\n")
    msgs = list(messages([tmp_path], KEY, START))
    assert len(msgs) == 2
    for m in msgs:
        assert b"mrn-12345" not in m.value and b"Jane" not in m.value
        (env,) = normalise(m.value, source="s", inbound_ts_ms=None).envelopes
        assert env.patient == m.key.decode()
        assert env.events[0].code == "heart_rate" and env.events[0].value == 72


def test_persist_decoding_separates_bad_records(stay: Path) -> None:
    from types import SimpleNamespace

    from streams.persist import decode_batch

    rec = PatientRecord()
    m = next(psv_messages(stay, KEY, START))
    p = prepare(
        rec,
        normalise(m.value, source="s", inbound_ts_ms=None).envelopes[0],
        spec=SPEC,
        staleness_hours=12,
    )
    assert p is not None
    score, _ = finish(rec, p, 0.1, model=MODEL, policy=POLICY)
    good = SimpleNamespace(value=orjson.dumps(score))
    bad = [SimpleNamespace(value=b"{"), SimpleNamespace(value=b'{"patient": "x"}')]
    pairs, refused = decode_batch([good, *bad], score_row)  # type: ignore[list-item]
    assert [e for e, _ in pairs] == [good]
    assert [e for e, _ in refused] == bad
    assert all("undecodable" in why for _, why in refused)


def _vitals_env(patient: str, extra: tuple[ClinicalEvent, ...] = ()) -> Envelope:
    vals = {
        "respiratory_rate": 18.0,
        "spo2": 90.0,
        "systolic_bp": 120.0,
        "heart_rate": 80.0,
        "temperature": 37.0,
    }
    events = tuple(
        ClinicalEvent(
            patient=patient,
            time=START,
            code=code,
            kind="vital",
            value=v,
            source=f"Observation/{code}",
        )
        for code, v in vals.items()
    )
    return Envelope(patient, "test", None, extra + events)


def test_prepare_selects_spo2_scale2_from_a_listed_condition() -> None:
    plain = prepare(PatientRecord(), _vitals_env("p1"), spec=SPEC, staleness_hours=12)
    assert plain is not None
    assert plain.news2.spo2_scale == 1 and plain.news2.breakdown["spo2"] == 3
    cond = ClinicalEvent(
        patient="p1",
        time=START - timedelta(days=30),
        code="condition",
        kind="condition",
        value_code="http://hl7.org/fhir/sid/icd-10-cm|J96.12",
        source="Condition/c1",
    )
    rec = PatientRecord()
    p = prepare(rec, _vitals_env("p1", (cond,)), spec=SPEC, staleness_hours=12)
    assert p is not None
    assert p.news2.spo2_scale == 2 and p.news2.breakdown["spo2"] == 0  # 90 % on air, scale 2
    assert p.context == {"condition": ["http://hl7.org/fhir/sid/icd-10-cm|J96.12"]}
    # the old Condition does not move the stay-time feature
    assert rec.state.first_seen == START.timestamp()
    assert "Observation/spo2" in p.basis
    score, _ = finish(rec, p, 0.1, model=MODEL, policy=POLICY)
    assert score["features"]["news2_spo2_scale"] == 2


def test_an_alert_carries_a_card_with_the_explainers_top_five() -> None:
    from fhir.resources.R4B.riskassessment import RiskAssessment

    from inference.attribution import Attribution, Contribution
    from inference.scoring.alert_card import card_of

    calls: list[int] = []

    def explain(window: object) -> Attribution:
        calls.append(1)
        contribs = tuple(Contribution(c, 0.1 - i / 100) for i, c in enumerate(NUMERIC_CODES[:7]))
        return Attribution(risk=0.9, method="fake occlusion", contributions=contribs)

    rec = PatientRecord()
    p = prepare(rec, _vitals_env("p2"), spec=SPEC, staleness_hours=12)
    assert p is not None
    _, quiet = finish(rec, p, 0.1, model=MODEL, policy=POLICY, explain=explain)
    assert quiet is None and calls == [], "explanations only for alerts"
    _, alert = finish(rec, p, 0.9, model=MODEL, policy=POLICY, explain=explain)
    assert alert is not None and calls == [1]
    RiskAssessment.model_validate(alert)
    card = card_of(alert)
    assert card is not None and card["indicator"] == "warning"
    top = card["extension"]["top_features"]
    assert [f["feature"] for f in top] == list(NUMERIC_CODES[:5])
    assert card["extension"]["attribution_method"] == "fake occlusion"
    assert card["extension"]["news2"]["breakdown"] == p.news2.breakdown
    assert {b["reference"] for b in alert["basis"]} >= {"Observation/heart_rate"}


def test_a_failing_explainer_does_not_stop_the_alert() -> None:
    from inference.scoring.alert_card import card_of

    def explain(window: object) -> Any:
        raise RuntimeError("model file missing")

    rec = PatientRecord()
    p = prepare(rec, _vitals_env("p3"), spec=SPEC, staleness_hours=12)
    assert p is not None
    _, alert = finish(rec, p, 0.9, model=MODEL, policy=POLICY, explain=explain)
    assert alert is not None
    card = card_of(alert)
    assert card is not None and card["extension"]["top_features"] == []
    assert "unavailable" in card["extension"]["attribution_method"]


def _observation_for(subject: str) -> bytes:
    return orjson.dumps(
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": f"Patient/{subject}"},
            "effectiveDateTime": "2026-01-01T10:00:00Z",
            "valueQuantity": {
                "value": 88,
                "unit": "/min",
                "system": "http://unitsofmeasure.org",
                "code": "/min",
            },
        }
    )


def test_input_that_skipped_the_edge_is_refused_without_repeating_the_id() -> None:
    from fhir.pseudonym import pseudonymise
    from inference.scoring.envelope import is_pseudonym, normalise

    pt = pseudonymise("MRN-00442817", b"k")
    assert is_pseudonym(pt)
    ok = normalise(_observation_for(pt), source="t/0/1", inbound_ts_ms=None)
    assert [e.patient for e in ok.envelopes] == [pt] and not ok.rejected
    for raw_id in ("00442817", "p-7731", pt.upper(), pt + "x"):
        assert not is_pseudonym(raw_id)
        out = normalise(_observation_for(raw_id), source="t/0/2", inbound_ts_ms=None)
        assert out.envelopes == []
        assert len(out.rejected) == 1 and "not a WardWatch pseudonym" in out.rejected[0]
        assert raw_id not in out.rejected[0]
