"""``wardwatch score``: score input files offline through the stream's own functions.

No Kafka and no Triton: the messages that ``wardwatch replay`` would publish are
normalised, scored and alerted on by the scoring core the worker runs
(:mod:`inference.scoring`), with the exported model run in-process behind the same port.
The stream's scores for the same files are therefore the same numbers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import orjson
from tqdm import tqdm

from fhir.errors import PermanentInputError
from fhir.physionet import read_psv
from inference.features import FeatureSpec
from inference.runtime import LocalTorchModel, RiskModel
from inference.scoring.batch import CHUNK, BatchResult, Message, decide, predict, score_batch
from inference.scoring.envelope import Envelope, normalise
from inference.scoring.model_info import LoadedModel, occlusion_explainer
from inference.scoring.model_port import InProcessModel
from inference.scoring.prepare import Pending, prepare
from inference.scoring.record import PatientRecord

from .sources import expand, file_messages, psv_messages

PREDICT_CHUNK = CHUNK


@dataclass(slots=True)
class OfflineStats:
    """Counts reported at the end of ``wardwatch score``."""

    files: int = 0
    lines: int = 0
    rejected: int = 0
    alerts: int = 0
    rejects: list[str] = field(default_factory=list)


def _psv_pendings(
    path: Path, key: bytes, stay_start: datetime, staleness_hours: float, spec: FeatureSpec
) -> Iterator[tuple[int, PatientRecord, Pending]]:
    """(row, record, pending) for every row of one PhysioNet file, rows 0..t for row t."""
    record = PatientRecord()
    rows = read_psv(path.read_text())
    by_hour = {m.hour: m for m in psv_messages(path, key, stay_start, rows)}
    for hour in range(len(rows)):
        msg = by_hour.get(hour)
        envs: list[Envelope] = []
        if msg is not None:
            envs = normalise(msg.value, source=msg.origin, inbound_ts_ms=None).envelopes
        env = envs[0] if envs else Envelope("", msg.origin if msg else str(path), None, ())
        pending = prepare(
            record,
            env,
            spec=spec,
            staleness_hours=staleness_hours,
            as_of=stay_start + timedelta(hours=hour),
        )
        assert pending is not None  # as_of is given
        yield hour, record, pending


def score_files(
    paths: list[Path],
    out: TextIO,
    *,
    model: RiskModel,
    loaded: LoadedModel,
    key: bytes,
    stay_start: datetime,
    staleness_hours: float,
    progress: bool = True,
    model_dir: Path | None = None,
    alerts_out: TextIO | None = None,
) -> OfflineStats:
    """Score every input and write one JSON line per score to ``out``.

    PhysioNet ``.psv``: one line per row ``{"patient", "hour", "risk", "alert", "news2",
    "qsofa"}``; FHIR: one line per patient and scoring time with ``"time"``. Bad FHIR
    input is counted and listed in ``stats.rejects``, not fatal. When ``model`` is a
    :class:`LocalTorchModel` (or ``model_dir`` names its folder), alert cards carry
    occlusion attributions from it; with ``alerts_out``, every alert
    (the RiskAssessment the stream would publish) is written there as one JSON line.
    Raises ``OSError`` when a file cannot be read, and what the model raises.
    """
    stats = OfflineStats()
    explain = None
    if model_dir is not None or isinstance(model, LocalTorchModel):
        explain = occlusion_explainer(model_dir or Path("."), model)
    port = InProcessModel(model, explain)

    def emit(result: BatchResult, stem: str | None = None, hours: Sequence[int] = ()) -> None:
        for n, s in enumerate(result.scored):
            score = s.score
            line: dict[str, Any] = {"patient": s.pending.patient if stem is None else stem}
            if stem is None:
                line["time"] = score["time"]
            else:
                line["hour"] = hours[n]
            line |= {
                "risk": score["risk"],
                "alert": score["alert"],
                "news2": score["news2"],
                "qsofa": score["qsofa"],
            }
            out.write(orjson.dumps(line).decode() + "\n")
        stats.lines += len(result.scored)
        stats.alerts += len(result.alerts)
        if alerts_out is not None:
            for _, alert in result.alerts:
                alerts_out.write(orjson.dumps(alert).decode() + "\n")

    async def run() -> None:
        messages: list[Message] = []
        for path in tqdm(expand(paths), desc="scoring", unit="file", disable=not progress):
            stats.files += 1
            if path.suffix == ".psv":
                # Every row is scored at its hour, measured or not: the core's decide()
                # over this driver's pendings (the stream scores only measured hours).
                rows = list(_psv_pendings(path, key, stay_start, staleness_hours, loaded.spec))
                pendings = [(rec, pend) for _, rec, pend in rows]
                risks = await predict([p for _, p in pendings], port, PREDICT_CHUNK)
                result = BatchResult()
                await decide(pendings, risks, port, loaded, result)
                emit(result, path.stem, [hour for hour, _, _ in rows])
                continue
            messages += (
                Message(m.value, source=m.origin, inbound_ts_ms=None)
                for m in file_messages(path, key, stay_start)
            )
        records: dict[str, PatientRecord] = {}
        result = await score_batch(
            messages,
            lambda p: records.setdefault(p, PatientRecord()),
            port,
            loaded,
            staleness_hours=staleness_hours,
            chunk=PREDICT_CHUNK,
        )
        for dead in result.dead_letters:
            if dead.whole and not isinstance(dead.error, PermanentInputError):
                raise dead.error or RuntimeError(dead.reason)  # not the input's fault: stop
            stats.rejected += 1
            what = str(dead.error) if dead.whole else "; ".join(dead.refused[:5])
            stats.rejects.append(f"{messages[dead.index].source}: {what}")
        emit(result)

    asyncio.run(run())
    return stats
