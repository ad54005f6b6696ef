"""Model export, LocalTorchModel, a tiny end-to-end training run, and the committed model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from inference import physionet_data as pdata
from inference.errors import ModelError
from inference.features import WINDOW, default_spec, feature_window
from inference.model import ExportedRiskModel, ModelConfig, SepsisTransformer, export_torchscript
from inference.runtime import LocalTorchModel, RiskModel
from inference.state import PatientState
from inference.train import main as train_main

F = 13


def test_export_matches_eager_for_batch_1_and_64(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ExportedRiskModel(SepsisTransformer(ModelConfig(n_features=F)), 1.5, -0.3).eval()
    traced = export_torchscript(model, F)
    traced.save(str(tmp_path / "m.pt"))
    loaded = torch.jit.load(str(tmp_path / "m.pt"))
    for b in (1, 64):
        x = torch.randn(b, WINDOW, F)
        with torch.no_grad():
            want = model(x)
            got = loaded(x)
        assert got.shape == (b, 1)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        assert bool(((got > 0) & (got < 1)).all())


def _write_synthetic_stays(folder: Path, n: int) -> None:
    rng = np.random.default_rng(1)
    header = [*pdata.PSV_CODES, "Age", "Gender", "Unit1", "Unit2", "HospAdmTime", "ICULOS"]
    for i in range(n):
        hours = int(rng.integers(20, 60))
        septic = i % 2 == 0
        onset = int(rng.integers(8, hours - 4)) if septic else hours + 100
        lines = ["|".join([*header, "SepsisLabel"])]
        for h in range(hours):
            late = h >= onset
            vals = []
            for j, _ in enumerate(pdata.PSV_CODES):
                if j < 7 or rng.random() < 0.1:
                    vals.append(f"{rng.normal(80 + (30 if late else 0) * (j == 0), 5):.2f}")
                else:
                    vals.append("NaN")
            vals += ["60", "1", "1", "0", "-1.5", str(h + 1), "1" if late else "0"]
            lines.append("|".join(vals))
        (folder / f"p{i:06d}.psv").write_text("\n".join(lines) + "\n")


def test_train_cli_end_to_end_on_synthetic_stays(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    _write_synthetic_stays(data, 40)
    out = tmp_path / "repo"
    args = ["--data-dir", str(data), "--out-dir", str(out), "--epochs", "2", "--seed", "3"]
    assert train_main(args) == 0
    mdir = out / "sepsis_transformer"
    card = json.loads((mdir / "model_card.json").read_text())
    assert card["version"] == 1
    assert set(card["metrics"]) == {"test", "validation"}
    assert 0.0 <= card["alert_threshold"] <= 1.0
    cfg = (mdir / "config.pbtxt").read_text()
    assert "max_batch_size: 64" in cfg
    assert f"dims: [ {WINDOW}, {3 * 34 + 1} ]" in cfg
    assert (mdir / "1" / "model.py").exists()
    model = LocalTorchModel.from_dir(mdir)
    assert isinstance(model, RiskModel)
    windows = np.random.default_rng(0).normal(size=(70, WINDOW, model.spec.n_features))
    p = model.predict(windows.astype(np.float32))
    assert p.shape == (70,)
    assert p.dtype == np.float32
    assert ((p >= 0) & (p <= 1)).all()
    assert model.predict(windows[0].astype(np.float32)).shape == (1,)
    with pytest.raises(ModelError):
        model.predict(np.zeros((2, WINDOW, 5), np.float32))
    with pytest.raises(ModelError):
        model.predict(np.zeros((2, WINDOW, model.spec.n_features), np.int32))

    # the evaluation report on the same stays (the test split: it has positives)
    from inference.evaluate import evaluate

    report = evaluate(mdir, data, tmp_path / "report", split="test", n_boot=20, progress=False)
    names = list(report["methods"])
    assert names[1:] == [
        "NEWS2 >= 5",
        "qSOFA >= 2",
        "gradient boosting (HistGradientBoosting)",
        "ensemble (transformer + gradient boosting, stacked on test)",
    ]
    for m in report["methods"].values():
        lo, hi = m["auroc_ci95"]
        assert lo <= hi and m["alerts_per_patient_day"] >= 0
    for f in ("report.md", "metrics.json", "roc.png", "precision_recall.png"):
        assert (tmp_path / "report" / f).stat().st_size > 0
    assert (tmp_path / "report" / "calibration.png").exists()
    assert (tmp_path / "report" / "utility_vs_threshold.png").exists()
    assert "| NEWS2 >= 5 |" in (tmp_path / "report" / "report.md").read_text()


def test_split_is_fixed_and_about_70_15_15() -> None:
    stems = [f"p{100001 + i}" for i in range(6000)]
    splits = [pdata.split_of(s, 2019) for s in stems]
    assert splits == [pdata.split_of(s, 2019) for s in stems]
    frac = {k: splits.count(k) / len(splits) for k in ("train", "test", "validation")}
    assert frac["train"] == pytest.approx(0.70, abs=0.03)
    assert frac["test"] == pytest.approx(0.15, abs=0.03)


def test_committed_model_loads_and_scores_a_state() -> None:
    mdir = Path(__file__).resolve().parents[3] / "inference" / "model_repository"
    mdir = mdir / "sepsis_transformer"
    if not (mdir / "model_card.json").exists():
        pytest.skip("no trained model committed yet (python -m inference.train)")
    model = LocalTorchModel.from_dir(mdir)
    assert model.spec == default_spec()
    assert 0.0 < model.alert_threshold < 1.0
    size = sum(f.stat().st_size for f in mdir.rglob("*") if f.is_file())
    assert size < 2_000_000
    w = feature_window(PatientState(), 0.0, model.spec)
    p = model.predict(w)
    assert p.shape == (1,)
    assert 0.0 <= float(p[0]) <= 1.0


def test_pretraining_learns_to_fill_in_hidden_values_and_leaves_the_head(tmp_path: Path) -> None:
    from inference import train as tr

    _write_synthetic_stays(tmp_path, 12)
    stays = tr.load_stays(tmp_path, 2019, None)
    spec = tr.fit_spec(stays, context=True)
    bank = tr.make_bank(stays, spec)
    torch.manual_seed(0)
    net = SepsisTransformer(ModelConfig(n_features=spec.n_features))
    head = {k: v.clone() for k, v in net.head.state_dict().items()}
    encoder = net.encoder.embeddings.position_embeddings.weight.detach().clone()
    losses = tr.pretrain_encoder(
        net, bank, len(spec.codes), np.random.default_rng(0), epochs=3, batch_size=32, lr=3e-3
    )
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert all(torch.equal(v, net.head.state_dict()[k]) for k, v in head.items())
    assert not torch.equal(encoder, net.encoder.embeddings.position_embeddings.weight)
    # and the fine-tuning path runs after it, end to end
    torch.manual_seed(0)
    _, history, best = tr.fit_transformer(
        bank,
        bank,
        ModelConfig(n_features=spec.n_features),
        np.random.default_rng(0),
        epochs=1,
        neg_ratio=2,
        batch_size=32,
        lr=1e-3,
        patience=1,
        pretrain_epochs=1,
        n_codes=len(spec.codes),
    )
    assert best == 1 and len(history) == 1 and 0.0 <= history[0]["test_auroc"] <= 1.0
