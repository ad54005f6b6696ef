"""Fuzz: the HL7 v2 mapper and the MLLP decoder raise nothing but Hl7Error, on anything."""

from __future__ import annotations

import contextlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fhir.hl7v2 import Hl7Error, MllpDecoder, build_ack, frame, map_message, read_header

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
VALID = (
    "MSH|^~\\&|LAB|HOSP|WW|WARD|20260101120000+0100||ORU^R01|C1|P|2.5\r"
    "PID|1||12345^^^HOSP^MR||DOE^JOHN||19500304|M\r"
    "OBR|1|P1|F1|VS|||20260101115500+0100\r"
    "OBX|1|NM|8867-4^HR^LN||88|/min|||||F|||20260101115500+0100\r"
    "OBX|2|SN|59408-5^SpO2^LN||=^97|%|||||C\r"
)
ADT = (
    "MSH|^~\\&|ADT|HOSP|WW|WARD|20260101080000||ADT^A02|A1|P|2.5\r"
    "EVN|A02|20260101080000\rPID|1||999^^^HOSP||X^Y||19800101|F\rPV1|1|I|ICU^1\r"
)
_ALPHABET = "|^~\\&\r\n0123456789.+-ABCDEFGHIKLMNOPRSTUVWXYZ "


def _mapped_or_hl7error(data: bytes | str) -> None:
    try:
        m = map_message(data, b"k")
    except Hl7Error as exc:
        err = exc
    else:
        assert m.bundle["resourceType"] == "Bundle"
        build_ack(m.header, "AA", "ok")
        return
    assert err.ack_code in ("AE", "AR") and err.reason
    assert build_ack(None, err.ack_code, err.reason).startswith(b"MSH|")


@FUZZ
@given(st.binary(max_size=400))
def test_arbitrary_bytes(data: bytes) -> None:
    _mapped_or_hl7error(data)
    _mapped_or_hl7error(b"MSH|^~\\&|" + data)


@FUZZ
@given(
    st.sampled_from([VALID, ADT]),
    st.lists(
        st.tuples(st.integers(0, 400), st.integers(0, 8), st.text(_ALPHABET, max_size=6)),
        min_size=1,
        max_size=6,
    ),
)
def test_mutated_valid_messages(base: str, edits: list[tuple[int, int, str]]) -> None:
    text = base
    for pos, cut, ins in edits:
        p = pos % (len(text) + 1)
        text = text[:p] + ins + text[p + cut :]
    _mapped_or_hl7error(text)
    with contextlib.suppress(Hl7Error):
        read_header(text)


@FUZZ
@given(st.lists(st.binary(max_size=60), max_size=8), st.integers(1, 40), st.integers(1, 100))
def test_mllp_decoder_never_raises(chunks: list[bytes], step: int, limit: int) -> None:
    wire = b"".join(frame(c) if i % 2 else c for i, c in enumerate(chunks))
    d = MllpDecoder(max_bytes=limit)
    out: list[bytes | Hl7Error] = []
    for i in range(0, len(wire), step):
        out += d.feed(wire[i : i + step])
    for item in out:
        assert isinstance(item, bytes | Hl7Error)
        if isinstance(item, bytes):
            assert len(item) <= limit
