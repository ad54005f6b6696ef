"""Feature set 2 of the ensemble's gradient boosting: the numpy definition against a plain
direct computation, the torch twin (scripted, as served) against numpy bit for bit on
random and real windows, bands, names, and shape errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from inference import physionet_data as pdata
from inference.features import WINDOW, default_spec, windows_from_hourly
from inference.window_features import (
    VITAL_CODES,
    WindowFeatures,
    bank_window_features,
    feature_names,
    lab_mask,
    n_window_features,
    window_features,
)

CODES = ("heart_rate", "spo2", "lactate", "wbc", "creatinine")
C = len(CODES)
F = 3 * C + 1


def _windows(n: int, seed: int = 0, c: int = C) -> np.ndarray[Any, Any]:
    """Random windows with the real layout's ranges: values in [-5, 5], 0/1 masks,
    staleness in [0, 1] with some 1s (never measured), stay hours in [0, 1]."""
    rng = np.random.default_rng(seed)
    w = np.empty((n, WINDOW, 3 * c + 1), np.float32)
    w[:, :, :c] = np.clip(rng.normal(scale=2.0, size=(n, WINDOW, c)), -5, 5)
    w[:, :, c : 2 * c] = rng.random((n, WINDOW, c)) < 0.3
    stale = rng.random((n, WINDOW, c))
    stale[rng.random((n, WINDOW, c)) < 0.2] = 1.0
    w[:, :, 2 * c : 3 * c] = stale
    w[:, :, 3 * c] = rng.random((n, 1))
    return w


def _torch_features(w: np.ndarray[Any, Any], codes: tuple[str, ...] = CODES) -> Any:
    module = torch.jit.script(WindowFeatures(len(codes), lab_mask(codes)))
    with torch.inference_mode():
        return module(torch.from_numpy(np.ascontiguousarray(w))).numpy()


def _columns(codes: tuple[str, ...]) -> dict[str, Any]:
    """Each named block's columns, from the feature names (so the layout is checked
    through the names, not restated): a slice for a per-code block, an index for a
    single feature."""
    names = feature_names(codes)
    blocks: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        key = ":".join(name.split(":")[:2]) if name.count(":") >= 2 else name
        blocks.setdefault(key, []).append(i)
    return {k: slice(v[0], v[-1] + 1) if len(v) > 1 else v[0] for k, v in blocks.items()}


def test_names_match_the_width() -> None:
    assert len(feature_names(CODES)) == n_window_features(C)
    assert len(set(feature_names(CODES))) == n_window_features(C)
    assert window_features(_windows(3), C, lab_mask(CODES)).shape == (3, n_window_features(C))


def test_lab_mask_marks_labs() -> None:
    assert lab_mask(CODES).tolist() == [0.0, 0.0, 1.0, 1.0, 1.0]
    spec = default_spec()
    assert int(lab_mask(spec.codes).sum()) == len(spec.codes) - len(VITAL_CODES)


def test_features_equal_a_direct_computation() -> None:
    w = _windows(40, seed=1)
    got = window_features(w, C, lab_mask(CODES))
    col = _columns(CODES)
    v, m, s = w[:, :, :C], w[:, :, C : 2 * C], w[:, :, 2 * C : 3 * C]
    np.testing.assert_array_equal(got[:, : 3 * C + 1], w[:, -1])
    for h in (48, 24, 6):
        np.testing.assert_allclose(got[:, col[f"mean{h}:value"]], v[:, -h:].mean(1), atol=1e-6)
        np.testing.assert_allclose(got[:, col[f"mean{h}:measured"]], m[:, -h:].mean(1), atol=1e-6)
    np.testing.assert_allclose(got[:, col["mean12:measured"]], m[:, -12:].mean(1), atol=1e-6)
    for h in (6, 12, 24):
        np.testing.assert_array_equal(got[:, col[f"delta{h}:value"]], v[:, -1] - v[:, -1 - h])
    np.testing.assert_array_equal(got[:, col["min24:value"]], v[:, -24:].min(1))
    np.testing.assert_array_equal(got[:, col["max24:value"]], v[:, -24:].max(1))
    np.testing.assert_array_equal(got[:, col["min48:value"]], v.min(1))
    np.testing.assert_array_equal(got[:, col["max48:value"]], v.max(1))
    np.testing.assert_allclose(
        got[:, col["std24:value"]], v[:, -24:].astype(np.float64).std(1), atol=1e-6
    )
    vit, lab = m[:, :, :2].sum(2), m[:, :, 2:].sum(2)
    for h in (6, 24, 48):
        np.testing.assert_array_equal(got[:, col[f"count{h}:vitals"]], vit[:, -h:].sum(1))
        np.testing.assert_array_equal(got[:, col[f"count{h}:labs"]], lab[:, -h:].sum(1))
    np.testing.assert_array_equal(got[:, col["newest_lab_staleness"]], s[:, -1, 2:].min(1))
    np.testing.assert_array_equal(got[:, col["codes_measured"]], (s[:, -1] < 1).sum(1))


def test_features_stay_in_their_bands() -> None:
    w = _windows(200, seed=2)
    got = window_features(w, C, lab_mask(CODES))
    col = _columns(CODES)
    for k in ("mean48:measured", "mean24:measured", "mean6:measured", "mean12:measured"):
        assert ((got[:, col[k]] >= 0) & (got[:, col[k]] <= 1)).all()
    for k in ("mean48:value", "min24:value", "max48:value"):
        assert (np.abs(got[:, col[k]]) <= 5).all()
    assert (got[:, col["min48:value"]] <= got[:, col["min24:value"]]).all()
    assert (got[:, col["min24:value"]] <= got[:, :C]).all()
    assert (got[:, :C] <= got[:, col["max24:value"]]).all()
    assert (got[:, col["max24:value"]] <= got[:, col["max48:value"]]).all()
    assert (got[:, col["std24:value"]] >= 0).all() and (got[:, col["std24:value"]] <= 5).all()
    assert (got[:, col["count48:vitals"]] <= 48 * 2).all()
    assert (got[:, col["count6:labs"]] <= got[:, col["count24:labs"]]).all()
    assert (got[:, col["count24:labs"]] <= got[:, col["count48:labs"]]).all()
    assert ((got[:, col["codes_measured"]] >= 0) & (got[:, col["codes_measured"]] <= C)).all()


def test_torch_twin_is_bit_identical_on_random_windows_and_batch_independent() -> None:
    w = _windows(300, seed=3)
    want = window_features(w, C, lab_mask(CODES))
    got = _torch_features(w)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, want.astype(np.float64))
    np.testing.assert_array_equal(_torch_features(w[7:8]), got[7:8])
    np.testing.assert_array_equal(window_features(w[7:8], C, lab_mask(CODES)), want[7:8])


def test_torch_twin_handles_codes_without_labs() -> None:
    codes = ("heart_rate", "spo2")
    w = _windows(20, seed=4, c=2)
    want = window_features(w, 2, lab_mask(codes))
    np.testing.assert_array_equal(_torch_features(w, codes), want.astype(np.float64))
    assert (want[:, _columns(codes)["newest_lab_staleness"]] == 1.0).all()


def test_torch_twin_is_bit_identical_on_real_windows(physionet_dir: Path) -> None:
    spec = default_spec()
    windows = []
    for path in pdata.stay_files(physionet_dir, 12):
        matrix, _ = pdata.stay_matrix(path, spec.codes)
        windows.append(windows_from_hourly(matrix, np.arange(matrix.shape[0]), spec))
    w = np.concatenate(windows)
    want = window_features(w, len(spec.codes), lab_mask(spec.codes))
    np.testing.assert_array_equal(_torch_features(w, spec.codes), want.astype(np.float64))
    # the bank version gathers the same windows
    rows = np.concatenate(list(w), axis=0)
    starts = np.arange(w.shape[0], dtype=np.int64) * WINDOW
    got = bank_window_features(rows, starts, len(spec.codes), lab_mask(spec.codes), chunk=100)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("shape", [(2, 47, F), (2, WINDOW, F - 1), (WINDOW, F)])
def test_wrong_shapes_are_rejected(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="windows"):
        window_features(np.zeros(shape, np.float32), C, lab_mask(CODES))


def test_wrong_lab_mask_is_rejected() -> None:
    with pytest.raises(ValueError, match="is_lab"):
        window_features(_windows(1), C, [1.0])
    with pytest.raises(ValueError, match="is_lab"):
        WindowFeatures(C, [1.0])
