"""The worker as an operator sees it, on the real services: /metrics, /healthz, /readyz,
and JSON log lines that never carry patient data.

Patients with real-looking identity (names, addresses, record numbers, phone numbers,
birth dates) are fed two ways: as the edge publishes them (pseudonymised by
``strip_phi``), and raw, straight onto the inbound topic, shaped so that the worker
refuses them with reasons that quote the identity. The worker runs at ``-l info``; its
whole output must be JSON lines without any of those strings, the dead-letter lines must
say where each refused message was (topic, partition, offset), and the metrics must have
moved by exactly what was sent, scored and refused.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaError, Message
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from storage.db import make_engine
from storage.models import Alert, DeadLetter, Score
from streams.demo import stop_worker
from streams.model_settings import load_model_info
from streams.replay import landed_at, make_producer
from streams.settings import PROJECT_ROOT, Settings, settings_env
from streams.sources import fhir_message
from tests.integration.harness import isolated_run, wait_for_scores

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.triton]

# (logical id, MRN, name, street, city, postcode, phone, birth date)
PATIENTS = [
    ("p-7731", "00442817", "Florence Nightingale", "Lea Hurst", "Holloway", "DE4 5GA",
     "+44 1629 534 000", "1820-05-12"),
    ("p-7732", "00913377", "Mary Seacole", "14 Cumberland Row", "Kingston", "KN 5",
     "+1 876 555 0142", "1805-11-23"),
    ("p-7733", "00551209", "Edith Cavell", "Swardeston Vicarage", "Norwich", "NR14 8DQ",
     "+44 1508 570 111", "1865-12-04"),
]  # fmt: skip
IDENTIFIER_SYSTEM = "https://hospital.example.org/mrn"
VITALS = [("8867-4", 112, "/min"), ("9279-1", 26, "/min"), ("8480-6", 92, "mm[Hg]"),
          ("8310-5", 38.9, "Cel"), ("59408-5", 91, "%")]  # fmt: skip


def secrets_of(p: tuple[str, ...]) -> list[str]:
    """Every identifying string of a patient, as it could appear in a log line."""
    _, mrn, name, street, city, postcode, phone, birth = p
    return [mrn, *name.split(), street, city, postcode, phone, birth]


def observation(
    n: int, subject: dict[str, Any], code: str, value: Any, unit: str, when: str
) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": f"obs-{n}",
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
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": subject,
        "effectiveDateTime": when,
        "valueQuantity": {
            "value": value,
            "unit": unit,
            "system": "http://unitsofmeasure.org",
            "code": unit,
        },
        "note": [
            {"text": f"seen by the night nurse; {subject.get('display', '')} asked for water"}
        ],
    }


def bundle(p: tuple[str, ...], hour: int, *, bad_entry: bool = False) -> dict[str, Any]:
    """A hospital's transaction Bundle: the Patient with full identity and vitals."""
    pid, mrn, name, street, city, postcode, phone, birth = p
    given, family = name.split()
    full_url = f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, pid)}"
    patient = {
        "resourceType": "Patient",
        "id": pid,
        "identifier": [{"system": IDENTIFIER_SYSTEM, "value": mrn}],
        "name": [{"family": family, "given": [given], "text": name}],
        "telecom": [{"system": "phone", "value": phone}],
        "gender": "female",
        "birthDate": birth,
        "address": [{"line": [street], "city": city, "postalCode": postcode}],
        "text": {"status": "generated", "div": f"<div>{name}, {street}, {city}</div>"},
    }
    when = f"2026-01-01T{hour:02d}:00:00Z"
    subject = {"reference": full_url, "display": name}
    entries = [
        {
            "fullUrl": full_url,
            "resource": patient,
            "request": {"method": "PUT", "url": f"Patient/{pid}"},
        }
    ]
    for n, (code, value, unit) in enumerate(VITALS):
        entries.append({"resource": observation(hour * 10 + n, subject, code, value, unit, when)})
    if bad_entry:  # the name where a number belongs, the address where a time belongs
        entries.append({"resource": observation(99, subject, "8867-4", name, "/min", when)})
        entries.append(
            {"resource": observation(98, subject, "9279-1", 20, "/min", f"{street}, {city}")}
        )
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def raw_refusals(p: tuple[str, ...]) -> list[bytes]:
    """Un-pseudonymised messages the worker must refuse, each quoting identity somewhere."""
    _, mrn, name, street, *_ = p
    by_identifier = {"reference": f"Patient?identifier={IDENTIFIER_SYSTEM}|{mrn}", "display": name}
    return [
        orjson.dumps(bundle(p, 5, bad_entry=True)),
        orjson.dumps(observation(1, by_identifier, "8867-4", 80, "/min", "2026-01-01T01:00:00Z")),
        orjson.dumps(
            observation(
                2, {"reference": f"Person/{name}"}, "8867-4", 80, "/min", "2026-01-01T01:00:00Z"
            )
        ),
        f'{{"resourceType": "Patient", "name": [{{"text": "{name}"}}], "address": "{street}'.encode(),  # noqa: E501
    ]


def start_worker(s: Settings, log_path: Path) -> subprocess.Popen[bytes]:
    """``wardwatch worker -l info`` (more log lines to scan than the harness's ``warn``)."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streams",
                "worker",
                "-l",
                "info",
                "--web-port",
                str(s.worker_web_port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=PROJECT_ROOT,
            env=settings_env(s),
            start_new_session=True,
        )


def get(s: Settings, path: str) -> tuple[int, bytes, str]:
    url = f"http://127.0.0.1:{s.worker_web_port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers.get("Content-Type", "")


def wait_ready(
    s: Settings, proc: subprocess.Popen[bytes], log: Path, timeout: float
) -> dict[str, Any]:
    deadline, last = time.monotonic() + timeout, "never answered"
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"worker exited\n{log.read_text()[-3000:]}"
        try:
            status, body, _ = get(s, "/readyz")
        except OSError as exc:  # web server not up yet
            last = repr(exc)
        else:
            last = body.decode()
            if status == 200:
                return dict(json.loads(body))
            assert status == 503, last
            assert json.loads(body)["status"] == "not_ready"
        time.sleep(1)
    raise AssertionError(f"/readyz never 200: {last}\n{log.read_text()[-3000:]}")


def scrape(s: Settings) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body, ctype = get(s, "/metrics")
    assert status == 200 and ctype.startswith("text/plain"), (status, ctype)
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def val(m: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


def total(m: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str) -> float:
    return sum(v for (n, _), v in m.items() if n == name)


@pytest.fixture
def run_settings() -> Iterator[Settings]:
    with isolated_run("ops") as s:
        yield s


def test_metrics_health_and_logs_without_patient_data(
    run_settings: Settings, tmp_path: Path
) -> None:
    s = run_settings
    log_path = tmp_path / "worker.log"
    proc = start_worker(s, log_path)
    try:
        assert get_when_up(s, "/healthz", proc, log_path) == (200, {"status": "ok"})
        ready = wait_ready(s, proc, log_path, timeout=120)
        assert ready["status"] == "ready" and ready["partitions"] > 0

        key = s.pseudonym_key.get_secret_value().encode()
        edge = [
            fhir_message(orjson.dumps(bundle(p, hour)), key, origin="test", stem=p[0])
            for p in PATIENTS
            for hour in (1, 2)
        ]
        for m in edge:  # what the edge publishes carries no identity at all
            assert not any(x.encode() in m.value for p in PATIENTS for x in secrets_of(p))
        raw = [b for p in PATIENTS for b in raw_refusals(p)]

        landed: dict[str, tuple[int, int]] = {}

        def delivered(name: str) -> Any:
            def cb(err: KafkaError | None, msg: Message) -> None:
                assert err is None, err
                landed[name] = landed_at(msg)

            return cb

        producer = make_producer(s)
        for i, m in enumerate(edge):
            producer.produce(
                s.topic_inbound, key=m.key, value=m.value, on_delivery=delivered(f"edge{i}")
            )
        for i, value in enumerate(raw):
            producer.produce(
                s.topic_inbound, key=b"raw", value=value, on_delivery=delivered(f"raw{i}")
            )
        assert producer.flush(30) == 0
        assert len(landed) == len(edge) + len(raw)

        edge_offsets = {
            f"{s.topic_inbound}/{p}/{o}" for n, (p, o) in landed.items() if n.startswith("edge")
        }
        rows = wait_for_scores(s, edge_offsets, timeout=120)
        assert edge_offsets <= {r.event_offset for r in rows}, log_path.read_text()[-3000:]

        # Wait until every refusal is indexed and the counters agree with the database
        # (the raw Bundle's good entries are scored a moment after the others).
        engine = make_engine(s.database_url)
        deadline = time.monotonic() + 60
        while True:
            with engine.connect() as conn:
                n_scores = conn.execute(select(func.count()).select_from(Score)).scalar_one()
                n_degraded = conn.execute(
                    select(func.count()).select_from(Score).where(Score.degraded)
                ).scalar_one()
                n_alerts = conn.execute(select(func.count()).select_from(Alert)).scalar_one()
                n_dead = conn.execute(select(func.count()).select_from(DeadLetter)).scalar_one()
            m = scrape(s)
            settled = (
                n_dead == len(raw)
                and val(m, "wardwatch_scores_total") == n_scores
                and val(m, "wardwatch_events_in_total", topic=s.topic_scores) == n_scores
                and val(m, "wardwatch_events_in_total", topic=s.topic_alerts) == n_alerts
            )
            if settled or time.monotonic() > deadline:
                break
            time.sleep(1)
        engine.dispose()

        # ---- counters moved by exactly what was sent, refused and scored
        n_in = len(edge) + len(raw)
        assert val(m, "wardwatch_events_in_total", topic=s.topic_inbound) == n_in
        # Edge messages are keyed by their patient's pseudonym, so each is scored on the
        # partition it arrived on; anything forwarded comes back through the events topic.
        forwarded = val(m, "wardwatch_envelopes_total", path="forwarded")
        assert val(m, "wardwatch_envelopes_total", path="local") >= len(edge)
        assert val(m, "wardwatch_events_in_total", topic=s.topic_events) == forwarded
        assert val(m, "wardwatch_batch_size_sum", agent="score") == n_in + forwarded
        assert n_dead == len(raw)
        assert val(m, "wardwatch_dead_letters_total", stage="normalise") == len(raw)
        assert total(m, "wardwatch_dead_letters_total") == len(raw)
        assert val(m, "wardwatch_events_out_total", topic=s.topic_dlq) == len(raw)
        assert val(m, "wardwatch_events_in_total", topic=s.topic_dlq) == len(raw)
        assert n_scores >= len(edge)
        assert val(m, "wardwatch_scores_total") == n_scores
        assert val(m, "wardwatch_events_out_total", topic=s.topic_scores) == n_scores
        assert val(m, "wardwatch_events_in_total", topic=s.topic_scores) == n_scores
        assert val(m, "wardwatch_scores_degraded_total") == n_degraded
        assert total(m, "wardwatch_alerts_raised_total") == n_alerts
        assert val(m, "wardwatch_events_out_total", topic=s.topic_alerts) == n_alerts
        assert val(m, "wardwatch_event_to_score_seconds_count") == n_scores
        assert 0 < val(m, "wardwatch_event_to_score_seconds_sum") < 120 * n_scores
        # every non-degraded score's window went to Triton (explanations add more)
        assert val(m, "wardwatch_triton_batch_size_sum") >= n_scores - n_degraded
        assert val(m, "wardwatch_triton_request_seconds_count", outcome="ok") >= 1
        model = load_model_info(s).info
        build = [k for k in m if k[0] == "wardwatch_build_info"]
        assert len(build) == 1
        assert ("model", model.name) in build[0][1] and ("model_version", model.version) in build[
            0
        ][1]

        # ---- consumer lag: a gauge per assigned partition, down to 0 once committed
        deadline = time.monotonic() + 30
        while True:
            m = scrape(s)
            lag = {k[1]: v for k, v in m.items() if k[0] == "wardwatch_consumer_lag"}
            inbound = {k: v for k, v in lag.items() if ("topic", s.topic_inbound) in k}
            if (
                len(inbound) == s.topic_partitions and not any(lag.values())
            ) or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert len(inbound) == s.topic_partitions, lag
        assert not any(lag.values()), lag

        status, body, _ = get(s, "/readyz")
        assert status == 200 and json.loads(body)["status"] == "ready"
        # Faust's own table view would serve the per-patient records without a token.
        assert get(s, "/table/patients/")[0] == 404
    finally:
        stop_worker(proc)

    # ---- the log: JSON lines only, no identity anywhere, dead letters located
    text = log_path.read_text()
    lines = text.splitlines()
    assert len(lines) > 20, "the worker at -l info logs its start-up"
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON log line: {line[:200]!r}")
    for r in records:
        assert {"time", "level", "logger", "message"} <= set(r), r
    lowered = text.lower()
    for p in PATIENTS:
        for secret in secrets_of(p):
            assert secret.lower() not in lowered, f"{secret!r} is in the worker's log"
    dead = [r for r in records if r["message"].startswith("dead-lettered")]
    refused = {landed[f"raw{i}"] for i in range(len(raw))}
    assert {(r["partition"], r["offset"]) for r in dead} == refused
    assert len(dead) == len(raw)
    assert all(r["topic"] == s.topic_inbound and r["stage"] == "normalise" for r in dead)


def get_when_up(
    s: Settings, path: str, proc: subprocess.Popen[bytes], log: Path
) -> tuple[int, Any]:
    """The first answer of the worker's web server to ``path`` (it starts with the worker)."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"worker exited\n{log.read_text()[-3000:]}"
        try:
            status, body, _ = get(s, path)
            return status, json.loads(body)
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"no answer on {path}")


def test_readyz_says_what_is_not_ready(tmp_path: Path) -> None:
    with isolated_run("opsnr") as s0:
        # a database nothing listens on: the worker runs, but is not ready
        s = s0.model_copy(
            update={"database_url": "postgresql+psycopg://wardwatch:x@127.0.0.1:9/nowhere"}
        )
        log_path = tmp_path / "worker.log"
        proc = start_worker(s, log_path)
        try:
            assert get_when_up(s, "/healthz", proc, log_path) == (200, {"status": "ok"})
            deadline = time.monotonic() + 90
            while True:
                status, body, _ = get(s, "/readyz")
                doc = json.loads(body)
                # until assignment and recovery are done: then only the database is left
                if set(doc.get("not_ready", {})) <= {"database"} or time.monotonic() > deadline:
                    break
                time.sleep(1)
            assert status == 503, doc
            assert doc["status"] == "not_ready"
            assert set(doc["not_ready"]) == {"database"}, doc
            assert doc["not_ready"]["database"].startswith("database unavailable")
            assert doc["partitions"] > 0
        finally:
            stop_worker(proc)
