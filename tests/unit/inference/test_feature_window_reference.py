"""feature_window (vectorised over codes) is bit-identical to the plain per-code loop.

The reference below is the loop feature_window was before it was vectorised, kept verbatim
(apart from its name) as the specification: one ``searchsorted`` per code.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from fhir.events import CATEGORICAL_CODES, CONTEXT_CODES, NUMERIC_CODES, ClinicalEvent
from inference.features import (
    CLIP,
    F32,
    FIRST_CAP_HOURS,
    HOUR,
    LAST_CAP_HOURS,
    WINDOW,
    FeatureSpec,
    default_spec,
    feature_window,
)
from inference.state import PatientState, TimeLike, to_epoch

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def reference_feature_window(state: PatientState, as_of: TimeLike, spec: FeatureSpec) -> F32:
    """The per-code loop: the definition the vectorised version must match exactly."""
    c = len(spec.codes)
    t_end = to_epoch(as_of)
    ends = t_end - HOUR * np.arange(WINDOW - 1, -1, -1, dtype=np.float64)  # oldest -> newest
    raw = np.zeros((WINDOW, c), dtype=np.float64)
    have = np.zeros((WINDOW, c), dtype=bool)
    measured = np.zeros((WINDOW, c), dtype=np.float32)
    stale = np.ones((WINDOW, c), dtype=np.float64)
    for k, code in enumerate(spec.codes):
        times_l, values_l = state.series(code)
        if not times_l:
            continue
        times = np.asarray(times_l, dtype=np.float64)
        idx = np.searchsorted(times, ends, side="right") - 1
        ok = idx >= 0
        if not ok.any():
            continue
        j = idx[ok]
        last_t = times[j]
        raw[ok, k] = np.asarray(values_l, dtype=np.float64)[j]
        have[ok, k] = True
        measured[ok, k] = last_t > ends[ok] - HOUR
        stale[ok, k] = np.minimum((ends[ok] - last_t) / HOUR, LAST_CAP_HOURS) / LAST_CAP_HOURS
    out = np.empty((WINDOW, spec.n_features), dtype=np.float32)
    mean = np.asarray(spec.mean, dtype=np.float64)
    std = np.asarray(spec.std, dtype=np.float64)
    out[:, :c] = np.where(have, np.clip((raw - mean) / std, -CLIP, CLIP), 0.0)
    out[:, c : 2 * c] = measured
    out[:, 2 * c : 3 * c] = stale
    if state.first_seen is None:
        out[:, 3 * c] = 0.0
    else:
        hours = np.clip((ends - state.first_seen) / HOUR, 0.0, FIRST_CAP_HOURS)
        out[:, 3 * c] = hours / FIRST_CAP_HOURS
    return out


def random_spec(rng: random.Random) -> FeatureSpec:
    """Random numeric codes in random order (some never measured), random normalisation."""
    codes = rng.sample(NUMERIC_CODES, rng.randint(1, len(NUMERIC_CODES)))
    return FeatureSpec(
        codes=tuple(codes),
        mean=tuple(rng.uniform(-50, 150) for _ in codes),
        std=tuple(rng.choice([rng.uniform(0.01, 0.5), rng.uniform(0.5, 40)]) for _ in codes),
    )


def random_state(rng: random.Random, origin: datetime) -> tuple[PatientState, list[float]]:
    """A state from random events (any order, duplicate times, corrections, retractions,
    categorical/context codes), and the event times (epoch seconds) it was given."""
    n_codes = rng.randint(0, 12)
    codes = rng.sample(NUMERIC_CODES, n_codes) + rng.sample(CATEGORICAL_CODES, rng.randint(0, 1))
    events: list[ClinicalEvent] = []
    for code in codes:
        for n in range(rng.choice([0, 1, 2, 5, 30, 120])):
            # hours, on the hour (bin boundaries), to the millisecond, or repeated
            h = rng.choice(
                [
                    float(rng.randint(-80, 80)),
                    round(rng.uniform(-80, 80), 6),
                    rng.uniform(-1, 1) / 3600,
                ]
            )
            t = origin + timedelta(hours=h)
            numeric = code in NUMERIC_CODES
            events.append(
                ClinicalEvent(
                    patient="p",
                    time=t,
                    code=code,
                    kind="vital",
                    value=rng.uniform(-200, 400) if numeric else None,
                    value_code=None if numeric else rng.choice(["A", "V", "P"]),
                    source=rng.choice(["", f"Observation/{code}{n % 7}"]),
                    status=rng.choice(["final", "final", "preliminary", "amended"]),
                )
            )
            if rng.random() < 0.2:
                events.append(events[-1])  # a duplicate delivery
    if codes and rng.random() < 0.3:  # a retraction
        victim = rng.choice(events) if events else None
        if victim is not None and victim.source:
            events.append(
                ClinicalEvent(
                    patient="p",
                    time=victim.time,
                    code=victim.code,
                    kind="vital",
                    source=victim.source,
                    status="entered-in-error",
                )
            )
    if rng.random() < 0.2:
        events.append(
            ClinicalEvent(
                patient="p",
                time=origin,
                code=CONTEXT_CODES[0],
                kind="condition",
                value_code="http://snomed.info/sct|1",
            )
        )
    rng.shuffle(events)
    st = PatientState()
    st.apply(events)
    if rng.random() < 0.3:
        st = PatientState.from_json(st.to_json())
    return st, [e.time.timestamp() for e in events]


def as_of_times(rng: random.Random, origin: datetime, times: list[float]) -> list[TimeLike]:
    """Scoring times: bin ends and bin starts landing exactly on observations, before the
    first observation, long after the last, between milliseconds, datetimes and floats."""
    base = origin.timestamp()
    out: list[TimeLike] = [
        base + rng.uniform(-100, 100) * 3600,
        base - 200 * 3600,  # before everything
        base + 500 * 3600,  # everything stale
        origin + timedelta(hours=rng.randint(-5, 5)),
    ]
    if times:
        t = rng.choice(times)
        out += [
            t,  # exactly an observation's time
            t + 3600 * rng.randint(1, WINDOW),  # an observation exactly on a bin's start
            t + 3600 * rng.randint(0, WINDOW) + rng.choice([-1e-4, 1e-4]),
            datetime.fromtimestamp(t, tz=UTC) + timedelta(microseconds=rng.randint(0, 999)),
        ]
    return out


@pytest.mark.parametrize(
    "origin",
    [
        T0,
        datetime(1970, 1, 1, 0, 30, tzinfo=UTC),  # times on both sides of the epoch
        datetime(2262, 4, 1, 12, 0, 0, 123000, tzinfo=UTC),
    ],
)
def test_vectorised_equals_reference_on_random_states(origin: datetime) -> None:
    rng = random.Random(f"feature-window-{origin.isoformat()}")
    n_windows = 0
    for _ in range(150):
        spec = random_spec(rng)
        st, times = random_state(rng, origin)
        for as_of in as_of_times(rng, origin, times):
            got = feature_window(st, as_of, spec)
            want = reference_feature_window(st, as_of, spec)
            assert got.dtype == want.dtype == np.float32
            assert np.array_equal(got, want), (st, as_of, spec)
            assert got.tobytes() == want.tobytes()  # the same bits, signed zeros too
            n_windows += 1
    assert n_windows > 600


def test_vectorised_equals_reference_on_edge_states() -> None:
    served = default_spec()  # the reference covers the columns before the patient context
    spec = FeatureSpec(served.codes, served.mean, served.std)
    empty = PatientState()
    assert empty.first_seen is None
    only_categorical = PatientState()
    only_categorical.apply(
        [ClinicalEvent(patient="p", time=T0, code="consciousness", kind="vital", value_code="A")]
    )
    assert only_categorical.first_seen is None
    same_time = PatientState()
    same_time.apply(
        [
            ClinicalEvent(
                patient="p",
                time=T0,
                code=spec.codes[0],
                kind="vital",
                value=float(v),
                source=f"s{v}",
            )
            for v in range(5)
        ]
    )
    for st in (empty, only_categorical, same_time):
        for as_of in (T0 - timedelta(hours=1), T0, T0 + timedelta(hours=WINDOW + 1)):
            got = feature_window(st, as_of, spec)
            want = reference_feature_window(st, as_of, spec)
            assert np.array_equal(got, want)
            assert got.tobytes() == want.tobytes()


def test_reference_itself_can_tell_a_difference() -> None:
    """The comparison is not vacuous: one value changed changes the window."""
    spec = default_spec()
    st = PatientState()
    ev = ClinicalEvent(patient="p", time=T0, code=spec.codes[0], kind="vital", value=80.0)
    st.apply([ev])
    before = reference_feature_window(st, T0, spec)
    st.apply([ClinicalEvent(patient="p", time=T0, code=spec.codes[0], kind="vital", value=81.0)])
    assert not np.array_equal(feature_window(st, T0, spec), before)
