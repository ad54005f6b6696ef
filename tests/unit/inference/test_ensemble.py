"""The ensemble risk model: GBM window features, stacking, the TorchScript export of the
trees, loading it with LocalTorchModel, and serving it with the unchanged Triton backend."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.ensemble import HistGradientBoostingClassifier

from inference import ensemble as ens
from inference.calibration import clipped_logit
from inference.ensemble import (
    build,
    check_export,
    export_ensemble,
    feature_module,
    numpy_features,
    reserialise,
    saved_trees,
    tree_tensors,
)
from inference.evaluate import (
    Stacking,
    early_labels,
    fit_gbm,
    fit_stacking,
    gbm_features,
    window_gbm_features,
)
from inference.features import FEATURE_SPEC_FILE, WINDOW, default_spec
from inference.runtime import LocalTorchModel
from inference.train import triton_config
from inference.window_features import lab_mask, window_features

ROOT = Path(__file__).resolve().parents[3]
CODES = ("heart_rate", "spo2", "lactate", "wbc")
C = len(CODES)
F = 3 * C + 1


class LastHourLogistic(torch.nn.Module):
    """A stand-in for the transformer: sigmoid of a linear map of the window's last hour."""

    def __init__(self, n_features: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(n_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.lin(x[:, -1, :]))


def _traced(n_features: int) -> torch.jit.ScriptModule:
    m = LastHourLogistic(n_features).eval()
    with torch.no_grad():
        traced: torch.jit.ScriptModule = torch.jit.trace(  # type: ignore[no-untyped-call]
            m, torch.randn(2, WINDOW, n_features)
        )
    return traced


def _windows(n: int, n_features: int, seed: int = 0) -> np.ndarray[Any, Any]:
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(n, WINDOW, n_features)).astype(np.float32)
    w[:, :, C : 2 * C] = rng.random((n, WINDOW, C)) < 0.3  # measured-masks are 0/1
    return w


def _fitted_gbm(
    x: np.ndarray[Any, Any], seed: int = 0, feature_set: int = 1
) -> HistGradientBoostingClassifier:
    f = numpy_features(feature_set, x, CODES)
    y = f[:, 0] + 0.5 * f[:, F] + np.random.default_rng(seed).normal(size=len(f)) > 0.8
    return HistGradientBoostingClassifier(max_iter=30, max_leaf_nodes=15, random_state=seed).fit(
        f, y.astype(int)
    )


def test_window_features_match_a_direct_computation_and_the_bank_version() -> None:
    w = _windows(5, F)
    got = window_gbm_features(w, C)
    assert got.shape == (5, F + 5 * C)
    np.testing.assert_array_equal(got[:, :F], w[:, -1])
    np.testing.assert_allclose(got[:, F : F + 2 * C], w[:, :, : 2 * C].mean(1), atol=1e-6)
    np.testing.assert_allclose(got[:, F + 2 * C : F + 4 * C], w[:, -6:, : 2 * C].mean(1), atol=1e-6)
    np.testing.assert_array_equal(got[:, F + 4 * C :], w[:, -1, :C] - w[:, -7, :C])
    # one window alone gives the same numbers as in a batch (Triton batches vary)
    np.testing.assert_array_equal(window_gbm_features(w[2:3], C), got[2:3])
    # the bank version gathers the same windows
    rows = np.concatenate(list(w), axis=0)
    starts = np.arange(5, dtype=np.int64) * WINDOW
    np.testing.assert_array_equal(gbm_features(rows, starts, C, chunk=2), got)


def test_early_labels_move_each_septic_stays_positives_earlier() -> None:
    labels = np.array([0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 1], np.int8)
    stay_of = np.array([0, 0, 0, 0, 0, 1, 1, 2, 2, 2, 2], np.int64)
    got = early_labels(labels, stay_of, 2)
    assert got.tolist() == [0, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1]
    assert early_labels(labels, stay_of, 0).tolist() == labels.tolist()
    assert early_labels(labels, stay_of, 50)[:5].tolist() == [1] * 5
    with pytest.raises(ValueError, match="hours"):
        early_labels(labels, stay_of, -1)


def test_fit_gbm_takes_parameter_overrides_and_stays_seeded() -> None:
    n_stays, hours = 12, 30
    rng = np.random.default_rng(4)
    rows = rng.normal(size=(n_stays * (WINDOW - 1 + hours), F)).astype(np.float32)
    starts = np.concatenate(
        [i * (WINDOW - 1 + hours) + np.arange(hours) for i in range(n_stays)]
    ).astype(np.int64)
    labels = (rows[starts + WINDOW - 1, 0] > 0.5).astype(np.int8)
    stay_of = np.repeat(np.arange(n_stays), hours).astype(np.int64)
    capped = fit_gbm(rows, starts, labels, CODES, 0, 1, stay_of, {"max_iter": 3})
    assert capped.max_iter == 3 and capped.n_iter_ <= 3 and capped.learning_rate == 0.05
    again = fit_gbm(rows, starts, labels, CODES, 0, 1, stay_of, {"max_iter": 3})
    x = gbm_features(rows, starts, C)
    np.testing.assert_array_equal(capped.predict_proba(x), again.predict_proba(x))


def test_window_features_reject_short_windows() -> None:
    with pytest.raises(ValueError, match="windows"):
        window_gbm_features(np.zeros((1, 5, F), np.float32), C)


def test_stacking_fit_recovers_weights_and_predicts_in_0_1() -> None:
    rng = np.random.default_rng(3)
    n = 20000
    a, b = rng.normal(size=n), rng.normal(size=n)
    z = -3.0 + 1.5 * a + 0.5 * b
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(np.int8)
    pt, pg = 1 / (1 + np.exp(-a)), 1 / (1 + np.exp(-b))
    stay_of = np.repeat(np.arange(n // 40), 40).astype(np.int64)
    s = fit_stacking(y, stay_of, pt, pg)
    assert s.w_transformer == pytest.approx(1.5, abs=0.15)
    assert s.w_gbm == pytest.approx(0.5, abs=0.15)
    assert s.intercept == pytest.approx(-3.0, abs=0.2)
    p = s.predict(pt, pg)
    assert ((p > 0) & (p < 1)).all() and 0 < s.threshold < 1
    # saturated inputs stay finite
    assert np.isfinite(clipped_logit(np.array([0.0, 1.0]))).all()


def test_exported_trees_reproduce_sklearn_including_missing_values() -> None:
    x = _windows(400, F)
    x[::7, :, 0] = np.nan  # a NaN value makes its summaries NaN: the missing-value side
    gbm = _fitted_gbm(x)
    trees, _, depth = tree_tensors(gbm)
    assert depth >= 1 and trees["feature"].shape == trees["threshold"].shape
    stacking = Stacking(-0.5, 0.8, 1.2, 0.3)
    module = export_ensemble(_traced(F), gbm, stacking, CODES, feature_set=1)
    with torch.inference_mode():
        got = module.gbm_probability(torch.from_numpy(x)).numpy()
    want = gbm.predict_proba(window_gbm_features(x, C))[:, 1]
    np.testing.assert_allclose(got, want, atol=1e-12, rtol=0)


def test_exported_trees_over_feature_set_2_reproduce_sklearn() -> None:
    x = _windows(400, F, seed=4)
    x[::9, :, 1] = np.nan  # NaN summaries take the trees' missing-value side here too
    gbm = _fitted_gbm(x, feature_set=2)
    module = export_ensemble(_traced(F), gbm, Stacking(-0.5, 0.8, 1.2, 0.3), CODES, 2)
    with torch.inference_mode():
        feats = module.gbm_features(torch.from_numpy(x)).numpy()
        got = module.gbm_probability(torch.from_numpy(x)).numpy()
    want_f = window_features(x, C, lab_mask(CODES))
    np.testing.assert_array_equal(feats, want_f.astype(np.float64))
    np.testing.assert_allclose(got, gbm.predict_proba(want_f)[:, 1], atol=1e-12, rtol=0)


def test_unknown_feature_set_is_rejected() -> None:
    with pytest.raises(ValueError, match="feature set"):
        feature_module(9, CODES)
    with pytest.raises(ValueError, match="feature set"):
        numpy_features(9, _windows(1, F), CODES)


@pytest.mark.parametrize("feature_set", [1, 2])
def test_exported_ensemble_matches_the_reference_and_batch_size(feature_set: int) -> None:
    x = _windows(300, F, seed=1)
    gbm = _fitted_gbm(x, feature_set=feature_set)
    transformer = _traced(F)
    stacking = Stacking(-0.5, 0.8, 1.2, 0.3)
    module = export_ensemble(transformer, gbm, stacking, CODES, feature_set)
    diffs = check_export(module, transformer, gbm, stacking, x, CODES, feature_set)
    assert max(diffs.values()) < 1e-6
    with torch.inference_mode():
        full = module(torch.from_numpy(x))
        one = module(torch.from_numpy(x[5:6]))
    assert full.shape == (300, 1) and full.dtype == torch.float32
    torch.testing.assert_close(one, full[5:6], atol=1e-6, rtol=0)
    # a wrong reference is caught
    with pytest.raises(RuntimeError, match="differs"):
        check_export(module, transformer, gbm, Stacking(0.5, 0.8, 1.2, 0.3), x, CODES, feature_set)


def _ensemble_dir(tmp_path: Path) -> tuple[Path, Stacking, Any, torch.jit.ScriptModule]:
    """A model folder whose version 2 is an ensemble over the real feature layout
    (gradient boosting on feature set 2)."""
    spec = default_spec()
    nf = spec.n_features
    rng = np.random.default_rng(5)
    x = rng.normal(size=(300, WINDOW, nf)).astype(np.float32)
    f = window_features(x, len(spec.codes), lab_mask(spec.codes))
    y = (f[:, 0] + f[:, nf] + rng.normal(size=300) > 0.5).astype(int)
    gbm = HistGradientBoostingClassifier(max_iter=20, random_state=0).fit(f, y)
    transformer = _traced(nf)
    stacking = Stacking(-1.0, 0.9, 1.1, 0.2)
    model_dir = tmp_path / "sepsis_transformer"
    vdir = model_dir / "2"
    vdir.mkdir(parents=True)
    export_ensemble(transformer, gbm, stacking, spec.codes, 2).save(str(vdir / "model.pt"))
    spec.save(vdir / FEATURE_SPEC_FILE)
    shutil.copyfile(ROOT / "inference" / "triton_python_model.py", vdir / "model.py")
    (model_dir / "config.pbtxt").write_text(triton_config(nf))
    card = {"name": "sepsis_transformer", "version": 2, "alert_threshold": 0.2, "ensemble": {}}
    (model_dir / "model_card.json").write_text(json.dumps(card))
    return model_dir, stacking, gbm, transformer


def test_local_model_loads_the_ensemble_and_its_components(tmp_path: Path) -> None:
    model_dir, stacking, gbm, transformer = _ensemble_dir(tmp_path)
    model = LocalTorchModel.from_dir(model_dir)
    assert model.version == 2 and model.component_names() == ["transformer", "gbm"]
    x = np.random.default_rng(9).normal(size=(70, WINDOW, model.spec.n_features)).astype(np.float32)
    parts = model.components(x)
    with torch.inference_mode():
        pt = transformer(torch.from_numpy(x))[:, 0].numpy().astype(np.float64)
    pg = gbm.predict_proba(window_features(x, len(model.spec.codes), lab_mask(model.spec.codes)))[
        :, 1
    ]
    np.testing.assert_allclose(parts["transformer"], pt, atol=1e-7, rtol=0)
    np.testing.assert_allclose(parts["gbm"], pg, atol=1e-12, rtol=0)
    np.testing.assert_allclose(model.predict(x), stacking.predict(pt, pg), atol=1e-6, rtol=0)


def test_a_single_model_has_no_components(tmp_path: Path) -> None:
    # A plain transformer alone: a folder without an ensemble's version.
    spec = default_spec()
    single = tmp_path / "sepsis_transformer"
    (single / "1").mkdir(parents=True)
    _traced(spec.n_features).save(str(single / "1" / "model.pt"))
    spec.save(single / "1" / FEATURE_SPEC_FILE)
    card = {"name": "sepsis_transformer", "version": 1, "alert_threshold": 0.3}
    (single / "model_card.json").write_text(json.dumps(card))
    model = LocalTorchModel.from_dir(single)
    assert model.version == 1
    assert model.component_names() == []
    assert model.components(np.zeros((2, WINDOW, model.spec.n_features), np.float32)) == {}


class _Tensor:
    def __init__(self, name: str, array: np.ndarray[Any, Any]) -> None:
        self.name, self.array = name, array

    def as_numpy(self) -> np.ndarray[Any, Any]:
        return self.array


class _Response:
    def __init__(self, output_tensors: list[_Tensor] | None = None, error: Any = None) -> None:
        self.output_tensors, self.error = output_tensors or [], error


def _backend(monkeypatch: pytest.MonkeyPatch, model_py: Path) -> Any:
    """The Triton backend file, imported with a stand-in ``triton_python_backend_utils``."""
    fake = types.ModuleType("triton_python_backend_utils")
    fake.Tensor = _Tensor  # type: ignore[attr-defined]
    fake.InferenceResponse = _Response  # type: ignore[attr-defined]
    fake.TritonError = str  # type: ignore[attr-defined]
    fake.get_input_tensor_by_name = lambda req, name: req[name]  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake)
    spec = importlib.util.spec_from_file_location("ww_backend_under_test", model_py)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_triton_backend_serves_the_ensemble_like_the_local_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_dir, *_ = _ensemble_dir(tmp_path)
    backend = _backend(monkeypatch, model_dir / "2" / "model.py").TritonPythonModel()
    nf = default_spec().n_features
    config = {"input": [{"name": "FEATURES", "dims": [WINDOW, nf]}]}
    backend.initialize(
        {
            "model_repository": str(model_dir),
            "model_version": "2",
            "model_config": json.dumps(config),
        }
    )
    x = np.random.default_rng(11).normal(size=(100, WINDOW, nf)).astype(np.float32)
    # uneven requests, one execute call: the backend concatenates them
    sizes = [1, 37, 62]
    reqs, start = [], 0
    for n in sizes:
        reqs.append({"FEATURES": _Tensor("FEATURES", x[start : start + n])})
        start += n
    responses = backend.execute(reqs)
    served = np.concatenate([r.output_tensors[0].as_numpy()[:, 0] for r in responses])
    local = LocalTorchModel.from_dir(model_dir).predict(x)
    np.testing.assert_allclose(served, local, atol=1e-5, rtol=0)


@pytest.mark.parametrize("bad", [np.zeros((2, 5), np.float32)])
def test_triton_backend_rejects_a_wrong_shape(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: np.ndarray[Any, Any]
) -> None:
    model_dir, *_ = _ensemble_dir(tmp_path)
    backend = _backend(monkeypatch, model_dir / "2" / "model.py").TritonPythonModel()
    nf = default_spec().n_features
    backend.initialize(
        {
            "model_repository": str(model_dir),
            "model_version": "2",
            "model_config": json.dumps({"input": [{"dims": [WINDOW, nf]}]}),
        }
    )
    (resp,) = backend.execute([{"FEATURES": _Tensor("FEATURES", bad)}])
    assert resp.error is not None and not resp.output_tensors


def test_build_on_synthetic_stays_writes_a_servable_version(tmp_path: Path) -> None:
    from tests.unit.inference.test_risk_model import _write_synthetic_stays

    data = tmp_path / "psv"
    data.mkdir()
    _write_synthetic_stays(data, 60)
    base, *_ = _ensemble_dir(tmp_path / "base")
    # the base must be a plain transformer: version 1 with a plain TorchScript file
    v1 = base / "1"
    v1.mkdir()
    spec = default_spec()
    _traced(spec.n_features).save(str(v1 / "model.pt"))
    spec.save(v1 / FEATURE_SPEC_FILE)
    shutil.copyfile(base / "2" / "model.py", v1 / "model.py")
    shutil.rmtree(base / "2")
    card = {"name": "sepsis_transformer", "version": 1, "alert_threshold": 0.3}
    card |= {"split": {"seed": 2019}, "model": {"platt": {"a": 1.0, "b": 0.0}}}
    (base / "model_card.json").write_text(json.dumps(card))

    out = tmp_path / "out"
    got = build(base, data, out, version=2, seed=0, threads=1, feature_set=2)
    assert got["version"] == 2 and got["ensemble"]["gbm"]["fitted_on"] == "train"
    assert got["ensemble"]["stacking"]["threshold"] == got["alert_threshold"]
    assert max(got["ensemble"]["export_check_max_abs_diff"].values()) <= 1e-5
    # feature set 2's numpy and torch features are identical on real windows
    assert got["ensemble"]["gbm"]["feature_set"] == 2
    assert got["ensemble"]["export_check_max_abs_diff"]["features"] == 0.0
    model = LocalTorchModel.from_dir(out / "sepsis_transformer")
    assert model.version == 2 and model.component_names() == ["transformer", "gbm"]
    assert (out / "sepsis_transformer" / "2" / "model.py").read_text() == (
        ROOT / "inference" / "triton_python_model.py"
    ).read_text()
    assert (out / "artifacts" / "gbm.joblib").stat().st_size > 0
    with pytest.raises(ValueError, match="already an ensemble"):
        build(out / "sepsis_transformer", data, tmp_path / "again")


def test_report_names_the_ensemble_and_its_weights() -> None:
    from inference.evaluate import ENSEMBLE_NAME, GBM_NAME, render_markdown

    def m(auroc: float, utility: float) -> dict[str, Any]:
        return {
            "auroc": auroc,
            "auroc_ci95": (auroc - 0.05, auroc + 0.05),
            "auprc": 0.1,
            "auprc_ci95": (0.05, 0.15),
            "threshold": 0.02,
            "utility": utility,
            "alerts_per_patient_day": 0.5,
            "alarm_hours_fraction": 0.1,
        }

    report = {
        "model": {"name": "sepsis_transformer", "version": 1},
        "split": "validation",
        "split_seed": 2019,
        "n_patients": 10,
        "n_rows": 100,
        "positive_rows": 5,
        "septic_patients": 2,
        "patient_days": 4.0,
        "bootstrap": {"resamples": 20},
        "gbm": {"seed": 0, "n_iter": 300},
        "ensemble": {"intercept": 0.25, "w_transformer": 0.5, "w_gbm": 0.75, "threshold": 0.02},
        "methods": {
            "sepsis_transformer v1": m(0.84, 0.33),
            GBM_NAME: m(0.83, 0.41),
            ENSEMBLE_NAME: m(0.86, 0.36),
        },
        "targets": {"auroc": 0.85, "utility": 0.40},
    }
    md = render_markdown(report)
    assert f"| {ENSEMBLE_NAME} | 0.860 (0.810-0.910)" in md
    assert "Ensemble: AUROC 0.860 (met), utility 0.360 (not met)." in md
    assert "sigmoid(0.2500 + 0.5000 * logit(p_transformer) + 0.7500 * logit(p_gbm))" in md
    assert f"highest utility: **{GBM_NAME}**" in md


def test_reserialise_rewrites_a_saved_ensemble_bit_identically(tmp_path: Path) -> None:
    model_dir, *_ = _ensemble_dir(tmp_path)
    path, out = model_dir / "2" / "model.pt", tmp_path / "again.pt"
    nf = default_spec().n_features
    real = np.random.default_rng(3).normal(size=(70, WINDOW, nf)).astype(np.float32)
    done = reserialise(path, out, nf, real)
    assert done["real_windows"] == 70 and {1, 33, 64, 100} <= set(done["batch_sizes"])
    old, new = torch.jit.load(str(path)), torch.jit.load(str(out))
    x = torch.from_numpy(np.random.default_rng(4).normal(size=(130, WINDOW, nf)).astype(np.float32))
    with torch.inference_mode():
        assert torch.equal(old(x), new(x))
        assert torch.equal(old.gbm_probability(x), new.gbm_probability(x))


def test_reserialise_writes_nothing_when_an_output_would_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_dir, *_ = _ensemble_dir(tmp_path)
    real_trees = ens.saved_trees

    def shifted(module: Any) -> dict[str, torch.Tensor]:
        trees = real_trees(module)
        return trees | {"value": trees["value"] + 0.01}

    monkeypatch.setattr(ens, "saved_trees", shifted)
    out = tmp_path / "again.pt"
    with pytest.raises(RuntimeError, match=r"gbm_probability at batch 1.*not written"):
        reserialise(model_dir / "2" / "model.pt", out, default_spec().n_features)
    assert not out.exists()


def test_saved_trees_reads_both_buffer_layouts() -> None:
    x = _windows(200, F, seed=6)
    gbm = _fitted_gbm(x)
    want, _, _ = tree_tensors(gbm)
    module = export_ensemble(_traced(F), gbm, Stacking(-0.5, 0.8, 1.2, 0.3), CODES, 1)
    got = saved_trees(module)
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    # files saved before 2026-12-02 hold left / right / missing_left as buffers
    legacy = torch.nn.Module()
    for k, v in want.items():
        legacy.register_buffer(k, v)
    got = saved_trees(legacy)
    assert all(torch.equal(got[k], want[k]) for k in want)
    with pytest.raises(ValueError, match="not an ensemble"):
        saved_trees(torch.nn.Module())
