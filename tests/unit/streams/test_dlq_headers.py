"""Dead-letter headers: one builder, one reader, the names every consumer relies on."""

from __future__ import annotations

from streams import dlq_headers
from streams.persist import dead_letter_row


def test_built_headers_read_back_as_the_index_row() -> None:
    built = dlq_headers.build("bad unit", "normalise", "fhir.inbound", 3, 17, now_ms=1_700_000)
    text = dlq_headers.as_text(built)
    assert text == {
        "wardwatch.reason": "bad unit", "wardwatch.stage": "normalise",
        "wardwatch.source.topic": "fhir.inbound", "wardwatch.source.partition": "3",
        "wardwatch.source.offset": "17", "wardwatch.dead_lettered_at": "1700000",
    }  # fmt: skip
    row = dead_letter_row(built, ("fhir.inbound.dlq", 0, 99))
    assert (row.topic, row.partition, row.offset, row.stage, row.reason) == (
        "fhir.inbound",
        3,
        17,
        "normalise",
        "bad unit",
    )
    assert row.received_at.timestamp() == 1700.0


def test_an_edge_refusal_has_no_offset_and_says_its_format() -> None:
    text = dlq_headers.as_text(dlq_headers.build("no MSH", "gateway.mllp", "mllp", fmt="hl7v2"))
    assert (text["wardwatch.source.partition"], text["wardwatch.source.offset"]) == ("-1", "-1")
    assert text["wardwatch.format"] == "hl7v2"


def test_odd_headers_are_read_without_raising() -> None:
    assert dlq_headers.as_text(None) == {}
    assert dlq_headers.as_text([(b"wardwatch.reason", b"\xff"), ("x", None)]) == {
        "wardwatch.reason": "\ufffd", "x": "",
    }  # fmt: skip
    row = dead_letter_row({"wardwatch.source.topic": "t", "wardwatch.source.offset": "x"},
                          ("dlq", 1, 2))  # fmt: skip
    assert (row.partition, row.offset, row.reason) == (1, 2, "unknown")
