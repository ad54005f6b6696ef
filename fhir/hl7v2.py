"""HL7 v2 (ADT, ORU^R01) -> pseudonymised FHIR R4 transaction Bundles; ACKs; MLLP framing.

Pure: no I/O after start-up (the mapping tables ``fhir/data/hl7v2.yaml`` are read once and
checked by :func:`load_hl7_mapping`). Used by ``wardwatch gateway`` (MLLP), ``wardwatch
convert`` and ``wardwatch dlq replay``.

* :func:`normalise` decodes the bytes (UTF-8, BOM dropped; Latin-1 when not UTF-8) and turns
  ``\\n`` and ``\\r\\n`` segment separators into ``\\r`` (python-hl7 mis-reads the others).
* :func:`map_message` parses with python-hl7 and maps PID to a Patient (``id`` = pseudonym of
  PID-3.1 in assigning authority PID-3.4; gender and birth year only: no name, address,
  telecom or raw identifier survives), PV1 to an Encounter (ADT), and every OBX whose code
  the code table uses to an Observation (OBX-3 code by LOINC or the local code map, OBX-5
  value, OBX-6 unit, OBX-14 time, else OBR-7, else MSH-7; OBX-11 status).
* :func:`build_ack` builds the ACK for a message (from its MSH, or a minimal one).
* :class:`MllpDecoder` splits a byte stream into MLLP frames (0x0B ... 0x1C 0x0D).

Every input error is an :class:`Hl7Error` (a :class:`~fhir.errors.PermanentInputError`:
dead-letter, never retry) carrying the ACK code (AE/AR) and the HL7 error code (table 0357)
for the ERR segment; nothing else escapes :func:`map_message` or the decoder.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

import orjson
import yaml

from fhir.codes import CodeTable, load_code_table
from fhir.errors import PermanentInputError
from fhir.pseudonym import pseudonymise

HL7_FILE = Path(__file__).resolve().parent / "data" / "hl7v2.yaml"
LOINC = "http://loinc.org"
START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
_NS = uuid.UUID("6f1c3a52-3f0e-4b8e-9a43-5c1d2b7e9a10")
AckCode = Literal["AA", "AE", "AR"]
# HL7 table 0357 (message error condition codes) used in ERR-3
ERR_SEGMENT_SEQUENCE = "100"
ERR_REQUIRED_FIELD = "101"
ERR_DATA_TYPE = "102"
ERR_TABLE_VALUE = "103"
ERR_UNSUPPORTED_TYPE = "200"
ERR_UNSUPPORTED_EVENT = "201"
ERR_DUPLICATE_KEY = "205"
ERR_INTERNAL = "207"
_ERR_TEXT = {
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "205": "Duplicate key identifier",
    "207": "Application internal error",
}
_TS = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,4}))?([+-]\d{4})?$")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


class Hl7Error(PermanentInputError):
    """An HL7 v2 message WardWatch cannot take (permanent: dead-letter, never retry).

    ``ack_code`` is ``AR`` (rejected: unparseable, unsupported type; resending it unchanged
    will never work) or ``AE`` (application error: a field's content is wrong or missing);
    ``error_code`` is the HL7 table 0357 code for ERR-3.
    """

    def __init__(
        self,
        reason: str,
        *,
        ack_code: AckCode = "AE",
        error_code: str = ERR_INTERNAL,
        resource_type: str | None = None,
        resource_id: str | None = None,
    ) -> None:
        self.ack_code: AckCode = ack_code
        self.error_code = error_code
        super().__init__(reason, resource_type=resource_type, resource_id=resource_id)

    def __reduce__(self) -> tuple[object, ...]:
        return (
            _rebuild_hl7,
            (self.reason, self.ack_code, self.error_code, self.resource_type, self.resource_id),
        )


def _rebuild_hl7(
    reason: str, ack: AckCode, code: str, rtype: str | None, rid: str | None
) -> Hl7Error:
    return Hl7Error(reason, ack_code=ack, error_code=code, resource_type=rtype, resource_id=rid)


class Hl7TooLongError(Hl7Error):
    """An MLLP frame longer than the decoder's limit (permanent: AR, dead-letter).

    ``head`` is the frame's first ``limit`` bytes, all that was kept (the rest is skipped
    so that one runaway sender cannot exhaust memory); ``length`` is the frame's whole
    length when its end was seen before the limit was passed, else None ("more than the
    limit"). The dead letter carries ``head`` and says it is truncated.
    """

    def __init__(self, reason: str, head: bytes, length: int | None) -> None:
        self.head = head
        self.length = length
        super().__init__(reason, ack_code="AR", error_code=ERR_DATA_TYPE)

    def __reduce__(self) -> tuple[object, ...]:
        return (Hl7TooLongError, (self.reason, self.head, self.length))


# ------------------------------------------------------------------------ mapping tables
@dataclass(frozen=True, slots=True)
class Hl7Mapping:
    """The checked tables of ``fhir/data/hl7v2.yaml`` (build with :func:`load_hl7_mapping`)."""

    message_types: Mapping[str, frozenset[str]]
    adt_events: Mapping[str, tuple[str, str | None]]
    patient_class: Mapping[str, str]
    gender: Mapping[str, str]
    coding_systems: Mapping[str, str]
    obx_status: Mapping[str, str]
    numeric_value_types: frozenset[str]
    units: Mapping[str, str]
    # (sender or "*", system as sent, code) -> LOINC
    local_codes: Mapping[tuple[str, str, str], str]
    table: CodeTable
    source: str = str(HL7_FILE)


_FHIR_OBS_STATUS = frozenset(
    {
        "registered",
        "preliminary",
        "final",
        "amended",
        "corrected",
        "cancelled",
        "entered-in-error",
        "unknown",
        "skip",
    }
)
_ENC_STATUS = frozenset(
    {"planned", "arrived", "triaged", "in-progress", "onleave", "finished", "cancelled"}
    | {"entered-in-error", "unknown"}
)
_KEYS = frozenset(
    {
        "version",
        "message_types",
        "adt_events",
        "patient_class",
        "gender",
        "coding_systems",
        "obx_status",
        "numeric_value_types",
        "units",
        "local_codes",
    }
)


def _str_map(path: Path, name: str, raw: object) -> dict[str, str]:
    if not isinstance(raw, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
    ):
        raise ValueError(f"{path}: `{name}` must map strings to strings")
    return dict(raw)


def parse_hl7_mapping(doc: object, path: Path, table: CodeTable) -> Hl7Mapping:
    """Check and build the mapping tables. Raises ValueError (configuration error, not
    retryable) naming the file and the entry that is wrong."""
    if not isinstance(doc, dict) or doc.get("version") != 1:
        raise ValueError(f"{path}: expected a mapping with `version: 1`")
    unknown = set(doc) - _KEYS
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}")
    mt = doc.get("message_types")
    if not isinstance(mt, dict) or not all(
        isinstance(k, str) and isinstance(v, list) and all(isinstance(e, str) for e in v)
        for k, v in mt.items()
    ):
        raise ValueError(f"{path}: `message_types` must map a type to a list of events")
    adt: dict[str, tuple[str, str | None]] = {}
    for ev, spec in (doc.get("adt_events") or {}).items():
        if not isinstance(spec, dict) or not isinstance(spec.get("event"), str):
            raise ValueError(f"{path}: adt_events.{ev} needs `event`")
        st = spec.get("status")
        if st is not None and st not in _ENC_STATUS:
            raise ValueError(f"{path}: adt_events.{ev}.status {st!r} is not an Encounter status")
        adt[str(ev)] = (spec["event"], st)
    obx_status = _str_map(path, "obx_status", doc.get("obx_status"))
    bad = {k: v for k, v in obx_status.items() if v not in _FHIR_OBS_STATUS}
    if bad:
        raise ValueError(f"{path}: obx_status values {bad} are not Observation statuses")
    local: dict[tuple[str, str, str], str] = {}
    for i, e in enumerate(doc.get("local_codes") or []):
        if not isinstance(e, dict) or not all(
            isinstance(e.get(k), str) for k in ("sender", "system", "code", "loinc")
        ):
            raise ValueError(f"{path}: local_codes[{i}] needs sender, system, code, loinc")
        if table.lookup(LOINC, e["loinc"]) is None:
            raise ValueError(
                f"{path}: local_codes[{i}] maps to LOINC {e['loinc']} which codes.yaml "
                "does not use; add it there first"
            )
        local[(e["sender"], e["system"], e["code"])] = e["loinc"]
    nvt = doc.get("numeric_value_types")
    if not isinstance(nvt, list) or not all(isinstance(x, str) for x in nvt):
        raise ValueError(f"{path}: `numeric_value_types` must be a list of strings")
    return Hl7Mapping(
        message_types={k: frozenset(v) for k, v in mt.items()},
        adt_events=adt,
        patient_class=_str_map(path, "patient_class", doc.get("patient_class")),
        gender=_str_map(path, "gender", doc.get("gender")),
        coding_systems=_str_map(path, "coding_systems", doc.get("coding_systems")),
        obx_status=obx_status,
        numeric_value_types=frozenset(nvt),
        units=_str_map(path, "units", doc.get("units") or {}),
        local_codes=local,
        table=table,
        source=str(path),
    )


@lru_cache(maxsize=4)
def load_hl7_mapping(path: Path | None = None) -> Hl7Mapping:
    """Load and check ``fhir/data/hl7v2.yaml`` (cached). Raises ValueError (configuration
    error, not retryable) when it is unreadable or inconsistent with codes.yaml."""
    p = HL7_FILE if path is None else Path(path)
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{p}: cannot read the HL7 v2 mapping: {exc}") from exc
    return parse_hl7_mapping(doc, p, load_code_table())


# ------------------------------------------------------------------------ text and fields
def normalise(raw: bytes | str) -> str:
    """Decoded message text with ``\\r`` segment separators and no trailing blank segments.

    UTF-8 (a BOM is dropped); bytes that are not UTF-8 are read as Latin-1 (never raises).
    """
    if isinstance(raw, bytes | bytearray | memoryview):
        b = bytes(raw)
        try:
            text = b.decode("utf-8-sig")
        except UnicodeDecodeError:
            text = b.decode("latin-1")
    else:
        text = raw.removeprefix("\ufeff")
    text = text.replace("\r\n", "\r").replace("\n", "\r")
    segs = [s for s in text.split("\r") if s.strip()]
    return "\r".join(segs)


def split_messages(raw: bytes | str) -> list[str]:
    """The messages of a file holding one or many (each starts with an ``MSH`` segment).

    Text before the first MSH is returned as its own item (so it can be rejected, not lost).
    Never raises.
    """
    text = normalise(raw)
    out: list[str] = []
    cur: list[str] = []
    for seg in text.split("\r"):
        if seg.startswith("MSH") and cur:
            out.append("\r".join(cur))
            cur = []
        cur.append(seg)
    if cur:
        out.append("\r".join(cur))
    return [m for m in out if m.strip()]


@dataclass(frozen=True, slots=True)
class _Seps:
    field: str = "|"
    comp: str = "^"
    rep: str = "~"
    esc: str = "\\"
    sub: str = "&"


def _separators(text: str) -> _Seps:
    if not text.startswith("MSH") or len(text) < 8:
        raise Hl7Error(
            "message does not start with an MSH segment",
            ack_code="AR",
            error_code=ERR_SEGMENT_SEQUENCE,
        )
    f = text[3]
    enc = text[4:].split(f, 1)[0]
    if len(enc) < 4 or f.isalnum() or len(set(enc[:4] + f)) != 5:
        raise Hl7Error(
            f"MSH-1/MSH-2 delimiters {text[3:9]!r} are not valid",
            ack_code="AR",
            error_code=ERR_DATA_TYPE,
        )
    return _Seps(f, enc[0], enc[1], enc[2], enc[3])


class _Msg:
    """Segments of one message as lists of raw field strings (MSH numbered like the spec)."""

    def __init__(self, text: str) -> None:
        self.seps = _separators(text)
        self.segments: list[tuple[str, list[str]]] = []
        for seg in text.split("\r"):
            parts = seg.split(self.seps.field)
            name = parts[0]
            if name == "MSH":
                parts = ["MSH", self.seps.field, *parts[1:]]
            self.segments.append((name, parts))

    def all(self, name: str) -> list[list[str]]:
        return [p for n, p in self.segments if n == name]

    def first(self, name: str) -> list[str] | None:
        return next((p for n, p in self.segments if n == name), None)

    def unescape(self, s: str) -> str:
        if self.seps.esc not in s:
            return s
        e = self.seps.esc
        for code, ch in (
            ("F", self.seps.field),
            ("S", self.seps.comp),
            ("T", self.seps.sub),
            ("R", self.seps.rep),
            ("E", e),
        ):
            s = s.replace(f"{e}{code}{e}", ch)
        return s

    def get(self, seg: list[str] | None, n: int, comp: int = 1, rep: int = 1) -> str:
        """Field n, repetition rep, component comp (1-based), unescaped; "" when absent."""
        if seg is None or n >= len(seg):
            return ""
        reps = seg[n].split(self.seps.rep)
        if rep > len(reps):
            return ""
        comps = reps[rep - 1].split(self.seps.comp)
        if comp > len(comps):
            return ""
        return self.unescape(comps[comp - 1].split(self.seps.sub)[0]).strip()

    def raw(self, seg: list[str] | None, n: int) -> str:
        return seg[n] if seg is not None and n < len(seg) else ""


# ------------------------------------------------------------------------ header and ACK
@dataclass(frozen=True, slots=True)
class Hl7Header:
    """What the ACK and duplicate detection need from MSH (no patient data)."""

    sending_app: str = ""
    sending_facility: str = ""
    receiving_app: str = ""
    receiving_facility: str = ""
    message_type: str = ""
    trigger: str = ""
    control_id: str = ""
    processing_id: str = "P"
    version: str = "2.5"

    @property
    def sender(self) -> str:
        """``MSH-3|MSH-4``: who sent it (control ids are unique per sender)."""
        return f"{self.sending_app}|{self.sending_facility}"


def read_header(text: str) -> Hl7Header:
    """The MSH fields of a (normalised) message. Raises Hl7Error (AR) when there is no
    usable MSH; never anything else."""
    try:
        m = _Msg(text)
    except Hl7Error:
        raise
    except Exception as exc:  # defensive: contract is Hl7Error only
        raise Hl7Error(f"cannot read MSH: {type(exc).__name__}", ack_code="AR") from None
    msh = m.segments[0][1]
    return Hl7Header(
        sending_app=m.get(msh, 3),
        sending_facility=m.get(msh, 4),
        receiving_app=m.get(msh, 5),
        receiving_facility=m.get(msh, 6),
        message_type=m.get(msh, 9, 1),
        trigger=m.get(msh, 9, 2),
        control_id=m.get(msh, 10),
        processing_id=m.get(msh, 11) or "P",
        version=m.get(msh, 12) or "2.5",
    )


def content_digest(text: str) -> str:
    """SHA-256 (hex) of a normalised message (see :func:`normalise`) without MSH-7.

    Resend detection compares it with the digest of the message first accepted under the
    same control id. MSH-7 (date/time of the message) is left out because a sending system
    may stamp a resend anew; everything else must be the same, down to the byte, for a
    resend (segment separators are already normalised). Never raises.
    """
    first, sep, rest = text.partition("\r")
    if first.startswith("MSH") and len(first) > 3:
        fields = first.split(first[3])
        if len(fields) > 6:
            fields[6] = ""  # MSH-7 (MSH-1 is the separator itself: fields[1] is MSH-2)
        first = first[3].join(fields)
    return hashlib.sha256((first + sep + rest).encode("utf-8", "surrogatepass")).hexdigest()


def _esc(s: str) -> str:
    s = s.replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\")
    s = s.replace("&", "\\T\\").replace("~", "\\R\\")
    return "".join(ch if ch.isprintable() else " " for ch in s)


def build_ack(
    header: Hl7Header | None,
    code: AckCode,
    text: str = "",
    *,
    error_code: str | None = None,
    now: datetime | None = None,
) -> bytes:
    """The ACK message (``\\r``-separated, not framed) for a message with MSH ``header``.

    ``header`` None (no readable MSH) gives an ACK with empty MSA-2. AE/AR carry ``text`` in
    MSA-3 and an ERR segment (ERR-3 = ``error_code`` from table 0357, ERR-4 = E, ERR-8 =
    text). Never raises.
    """
    h = header or Hl7Header()
    ts = (now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S+0000")
    ack_id = uuid.uuid4().hex[:20]
    msh = "|".join(
        [
            "MSH",
            "^~\\&",
            _esc(h.receiving_app) or "WARDWATCH",
            _esc(h.receiving_facility),
            _esc(h.sending_app),
            _esc(h.sending_facility),
            ts,
            "",
            f"ACK^{_esc(h.trigger)}^ACK" if h.trigger else "ACK",
            ack_id,
            _esc(h.processing_id)[:3] or "P",
            _esc(h.version)[:10] or "2.5",
        ]
    )
    segs = [msh, f"MSA|{code}|{_esc(h.control_id)}|{_esc(text[:200])}"]
    if code != "AA":
        ec = error_code or ERR_INTERNAL
        segs.append(f"ERR|||{ec}^{_ERR_TEXT.get(ec, 'Error')}^HL70357|E||||{_esc(text[:200])}")
    return ("\r".join(segs) + "\r").encode("utf-8")


def frame(message: bytes) -> bytes:
    """``message`` wrapped in MLLP framing (0x0B ... 0x1C 0x0D). Never raises."""
    return START_BLOCK + message + END_BLOCK


# ------------------------------------------------------------------------ MLLP framing
@dataclass(slots=True)
class MllpDecoder:
    """Incremental MLLP frame splitter with a bounded message size.

    ``feed(data)`` returns the complete frames' payloads, and, for each frame longer than
    ``max_bytes``, an :class:`Hl7TooLongError` in its place holding the frame's first
    ``max_bytes`` bytes (the rest of that frame is skipped up to its end block). Bytes
    outside frames are dropped and counted in ``discarded``. Never raises.
    """

    max_bytes: int = 5_000_000
    buf: bytearray = field(default_factory=bytearray)
    discarded: int = 0
    _skipping: bool = False

    def feed(self, data: bytes) -> list[bytes | Hl7TooLongError]:
        out: list[bytes | Hl7TooLongError] = []
        self.buf += data
        while True:
            if self._skipping:
                end = self.buf.find(END_BLOCK)
                if end < 0:
                    keep = 1 if self.buf.endswith(b"\x1c") else 0
                    self.discarded += len(self.buf) - keep
                    del self.buf[: len(self.buf) - keep]
                    return out
                self.discarded += end
                del self.buf[: end + 2]
                self._skipping = False
                continue
            start = self.buf.find(START_BLOCK)
            if start < 0:
                self.discarded += len(self.buf)
                self.buf.clear()
                return out
            if start > 0:
                self.discarded += start
                del self.buf[:start]
            end = self.buf.find(END_BLOCK, 1)
            if end < 0:
                if len(self.buf) - 1 > self.max_bytes:
                    out.append(
                        Hl7TooLongError(
                            f"MLLP message longer than {self.max_bytes} bytes; split it or "
                            "raise WARDWATCH_GATEWAY_MAX_BODY_BYTES",
                            bytes(self.buf[1 : 1 + self.max_bytes]),
                            None,
                        )
                    )
                    self.buf.clear()
                    self._skipping = True
                return out
            payload = bytes(self.buf[1:end])
            del self.buf[: end + 2]
            if len(payload) > self.max_bytes:
                out.append(
                    Hl7TooLongError(
                        f"MLLP message of {len(payload)} bytes is longer than "
                        f"{self.max_bytes}; split it or raise "
                        "WARDWATCH_GATEWAY_MAX_BODY_BYTES",
                        payload[: self.max_bytes],
                        len(payload),
                    )
                )
                continue
            out.append(payload)

    @property
    def pending(self) -> int:
        """Bytes of an unfinished frame held in the buffer."""
        return len(self.buf)


# ------------------------------------------------------------------------ mapping
@dataclass(slots=True)
class MappedMessage:
    """An HL7 message mapped to FHIR: the Bundle to publish and what the mapping noticed."""

    header: Hl7Header
    pseudonym: str
    bundle: dict[str, Any]
    notes: list[str] = field(default_factory=list)  # OBX skipped, default time zone used...
    observations: int = 0


def parse_ts(value: str, default_tz: tzinfo, what: str) -> tuple[datetime | None, bool]:
    """HL7 TS/DTM -> (aware datetime or None when it has no time of day, used default tz).

    Raises Hl7Error (AE, data type error) when it is not a TS. Never retried.
    """
    m = _TS.match(value.strip())
    if m is None:
        raise Hl7Error(f"{what} {value[:30]!r} is not an HL7 timestamp", error_code=ERR_DATA_TYPE)
    y, mo, d, hh, mi, ss, frac, off = m.groups()
    if hh is None or d is None or mo is None:
        return None, False
    try:
        t = datetime(
            int(y),
            int(mo),
            int(d),
            int(hh),
            int(mi or 0),
            int(ss or 0),
            int((frac or "0").ljust(6, "0")[:6]),
        )
    except ValueError:
        raise Hl7Error(
            f"{what} {value[:30]!r} is not a valid date", error_code=ERR_DATA_TYPE
        ) from None
    if off is not None:
        sign = 1 if off[0] == "+" else -1
        hours, minutes = int(off[1:3]), int(off[3:5])
        if hours > 14 or minutes > 59:
            raise Hl7Error(f"{what} offset {off!r} is not valid", error_code=ERR_DATA_TYPE)
        return t.replace(tzinfo=timezone(sign * timedelta(hours=hours, minutes=minutes))), False
    return t.replace(tzinfo=default_tz), True


def _iso(t: datetime) -> str:
    return t.isoformat()


def _det_id(*parts: str) -> str:
    return hashlib.blake2b("|".join(parts).encode(), digest_size=12).hexdigest()


def _coding(m: _Msg, raw_field: str, mp: Hl7Mapping, sender: str) -> tuple[str, str, str]:
    """(system URI or as sent, code, display) of a CE/CWE field, local codes mapped to LOINC."""
    first = raw_field.split(m.seps.rep)[0]
    comps = [m.unescape(c.split(m.seps.sub)[0]).strip() for c in first.split(m.seps.comp)]
    code = comps[0] if comps else ""
    display = comps[1] if len(comps) > 1 else ""
    system = comps[2] if len(comps) > 2 else ""
    uri = mp.coding_systems.get(system)
    if uri == LOINC:
        return LOINC, code, display
    loinc = mp.local_codes.get((sender, system, code)) or mp.local_codes.get(("*", system, code))
    if loinc is None and len(comps) > 5:  # alternate identifier (CWE.4-6) may be LOINC
        alt_uri = mp.coding_systems.get(comps[5])
        if alt_uri == LOINC and comps[3]:
            return LOINC, comps[3], comps[4] if len(comps) > 4 else display
    if loinc is not None:
        return LOINC, loinc, display
    return uri or (f"urn:hl7v2:{system}" if system else "urn:hl7v2:local"), code, display


def _number(m: _Msg, raw_value: str, vtype: str, where: str) -> float:
    if m.seps.rep in raw_value:
        raise Hl7Error(
            f"{where}: OBX-5 has repetitions ({raw_value[:40]!r}); one number expected",
            error_code=ERR_DATA_TYPE,
        )
    v = m.unescape(raw_value).strip()
    if vtype == "SN":
        comps = v.split(m.seps.comp)
        comparator = comps[0].strip()
        extra = [c for c in comps[2:] if c.strip()]
        if comparator not in ("", "=") or extra:
            raise Hl7Error(
                f"{where}: OBX-5 structured numeric {v[:40]!r} is a comparison or range, "
                "not a measurement",
                error_code=ERR_DATA_TYPE,
            )
        v = comps[1].strip() if len(comps) > 1 else ""
    if not _NUMBER.match(v):
        raise Hl7Error(f"{where}: OBX-5 {v[:40]!r} is not a number", error_code=ERR_DATA_TYPE)
    x = float(v)
    if x != x or x in (float("inf"), float("-inf")):
        raise Hl7Error(f"{where}: OBX-5 is not finite", error_code=ERR_DATA_TYPE)
    return x


def map_message(
    raw: bytes | str,
    key: bytes,
    *,
    default_tz: str | tzinfo = "UTC",
    mapping: Hl7Mapping | None = None,
    check: bool = True,
) -> MappedMessage:
    """Map one HL7 v2 message to a pseudonymised FHIR R4 transaction Bundle.

    ``key`` is the pseudonym HMAC key; ``default_tz`` is applied to timestamps without a UTC
    offset (each use is listed in ``notes``). Raises :class:`Hl7Error` (permanent, not
    retryable; dead-letter and answer AE/AR) for: no MSH / bad delimiters / python-hl7 cannot
    parse (AR), an unsupported message type or event (AR), a missing PID segment or PID-3.1
    (AE), a bad OBX value, unit-less time or timestamp (AE); with ``check`` (default) also
    whatever :func:`fhir.parse.parse_resource` refuses in the mapped Bundle (implausible
    value, unknown unit: AE, data type error). Nothing else escapes.
    """
    text = normalise(raw)
    try:
        mapped = _map(text, key, default_tz, mapping or load_hl7_mapping())
        if check:
            from fhir.parse import parse_resource

            parse_resource(orjson.dumps(mapped.bundle), strict=True)
        return mapped
    except Hl7Error:
        raise
    except PermanentInputError as exc:
        raise Hl7Error(str(exc), error_code=ERR_DATA_TYPE) from None
    except RecursionError:
        raise Hl7Error("message nested too deeply", ack_code="AR") from None
    except Exception as exc:  # contract: only Hl7Error escapes
        raise Hl7Error(
            f"cannot map message ({type(exc).__name__}: {str(exc)[:120]})", ack_code="AR"
        ) from None


def _map(text: str, key: bytes, default_tz: str | tzinfo, mp: Hl7Mapping) -> MappedMessage:
    import hl7

    header = read_header(text)
    try:
        hl7.parse(text)
    except Exception as exc:  # python-hl7 raises ParseException, IndexError, ...
        raise Hl7Error(
            f"python-hl7 cannot parse the message: {type(exc).__name__}: {str(exc)[:120]}",
            ack_code="AR",
        ) from None
    m = _Msg(text)
    tz: tzinfo = ZoneInfo(default_tz) if isinstance(default_tz, str) else default_tz
    events = mp.message_types.get(header.message_type)
    if events is None:
        supported = ", ".join(
            f"{t}^{e}" for t, evs in mp.message_types.items() for e in sorted(evs)
        )
        raise Hl7Error(
            f"message type {header.message_type or '(empty MSH-9)'!r} is not taken; "
            f"supported: {supported}",
            ack_code="AR",
            error_code=ERR_UNSUPPORTED_TYPE,
        )
    trigger = header.trigger
    if not trigger and header.message_type == "ADT":
        trigger = m.get(m.first("EVN"), 1)
    if trigger not in events:
        raise Hl7Error(
            f"event {header.message_type}^{trigger or '(empty)'} is not taken",
            ack_code="AR",
            error_code=ERR_UNSUPPORTED_EVENT,
        )
    if not header.control_id:
        raise Hl7Error("MSH-10 (message control id) is empty", error_code=ERR_REQUIRED_FIELD)
    pid = m.first("PID")
    if pid is None:
        raise Hl7Error("no PID segment", error_code=ERR_SEGMENT_SEQUENCE)
    ident = m.get(pid, 3, 1)
    authority = m.get(pid, 3, 4)
    if not ident:
        ident = m.get(pid, 2, 1)  # PID-2 (external id, backward compatible)
        authority = m.get(pid, 2, 4)
    if not ident:
        raise Hl7Error(
            "PID-3 (patient identifier list) is empty: cannot key the patient",
            error_code=ERR_REQUIRED_FIELD,
        )
    pseudo = pseudonymise(ident, key, system=authority)
    notes: list[str] = []
    msh = m.segments[0][1]
    msg_time, used = (None, False)
    if m.get(msh, 7):
        msg_time, used = parse_ts(m.get(msh, 7), tz, "MSH-7")
        if used:
            notes.append(f"MSH-7 has no UTC offset; read in {tz}")
    patient: dict[str, Any] = {"resourceType": "Patient", "id": pseudo}
    gender = mp.gender.get(m.get(pid, 8))
    if gender:
        patient["gender"] = gender
    birth = m.get(pid, 7)
    if len(birth) >= 4 and birth[:4].isdigit():
        patient["birthDate"] = birth[:4]
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": f"urn:uuid:{uuid.uuid5(_NS, 'Patient/' + pseudo)}",
            "resource": patient,
            "request": {"method": "PUT", "url": f"Patient/{pseudo}"},
        }
    ]
    if header.message_type == "ADT":
        entries.append(_encounter(m, header, trigger, pseudo, mp, tz, msg_time, notes))
    obr_time: datetime | None = None
    filler = ""
    n_obs = 0
    for name, seg in m.segments:
        if name == "OBR":
            filler = m.get(seg, 3) or m.get(seg, 2)
            obr_time = None
            if m.get(seg, 7):
                obr_time, used = parse_ts(m.get(seg, 7), tz, "OBR-7")
                if used:
                    notes.append(f"OBR-7 has no UTC offset; read in {tz}")
        elif name == "OBX":
            obs = _observation(m, seg, header, pseudo, mp, tz, obr_time or msg_time, filler, notes)
            if obs is not None:
                entries.append(obs)
                n_obs += 1
    bundle = {
        "resourceType": "Bundle",
        "id": _det_id("hl7v2", header.sender, header.control_id),
        "type": "transaction",
        "meta": {
            "tag": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v2-0003",
                    "code": trigger,
                },
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v2-0076",
                    "code": header.message_type,
                },
            ]
        },
        "entry": entries,
    }
    return MappedMessage(header, pseudo, bundle, notes, n_obs)


def _encounter(
    m: _Msg,
    header: Hl7Header,
    trigger: str,
    pseudo: str,
    mp: Hl7Mapping,
    tz: tzinfo,
    msg_time: datetime | None,
    notes: list[str],
) -> dict[str, Any]:
    pv1 = m.first("PV1")
    evn = m.first("EVN")
    event, status = mp.adt_events.get(trigger, ("update", None))
    visit = m.get(pv1, 19)
    enc_id = _det_id("enc", pseudo, visit or header.sender + "|" + header.control_id)
    start = end = None
    for what, value in (("PV1-44", m.get(pv1, 44)), ("EVN-6", m.get(evn, 6))):
        if value and start is None:
            start, used = parse_ts(value, tz, what)
            if used and start is not None:
                notes.append(f"{what} has no UTC offset; read in {tz}")
    if m.get(pv1, 45):
        end, used = parse_ts(m.get(pv1, 45), tz, "PV1-45")
    event_time = None
    if m.get(evn, 2):
        event_time, _ = parse_ts(m.get(evn, 2), tz, "EVN-2")
    event_time = event_time or msg_time
    if status is None:
        status = "finished" if end is not None else "in-progress"
    cls = mp.patient_class.get(m.get(pv1, 2), "IMP")
    enc: dict[str, Any] = {
        "resourceType": "Encounter",
        "id": enc_id,
        "meta": {
            "tag": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v2-0003",
                    "code": trigger,
                    "display": event,
                }
            ]
        },
        "status": status,
        "class": {
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
            "code": cls,
        },
        "subject": {"reference": f"Patient/{pseudo}"},
    }
    if event_time is not None:
        enc["meta"]["lastUpdated"] = _iso(event_time)
    period: dict[str, str] = {}
    if start is not None:
        period["start"] = _iso(start)
    elif event_time is not None and event == "admission":
        period["start"] = _iso(event_time)
    if end is not None:
        period["end"] = _iso(end)
    elif event == "discharge" and event_time is not None:
        period["end"] = _iso(event_time)
    if "start" in period and "end" in period and period["end"] < period["start"]:
        del period["end"]
    if period:
        enc["period"] = period
    ward = m.get(pv1, 3, 1)
    if ward:
        enc["location"] = [{"location": {"display": ward[:40]}}]
    return {
        "fullUrl": f"urn:uuid:{uuid.uuid5(_NS, 'Encounter/' + enc_id)}",
        "resource": enc,
        "request": {"method": "PUT", "url": f"Encounter/{enc_id}"},
    }


def _observation(
    m: _Msg,
    seg: list[str],
    header: Hl7Header,
    pseudo: str,
    mp: Hl7Mapping,
    tz: tzinfo,
    fallback_time: datetime | None,
    filler: str,
    notes: list[str],
) -> dict[str, Any] | None:
    set_id = m.get(seg, 1) or "?"
    where = f"OBX-{set_id}"
    system, code, display = _coding(m, m.raw(seg, 3), mp, header.sending_app)
    if not code:
        notes.append(f"{where}: no OBX-3 code; skipped")
        return None
    canonical = mp.table.lookup(system, code) if system == LOINC else None
    if canonical is None:
        notes.append(f"{where}: code {code[:30]!r} ({system}) is not used; skipped")
        return None
    status_raw = m.get(seg, 11) or "F"
    status = mp.obx_status.get(status_raw)
    if status is None:
        raise Hl7Error(
            f"{where}: OBX-11 result status {status_raw[:5]!r} is not in HL7 table 0085",
            error_code=ERR_TABLE_VALUE,
        )
    if status == "skip":
        notes.append(f"{where}: OBX-11 {status_raw}; skipped")
        return None
    vtype = m.get(seg, 2)
    spec = mp.table.specs[canonical]
    t: datetime | None = None
    if m.get(seg, 14):
        t, used = parse_ts(m.get(seg, 14), tz, f"{where} OBX-14")
        if used and t is not None:
            notes.append(f"{where}: OBX-14 has no UTC offset; read in {tz}")
    t = t or fallback_time
    if t is None:
        raise Hl7Error(
            f"{where}: no observation time with a time of day (OBX-14, OBR-7 or MSH-7)",
            error_code=ERR_REQUIRED_FIELD,
        )
    obs_id = _det_id("obs", pseudo, filler, code, m.get(seg, 4), _iso(t))
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": obs_id,
        "status": status,
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "laboratory" if spec.kind == "lab" else "vital-signs",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": system, "code": code}]},
        "subject": {"reference": f"Patient/{pseudo}"},
        "effectiveDateTime": _iso(t),
    }
    if display:
        obs["code"]["coding"][0]["display"] = display[:80]
    raw_value = m.raw(seg, 5)
    if spec.categorical:
        if raw_value.strip():
            vsys, vcode, _ = _coding(m, raw_value, mp, header.sending_app)
            obs["valueCodeableConcept"] = {"coding": [{"system": vsys, "code": vcode}]}
    elif raw_value.strip() == "" or status in ("entered-in-error", "cancelled", "registered"):
        pass
    elif vtype and vtype not in mp.numeric_value_types:
        raise Hl7Error(
            f"{where}: OBX-2 value type {vtype[:5]!r} for {canonical}; expected "
            f"{'/'.join(sorted(mp.numeric_value_types))}",
            error_code=ERR_DATA_TYPE,
        )
    else:
        value = _number(m, raw_value, vtype, where)
        unit_raw = m.get(seg, 6, 1)
        unit = mp.units.get(unit_raw, unit_raw)
        q: dict[str, Any] = {"value": int(value) if value.is_integer() else value}
        if unit:
            q.update(unit=unit_raw, system="http://unitsofmeasure.org", code=unit)
        obs["valueQuantity"] = q
    return {
        "fullUrl": f"urn:uuid:{uuid.uuid5(_NS, 'Observation/' + obs_id)}",
        "resource": obs,
        "request": {"method": "PUT", "url": f"Observation/{obs_id}"},
    }


def iter_file_messages(raw: bytes) -> Iterator[tuple[int, str]]:
    """(index, text) of each message in an HL7 file (see :func:`split_messages`)."""
    yield from enumerate(split_messages(raw))


__all__ = [
    "END_BLOCK",
    "HL7_FILE",
    "START_BLOCK",
    "AckCode",
    "Hl7Error",
    "Hl7Header",
    "Hl7Mapping",
    "MappedMessage",
    "MllpDecoder",
    "build_ack",
    "content_digest",
    "frame",
    "iter_file_messages",
    "load_hl7_mapping",
    "map_message",
    "normalise",
    "parse_hl7_mapping",
    "parse_ts",
    "read_header",
    "split_messages",
]
