"""Planted identifiers never reach anything at rest past the edge.

One message of each kind (HL7 v2 ADT^A01 and ORU^R01 over MLLP; a FHIR Observation and a
transaction Bundle with Patient and Encounter over HTTP), and bad ones of each kind, full
of planted identifiers, go through the real gateway on the local Kafka; then `wardwatch dlq
list`, `show`, `show --decrypt` (audited in the run's PostgreSQL database) and `replay`.
Every message of the run's topics (keys, values, headers), every text column of every
table of its database and the captured logs are searched for each planted string.

Planted: MRN, name, address, phone, birth date, HL7 visit number, and (issue 18) a FHIR
Encounter.identifier, Observation.identifier, code.text, a performer's display and an
extension valueIdentifier. Accepted messages on fhir.inbound carry none of them (the edge's
allow-list, fhir/data/phi_allow.yaml), but do carry the Observation's code and value and the
Encounter's ward code.

Then a real worker (Faust, Triton, the run's PostgreSQL) scores what the edge accepted and
refuses one message that passed no edge (written straight to fhir.inbound, as a
misconfigured producer would, with a planted marker): its dead letter must be sealed. The
events, scores and alerts topics, every Faust changelog topic of the run, the database and
the worker's log are searched too.
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from click.testing import CliRunner
from confluent_kafka import Consumer, Producer, TopicPartition
from pydantic import SecretStr

import streams.cli_context as cli_context
from streams.cli_edge import dlq_group
from streams.settings import Settings
from tests.integration.harness import Workers, isolated_run, wait_for_scores
from tests.integration.test_gateway import Running, mllp_send, msa

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.triton]
# In the one message the test itself writes past the edge (a worker-stage dead letter).
WORKER_MARK = "WORKERPLANT-8Z3Q"

MRN, GIVEN, FAMILY = "MRN-PLANT-7Q3Z", "Zyxwplant", "Quorvex"
STREET, PHONE, ENC_ID = "Plantagenet Lane", "5550199", "ENC-PLANT-9K2X"
# the kinds strip_phi's allow-list drops (issue 18): Encounter.identifier (the FHIR visit
# number), Observation.identifier, code.text, a performer's display, extension valueIdentifier
VISIT, OBS_ID, CODE_TEXT = "VISIT-PLANT-3J7W", "OBSID-PLANT-4R8T", "CodeTextPlant-2W6"
PERFORMER, EXT_ID = "Drplantmeyer", "EXTID-PLANT-5M1C"
PLANTED = [MRN, GIVEN, FAMILY, STREET, PHONE, ENC_ID, "1957-03-14", "19570314"]
PLANTED += [VISIT, OBS_ID, CODE_TEXT, PERFORMER, EXT_ID]

MSH = "MSH|^~\\&|LAB|HOSP|WW|WARD|20260101120000+0000||{t}|{cid}|P|2.5\r"
PID = (
    f"PID|1||{MRN}^^^HOSP^MR||{FAMILY.upper()}^{GIVEN.upper()}||19570314|F|||"
    f"12 {STREET}^^LEEDS||{PHONE}\r"
)
ADT = (
    MSH.format(t="ADT^A01", cid="PH-1")
    + "EVN|A01|20260101120000\r"
    + PID
    + (f"PV1|1|I|ICU^01^A||||||||||||||||{ENC_ID}|||||||||||||||||||||||||20260101110000+0000\r")
)
ORU = (
    MSH.format(t="ORU^R01", cid="PH-2")
    + PID
    + ("OBX|1|NM|8867-4^HR^LN||{v}|/min|||||F|||20260101115500+0000\r")
)


def patient() -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": MRN,
        "identifier": [{"system": "urn:hosp:mrn", "value": MRN}],
        "name": [{"family": FAMILY, "given": [GIVEN]}],
        "telecom": [{"system": "phone", "value": PHONE}],
        "address": [{"line": [f"12 {STREET}"], "city": "Leeds"}],
        "birthDate": "1957-03-14",
        "gender": "female",
        "text": {"status": "generated", "div": f"<div>{GIVEN} {FAMILY}</div>"},
    }


def observation(value: object = 88) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "identifier": [{"system": "urn:hosp:lab", "value": OBS_ID}],
        "code": {
            "coding": [{"system": "http://loinc.org", "code": "8867-4"}],
            "text": f"pulse, {CODE_TEXT}",
        },
        "subject": {"reference": f"Patient/{MRN}", "display": f"{GIVEN} {FAMILY}"},
        "performer": [{"reference": "Practitioner/n1", "display": f"Nurse {PERFORMER}"}],
        "effectiveDateTime": "2026-01-01T11:55:00Z",
        "valueQuantity": {"value": value, "unit": "/min"},
        "note": [{"text": f"called {PHONE}"}],
        "extension": [{"url": "urn:hosp:episode", "valueIdentifier": {"value": EXT_ID}}],
    }


def bundle() -> dict[str, Any]:
    enc = {
        "resourceType": "Encounter",
        "status": "in-progress",
        "identifier": [{"system": "urn:hosp:visit", "value": VISIT}],
        "class": {"code": "IMP"},
        "subject": {"reference": f"Patient/{MRN}", "display": FAMILY},
        "period": {"start": "2026-01-01T10:00:00Z"},
        # the ward code (ICU) is kept for ICU admissions; the rest of the display is not
        "location": [{"location": {"display": f"ICU-2 bed 5 {FAMILY}"}}],
        "serviceProvider": {"reference": "Organization/h1", "display": f"{PERFORMER} clinic"},
    }
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:p1", "resource": patient(), "request": {"method": "POST"}},
            {"resource": enc, "request": {"method": "POST", "url": "Encounter"}},
        ],
    }


def read_topic(s: Settings, topic: str) -> list[bytes]:
    """Every record of ``topic`` to its end now: key, value and headers, as bytes."""
    c = Consumer({"bootstrap.servers": s.kafka_bootstrap, "group.id": f"t-{uuid.uuid4().hex}"})
    try:
        parts = sorted(c.list_topics(topic, timeout=10).topics[topic].partitions)
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
        c.assign([TopicPartition(topic, p, 0) for p in parts if ends[p] > 0])
        left, out, deadline = sum(ends.values()), [], time.monotonic() + 30
        while left > 0 and time.monotonic() < deadline:
            for m in c.consume(500, timeout=1.0):
                if m.error() is None:
                    left -= 1
                    raw = m.headers() or []
                    pairs = raw.items() if isinstance(raw, dict) else raw
                    hdrs = b"".join(
                        k.encode() + b"=" + (v.encode() if isinstance(v, str) else v or b"")
                        for k, v in pairs
                    )
                    key = m.key() or b""
                    value = m.value() or b""
                    assert isinstance(key, bytes) and isinstance(value, bytes)
                    out.append(key + b"\n" + value + b"\n" + hdrs)
        assert left == 0, f"{topic}: {left} records not read"
        return out
    finally:
        c.close()


def database_text(url: str) -> str:
    """Every text column of every table of the run's database, as one string."""
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    chunks: list[str] = []
    with psycopg.connect(dsn) as conn:
        cols = conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns WHERE "
            "table_schema = 'public' AND data_type IN ('text', 'character varying', 'json', "
            "'jsonb')"
        ).fetchall()
        for table, column in cols:
            rows = conn.execute(f'SELECT "{column}"::text FROM "{table}"').fetchall()
            chunks += [f"{table}.{column}={r[0]}" for r in rows if r[0] is not None]
    return "\n".join(chunks)


def assert_clean(what: str, text: str) -> None:
    found = [p for p in PLANTED if p in text]
    assert not found, f"planted identifiers {found} in {what}"


def test_no_planted_identifier_at_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with isolated_run(
        "phi",
        gateway_mllp_port=0,
        gateway_http_port=0,
        gateway_dedup_path=tmp_path / "seen.sqlite",
        dead_letter_key=SecretStr("ab" * 32),
        dead_letter_key_id="it1",
    ) as s:
        with Running(s) as gw:
            acks = mllp_send(
                gw.server.mllp_port,
                [
                    ADT.encode(),
                    ORU.format(v=88).encode(),
                    ORU.format(v=MRN).encode().replace(b"PH-2", b"PH-3"),  # OBX-5 not a number
                    f"NOT-HL7 {MRN} {FAMILY}".encode(),
                ],
            )
            assert [msa(a)[1] for a in acks] == ["AA", "AA", "AE", "AR"], acks
            base = f"http://127.0.0.1:{gw.server.http_port}/fhir"
            with httpx.Client(timeout=30) as http:
                assert http.post(f"{base}/Observation", json=observation()).status_code == 202
                r = http.post(base, json=bundle())
                assert r.status_code == 200, r.text
                bad = [
                    http.post(f"{base}/Observation", json=patient()),  # wrong type
                    http.post(f"{base}/Observation", content=f'{{"x": "{MRN}", '.encode()),
                    http.post(base, json={**bundle(), "entry": [{"resource": observation("x")}]}),
                ]
                assert [b.status_code for b in bad] == [400, 400, 400], [b.text for b in bad]
        # 2 refused over MLLP, 3 over HTTP
        monkeypatch.setattr(cli_context, "_SETTINGS", s)
        runner = CliRunner()
        listed = runner.invoke(dlq_group, ["list"])
        assert listed.exit_code == 0 and "5 of 5 dead letters" in listed.output, listed.output
        assert_clean("dlq list", listed.output)
        first = next(line.split()[0] for line in listed.output.splitlines() if ":" in line[:6])
        shown = runner.invoke(dlq_group, ["show", first])
        assert shown.exit_code == 0 and "encrypted, key it1" in shown.output, shown.output
        assert_clean("dlq show", shown.output)
        decrypted = runner.invoke(dlq_group, ["show", first, "--decrypt"])
        # the operator's read does show the original (so this search can find them) ...
        assert decrypted.exit_code == 0 and MRN in decrypted.output, decrypted.output
        replayed = runner.invoke(dlq_group, ["replay", "--all"])
        assert replayed.exit_code == 0, replayed.output
        assert "re-driven to" in replayed.output and "FHIR pseudonymised again" in replayed.output
        assert_clean("dlq replay", replayed.output)

        # The worker: scores what the edge took; refuses the message no edge saw.
        bad_key = b"pt-aaaaaaaaaaaaaaaaaaaa"
        producer = Producer({"bootstrap.servers": s.kafka_bootstrap})
        producer.produce(
            s.topic_inbound, key=bad_key, value=f'{{"resourceType": "{WORKER_MARK}", '.encode()
        )
        assert producer.flush(10) == 0
        workers = Workers(s, tmp_path / "workers")
        workers.start()
        try:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                dead = [r for r in read_topic(s, s.topic_dlq) if b"wardwatch.stage=normalise" in r]
                scored = read_topic(s, s.topic_scores)
                if dead and scored:
                    break
                time.sleep(2)
            assert dead, "the worker's dead letter never came:\n" + workers.logs()
            assert scored, "nothing was scored:\n" + workers.logs()
            assert b"wardwatch.sealed=aesgcm-v1" in dead[0] and WORKER_MARK.encode() not in dead[0]
            stored: list[Any] = []
            until = time.monotonic() + 90  # the writer stores them (the same worker, role all)
            while not stored and time.monotonic() < until:
                stored = wait_for_scores(s, set(), timeout=1)
                time.sleep(1)
            assert stored, "no score reached the database:\n" + workers.logs()
        finally:
            workers.stop_all()
        assert_clean("the worker's log", workers.logs())

        inbound = [r for r in read_topic(s, s.topic_inbound) if WORKER_MARK.encode() not in r]
        assert len(inbound) >= 3  # ADT, ORU, Observation, Bundle entries, re-drives
        # what the scores need did get through (so the search below is not of empty records)
        text = b"\n".join(inbound).decode("utf-8", "replace")
        assert '"code":"8867-4"' in text and '"value":88' in text, text
        assert '"display":"ICU"' in text and '"resourceType":"Encounter"' in text, text
        changelogs = [
            t
            for t in Consumer({"bootstrap.servers": s.kafka_bootstrap, "group.id": "t-list"})
            .list_topics(timeout=10)
            .topics
            if t.startswith(s.app_id)
        ]
        assert changelogs, "the worker's Faust tables have no changelog topic"
        topics = [s.topic_inbound, s.topic_dlq, s.topic_events, s.topic_scores, s.topic_alerts]
        for topic in [*topics, *changelogs]:
            for record in read_topic(s, topic):
                if topic == s.topic_inbound and WORKER_MARK.encode() in record:
                    continue  # the test's own message past the edge, not ours
                assert_clean(topic, record.decode("utf-8", "replace"))
                if topic != s.topic_inbound:
                    assert WORKER_MARK.encode() not in record, topic
        db = database_text(s.database_url)
        assert "decrypt" in db  # ... and is audited in the database, without the identifiers
        assert_clean("the database", db)
        assert_clean("the logs", caplog.text)
