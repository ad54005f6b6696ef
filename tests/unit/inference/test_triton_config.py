"""The committed Triton config is the one the exports write (instances, batching, shapes)."""

from __future__ import annotations

from inference.bench_model import DEFAULT_DIR
from inference.features import FEATURE_SPEC_FILE, FeatureSpec, newest_version_dir
from inference.train import triton_config


def test_committed_config_is_what_the_export_writes() -> None:
    spec = FeatureSpec.load(newest_version_dir(DEFAULT_DIR) / FEATURE_SPEC_FILE)
    committed = (DEFAULT_DIR / "config.pbtxt").read_text()
    assert committed == triton_config(spec.n_features)
    assert "count: 2" in committed and "max_queue_delay_microseconds: 0" in committed
