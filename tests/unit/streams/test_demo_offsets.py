"""end_offsets retries a partition whose leader is still starting, and only that."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from streams import demo
from streams.settings import Settings


class FakeConsumer:
    """Two partitions of one topic; the first ``fail`` watermark calls raise ``code``."""

    def __init__(self, fail: int, code: int, unlisted: int = 0) -> None:
        self.fail, self.code, self.calls, self.unlisted = fail, code, 0, unlisted

    def __call__(self, conf: dict[str, Any]) -> FakeConsumer:
        return self

    def list_topics(self, topic: str, timeout: float) -> Any:
        # The first ``unlisted`` answers name no partition (a topic created moments ago).
        self.unlisted -= 1
        parts = {} if self.unlisted >= 0 else {0: None, 1: None}
        return SimpleNamespace(topics={topic: SimpleNamespace(partitions=parts)})

    def get_watermark_offsets(self, tp: Any, timeout: float) -> tuple[int, int]:
        self.calls += 1
        if self.calls <= self.fail:
            raise KafkaException(KafkaError(self.code))
        return 0, 10 + tp.partition

    def close(self) -> None:
        pass


def test_a_starting_leader_is_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeConsumer(fail=3, code=KafkaError.NOT_LEADER_FOR_PARTITION, unlisted=2)
    monkeypatch.setattr(demo, "Consumer", fake)
    monkeypatch.setattr(demo.time, "sleep", lambda s: None)
    assert demo.end_offsets(Settings(), ["t"]) == {"t": {0: 10, 1: 11}}
    assert fake.unlisted < 0, "partition-less metadata was asked again"


def test_other_errors_and_a_leader_that_never_starts_are_raised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(demo.time, "sleep", lambda s: None)
    denied = FakeConsumer(fail=1, code=KafkaError.TOPIC_AUTHORIZATION_FAILED)
    monkeypatch.setattr(demo, "Consumer", denied)
    with pytest.raises(KafkaException):
        demo.end_offsets(Settings(), ["t"])
    assert denied.calls == 1, "not retried"
    monkeypatch.setattr(
        demo, "Consumer", FakeConsumer(fail=10**9, code=KafkaError.NOT_LEADER_FOR_PARTITION)
    )
    with pytest.raises(KafkaException):
        demo.end_offsets(Settings(), ["t"], retry_s=0.0)
