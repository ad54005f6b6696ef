"""The committed Triton model repository is complete and consistent with its sources."""

from __future__ import annotations

import json
from pathlib import Path

from inference.features import FEATURE_SPEC_FILE, FeatureSpec, newest_version_dir

REPO = Path(__file__).resolve().parents[3] / "inference" / "model_repository"
MODEL = REPO / "sepsis_transformer"


def test_every_version_serves_the_current_backend_source() -> None:
    # Triton loads model.py from the version folder; training copies it there from
    # inference/triton_python_model.py. A hand edit of either would let them drift.
    source = (REPO.parent / "triton_python_model.py").read_text()
    versions = [p for p in MODEL.iterdir() if p.is_dir() and p.name.isdigit()]
    assert versions
    for v in versions:
        assert (v / "model.py").read_text() == source, v
        assert (v / "model.pt").stat().st_size > 0


def test_config_matches_the_feature_spec_and_card() -> None:
    spec = FeatureSpec.load(newest_version_dir(MODEL) / FEATURE_SPEC_FILE)
    config = (MODEL / "config.pbtxt").read_text()
    assert f"dims: [ 48, {spec.n_features} ]" in config
    assert "dynamic_batching" in config
    card = json.loads((MODEL / "model_card.json").read_text())
    assert str(card["version"]) == newest_version_dir(MODEL).name
    assert 0 < float(card["alert_threshold"]) < 1
