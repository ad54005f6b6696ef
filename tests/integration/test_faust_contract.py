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
