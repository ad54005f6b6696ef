"""Occlusion attribution: deterministic, sorted, occludes exactly one code's columns."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from inference.attribution import METHOD, from_occlusion, occlusion, occlusion_windows
from inference.features import WINDOW, FeatureSpec

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
