"""The batch function: messages and the patients' states in, everything that follows
from them out (:class:`BatchResult`). The worker's score agent and ``wardwatch score``
both call it, with the model behind a :class:`~.model_port.RiskPort`.

Pure apart from the port: no Kafka, no Faust, no database. The caller sends the
outputs and writes the new records only after they are durable (see the worker).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from inference.alert_policy import AlertDecision
from inference.errors import reason_of

from .alerts import advance, alert_resource
from .envelope import Envelope, normalise
from .model_info import LoadedModel
from .model_port import RiskPort
from .prepare import Pending, score_envelopes, stack_windows
from .record import PatientRecord

# Splits message ``index``'s envelopes into (scored here, forwarded to their home).
Route = Callable[[int, Sequence[Envelope]], tuple[list[Envelope], list[Envelope]]]
# Prepared windows per model request: the request leaves as soon as a chunk is ready,
# so the model runs (in its own process) while the next chunk is prepared.
CHUNK = 4096


@dataclass(frozen=True, slots=True)
class Message:
    """One message of a batch. ``kind`` "fhir": raw FHIR from the feed (normalised
    here); "envelope": an :class:`Envelope`'s bytes (forwarded to its home partition)."""

    value: bytes
    source: str  # "topic/partition/offset" for Kafka, else a file and line
    inbound_ts_ms: int | None
    kind: Literal["fhir", "envelope"] = "fhir"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message (``index`` in the batch) refused at ``stage`` ("normalise" for FHIR,
    "score" for an envelope). ``whole``: nothing of it was taken; otherwise only the
    Bundle entries in ``refused`` were (the others' events were scored). ``error`` is
    the exception that refused it whole."""

    index: int
    stage: str
    reason: str
    whole: bool
    refused: tuple[str, ...] = ()
    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class Scored:
    """One score record (``risk.scores``), with the alert decision when one was raised."""

    score: dict[str, Any]
    decision: AlertDecision | None
    pending: Pending


@dataclass(slots=True)
class BatchResult:
    """Everything a batch produced, in input order."""

    scored: list[Scored] = field(default_factory=list)
    # (patient, RiskAssessment) of each raised alert, in the order of their scores
    alerts: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    # The new record of every patient scored here, and the last message carrying them
    records: dict[str, PatientRecord] = field(default_factory=dict)
    last_index: dict[str, int] = field(default_factory=dict)
    # Envelopes to send to their home partition (index of the message they came from)
    forward: list[tuple[int, Envelope]] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    # Envelopes their records already held (read again after a rebalance): skipped
    replayed: list[Envelope] = field(default_factory=list)
    kept: int = 0  # envelopes scored in place


def read_messages(
    messages: Sequence[Message],
    here: Route | None,
    out: BatchResult,
) -> list[tuple[int, Envelope]]:
    """The envelopes to score here, each with its message's index; dead letters and
    envelopes to forward go to ``out``. ``here`` splits a FHIR message's envelopes into
    (scored here, forwarded), given the message's index; None scores all here. Raises nothing."""
    taken: list[tuple[int, Envelope]] = []
    for i, m in enumerate(messages):
        if m.kind == "envelope":
            try:
                taken.append((i, Envelope.from_bytes(m.value)))
            except Exception as exc:  # a malformed envelope is that input's fault
                out.dead_letters.append(DeadLetter(i, "score", reason_of(exc), True, error=exc))
            continue
        try:
            if not isinstance(m.value, bytes):
                raise TypeError(f"expected raw bytes, got {type(m.value).__name__}")
            result = normalise(m.value, source=m.source, inbound_ts_ms=m.inbound_ts_ms)
        except Exception as exc:  # any failure to parse is this input's fault
            out.dead_letters.append(DeadLetter(i, "normalise", reason_of(exc), True, error=exc))
            continue
        local, forward = (result.envelopes, []) if here is None else here(i, result.envelopes)
        out.forward.extend((i, env) for env in forward)
        out.kept += len(local)
        taken.extend((i, env) for env in local)
        if result.rejected:
            reason = f"{len(result.rejected)} Bundle entries refused: " + "; ".join(
                result.rejected[:10]
            )
            refused = tuple(result.rejected)
            out.dead_letters.append(DeadLetter(i, "normalise", reason, False, refused))
    return taken


async def score_batch(
    messages: Sequence[Message],
    load: Callable[[str], PatientRecord],
    port: RiskPort,
    model: LoadedModel,
    *,
    staleness_hours: float,
    chunk: int = CHUNK,
    here: Route | None = None,
) -> BatchResult:
    """Normalise, apply, score and alert on a batch of messages, in order.

    ``load`` gives a patient's current record (called once per patient of the batch,
    mutated in place and returned in ``records``); ``here`` routes (see
    :func:`read_messages`). Envelopes a record already holds (Kafka offsets, see
    :func:`~.applied.already_applied`) are skipped and listed in ``replayed``. Bad input
    becomes dead letters; it never raises for input. Raises what ``port`` raises (the
    worker's port degrades instead) and ``OSError``/``ValueError`` if the packaged
    scale-2 table is unreadable; a pending model request is then cancelled.
    """
    out = BatchResult()
    taken = read_messages(messages, here, out)
    for i, env in taken:
        if env.patient not in out.records:
            out.records[env.patient] = load(env.patient)
        out.last_index[env.patient] = i
    envelopes = [env for _, env in taken]
    prepared: list[tuple[PatientRecord, Pending]] = []
    requests = _Requests(port, chunk)
    try:
        for at in range(0, len(envelopes), chunk):
            part = score_envelopes(
                out.records,
                envelopes[at : at + chunk],
                spec=model.spec,
                staleness_hours=staleness_hours,
                replayed=out.replayed,
            )
            prepared += part
            if requests.add([p for _, p in part]):
                await asyncio.sleep(0)  # let the request leave now
        requests.add([], final=True)
        risks = await requests.risks()
    finally:
        requests.cancel()
    await decide(prepared, risks, port, model, out)
    return out


async def predict(
    pendings: Sequence[Pending], port: RiskPort, chunk: int = CHUNK
) -> list[float | None]:
    """The model's risk of each pending (None where the model was unavailable), asked in
    requests of ``chunk`` windows. Raises what ``port`` raises."""
    requests = _Requests(port, chunk)
    try:
        requests.add(pendings, final=True)
        return await requests.risks()
    finally:
        requests.cancel()


class _Requests:
    """Model requests of exactly ``chunk`` windows (the last one: the rest), each sent
    as soon as it is full, so the same pendings make the same requests whichever way
    the batch was prepared (a model's numbers may depend on its batch)."""

    def __init__(self, port: RiskPort, chunk: int) -> None:
        self.port = port
        self.chunk = chunk
        self.waiting: list[Pending] = []
        self.tasks: list[tuple[int, asyncio.Task[npt.NDArray[np.float32] | None]]] = []

    def add(self, pendings: Sequence[Pending], *, final: bool = False) -> bool:
        """Queue ``pendings``; send every full chunk (and the rest when ``final``).
        Returns whether a request was sent. Raises nothing."""
        self.waiting.extend(pendings)
        sent = False
        while len(self.waiting) >= self.chunk or (final and self.waiting):
            part, self.waiting = self.waiting[: self.chunk], self.waiting[self.chunk :]
            task = asyncio.create_task(self.port.predict(stack_windows(part)))
            self.tasks.append((len(part), task))
            sent = True
        return sent

    async def risks(self) -> list[float | None]:
        """Every request's risks, in order (None for a request the model was away for)."""
        out: list[float | None] = []
        for n, task in self.tasks:
            got = await task
            out.extend([None] * n if got is None else [float(r) for r in got])
        return out

    def cancel(self) -> None:
        """Cancel the requests still pending (an error left them behind)."""
        for _, task in self.tasks:
            task.cancel()


async def decide(
    prepared: Sequence[tuple[PatientRecord, Pending]],
    risks: Sequence[float | None],
    port: RiskPort,
    model: LoadedModel,
    out: BatchResult,
) -> None:
    """Advance each patient's alert state with its risk (None: degraded) and dress the
    raised alerts, explained by ``port`` (alerts with a risk only), into ``out``.
    Mutates the records' alert states. Raises ``ValueError`` when the lengths differ."""
    steps = [
        (pending, risk, *advance(rec, pending, risk, model=model.info, policy=model.policy))
        for (rec, pending), risk in zip(prepared, risks, strict=True)
    ]
    explained = [p for p, risk, _, d in steps if d is not None and risk is not None]
    attributions = dict(
        zip(map(id, explained), await port.explain([p.window for p in explained]), strict=True)
    )
    for pending, _, score, decision in steps:
        out.scored.append(Scored(score, decision, pending))
        if decision is not None:
            resource = alert_resource(
                decision,
                pending,
                attributions.get(id(pending)),
                model=model.info,
                policy=model.policy,
            )
            out.alerts.append((pending.patient, resource))
