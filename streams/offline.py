"""``wardwatch score``: score input files offline through the stream's own functions.

No Kafka and no Triton: the messages that ``wardwatch replay`` would publish are
normalised, scored and alerted on by :mod:`streams.pipeline`, with the exported model run
in-process. The stream's scores for the same files are therefore the same numbers.
"""

from __future__ import annotations

from collections.abc import Iterator
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

from .model_info import LoadedModel, occlusion_explainer
from .pipeline import Envelope, PatientRecord, Pending, finish, normalise, prepare, stack_windows
from .sources import expand, file_messages, psv_messages

PREDICT_CHUNK = 4096


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
    Raises ``OSError`` when a file cannot be read.
    """
    stats = OfflineStats()
    files = expand(paths)
    records: dict[str, PatientRecord] = {}
    fhir_batch: list[tuple[PatientRecord, Pending]] = []
    explain = None
    if model_dir is not None or isinstance(model, LocalTorchModel):
        explain = occlusion_explainer(model_dir or Path("."), model)

    def emit(batch: list[tuple[Any, PatientRecord, Pending]]) -> None:
        for start in range(0, len(batch), PREDICT_CHUNK):
            chunk = batch[start : start + PREDICT_CHUNK]
            risks = model.predict(stack_windows([p for _, _, p in chunk]))
            for (label, rec, pending), risk in zip(chunk, risks, strict=True):
                score, alert = finish(
                    rec,
                    pending,
                    float(risk),
                    model=loaded.info,
                    policy=loaded.policy,
                    explain=explain,
                )
                line: dict[str, Any] = {"patient": label[0]}
                if label[1] is None:
                    line["time"] = score["time"]
                else:
                    line["hour"] = label[1]
                line |= {
                    "risk": score["risk"],
                    "alert": score["alert"],
                    "news2": score["news2"],
                    "qsofa": score["qsofa"],
                }
                out.write(orjson.dumps(line).decode() + "\n")
                stats.lines += 1
                stats.alerts += alert is not None
                if alert is not None and alerts_out is not None:
                    alerts_out.write(orjson.dumps(alert).decode() + "\n")

    for path in tqdm(files, desc="scoring", unit="file", disable=not progress):
        stats.files += 1
        if path.suffix == ".psv":
            batch = [
                ((path.stem, hour), rec, pend)
                for hour, rec, pend in _psv_pendings(
                    path, key, stay_start, staleness_hours, loaded.spec
                )
            ]
            emit(batch)
            continue
        for msg in file_messages(path, key, stay_start):
            try:
                result = normalise(msg.value, source=msg.origin, inbound_ts_ms=None)
            except PermanentInputError as exc:
                stats.rejected += 1
                stats.rejects.append(f"{msg.origin}: {exc}")
                continue
            if result.rejected:
                stats.rejected += 1
                stats.rejects.append(f"{msg.origin}: {'; '.join(result.rejected[:5])}")
            for env in result.envelopes:
                rec = records.setdefault(env.patient, PatientRecord())
                pending = prepare(rec, env, spec=loaded.spec, staleness_hours=staleness_hours)
                if pending is not None:
                    fhir_batch.append((rec, pending))
    emit([((p.patient, None), rec, p) for rec, p in fhir_batch])
    return stats
