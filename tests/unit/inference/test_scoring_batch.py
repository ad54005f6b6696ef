"""The scoring core without Faust or Kafka: a batch in, scores, alerts, dead letters and
the new records out, with a fake model behind the port."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt
import orjson
import pytest

from inference import physionet_data as pdata
from inference.alert_policy import AlertPolicy
from inference.attribution import Attribution
from inference.features import FeatureSpec
from inference.scoring.alerts import finish
from inference.scoring.batch import BatchResult, Message, score_batch
from inference.scoring.envelope import Envelope, normalise
from inference.scoring.model_info import LoadedModel, ModelInfo
from inference.scoring.prepare import prepare, stack_windows
from inference.scoring.record import PatientRecord
from streams.sources import psv_messages

F32 = npt.NDArray[np.float32]
START = datetime(2026, 1, 1, tzinfo=UTC)
KEY = b"k" * 32
CODES = tuple(pdata.PSV_CODES.values())
SPEC = FeatureSpec(codes=CODES, mean=tuple(0.0 for _ in CODES), std=tuple(1.0 for _ in CODES))
MODEL = LoadedModel(ModelInfo("fake", "1"), AlertPolicy(threshold=0.5), SPEC, {})


def fake_risk(windows: F32) -> F32:
    """A risk that depends on each window alone (never on the batch), rising with it."""
    flat = windows.reshape(len(windows), -1).astype(np.float64)
    return (1 / (1 + np.exp(-(flat.sum(axis=1) / 2000.0 - 0.5)))).astype(np.float32)


class FakeModel:
    """A RiskPort: ``fake_risk``, or None while ``away``; records each request's size."""

    def __init__(self, away: bool = False) -> None:
        self.away = away
        self.requests: list[int] = []

    async def predict(self, windows: F32) -> F32 | None:
        self.requests.append(len(windows))
        return None if self.away else fake_risk(windows)

    async def explain(self, windows: Sequence[F32]) -> list[Attribution | str | None]:
        return ["fake: no attribution"] * len(windows)


def stay_messages(path: Path, topic: str = "in/0") -> list[Message]:
    return [
        Message(m.value, source=f"{topic}/{n}", inbound_ts_ms=1000 + n)
        for n, m in enumerate(psv_messages(path, KEY, START))
    ]


def run(messages: Sequence[Message], store: dict[str, str], model: FakeModel) -> BatchResult:
    """One batch against records kept as JSON (as the worker's table keeps them)."""
    result = asyncio.run(
        score_batch(
            messages,
            lambda p: PatientRecord.from_json(store.get(p)),
            model,
            MODEL,
            staleness_hours=12,
            chunk=16,
        )
    )
    store.update({p: r.to_json() for p, r in result.records.items()})
    return result


def real_stays(n: int) -> list[Path]:
    if not pdata.PHYSIONET_DIR.is_dir():
        pytest.skip(f"PhysioNet 2019 data absent at {pdata.PHYSIONET_DIR}")
    return pdata.stay_files(pdata.PHYSIONET_DIR)[:n]


def test_good_and_bad_messages_give_scores_dead_letters_and_new_state() -> None:
    (path,) = real_stays(1)
    good = stay_messages(path)[:3]
    bad_fhir = Message(b"{not json", source="in/0/90", inbound_ts_ms=1)
    bad_env = Message(b'{"patient": 1}', source="ev/0/7", inbound_ts_ms=1, kind="envelope")
    store: dict[str, str] = {}
    result = run([good[0], bad_fhir, good[1], bad_env, good[2]], store, FakeModel())

    assert [(d.index, d.stage, d.whole) for d in result.dead_letters] == [
        (1, "normalise", True),
        (3, "score", True),
    ]
    assert all(d.reason and d.error is not None for d in result.dead_letters)
    assert len(result.scored) == 3 and not result.replayed
    (patient,) = result.records
    assert result.last_index == {patient: 4}
    assert all(s.score["patient"] == patient and not s.score["degraded"] for s in result.scored)
    state = PatientRecord.from_json(store[patient]).state
    assert state.latest_readings(result.scored[-1].pending.as_of), "the new state holds them"


def test_model_away_degrades_every_score_and_keeps_the_rules() -> None:
    (path,) = real_stays(1)
    result = run(stay_messages(path)[:12], {}, FakeModel(away=True))
    served = run(stay_messages(path)[:12], {}, FakeModel())
    assert result.scored and all(s.score["degraded"] for s in result.scored)
    assert all(s.score["risk"] is None for s in result.scored)
    rules = ("news2", "news2_breakdown", "qsofa", "sirs")
    assert [[s.score[k] for k in rules] for s in result.scored] == [
        [s.score[k] for k in rules] for s in served.scored
    ]
    assert any(s.score["news2"] is not None for s in result.scored), "the rules still score"


def test_already_applied_offsets_are_skipped() -> None:
    (path,) = real_stays(1)
    msgs = stay_messages(path)[:6]
    store: dict[str, str] = {}
    first = run(msgs, store, FakeModel())
    again = run(msgs[2:], store, FakeModel())
    assert len(first.scored) == 6
    assert again.scored == [] and len(again.replayed) == 4
    # the same offsets with newer message timestamps: a topic created again, applied
    newer = [Message(m.value, m.source, (m.inbound_ts_ms or 0) + 10**6) for m in msgs[:2]]
    assert len(run(newer, store, FakeModel()).scored) == 2


def test_forwarded_envelopes_are_not_scored_here() -> None:
    (path,) = real_stays(1)
    msgs = stay_messages(path)[:3]

    def elsewhere(index: int, envs: Sequence[Envelope]) -> tuple[list[Envelope], list[Envelope]]:
        return ([], list(envs)) if index == 1 else (list(envs), [])

    result = asyncio.run(
        score_batch(
            msgs, lambda p: PatientRecord(), FakeModel(), MODEL, staleness_hours=12, here=elsewhere
        )
    )
    assert [i for i, _ in result.forward] == [1] and result.kept == 2
    assert len(result.scored) == 2


def test_same_numbers_as_step_by_step_scoring_on_real_stays() -> None:
    """The batch core gives exactly the scores and alerts of applying each envelope in
    turn (prepare, the model on that window alone, finish), over real stays, whether
    the messages come in one batch or many (records round-tripped through JSON)."""
    paths = real_stays(6)
    msgs = [m for n, p in enumerate(paths) for m in stay_messages(p, topic=f"in/{n}")]
    want_scores, want_alerts = [], []
    records: dict[str, PatientRecord] = {}
    for m in msgs:
        for env in normalise(m.value, source=m.source, inbound_ts_ms=m.inbound_ts_ms).envelopes:
            rec = records.setdefault(env.patient, PatientRecord())
            pending = prepare(rec, env, spec=SPEC, staleness_hours=12)
            assert pending is not None
            risk = float(fake_risk(stack_windows([pending]))[0])
            score, alert = finish(rec, pending, risk, model=MODEL.info, policy=MODEL.policy)
            want_scores.append(score)
            if alert is not None:
                want_alerts.append(alert)
    assert want_alerts, "these stays raise alerts"

    model = FakeModel()
    one = run(msgs, {}, model)
    assert len(model.requests) > 1 and max(model.requests) == 16, "chunked requests"
    store: dict[str, str] = {}
    many = [run(msgs[at : at + 7], store, FakeModel()) for at in range(0, len(msgs), 7)]
    for results in ([one], many):
        got = [s.score for r in results for s in r.scored]
        assert orjson.dumps(got) == orjson.dumps(want_scores)
        ids = [a["id"] for r in results for _, a in r.alerts]
        assert ids == [a["id"] for a in want_alerts]
