"""Contract tests: the behaviours of the real Faust consumer and aiokafka that
streams/faust_fixes.py's overrides rely on, on real Kafka (an isolated topic and app id).

The unit tests in tests/unit/streams/test_faust_fixes.py drive the overrides with
stand-in state; these run a real worker (tests/integration/faust_contract_app.py, the
project's Consumer installed, the agent built as streams/worker/app.py builds its agents) and
fail when an upgrade changes what the overrides assume (see docs/design.md for the list).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from streams.settings import PROJECT_ROOT

pytestmark = pytest.mark.kafka

APP = Path(__file__).with_name("faust_contract_app.py")


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("faust-contract")
    run = secrets.token_hex(4)
    topic = f"contract-{run}"
    admin = AdminClient({"bootstrap.servers": "127.0.0.1:9092"})
    for fut in admin.create_topics([NewTopic(topic, 1, 1)]).values():
        fut.result(30)
    out = tmp / "observed.json"
    env = dict(
        os.environ,
        CONTRACT_TOPIC=topic,
        CONTRACT_APP_ID=f"wardwatch-contract-{run}",
        CONTRACT_OUT=str(out),
        CONTRACT_DATA_DIR=str(tmp / "data"),
        CONTRACT_WEB_PORT=str(6100 + secrets.randbelow(800)),
        PYTHONPATH=str(PROJECT_ROOT),
    )
    try:
        proc = subprocess.run(
            [sys.executable, str(APP), "worker", "-l", "warn", "--without-web"],
            cwd=tmp,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        admin.delete_topics([topic, f"wardwatch-contract-{run}-__assignor-__leader"])
    assert out.exists(), (
        f"worker exited {proc.returncode}:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    )
    data = json.loads(out.read_text())
    assert "error" not in data, data["error"]
    return data


def test_install_puts_our_consumer_in_and_aiokafka_takes_the_fetch_settings(
    observed: dict[str, Any],
) -> None:
    # ConsumerThread sets aiokafka's private _fetch_min_bytes/_fetch_max_wait_ms before
    # start; aiokafka's Fetcher must be built from them.
    assert observed["consumer_class_is_ours"] is True
    assert observed["fetch_min_bytes"] == 4096
    assert observed["fetch_max_wait_ms"] == 37


def test_faust_bookkeeping_the_overrides_touch_exists(observed: dict[str, Any]) -> None:
    assert all(observed["bookkeeping"].values()), observed["bookkeeping"]


def test_nothing_committed_reads_as_none_and_the_partition_starts_at_its_earliest(
    observed: dict[str, Any],
) -> None:
    # Faust holds "nothing committed" / offset 0 as None (perform_seek); aiokafka's
    # seek_to_committed gives None for it, and the override seeks it to the earliest (0).
    assert observed["committed_before"] is None
    assert observed["fetch_start"] == 0


def test_flow_control_resume_clears_through_the_wrapped_clear(observed: dict[str, Any]) -> None:
    # FlowControlEvent.resume() calls self.clear(), which the override wraps per instance.
    assert observed["clears_after_resume"] == 1


def test_processors_see_the_tracked_current_event(observed: dict[str, Any]) -> None:
    # admit_in_order reads Stream.current_event in a processor: Faust must set it, and
    # mark the message tracked, before processors run.
    assert observed["processor_saw"]
    assert observed["processor_offsets_ok"] is True
    assert observed["processor_all_tracked"] is True
    assert all(p["value_is_event_value"] for p in observed["processor_saw"])


def test_adaptive_take_hands_over_tracked_unacknowledged_events_in_order(
    observed: dict[str, Any],
) -> None:
    assert observed["all_processed"] is True
    assert observed["first_pass"] == list(range(20))
    assert observed["seen_tracked"] is True
    assert observed["seen_unacked_when_handed"] is True
    assert observed["refused_acks"] == 0
    assert observed["released"] == 0


def test_faust_commit_goes_through_new_offset_to_the_broker(observed: dict[str, Any]) -> None:
    # Consumer.commit() -> _new_offset (the override) -> aiokafka commit: one past the
    # contiguous run of acknowledged offsets from the start, and Faust's record of it.
    assert observed["broker_committed"] == 20
    assert observed["committed_after"] == 20


def test_seek_on_the_consumer_thread_redelivers_from_there(observed: dict[str, Any]) -> None:
    # _seek runs aiokafka's seek via call_thread; the records come again from offset 5,
    # in order, and are processed (admit's resume point follows the seek).
    assert observed["redelivered"] is True
    assert observed["second_pass"] == list(range(5, 20))
    assert observed["broker_committed_after_seek"] == 20


REBALANCE_APP = Path(__file__).with_name("faust_rebalance_app.py")


@pytest.fixture(scope="module")
def rebalanced(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A first worker holds a batch in flight when a second joins its group."""
    tmp = tmp_path_factory.mktemp("faust-rebalance")
    run = secrets.token_hex(4)
    topic, app_id = f"rebalance-{run}", f"wardwatch-rebalance-{run}"
    admin = AdminClient({"bootstrap.servers": "127.0.0.1:9092"})
    for fut in admin.create_topics([NewTopic(topic, 2, 1)]).values():
        fut.result(30)
    out = tmp / "observed.json"

    def worker(role: str) -> subprocess.Popen[str]:
        env = dict(
            os.environ,
            CONTRACT_ROLE=role,
            CONTRACT_TOPIC=topic,
            CONTRACT_APP_ID=app_id,
            CONTRACT_OUT=str(out),
            CONTRACT_DATA_DIR=str(tmp / f"data-{role}"),
            CONTRACT_WEB_PORT=str(6100 + secrets.randbelow(800)),
            PYTHONPATH=str(PROJECT_ROOT),
        )
        cmd = [sys.executable, str(REBALANCE_APP), "worker", "-l", "warn", "--without-web"]
        log = (tmp / f"{role}.log").open("w")
        return subprocess.Popen(
            cmd, cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT, text=True
        )

    procs = [worker("first")]
    try:
        ready = Path(f"{out}.ready")
        deadline = time.monotonic() + 90
        while not ready.exists() and procs[0].poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if ready.exists():
            procs.append(worker("joiner"))
        for p in procs:
            p.wait(timeout=150)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        admin.delete_topics([topic, f"{app_id}-__assignor-__leader"])
    logs = "".join(
        (tmp / f"{r}.log").read_text()[-3000:]
        for r in ("first", "joiner")
        if (tmp / f"{r}.log").exists()
    )
    assert out.exists(), f"the first worker wrote nothing:\n{logs}"
    data: dict[str, Any] = json.loads(out.read_text())
    assert "error" not in data, f"{data['error']}\n{logs}"
    joiner = Path(f"{out}.joiner")
    assert joiner.exists(), f"the joiner wrote nothing:\n{logs}"
    data["joiner"] = json.loads(joiner.read_text())
    return data


def test_a_rebalance_revokes_only_after_the_batch_in_flight_is_acknowledged(
    rebalanced: dict[str, Any],
) -> None:
    # Faust's revocation (stream_wait_empty) waits for tracked, unacknowledged messages:
    # the overrides never commit past a batch a stream still holds.
    assert rebalanced["first_run_processed"] is True
    assert rebalanced["batch_held"] is True
    assert rebalanced["rebalanced"] is True, rebalanced
    t = rebalanced["times"]
    began = min(r for r in rebalanced["rebalance_starts"] if r > t["held"])
    assert began < t["held_acked"]  # the rebalance began while the batch was in flight
    revoked = min(r for r in rebalanced["revocations"] if r > began)
    assert revoked > t["held_acked"]  # and Faust revoked only once it was acknowledged


def test_after_a_rebalance_the_kept_partition_restarts_at_its_commit_and_the_other_is_forgotten(
    rebalanced: dict[str, Any],
) -> None:
    # seek_to_committed (Faust's, then the override's) puts the committed offset back in
    # _committed_offset and the fetch start of the partition kept; _forget drops what the
    # override knew of the one given away. (Faust pops _committed_offset of a revoked
    # partition, but its own wait for the streams commits again and re-records it; the
    # overrides do not rely on it, since an assignment records it afresh.)
    assert rebalanced["committed_before"] == {"0": 10, "1": 10}
    assert rebalanced["remembered_before"] == {"0": True, "1": True}
    assert len(rebalanced["gone"]) == 1 and len(rebalanced["kept"]) == 1
    assert rebalanced["kept_committed_offset"] == [11]  # 10 first-run records + 1 held
    assert rebalanced["kept_fetch_start"] == [11]
    assert rebalanced["gone_override_state"] == [[]]


def test_the_partition_handed_over_resumes_after_what_was_acknowledged(
    rebalanced: dict[str, Any],
) -> None:
    # The revocation committed the held batch: the joiner starts the partition it got
    # after it (offset 11 = 10 first-run records + 1 held) and processes nothing again.
    joiner = rebalanced["joiner"]
    assert joiner["assigned"] == rebalanced["gone"]
    gone = str(rebalanced["gone"][0])
    processed_first = {(p, o) for p, o in rebalanced["processed"]}
    assert (int(gone), 10) in processed_first  # the held record of that partition
    assert joiner["fetch_start"][gone] == 11
    assert joiner["processed"] == []
