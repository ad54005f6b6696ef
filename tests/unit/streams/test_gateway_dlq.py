"""`wardwatch dlq`: table formatting and re-drive decisions, without Kafka."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from streams import dlq
from streams.cli_edge import COMMANDS, dlq_group
from streams.dlq import DeadLetter, format_table, redrive
from streams.settings import Settings

HL7 = (
    b"MSH|^~\\&|LAB|HOSP|WW|WARD|20260101120000+0000||ORU^R01|C1|P|2.5\r"
    b"PID|1||12345^^^HOSP^MR||DOE^JOHN\r"
    b"OBX|1|NM|8867-4^HR^LN||88|/min|||||F|||20260101115500+0000\r"
)


def letter(value: bytes, fmt: str | None, offset: int = 0) -> DeadLetter:
    headers = {
        "wardwatch.reason": "OBX-1: OBX-5 'x' is not a number",
        "wardwatch.stage": "gateway.mllp",
    }
    if fmt:
        headers["wardwatch.format"] = fmt
    return DeadLetter("dlq", 0, offset, 1_700_000_000_000, b"k", value, headers)


def test_table_shows_reason_and_escaped_head_only() -> None:
    lines = list(format_table([letter(HL7, "hl7v2")]))
    text = "\n".join(lines)
    assert "0:0" in text and "not a number" in text and "gateway.mllp" in text
    assert "\\x0d" in text or "MSH|^~" in text
    assert "DOE" not in text and "12345" not in text  # beyond the first 40 bytes


def test_redrive_dry_run_and_hl7_remap(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[Any] = []
    monkeypatch.setattr(dlq, "_publish_redrives", lambda s, letters, items: sent.append(items))
    s = Settings(topic_inbound="in")
    still_bad = letter(HL7.replace(b"||88|", b"||x|"), "hl7v2", 1)
    fhir = letter(b'{"resourceType":"Observation"}', None, 2)
    res = redrive(s, [letter(HL7, "hl7v2"), still_bad, fhir], dry_run=True)
    assert [r.sent for r in res] == [False, False, False] and sent == []
    assert "still refused" in res[1].note
    res = redrive(s, [letter(HL7, "hl7v2"), still_bad, fhir])
    assert [r.sent for r in res] == [True, False, True]
    items = sent[0]
    assert items[0][0].startswith(b"pt-") and b"DOE" not in items[0][1]
    assert items[1] == (b"k", b'{"resourceType":"Observation"}')  # original key and bytes


def test_cli_commands_registered_and_replay_needs_a_selection() -> None:
    names = {c.name for c in COMMANDS}
    assert names == {"gateway", "convert", "dlq"}
    r = CliRunner().invoke(dlq_group, ["replay"])
    assert r.exit_code != 0 and "--offset" in r.output
    r = CliRunner().invoke(dlq_group, ["replay", "--offset", "nope"])
    assert r.exit_code != 0 and "PARTITION:OFFSET" in r.output


def test_a_truncated_dead_letter_is_never_replayed(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[Any] = []
    monkeypatch.setattr(dlq, "_publish_redrives", lambda s, letters, items: sent.append(items))
    # the head of an over-long message maps cleanly on its own: replaying it would publish
    # its first segments and silently lose the rest
    head = letter(HL7, "hl7v2")
    head.headers["wardwatch.truncated"] = "true"
    res = redrive(Settings(topic_inbound="in"), [head, letter(HL7, "hl7v2", 1)])
    assert [r.sent for r in res] == [False, True]
    assert "not replayable" in res[0].note and "split" in res[0].note
    assert len(sent[0]) == 1
