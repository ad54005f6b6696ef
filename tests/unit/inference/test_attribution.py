"""Occlusion attribution: deterministic, sorted, occludes exactly one code's columns."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from inference.attribution import (
    METHOD,
    from_occlusion,
    occluded_codes,
    occlusion,
    occlusion_windows,
)
from inference.bench_model import DEFAULT_DIR as DEFAULT_MODEL_DIR
from inference.features import WINDOW, FeatureSpec
from inference.runtime import LocalTorchModel

CODES = ("heart_rate", "lactate", "spo2", "temperature", "wbc", "platelets", "bun")
SPEC = FeatureSpec(codes=CODES, mean=(0.0,) * len(CODES), std=(1.0,) * len(CODES))
WEIGHTS = np.array([0.3, 0.5, -0.2, 0.1, 0.25, 0.05, 0.0])


class LinearModel:
    """risk = sigmoid(w . last-row values): known contributions, no torch."""

    calls = 0

    def predict(self, windows: npt.ArrayLike) -> npt.NDArray[np.float32]:
        LinearModel.calls += 1
        x = np.asarray(windows, dtype=np.float64)
        z = x[:, -1, : len(CODES)] @ WEIGHTS
        out: npt.NDArray[np.float32] = (1 / (1 + np.exp(-z))).astype(np.float32)
        return out


def window() -> npt.NDArray[np.float32]:
    w = np.zeros((WINDOW, SPEC.n_features), np.float32)
    w[:, : len(CODES)] = 1.0
    w[:, len(CODES) : 2 * len(CODES)] = 1.0
    return w


def test_occlusion_windows_blank_one_code_each() -> None:
    w = window()
    batch = occlusion_windows(w, SPEC)
    c = len(CODES)
    assert batch.shape == (1 + c, WINDOW, SPEC.n_features)
    np.testing.assert_array_equal(batch[0], w)
    k = CODES.index("lactate")
    occluded = batch[1 + k]
    assert (occluded[:, k] == 0).all() and (occluded[:, c + k] == 0).all()
    assert (occluded[:, 2 * c + k] == 1).all()
    others = [j for j in range(SPEC.n_features) if j not in (k, c + k, 2 * c + k)]
    np.testing.assert_array_equal(occluded[:, others], w[:, others])


def test_top_five_sorted_deterministic_one_batch() -> None:
    LinearModel.calls = 0
    a = occlusion(LinearModel(), window(), SPEC)
    b = occlusion(LinearModel(), window(), SPEC)
    assert LinearModel.calls == 2, "one model call per explanation"
    assert a == b and a.method == METHOD
    top = a.top()
    assert [c.code for c in top] == ["lactate", "heart_rate", "wbc", "temperature", "platelets"]
    values = [c.contribution for c in a.contributions]
    assert values == sorted(values, reverse=True)
    assert a.contributions[-1].code == "spo2" and a.contributions[-1].contribution < 0
    assert top[0].to_dict() == {"feature": "lactate", "contribution": top[0].contribution}


def test_ties_break_by_name() -> None:
    w = np.zeros((WINDOW, SPEC.n_features), np.float32)  # nothing measured: all zero
    att = occlusion(LinearModel(), w, SPEC)
    assert [c.code for c in att.contributions] == sorted(CODES)


def test_wrong_window_shape_raises() -> None:
    with pytest.raises(ValueError, match="features"):
        occlusion(LinearModel(), np.zeros((WINDOW, 5), np.float32), SPEC)


def test_from_occlusion_matches_in_process_occlusion() -> None:
    # The stream sends the occluded windows to the inference server and builds the
    # attribution from its outputs: same result as running the model in-process.
    w = window()
    probs = LinearModel().predict(occlusion_windows(w, SPEC))
    assert from_occlusion(probs, SPEC) == occlusion(LinearModel(), w, SPEC)
    with pytest.raises(ValueError, match="outputs"):
        from_occlusion(probs[:-1], SPEC)


def partly_measured() -> npt.NDArray[np.float32]:
    """heart_rate and spo2 measured every hour, wbc once (carried forward), the rest never:
    value 0, mask 0, staleness 1, as the feature code writes them."""
    c = len(CODES)
    w = np.zeros((WINDOW, SPEC.n_features), np.float32)
    w[:, 2 * c : 3 * c] = 1.0
    for name in ("heart_rate", "spo2"):
        k = CODES.index(name)
        w[:, k], w[:, c + k], w[:, 2 * c + k] = 0.7, 1.0, 0.0
    k = CODES.index("wbc")
    w[-5:, k] = 1.2  # value carried forward after one measurement, mask only once
    w[-5, c + k] = 1.0
    w[-5:, 2 * c + k] = np.linspace(0.0, 0.1, 5)
    return w


def test_never_measured_codes_are_not_run() -> None:
    w = partly_measured()
    codes = occluded_codes(w, SPEC)
    assert [CODES[k] for k in codes] == ["heart_rate", "spo2", "wbc"]
    # Each skipped code's occluded window is the window itself.
    full = occlusion_windows(w, SPEC)
    for k in set(range(len(CODES))) - set(codes):
        np.testing.assert_array_equal(full[1 + k], w)
    assert occlusion_windows(w, SPEC, codes).shape[0] == 1 + len(codes)


class CountingLinear(LinearModel):
    rows = 0

    def predict(self, windows: npt.ArrayLike) -> npt.NDArray[np.float32]:
        CountingLinear.rows += np.asarray(windows).shape[0]
        return super().predict(windows)


def test_skipping_never_measured_codes_changes_nothing() -> None:
    w = partly_measured()
    probs = LinearModel().predict(occlusion_windows(w, SPEC))
    CountingLinear.rows = 0
    att = occlusion(CountingLinear(), w, SPEC)
    assert CountingLinear.rows == 4, "the window and its three measured codes"
    assert att == from_occlusion(probs, SPEC)
    assert {c.code: c.contribution for c in att.contributions}["lactate"] == 0.0
    with pytest.raises(ValueError, match="outputs"):
        from_occlusion(probs[:4], SPEC, occluded_codes(w, SPEC)[:2])


def test_served_model_same_attribution_with_and_without_skipping() -> None:
    # The served TorchScript model on a window where some codes were never measured: the
    # skipped codes' contributions are 0 both ways, the others identical.
    model = LocalTorchModel.from_dir(DEFAULT_MODEL_DIR)
    spec = model.spec
    c = len(spec.codes)
    rng = np.random.default_rng(7)
    w = np.zeros((WINDOW, spec.n_features), np.float32)
    w[:, 2 * c : 3 * c] = 1.0
    measured = rng.choice(c, size=c // 2, replace=False)
    for k in measured:
        w[:, k] = rng.normal(0.0, 1.0, WINDOW)
        w[:, c + k] = rng.random(WINDOW) < 0.5
        w[:, 2 * c + k] = rng.uniform(0.0, 0.5, WINDOW)
    w[:, -1] = np.linspace(0.0, 1.0, WINDOW)
    assert sorted(occluded_codes(w, spec)) == sorted(int(k) for k in measured)
    full = from_occlusion(model.predict(occlusion_windows(w, spec)), spec)
    planned = occlusion(model, w, spec)
    assert planned.risk == pytest.approx(full.risk, abs=1e-6)
    a = {x.code: x.contribution for x in full.contributions}
    b = {x.code: x.contribution for x in planned.contributions}
    assert a == pytest.approx(b, abs=2e-6)
    assert any(v != 0.0 for v in b.values())
