"""HL7 v2 -> FHIR mapping, ACKs and MLLP framing (fhir/hl7v2.py)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import yaml

from fhir.codes import load_code_table
from fhir.hl7v2 import (
    END_BLOCK,
    HL7_FILE,
    Hl7Error,
    Hl7TooLongError,
    MllpDecoder,
    build_ack,
    frame,
    load_hl7_mapping,
    map_message,
    normalise,
    parse_hl7_mapping,
    read_header,
    split_messages,
)
from fhir.parse import parse_resource
from fhir.pseudonym import pseudonymise

KEY = b"test-key"
ORU = (
    "MSH|^~\\&|LAB|HOSP|WW|WARD|20260101120000+0100||ORU^R01^ORU_R01|C1|P|2.5\r"
    "PID|1||12345^^^HOSP^MR||DOE^JOHN^Q||19500304|M|||1 MAIN ST^^TOWN||555-1234\r"
    "OBR|1|P1|F1|VS^Vitals|||20260101115500+0100\r"
    "OBX|1|NM|8867-4^Heart rate^LN||88|/min|||||F|||20260101115500+0100\r"
    "OBX|2|NM|8310-5^Body temperature^LN||100.4|degF|||||F|||20260101115500+0100\r"
    "OBX|3|SN|59408-5^SpO2^LN||=^97|%|||||C|||20260101115500+0100\r"
    "OBX|4|NM|RR^Resp rate||18|breaths/min|||||F\r"
    "OBX|5|ST|12345-6^Comment^LN||all fine||||||F\r"
    "OBX|6|NM|8480-6^SBP^LN||120|mm[Hg]|||||W|||20260101115500+0100\r"
)
ADT = (
    "MSH|^~\\&|ADT|HOSP|WW|WARD|20260101080000||ADT^A01|A1|P|2.5\n"
    "EVN|A01|20260101080000\n"
    "PID|1||999^^^HOSP^MR||SMITH^ANNA||19800101|F\n"
    + "|".join(
        ["PV1", "1", "I", "ICU^01^A"] + [""] * 15 + ["V100"] + [""] * 24 + ["20260101075500"]
    )
    + "\n"
)


def events(bundle: dict[str, object]) -> list:  # type: ignore[type-arg]
    return parse_resource(orjson.dumps(bundle), strict=True).events


def test_oru_maps_codes_units_times_status_and_local_codes() -> None:
    m = map_message(ORU, KEY)
    pseudo = pseudonymise("12345", KEY, system="HOSP")
    assert m.pseudonym == pseudo
    assert m.header.control_id == "C1" and m.header.sender == "LAB|HOSP"
    evs = {e.code: e for e in events(m.bundle)}
    assert set(evs) == {
        "heart_rate",
        "temperature",
        "spo2",
        "respiratory_rate",
        "systolic_bp",
        "birth_year",  # PID-7, as a year only
        "sex",  # PID-8
    }
    assert evs["heart_rate"].value == 88 and evs["heart_rate"].patient == pseudo
    assert evs["temperature"].value == pytest.approx(38.0)  # degF -> Cel
    assert evs["temperature"].time.isoformat() == "2026-01-01T10:55:00+00:00"
    assert evs["spo2"].status == "corrected"
    assert evs["systolic_bp"].status == "entered-in-error"
    # RR is a local code (mapped through hl7v2.yaml); no OBX-14 -> OBR-7
    assert evs["respiratory_rate"].loinc == "9279-1"
    assert evs["respiratory_rate"].time == evs["heart_rate"].time
    assert any("12345-6" in n for n in m.notes)


def test_no_identity_leaves_the_mapper() -> None:
    m = map_message(ORU, KEY)
    text = orjson.dumps(m.bundle).decode()
    for secret in ("12345", "DOE", "JOHN", "MAIN ST", "555-1234", "19500304", "0304"):
        assert secret not in text, secret
    patient = m.bundle["entry"][0]["resource"]  # type: ignore[index]
    assert patient == {
        "resourceType": "Patient",
        "id": m.pseudonym,
        "gender": "male",
        "birthDate": "1950",
    }


def test_adt_with_newlines_maps_encounter_and_default_tz() -> None:
    m = map_message(ADT.encode(), KEY, default_tz="Europe/Berlin")
    enc = next(
        e["resource"] for e in m.bundle["entry"] if e["resource"]["resourceType"] == "Encounter"
    )  # type: ignore[index, union-attr]
    assert enc["status"] == "in-progress" and enc["class"]["code"] == "IMP"
    assert enc["period"]["start"] == "2026-01-01T07:55:00+01:00"
    assert enc["meta"]["tag"][0]["code"] == "A01"
    assert any("Europe/Berlin" in n for n in m.notes)
    parse_resource(orjson.dumps(m.bundle), strict=True)  # a valid R4B transaction


def test_adt_carries_the_patient_context_to_events() -> None:
    """PID-7 and PID-8 give birth year and sex; an A01 into PV1-3 "ICU" with PV1-44 dates
    both the hospital and the ICU admission; an A02 into an ICU dates the ICU admission at
    the event (EVN-2), and an A02 to a ward gives none."""
    got = {e.code: e for e in events(map_message(ADT.encode(), KEY).bundle)}
    assert got["birth_year"].value == 1980.0 and got["sex"].value_code == "female"
    assert got["admission"].time == got["icu_admission"].time
    assert got["icu_admission"].time.isoformat() == "2026-01-01T07:55:00+00:00"
    a02 = (
        ADT.replace("ADT^A01|A1", "ADT^A02|A2")
        .replace("EVN|A01|20260101080000", "EVN|A02|20260102101500")
        .replace("ICU^01^A", "SICU^03^B")
    )
    moved = {e.code: e for e in events(map_message(a02.encode(), KEY).bundle)}
    assert moved["icu_admission"].time.isoformat() == "2026-01-02T10:15:00+00:00"
    to_ward = a02.replace("SICU^03^B", "W4^03^B")
    assert "icu_admission" not in {
        e.code for e in events(map_message(to_ward.encode(), KEY).bundle)
    }


def test_same_result_corrected_keeps_its_observation_id() -> None:
    a = map_message(ORU, KEY).bundle
    b = map_message(
        ORU.replace("|F|||20260101115500+0100\rOBX|2", "|C|||20260101115500+0100\rOBX|2").replace(
            "|C1|", "|C2|"
        ),
        KEY,
    ).bundle
    ids = lambda bb: [e["resource"]["id"] for e in bb["entry"]]  # noqa: E731
    assert ids(a) == ids(b)


@pytest.mark.parametrize(
    ("text", "ack", "needle"),
    [
        ("garbage", "AR", "MSH"),
        ("MSH|^~\\&|A|B|C|D|20260101||ORM^O01|X|P|2.5\rPID|||1", "AR", "ORM"),
        ("MSH|^~\\&|A|B|C|D|20260101||ADT^A05|X|P|2.5\rPID|||1", "AR", "A05"),
        ("MSH|^~\\&|A|B|C|D|20260101||ORU^R01|X|P|2.5\rPID|||", "AE", "PID-3"),
        ("MSH|^~\\&|A|B|C|D|20260101||ORU^R01|X|P|2.5\rOBX|1|NM|8867-4^^LN||1", "AE", "PID"),
        ("MSH|^~\\&|A|B|C|D|20260101||ORU^R01||P|2.5\rPID|||1", "AE", "MSH-10"),
        (ORU.replace("||88|", "||8x8|"), "AE", "not a number"),
        (ORU.replace("||88|", "||60~120|"), "AE", "repetitions"),
        (ORU.replace("||88|", "||900|"), "AE", "heart_rate"),
        (ORU.replace("=^97", "<^5"), "AE", "comparison"),
        (ORU.replace("||88|/min|||||F|||20260101115500+0100", "||88|/min|||||Q"), "AE", "OBX-11"),
        (ORU.replace("20260101115500+0100\r", "2026XX\r", 1), "AE", "timestamp"),
    ],
)
def test_bad_messages_raise_hl7error_with_ack_code(text: str, ack: str, needle: str) -> None:
    with pytest.raises(Hl7Error) as ei:
        map_message(text, KEY)
    assert ei.value.ack_code == ack
    assert needle in ei.value.reason


def test_observation_without_any_time_of_day_is_rejected() -> None:
    text = (
        "MSH|^~\\&|A|B|C|D|20260101||ORU^R01|X|P|2.5\rPID|||1\r"
        "OBX|1|NM|8867-4^^LN||80|/min|||||F|||20260101"
    )
    with pytest.raises(Hl7Error, match="time of day"):
        map_message(text, KEY)


def test_ack_from_msh_and_for_garbage() -> None:
    h = read_header(normalise(ORU))
    ack = build_ack(h, "AA", "ok").decode()
    segs = ack.rstrip("\r").split("\r")
    assert segs[0].startswith("MSH|^~\\&|WW|WARD|LAB|HOSP|")
    assert "|ACK^R01^ACK|" in segs[0] and segs[1] == "MSA|AA|C1|ok"
    err = build_ack(h, "AE", "bad|value^x", error_code="102").decode()
    assert "MSA|AE|C1|bad\\F\\value\\S\\x" in err and "ERR|||102^Data type error^HL70357|E" in err
    assert build_ack(None, "AR", "no MSH").decode().split("\r")[1] == "MSA|AR||no MSH"


def test_normalise_and_split() -> None:
    raw = ("\ufeff" + ORU.replace("\r", "\r\n") + ADT).encode()
    msgs = split_messages(raw)
    assert len(msgs) == 2 and all(m.startswith("MSH|") for m in msgs)
    assert "\n" not in normalise(raw)
    assert normalise(b"\xff\xfeMSH") == "ÿþMSH"  # Latin-1 fallback, never raises


def test_mllp_decoder_partial_pipelined_garbage_and_oversize() -> None:
    d = MllpDecoder(max_bytes=50)
    wire = b"junk" + frame(b"one") + frame(b"two")
    out: list[object] = []
    for i in range(len(wire)):  # byte by byte
        out += d.feed(wire[i : i + 1])
    assert out == [b"one", b"two"] and d.discarded == 4
    big = frame(b"x" * 60 + b"y" * 20) + frame(b"three")
    res = d.feed(big[:30]) + d.feed(big[30:])
    # the frame ended in the same read: its length is known, its first 50 bytes kept
    assert isinstance(res[0], Hl7TooLongError) and res[0].ack_code == "AR" and res[1] == b"three"
    assert res[0].head == b"x" * 50 and res[0].length == 80 and "80 bytes" in res[0].reason
    assert d.feed(b"\x0bunfinished") == [] and d.pending == 11


def test_mllp_decoder_keeps_the_head_of_a_runaway_frame_and_skips_the_rest() -> None:
    d = MllpDecoder(max_bytes=50)
    out: list[object] = d.feed(b"\x0b")
    for _ in range(10):  # 200 bytes in, no end block yet: rejected once, head kept
        out += d.feed(b"abcd" * 5)
    assert len(out) == 1 and isinstance(out[0], Hl7TooLongError)
    assert out[0].head == (b"abcd" * 13)[:50] and out[0].length is None
    assert "WARDWATCH_GATEWAY_MAX_BODY_BYTES" in out[0].reason
    assert d.pending <= 1  # what was read is not held
    assert d.feed(b"tail" + END_BLOCK + frame(b"next")) == [b"next"]


def test_mapping_table_is_checked() -> None:
    doc = yaml.safe_load(HL7_FILE.read_text())
    table = load_code_table()
    assert load_hl7_mapping().message_types["ADT"] >= {
        "A01",
        "A02",
        "A03",
        "A04",
        "A08",
        "A11",
        "A13",
    }
    bad = dict(doc, local_codes=[{"sender": "*", "system": "", "code": "X", "loinc": "0000-0"}])
    with pytest.raises(ValueError, match="0000-0"):
        parse_hl7_mapping(bad, Path("x.yaml"), table)
    with pytest.raises(ValueError, match="obx_status"):
        parse_hl7_mapping(dict(doc, obx_status={"F": "done"}), Path("x.yaml"), table)
    with pytest.raises(ValueError, match="unknown keys"):
        parse_hl7_mapping(dict(doc, extra=1), Path("x.yaml"), table)


def test_hl7error_pickles() -> None:
    import pickle

    long = pickle.loads(pickle.dumps(Hl7TooLongError("too long", b"head", None)))
    assert isinstance(long, Hl7TooLongError) and long.head == b"head" and long.length is None

    e = Hl7Error("r", ack_code="AR", error_code="200")
    e2 = pickle.loads(pickle.dumps(e))
    assert (e2.reason, e2.ack_code, e2.error_code) == ("r", "AR", "200")
