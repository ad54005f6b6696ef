"""The commit gate of :mod:`streams.faust_fixes`: never commit past an unprocessed offset."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace
from typing import Any

from faust.types import TP
from intervaltree import IntervalTree

from streams.faust_fixes import Consumer

TOPIC = TP("clinical.events", 3)


def gate(
    acked: list[int], committed: int | None, start: int | None = None, gaps: Any = ()
) -> tuple[int | None, list[int]]:
    """Run ``Consumer._new_offset`` on plain bookkeeping; (offset to commit, acks left)."""
    c = SimpleNamespace(
        _acked=defaultdict(list, {TOPIC: list(acked)}),
        _acked_index=defaultdict(set, {TOPIC: set(acked)}),
        _gap=defaultdict(IntervalTree, {TOPIC: IntervalTree.from_tuples(gaps)}),
        _committed_offset=defaultdict(lambda: None, {TOPIC: committed}),
        _fetch_start={} if start is None else {TOPIC: start},
    )
    offset = Consumer._new_offset(c, TOPIC)  # type: ignore[arg-type]
    assert set(c._acked[TOPIC]) == c._acked_index[TOPIC], "index kept in step"
    return offset, c._acked[TOPIC]


def test_commits_the_run_that_starts_at_the_committed_offset() -> None:
    assert gate([10, 11, 12, 14], committed=10) == (13, [14])
    assert gate([12, 10, 11], committed=10) == (13, [])


def test_a_missing_head_blocks_the_commit() -> None:
    # Faust lets one missing offset through (min(acked) - committed > 1); not here.
    assert gate([11, 12, 13], committed=10) == (None, [11, 12, 13])
    assert gate([58, 59], committed=51) == (None, [58, 59])


def test_unknown_committed_offset_uses_the_assignment_seek() -> None:
    # Faust forgets the committed offset on revocation and keeps 0 as None: without a
    # known start nothing is committed; with the seek position the run must start there.
    assert gate([30, 31], committed=None) == (None, [30, 31])
    assert gate([30, 31], committed=None, start=0) == (None, [30, 31])
    assert gate([0, 1, 2], committed=None, start=0) == (3, [])


def test_offsets_kafka_never_delivers_count_as_processed() -> None:
    # A gap Faust recorded while fetching (e.g. a transaction marker) fills the run.
    assert gate([10, 11, 14], committed=10, gaps=[(12, 14)]) == (15, [])


def test_nothing_acked_commits_nothing() -> None:
    assert gate([], committed=5) == (None, [])
