"""ORU^R01 building for alerts out, and the ACK rules the sender applies."""

from __future__ import annotations

from datetime import UTC, datetime

import hl7
import pytest

from fhir.hl7v2 import build_ack, read_header
from fhir.hl7v2_out import (
    Ack,
    AckError,
    ack_accepted,
    control_id,
    escape,
    oru_r01,
    read_ack,
)
from inference.alert_policy import AlertDecision
from inference.scoring.alert_card import risk_assessment, workflow_update

AT = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
QUEUED = datetime(2026, 3, 4, 5, 6, 9, tzinfo=UTC)


def alert(reason: str = "risk 0.81 >= 0.6", news2: int | None = 7) -> dict[str, object]:
    d = AlertDecision(alert_id="al-1|x", patient="pt-abc", raised_at=AT, severity="critical",
                      risk=0.8123456, news2=news2, reason=reason)  # fmt: skip
    return risk_assessment(d, model="sepsis-gbm", model_version="3", basis=[])


def parsed(raw: bytes) -> hl7.Message:
    return hl7.parse(raw.decode())


def test_oru_r01_segments_and_fields() -> None:
    raw = oru_r01(alert(), control="0123abcd-17", queued_at=QUEUED, patient="pt-abc",
                  receiving_app="EPR", receiving_facility="WARD7")  # fmt: skip
    m = parsed(raw)
    assert [str(s[0]) for s in m] == ["MSH", "PID", "OBR", "OBX", "OBX", "OBX", "NTE", "NTE"]
    msh = m.segment("MSH")
    assert str(msh(9)) == "ORU^R01^ORU_R01" and str(msh(12)) == "2.5.1"
    assert str(msh(10)) == "0123abcd-17" and str(msh(7)) == "20260304050609+0000"
    assert (str(msh(3)), str(msh(5)), str(msh(6))) == ("WARDWATCH", "EPR", "WARD7")
    pid = m.segment("PID")
    assert str(pid(3)) == "pt-abc^^^WARDWATCH^ANON" and len(pid) == 4  # nothing past PID-3
    obr = m.segment("OBR")
    assert str(obr(4)).startswith("91302008^")
    assert str(obr(7)) == str(obr(22)) == "20260304050607+0000" and str(obr(25)) == "F"
    # the filler id is escaped on the way out and unescaped on the way in
    assert m.unescape(str(obr(3)[0][0])) == "al-1|x"
    obx = [s for s in m if str(s[0]) == "OBX"]
    assert [str(o(2)) for o in obx] == ["NM", "CWE", "NM"]
    assert [str(o(3)).split("^")[0] for o in obx] == ["RISK", "BAND", "NEWS2"]
    assert float(str(obx[0](5))) == pytest.approx(0.812346)
    assert str(obx[1](5)).split("^")[0] == "high" and str(obx[1](5)).endswith("^critical")
    assert str(obx[2](5)) == "7"
    assert all(str(o(14)) == "20260304050607+0000" and str(o(11)) == "F" for o in obx)
    # the gateway's own reader agrees on the header
    h = read_header(raw.decode().rstrip("\r"))
    assert (h.message_type, h.trigger, h.control_id) == ("ORU", "R01", "0123abcd-17")


def test_qsofa_when_given_and_no_news2_when_absent() -> None:
    raw = oru_r01(alert(news2=None), control="c-1", queued_at=QUEUED, patient="p", qsofa=2)
    codes = [str(s(3)).split("^")[0] for s in parsed(raw) if str(s[0]) == "OBX"]
    assert codes == ["RISK", "BAND", "QSOFA"]


def test_separators_in_values_are_escaped() -> None:
    nasty = "a|b^c~d\\e&f\rMSH|injected"
    raw = oru_r01(alert(reason=nasty), control="c|1", queued_at=QUEUED, patient="p^q")
    text = raw.decode()
    assert text.count("\r") == 8  # no injected segment
    m = parsed(raw)
    assert m.unescape(str(m.segment("MSH")(10))) == "c|1"
    assert m.unescape(str(m.segment("NTE")(3))) == "critical: a|b^c~d\\e&f MSH|injected"
    assert str(m.segment("PID")(3)).startswith("p\\S\\q^")
    assert escape("x&y~z") == "x\\T\\y\\R\\z"


def test_the_same_event_is_the_same_message() -> None:
    a = oru_r01(alert(), control=control_id("0123abcdef", 5), queued_at=QUEUED, patient="p")
    b = oru_r01(alert(), control=control_id("0123abcdef", 5), queued_at=QUEUED, patient="p")
    assert a == b
    assert control_id("0123abcdef", 5) == "0123abcd-5"
    assert control_id("0123abcdef", 5) != control_id("0123abcdef", 6)
    assert len(control_id("f" * 16, 10**11 - 1)) <= 20
    with pytest.raises(ValueError, match="start at 1"):
        control_id("x", 0)


def test_not_a_risk_assessment_raises() -> None:
    with pytest.raises(ValueError, match="not a RiskAssessment"):
        oru_r01({"resourceType": "Observation"}, control="c", queued_at=QUEUED, patient="p")


@pytest.mark.parametrize(
    ("code", "accepted"),
    [("AA", True), ("CA", True), ("AE", False), ("AR", False), ("CE", False), ("CR", False)],
)
def test_ack_codes(code: str, accepted: bool) -> None:
    ack = read_ack(f"MSH|^~\\&|R||WARDWATCH||20260101||ACK^R01|9|P|2.5.1\rMSA|{code}|c-1|t\r")
    assert ack == Ack(code=code, control_id="c-1", text="t")
    assert ack_accepted(ack, "c-1") is accepted


def test_ack_from_the_gateways_builder_reads_back() -> None:
    header = read_header(oru_r01(alert(), control="c|7", queued_at=QUEUED, patient="p").decode())
    ack = read_ack(build_ack(header, "AE", "no"))
    assert (ack.code, ack.control_id) == ("AE", "c|7")
    assert ack_accepted(ack, "c|7") is False


def test_mismatched_or_broken_acks_are_errors() -> None:
    with pytest.raises(AckError, match="MSA-2"):
        ack_accepted(Ack(code="AA", control_id="c-2", text=""), "c-1")
    for bad in (b"", b"garbage", b"MSH|^~\\&|R|||||ACK|1|P|2.5\r",
                b"MSH|^~\\&|R|||||ACK|1|P|2.5\rMSA|OK|c-1\r"):  # fmt: skip
        with pytest.raises(AckError):
            read_ack(bad)


def test_an_acknowledged_alert_goes_out_as_a_correction_with_its_state() -> None:
    first = alert()
    updated = workflow_update(first, "acknowledged", QUEUED)
    assert first["status"] == "final" and "statusAt" not in str(first)  # not changed
    m = parsed(oru_r01(updated, control="c-2", queued_at=QUEUED, patient="pt-abc"))
    assert str(m.segment("OBR")(25)) == "C"
    assert m.unescape(str(m.segment("OBR")(3)[0][0])) == "al-1|x"  # files over the first
    obx = [s for s in m if str(s[0]) == "OBX"]
    assert [str(o(3)).split("^")[0] for o in obx] == ["RISK", "BAND", "NEWS2", "ALERTSTATE"]
    assert str(obx[-1](5)).split("^")[0] == "acknowledged"
    assert all(str(o(11)) == "C" for o in obx)
    notes = [m.unescape(str(s(3))) for s in m if str(s[0]) == "NTE"]
    assert "Alert acknowledged at 2026-03-04T05:06:09Z." in notes
    # resolved after acknowledged: one state, the latest
    resolved = workflow_update(updated, "resolved", QUEUED)
    m = parsed(oru_r01(resolved, control="c-3", queued_at=QUEUED, patient="pt-abc"))
    states = [
        str(s(5)).split("^")[0] for s in m if str(s[0]) == "OBX" and "ALERTSTATE" in str(s(3))
    ]
    assert states == ["resolved"]
    with pytest.raises(ValueError, match="workflow"):
        workflow_update(first, "deleted", QUEUED)
