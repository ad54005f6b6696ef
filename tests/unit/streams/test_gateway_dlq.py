"""`wardwatch dlq`: table formatting and re-drive decisions, without Kafka."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from pydantic import SecretStr

from streams import dlq
from streams.cli_edge import COMMANDS, dlq_group
from streams.dlq import DeadLetter, format_table, redrive
from streams.sealing import key_ring
from streams.settings import Settings

HL7 = (
    b"MSH|^~\\&|LAB|HOSP|WW|WARD|20260101120000+0000||ORU^R01|C1|P|2.5\r"
    b"PID|1||12345^^^HOSP^MR||DOE^JOHN\r"
    b"OBX|1|NM|8867-4^HR^LN||88|/min|||||F|||20260101115500+0000\r"
)


SETTINGS = Settings(topic_inbound="in", topic_dlq="dlq", dev_mode=True)


def letter(
    value: bytes, fmt: str | None, offset: int = 0, stage: str = "gateway.mllp"
) -> DeadLetter:
    """A dead letter as the gateway or worker writes it: the value sealed."""
    headers = {"wardwatch.reason": "OBX-1: OBX-5 '…' is not a number", "wardwatch.stage": stage}
    if fmt:
        headers["wardwatch.format"] = fmt
    sealed, extra = key_ring(SETTINGS).seal(value, topic="dlq", stage=stage, key=b"k")
    headers.update({k: v.decode() for k, v in extra})
    return DeadLetter("dlq", 0, offset, 1_700_000_000_000, b"k", sealed, headers)


def test_table_shows_reason_and_sizes_but_no_payload() -> None:
    text = "\n".join(format_table([letter(HL7, "hl7v2")]))
    assert "0:0" in text and "not a number" in text and "gateway.mllp" in text
    assert f" {len(HL7)} " in text and " dev " in text  # the original's size, the key id
    assert "MSH" not in text and "DOE" not in text and "12345" not in text


def test_redrive_dry_run_and_hl7_remap(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[Any] = []
    monkeypatch.setattr(dlq, "_publish_redrives", lambda s, letters, items: sent.append(items))
    still_bad = letter(HL7.replace(b"||88|", b"||x|"), "hl7v2", 1)
    obs = b'{"resourceType":"Observation"}'
    fhir = letter(obs, None, 2, stage="normalise")  # refused by the stream: pseudonymised
    res = redrive(SETTINGS, [letter(HL7, "hl7v2"), still_bad, fhir], dry_run=True)
    assert [r.sent for r in res] == [False, False, False] and sent == []
    assert "still refused" in res[1].note
    res = redrive(SETTINGS, [letter(HL7, "hl7v2"), still_bad, fhir])
    assert [r.sent for r in res] == [True, False, True]
    items = sent[0]
    assert items[0][0].startswith(b"pt-") and b"DOE" not in items[0][1]
    assert items[1] == (b"k", obs)  # decrypted: original key and bytes


def test_redrive_pseudonymises_what_the_edge_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[Any] = []
    monkeypatch.setattr(dlq, "_publish_redrives", lambda s, letters, items: sent.append(items))
    raw = orjson.dumps(
        {
            "resourceType": "Observation",
            "status": "final",
            "subject": {"reference": "Patient/MRN-77", "display": "Zyxw Quorvex"},
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        }
    )
    edge = letter(raw, "fhir+json", 0, stage="gateway.http")
    not_json = letter(b"{nope", "fhir+json", 1, stage="gateway.http")
    res = redrive(SETTINGS, [edge, not_json])
    assert [r.sent for r in res] == [True, False] and "cannot pseudonymise" in res[1].note
    key, value = sent[0][0]
    assert key.startswith(b"pt-") and b"MRN-77" not in value and b"Quorvex" not in value


def test_redrive_refuses_what_does_not_decrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dlq, "_publish_redrives", lambda s, letters, items: None)
    d = letter(HL7, "hl7v2")
    moved = DeadLetter("dlq", 0, 5, d.timestamp_ms, b"other", d.value, d.headers)
    other = Settings(topic_dlq="dlq", dead_letter_key=SecretStr("A" * 43 + "="), dev_mode=False)
    res = redrive(SETTINGS, [moved]) + redrive(other, [d])
    assert [r.sent for r in res] == [False, False]
    assert "moved" in res[0].note and "'dev'" in res[1].note


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
    res = redrive(SETTINGS, [head, letter(HL7, "hl7v2", 1)])
    assert [r.sent for r in res] == [False, True]
    assert "not replayable" in res[0].note and "split" in res[0].note
    assert len(sent[0]) == 1
