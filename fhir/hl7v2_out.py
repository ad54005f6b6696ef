"""Alerts out as HL7 v2.5.1 ORU^R01 messages, and reading the receiver's ACK. Pure: no I/O.

:func:`oru_r01` turns one alert (the RiskAssessment ``inference.scoring.alert_card.risk_assessment``
made, as the outbox keeps it) into an ORU^R01:

* ``MSH`` - WARDWATCH as sending application; MSH-7 the time the event was queued (not
  "now"), MSH-10 the event's control id (:func:`control_id`), so a resend of the same event
  is the same message byte for byte and a receiver can drop it by MSH-10;
* ``PID`` - PID-3 the patient pseudonym (identifier type ANON): no name or raw identifier
  exists past the edge, so none can be sent;
* ``OBR`` - the risk assessment (SNOMED CT 91302008 Sepsis), OBR-3 the alert id, OBR-7 and
  OBR-22 the observation time, OBR-25 F;
* ``OBX`` - risk (NM, probability 0-1), band (CWE: the FHIR risk-probability code,
  the alert severity as original text), NEWS2 (NM) and qSOFA (NM) when the alert carries
  them, each with OBX-14 the observation time and OBX-11 F;
* ``NTE`` - the alert's reason and "decision support, not a diagnosis".

An alert acknowledged or resolved later (the RiskAssessment updated: the alert extension's
``status`` and ``statusAt``) goes out as the same ORU^R01 with OBR-25 and every OBX-11 ``C``
(a correction replacing the final result), one more OBX with the alert state (CWE) and an
NTE saying when; the receiver files it over the first by OBR-3.

Every value goes through :func:`escape` (the separators ``| ^ ~ \\ &`` as ``\\F\\ \\S\\ \\R\\
\\E\\ \\T\\``, as ``fhir.hl7v2`` reads them back). :func:`read_ack` and :func:`ack_accepted`
are the rules the sender applies to the answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import hl7

from fhir.hl7v2 import normalise

VERSION = "2.5.1"
SENDING_APP = "WARDWATCH"
LOCAL_CODES = "99WWRISK"  # HL7 local coding system (99zzz): WardWatch's own OBX codes
RISK_PROBABILITY = "http://terminology.hl7.org/CodeSystem/risk-probability"
# inference.scoring.alert_card.ALERT_EXTENSION (fhir/ cannot import inference/):
# severity, reason, news2
ALERT_EXTENSION = "https://wardwatch.example.org/fhir/StructureDefinition/alert"
ACCEPTED = frozenset({"AA", "CA"})
REFUSED = frozenset({"AE", "AR", "CE", "CR"})


class AckError(Exception):
    """An answer that is not an acceptable ACK for the message sent: unreadable, without
    MSA, an unknown MSA-1 code, or MSA-2 naming another message. The sender treats it
    like a refusal (resent with backoff, bounded)."""


@dataclass(frozen=True, slots=True)
class Ack:
    """What the receiver said: MSA-1 (AA/AE/AR/CA/CE/CR), MSA-2 and MSA-3."""

    code: str
    control_id: str
    text: str


def escape(value: object) -> str:
    """``value`` as HL7 text with the default separators escaped and control characters
    (a segment break would end the segment) as spaces. Raises nothing."""
    s = str(value)
    s = s.replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\")
    s = s.replace("&", "\\T\\").replace("~", "\\R\\")
    return "".join(ch if ch.isprintable() else " " for ch in s)


def control_id(subscriber_id: str, event_number: int) -> str:
    """MSH-10 of event ``event_number`` of subscriber ``subscriber_id``: the same for
    every resend of that event, different for every other event to that receiver, at most
    20 characters (MSH-10's length in v2.5.1) for event numbers below 10^11. Raises
    ValueError for an event number below 1."""
    if event_number < 1:
        raise ValueError("event numbers start at 1")
    return f"{subscriber_id[:8]}-{event_number}"


def hl7_ts(at: datetime) -> str:
    """``at`` as an HL7 DTM in UTC (``YYYYMMDDHHMMSS+0000``). Raises ValueError for a
    naive time."""
    if at.tzinfo is None:
        raise ValueError("an HL7 time needs a time zone")
    return at.astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")


def _alert_parts(resource: dict[str, Any]) -> dict[str, Any]:
    for ext in resource.get("extension") or []:
        if isinstance(ext, dict) and ext.get("url") == ALERT_EXTENSION:
            return {
                x["url"]: next((v for k, v in x.items() if k.startswith("value")), None)
                for x in ext.get("extension") or []
                if isinstance(x, dict) and "url" in x
            }
    return {}


def oru_r01(
    resource: dict[str, Any],
    *,
    control: str,
    queued_at: datetime,
    patient: str,
    receiving_app: str = "",
    receiving_facility: str = "",
    qsofa: int | None = None,
) -> bytes:
    """The ORU^R01 (``\\r``-separated, UTF-8, not framed) for one alert RiskAssessment.

    ``patient`` is the pseudonym (PID-3), ``control`` MSH-10 (:func:`control_id`),
    ``queued_at`` MSH-7. A qSOFA OBX is added when ``qsofa`` is given or the alert's
    extension carries ``qsofa``. Raises KeyError/ValueError/TypeError for a resource
    that is not an alert RiskAssessment (no id, occurrenceDateTime or prediction): a
    programming error upstream, never retried.
    """
    if resource.get("resourceType") != "RiskAssessment":
        raise ValueError("not a RiskAssessment")
    observed = hl7_ts(datetime.fromisoformat(str(resource["occurrenceDateTime"])))
    pred = resource["prediction"][0]
    parts = _alert_parts(resource)
    severity = parts.get("severity")
    state = parts.get("status")  # acknowledged / resolved: an update of the alert
    result = "C" if state else "F"
    qual = next(
        (
            c.get("code")
            for c in (pred.get("qualitativeRisk") or {}).get("coding", [])
            if c.get("system") == RISK_PROBABILITY
        ),
        None,
    )
    msh = "|".join(
        [
            "MSH",
            "^~\\&",
            SENDING_APP,
            "",
            escape(receiving_app),
            escape(receiving_facility),
            hl7_ts(queued_at),
            "",
            "ORU^R01^ORU_R01",
            escape(control),
            "P",
            VERSION,
        ]
    )
    pid = f"PID|1||{escape(patient)}^^^{SENDING_APP}^ANON"
    obr = (
        f"OBR|1||{escape(resource['id'])}^{SENDING_APP}|"
        f"91302008^Sepsis risk assessment^SCT|||{observed}" + "|" * 15 + f"{observed}|||{result}"
    )
    obx: list[tuple[str, str, str, str]] = []  # (type, code^text^system, value, units)
    if pred.get("probabilityDecimal") is not None:
        obx.append(
            (
                "NM",
                f"RISK^Sepsis risk probability^{LOCAL_CODES}",
                escape(f"{float(pred['probabilityDecimal']):.6g}"),
                "1^^UCUM",
            )
        )
    if qual is not None or severity is not None:
        code = escape(qual or severity)
        text = escape(severity or qual)
        obx.append(
            (
                "CWE",
                f"BAND^Risk band^{LOCAL_CODES}",
                f"{code}^{code}^{escape(RISK_PROBABILITY) if qual else LOCAL_CODES}^^^^^^{text}",
                "",
            )
        )
    if parts.get("news2") is not None:
        obx.append(
            ("NM", f"NEWS2^NEWS2 total score^{LOCAL_CODES}", escape(int(parts["news2"])), "")
        )
    q = qsofa if qsofa is not None else parts.get("qsofa")
    if q is not None:
        obx.append(("NM", f"QSOFA^qSOFA score^{LOCAL_CODES}", escape(int(q)), ""))
    if state:
        code = escape(state)
        obx.append(
            ("CWE", f"ALERTSTATE^Alert state^{LOCAL_CODES}", f"{code}^{code}^{LOCAL_CODES}", "")
        )
    segs = [msh, pid, obr]
    for i, (vtype, ident, value, units) in enumerate(obx, start=1):
        segs.append(f"OBX|{i}|{vtype}|{ident}||{value}|{units}|||||{result}|||{observed}")
    notes = []
    if parts.get("reason"):
        notes.append(f"{severity or 'alert'}: {parts['reason']}")
    if state:
        notes.append(f"Alert {state} at {parts.get('statusAt') or 'an unrecorded time'}.")
    notes.append("Decision support, not a diagnosis.")
    segs += [f"NTE|{i}||{escape(n)}" for i, n in enumerate(notes, start=1)]
    return ("\r".join(segs) + "\r").encode("utf-8")


def read_ack(raw: bytes | str) -> Ack:
    """MSA of an ACK (framing already removed). Raises :class:`AckError` when it is not
    an HL7 message with an MSA segment and an MSA-1 code from table 0008."""
    text = normalise(raw)
    try:
        msg = hl7.parse(text)
        msa = msg.segment("MSA")
    except Exception as exc:  # python-hl7 raises several types for malformed text
        raise AckError(f"not an ACK ({type(exc).__name__})") from None
    code = str(msa(1)) if len(msa) > 1 else ""
    if code not in ACCEPTED | REFUSED:
        raise AckError(f"MSA-1 {code[:10]!r} is not an acknowledgment code")
    cid = msg.unescape(str(msa(2))) if len(msa) > 2 else ""
    note = msg.unescape(str(msa(3))) if len(msa) > 3 else ""
    return Ack(code=code, control_id=cid, text=note[:200])


def ack_accepted(ack: Ack, sent_control_id: str) -> bool:
    """True when ``ack`` accepts the message sent with MSH-10 ``sent_control_id`` (AA or
    CA), False when it refuses it (AE, AR, CE, CR: resend later). Raises
    :class:`AckError` when MSA-2 names another message: an answer to something else
    proves nothing about ours."""
    if ack.control_id != sent_control_id:
        raise AckError("MSA-2 does not match the MSH-10 sent")
    return ack.code in ACCEPTED
