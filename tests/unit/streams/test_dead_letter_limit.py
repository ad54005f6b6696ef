"""The dead-letter limit: a share over a sliding window, judged once the window is full."""

from __future__ import annotations

import pytest

from streams.dead_letter_limit import DeadLetterLimit


def test_a_few_bad_messages_never_trip_it() -> None:
    limit = DeadLetterLimit(max_ratio=0.5, window_s=60, min_messages=100)
    for t in range(600):
        limit.record(taken=10, dead=1, now=float(t))
        assert limit.exceeded(float(t)) is None


def test_most_messages_dead_trip_it_once_the_window_holds_enough() -> None:
    limit = DeadLetterLimit(max_ratio=0.5, window_s=60, min_messages=100)
    limit.record(taken=90, dead=90, now=0.0)
    assert limit.exceeded(0.0) is None  # 90 < 100 messages: too few to judge
    limit.record(taken=20, dead=0, now=1.0)
    why = limit.exceeded(1.0)
    assert why is not None and "90 of the last 110 messages (82%)" in why
    assert "WARDWATCH_DEAD_LETTER_MAX_RATIO" in why


def test_the_window_slides() -> None:
    limit = DeadLetterLimit(max_ratio=0.5, window_s=10, min_messages=10)
    limit.record(taken=100, dead=100, now=0.0)
    assert limit.exceeded(0.5) is not None
    # ten seconds on, the flood has left the window; good traffic alone is fine
    limit.record(taken=100, dead=0, now=10.0)
    assert limit.exceeded(10.0) is None
    limit.record(taken=100, dead=60, now=11.0)
    assert limit.exceeded(11.0) is None  # 60 of 200
    limit.record(taken=50, dead=50, now=12.0)
    assert limit.exceeded(12.0) is None  # 110 of 250: 44 %
    limit.record(taken=100, dead=100, now=13.0)
    assert limit.exceeded(13.0) is not None  # 210 of 350: 60 %


def test_a_ratio_of_one_turns_it_off_and_bad_settings_are_refused() -> None:
    off = DeadLetterLimit(max_ratio=1.0, window_s=60, min_messages=1)
    off.record(taken=10_000, dead=10_000, now=0.0)
    assert off.exceeded(0.0) is None
    for bad in ({"max_ratio": 0.0}, {"window_s": 0.0}, {"min_messages": 0}):
        args = {"max_ratio": 0.5, "window_s": 60.0, "min_messages": 10} | bad
        with pytest.raises(ValueError, match="dead-letter"):
            DeadLetterLimit(**args)  # type: ignore[arg-type]
