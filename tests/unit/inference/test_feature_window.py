"""feature_window (stream) == windows_from_hourly (training), and the window's layout."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from fhir.events import ClinicalEvent
from inference import physionet_data as pdata
from inference.features import (
    LAST_CAP_HOURS,
    WINDOW,
    FeatureSpec,
    feature_window,
    windows_from_hourly,
)
from inference.state import PatientState

T0 = datetime(2026, 1, 1, tzinfo=UTC)
CODES = tuple(pdata.PSV_CODES.values())


def data_dir() -> Path:
    if pdata.PHYSIONET_DIR.is_dir():
        return pdata.PHYSIONET_DIR
    msg = f"PhysioNet 2019 data absent at {pdata.PHYSIONET_DIR} (../shared/data missing)"
    if os.environ.get("CI") == "true":
        pytest.fail(msg)
    pytest.skip(msg)


def spec_for(codes: tuple[str, ...]) -> FeatureSpec:
    rng = np.random.default_rng(0)
    return FeatureSpec(
        codes=codes,
        mean=tuple(float(x) for x in rng.uniform(-50, 100, len(codes))),
        std=tuple(float(x) for x in rng.uniform(0.5, 30, len(codes))),
    )


def test_stream_equals_vectorised_on_real_stays() -> None:
    root = data_dir()
    manifest = [ln.split("\t") for ln in (root.parent / "MANIFEST.tsv").read_text().splitlines()]
    septic = [root / r[0] for r in manifest[1:] if r[-1] == "1"]
    # 24 stays: the first 12 files and 12 septic ones spread over the set (long stays)
    picked = pdata.stay_files(root)[:12] + septic[::28][:12]
    spec = spec_for(CODES)
    n_rows = 0
    for path in picked:
        events, labels = pdata.stay_events(path, stay_start=T0)
        matrix = pdata.hourly_matrix([e for r in events for e in r], T0, len(labels), CODES)
        offline = windows_from_hourly(matrix, np.arange(len(labels)), spec)
        assert offline.shape == (len(labels), WINDOW, spec.n_features)
        assert offline.dtype == np.float32
        state = PatientState()
        for t, row in enumerate(events):
            state.apply(row)
            online = feature_window(state, T0 + timedelta(hours=t), spec)
            np.testing.assert_allclose(online, offline[t], atol=1e-6, rtol=0, err_msg=path.name)
            n_rows += 1
    assert len(picked) >= 20
    assert n_rows > 500


def test_stream_state_with_future_events_and_json_round_trip_still_equal() -> None:
    path = pdata.stay_files(data_dir())[3]
    events, labels = pdata.stay_events(path, stay_start=T0)
    matrix = pdata.hourly_matrix([e for r in events for e in r], T0, len(labels), CODES)
    spec = spec_for(CODES)
    offline = windows_from_hourly(matrix, np.arange(len(labels)), spec)
    state = PatientState()
    state.apply(reversed([e for r in events for e in r]))  # the whole stay, out of order
    state = PatientState.from_json(state.to_json())
    for t in range(len(labels)):
        online = feature_window(state, T0 + timedelta(hours=t), spec)
        np.testing.assert_allclose(online, offline[t], atol=1e-6, rtol=0)


def hr(hours: float, value: float) -> ClinicalEvent:
    return ClinicalEvent(
        patient="p", time=T0 + timedelta(hours=hours), code="heart_rate", kind="vital", value=value
    )


def test_layout_bins_carry_forward_staleness() -> None:
    spec = FeatureSpec(codes=("heart_rate", "lactate"), mean=(80.0, 2.0), std=(10.0, 1.0))
    c = 2
    st = PatientState()
    st.apply([hr(0.5, 90.0), hr(0.9, 100.0), hr(3.0, 70.0), hr(10.5, 500.0)])  # 10.5 h: future
    as_of = T0 + timedelta(hours=3)
    w = feature_window(st, as_of, spec)
    assert w.shape == (WINDOW, 3 * c + 1)
    last, prev, prev2, prev3 = w[-1], w[-2], w[-3], w[-4]
    # bin 0 = (2h, 3h] holds the 70 at exactly 3 h
    assert last[0] == pytest.approx(-1.0)
    assert last[c] == 1.0
    assert last[2 * c] == 0.0
    # bins 1 (1h,2h] and 2 (0h,1h]: bin 2 holds 90 then 100 -> last value 100
    assert prev3[0] == 0.0  # bin 3 (-1h, 0h]: nothing yet
    assert prev3[c] == 0.0
    assert prev3[2 * c] == 1.0
    assert prev2[0] == pytest.approx(2.0)
    assert prev2[c] == 1.0
    assert prev2[2 * c] == pytest.approx(0.1 / LAST_CAP_HOURS, abs=1e-6)
    assert prev[0] == pytest.approx(2.0)  # carried forward
    assert prev[c] == 0.0
    assert prev[2 * c] == pytest.approx(1.1 / LAST_CAP_HOURS, abs=1e-6)
    # lactate never measured
    assert (w[:, 1] == 0).all()
    assert (w[:, c + 1] == 0).all()
    assert (w[:, 2 * c + 1] == 1).all()
    # stay hours: 2.5 h since first observation at the last bin, 0 before it
    assert last[3 * c] == pytest.approx(2.5 / 336, abs=1e-7)
    assert prev3[3 * c] == 0.0


def test_clipping_and_empty_state() -> None:
    spec = FeatureSpec(codes=("heart_rate",), mean=(80.0,), std=(1.0,))
    st = PatientState()
    st.apply([hr(0, 1000.0)])
    w = feature_window(st, T0, spec)
    assert w[-1, 0] == 5.0
    empty = feature_window(PatientState(), T0, spec)
    np.testing.assert_array_equal(empty[:, 0:2], 0.0)
    np.testing.assert_array_equal(empty[:, 2], 1.0)
    np.testing.assert_array_equal(empty[:, 3], 0.0)


def test_prune_does_not_change_window() -> None:
    spec = FeatureSpec(codes=("heart_rate",), mean=(80.0,), std=(10.0,))
    st = PatientState()
    st.apply([hr(h, 60.0 + h) for h in range(0, 200, 7)])
    as_of = T0 + timedelta(hours=200)
    before = feature_window(st, as_of, spec)
    st.prune(as_of, keep_hours=WINDOW + 12)
    np.testing.assert_array_equal(feature_window(st, as_of, spec), before)


def test_windows_from_hourly_validates() -> None:
    spec = FeatureSpec(codes=("heart_rate",), mean=(80.0,), std=(10.0,))
    with pytest.raises(ValueError, match="columns"):
        windows_from_hourly(np.zeros((3, 2)), [0], spec)
    with pytest.raises(IndexError):
        windows_from_hourly(np.zeros((3, 1)), [3], spec)
    out = windows_from_hourly(np.full((0, 1), np.nan), np.zeros(0, dtype=int), spec)
    assert out.shape == (0, WINDOW, 4)


def test_feature_spec_round_trip(tmp_path: Path) -> None:
    spec = spec_for(CODES)
    spec.save(tmp_path / "s.json")
    assert FeatureSpec.load(tmp_path / "s.json") == spec
    assert len(spec.feature_names()) == spec.n_features == 3 * len(CODES) + 1
    with pytest.raises(ValueError, match="std"):
        FeatureSpec(codes=("a",), mean=(0.0,), std=(0.0,))


def test_psv_codes_match_the_fhir_mapping() -> None:
    from fhir.physionet import column_map

    assert dict(column_map()) == pdata.PSV_CODES


def ctx_spec() -> FeatureSpec:
    base = spec_for(CODES)
    return FeatureSpec(base.codes, base.mean, base.std, context=True)


def test_context_through_the_edge_equals_training_on_real_stays() -> None:
    """Age, sex and the admissions, sent by replay as a Patient and an Encounter before the
    first Observation and parsed by the edge, give the stream the same context columns
    that training computes from the same rows (pdata.stay_context)."""
    from fhir.physionet import read_psv
    from inference.scoring.envelope import normalise
    from streams.sources import psv_messages

    root = data_dir()
    spec = ctx_spec()
    c = len(CODES)
    seen_known = 0
    for path in pdata.stay_files(root)[:8]:
        rows = read_psv(path.read_text())
        matrix, labels, context = pdata.stay_data(path, CODES, T0)
        offline = windows_from_hourly(matrix, np.arange(len(labels)), spec, context, T0.timestamp())
        by_hour = {m.hour: m for m in psv_messages(path, b"k" * 32, T0, rows)}
        state = PatientState()
        for t in range(len(labels)):
            msg = by_hour.get(t)
            if msg is not None:
                for env in normalise(msg.value, source="s", inbound_ts_ms=None).envelopes:
                    state.apply(env.events)
            online = feature_window(state, T0 + timedelta(hours=t), spec)
            np.testing.assert_allclose(online, offline[t], atol=1e-6, rtol=0, err_msg=path.name)
        last = offline[-1, -1, 3 * c + 1 :]
        seen_known += int(last[1] == 1.0 and last[3] == 1.0 and last[7] == 1.0)
        age = float(rows[0]["Age"] or 0)
        assert last[0] == pytest.approx(int(age) / 100, abs=1e-6), path.name
    assert seen_known == 8  # every one of these stays has age, sex and an ICU start


def test_missing_context_is_marked_unknown_and_still_scores() -> None:
    spec = ctx_spec()
    c = len(CODES)
    state = PatientState()
    state.apply([hr(0, 80.0), hr(1, 95.0)])
    w = feature_window(state, T0 + timedelta(hours=1), spec)
    assert w.shape == (WINDOW, spec.n_features) and np.isfinite(w).all()
    assert (w[:, 3 * c + 1 :] == 0.0).all()  # all unknown: values and known flags 0
    # a Patient arriving later fills in age and sex for the next window
    state.apply(
        [
            ClinicalEvent(
                patient="p", time=T0, code="sex", kind="demographic", value_code="female"
            ),
            ClinicalEvent(
                patient="p", time=T0, code="birth_year", kind="demographic", value=1961.0
            ),
        ]
    )
    w = feature_window(state, T0 + timedelta(hours=1), spec)
    assert w[-1, 3 * c + 1 : 3 * c + 5].tolist() == pytest.approx([0.65, 1.0, 1.0, 1.0])
    assert w[-1, 3 * c + 5 :].tolist() == [0.0, 0.0, 0.0, 0.0]  # no admission known


def test_context_spec_round_trips_and_v1_specs_stay_as_they_were(tmp_path: Path) -> None:
    spec = ctx_spec()
    spec.save(tmp_path / "s.json")
    back = FeatureSpec.load(tmp_path / "s.json")
    assert back == spec and back.n_features == 3 * len(CODES) + 9
    assert back.feature_names()[-1] == "context:icu_known"
    assert "context" not in spec_for(CODES).to_dict()
