"""End to end on the real services: replay PhysioNet stays through a real worker.

Kafka, PostgreSQL and Triton are the ones `make up` started; the test gives itself its
own topics, consumer group and database so it cannot see (or disturb) a demo's data.
Every published message must be accounted for — scored in the database or dead-lettered
with its original bytes and a reason — and the stream's scores must equal what
`wardwatch score` computes offline for the same files. `wardwatch validate-site` then
reads that database with the stays' labels.
"""

from __future__ import annotations

import csv
import json
import secrets
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from confluent_kafka import Consumer
from sklearn.metrics import roc_auc_score

from streams.cli_site import validate_site_cmd
from streams.replay import make_producer, replay
from streams.sealing import key_ring
from streams.settings import Settings
from tests.conftest import PHYSIONET, require_shared
from tests.integration.harness import (
    Workers,
    assert_alerts_match_offline,
    assert_exactly_once,
    group_partitions,
    isolated_run,
    offline_scores,
    wait_for_scores,
)

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.triton, pytest.mark.e2e]

N_PATIENTS = 50
BAD = [b'{"resourceType": "Observation", "status": "fin', b"\xff\xfe binary garbage"]


@pytest.fixture(scope="module")
def run_settings() -> Iterator[Settings]:
    with isolated_run("e2e") as s:
        yield s


def _dead_letters(s: Settings, want: int, deadline: float) -> list[tuple[bytes, dict[str, bytes]]]:
    c = Consumer(
        {
            "bootstrap.servers": s.kafka_bootstrap,
            "group.id": f"e2e-dlq-{secrets.token_hex(3)}",
            "auto.offset.reset": "earliest",
        }
    )
    c.subscribe([s.topic_dlq])
    out: list[tuple[bytes, dict[str, bytes]]] = []
    try:
        while len(out) < want and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and not m.error():
                out.append((m.value() or b"", {k: bytes(v or b"") for k, v in m.headers() or []}))
    finally:
        c.close()
    return out


def _validate_site_on_the_replayed_database(
    s: Settings,
    files: list[Path],
    rows: list[Any],
    expected: dict[str, tuple[str, int]],
    tmp: Path,
) -> None:
    """`wardwatch validate-site` on the database the replay filled, with the stays' own
    labels (onset = first SepsisLabel hour + 6 h) given by PhysioNet record id: its
    counts and AUROC are those of the stored scores of the same stays."""
    start = datetime.fromisoformat(s.physionet_stay_start)
    sepsis = {}
    with (tmp / "labels.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["patient", "onset"])
        for path in files:
            lines = path.read_text().splitlines()
            col = lines[0].split("|").index("SepsisLabel")
            y = np.array([int(float(x.split("|")[col])) for x in lines[1:]])
            sepsis[path.stem] = y
            onset = start + timedelta(hours=int(np.argmax(y)) + 6) if y.any() else None
            w.writerow([path.stem, "" if onset is None else onset.isoformat()])
    out = tmp / "site"
    args = ["--labels", str(tmp / "labels.csv"), "--database-url", s.database_url]
    args += ["--id-system", "physionet2019", "--out", str(out), "--bootstrap", "0"]
    r = CliRunner().invoke(validate_site_cmd, args)
    assert r.exit_code == 0, r.output
    c = json.loads((out / "metrics.json").read_text())["counts"]
    septic = sum(1 for y in sepsis.values() if y.any())
    assert septic > 0
    assert (c["patients"], c["septic_patients"], c["patients_no_outcome_given"]) == (
        len(files),
        septic,
        0,
    )
    assert c["scores_read"] == len(rows) and c["scores_dropped_same_hour"] == 0
    # The hourly rows it must have built: each stay's scored hours, the hours between
    # them carrying the previous score forward (the replay sends no message for an hour
    # without measurements).
    scored: dict[str, dict[int, float | None]] = {}
    for r in rows:
        stem, hour = expected[r.event_offset]
        scored.setdefault(stem, {})[hour] = r.risk
    ys, risks = [], []
    for stem, by_hour in scored.items():
        last: float | None = None
        for hour in range(min(by_hour), max(by_hour) + 1):
            last = by_hour.get(hour, last)
            if last is not None:
                ys.append(sepsis[stem][hour])
                risks.append(last)
    assert c["rows"] == sum(max(h) - min(h) + 1 for h in scored.values())
    d = json.loads((out / "metrics.json").read_text())["discrimination"]["model risk"]
    assert d["auroc"] == pytest.approx(roc_auc_score(ys, risks), abs=1e-4)
    assert (out / "report.md").read_text().startswith("# Site validation")


def test_replayed_stays_are_all_accounted_for_and_match_offline_scores(
    run_settings: Settings, tmp_path: Path
) -> None:
    require_shared(PHYSIONET)
    s = run_settings
    files = sorted(PHYSIONET.glob("*.psv"))[:N_PATIENTS]
    workers = Workers(s, tmp_path)
    try:
        workers.start()
        stats = replay(files, s, topic=s.topic_inbound, progress=False)
        assert stats.failed == 0
        assert stats.sent > 0
        producer = make_producer(s)
        for raw in BAD:
            producer.produce(s.topic_inbound, key=b"bad", value=raw)
        assert producer.flush(30) == 0

        expected = {f"{s.topic_inbound}/{p}/{o}": v for (p, o), v in stats.landed.items()}
        rows = wait_for_scores(s, set(expected), timeout=240)
        assert_exactly_once(s, rows, expected, files, logs=workers.logs())

        # The alert state too is the offline command's, row by row.
        offline = offline_scores(s, files)
        for r in rows:
            assert r.alert == offline[expected[r.event_offset]]["alert"], expected[r.event_offset]

        assert_alerts_match_offline(s, files, rows)
        _validate_site_on_the_replayed_database(s, files, rows, expected, tmp_path)

        dead = _dead_letters(s, len(BAD), time.monotonic() + 60)
        # sealed at rest (streams/sealing.py): opened with the worker's key ring
        ring = key_ring(s)
        opened = [
            ring.open(v, {k: h.decode() for k, h in hd.items()}, topic=s.topic_dlq, key=b"bad")
            for v, hd in dead
        ]
        assert all(v not in BAD for v, _ in dead), "dead letters are sealed"
        assert sorted(opened) == sorted(BAD), "dead letters keep the original bytes"
        for _, headers in dead:
            assert headers["wardwatch.reason"]
            assert headers["wardwatch.source.topic"] == s.topic_inbound.encode()
    finally:
        workers.stop_all()


def test_scoring_and_writing_in_separate_processes(tmp_path: Path) -> None:
    # worker_role: a scoring-only worker (no database) and a writer (its own consumer
    # group) together store every message exactly once, scored as offline, with every alert.
    require_shared(PHYSIONET)
    files = sorted(PHYSIONET.glob("*.psv"))[N_PATIENTS : N_PATIENTS + 20]
    with isolated_run("roles") as s:
        scorer = s.model_copy(
            update={
                "worker_role": "score",
                "database_url": "postgresql+psycopg://nobody@127.0.0.1:1/none",
            }
        )
        writer = s.model_copy(update={"worker_role": "persist"})
        workers = Workers(s, tmp_path)
        try:
            workers.start(scorer)
            workers.start(writer)
            stats = replay(files, s, topic=s.topic_inbound, progress=False)
            assert stats.failed == 0 and stats.sent > 0
            expected = {f"{s.topic_inbound}/{p}/{o}": v for (p, o), v in stats.landed.items()}
            rows = wait_for_scores(s, set(expected), timeout=240)
            assert_exactly_once(s, rows, expected, files, logs=workers.logs())
            assert_alerts_match_offline(s, files, rows)
            # Two consumer groups: the scorer reads the inbound topic and not the scores;
            # the writer (<app id>-writer) reads the scores.
            every = set(range(s.topic_partitions))
            writers = s.model_copy(update={"app_id": f"{s.app_id}-writer"})
            assert set().union(*group_partitions(s, s.topic_inbound)) == every
            assert set().union(*group_partitions(s, s.topic_scores)) == set()
            assert set().union(*group_partitions(writers, s.topic_scores)) == every
        finally:
            workers.stop_all()
