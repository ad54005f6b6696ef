"""inference.bench_model on the CPU: the served file as Triton's backend runs it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from inference.bench_model import DEFAULT_DIR, markdown, newest_version, run, synthetic_windows
from inference.runtime import LocalTorchModel


def test_measures_the_served_model_and_its_ratios() -> None:
    res = run(DEFAULT_DIR, [1, 4], seconds=0.05, threads=1)
    cpu = res["results"]["cpu"]
    assert set(cpu) == {"1", "4"}
    assert cpu["1"]["x_one_per_call"] == 1.0
    assert cpu["4"]["x_one_per_call"] == pytest.approx(
        cpu["4"]["windows_per_s"] / cpu["1"]["windows_per_s"]
    )
    assert all(r["calls"] >= 5 and r["windows_per_s"] > 0 for r in cpu.values())
    table = markdown(res)
    assert "| cpu | 4 |" in table and res["model"] in table


def test_runs_the_model_the_stream_runs() -> None:
    # Same file, same outputs as the in-process runtime on the synthetic windows.
    local = LocalTorchModel.from_dir(DEFAULT_DIR)
    n_context = local.spec.n_features - (3 * 34 + 1)  # the served model reads the context
    x = synthetic_windows(8, 48, 34, n_context=n_context)
    assert x.shape == (8, 48, local.spec.n_features)
    module = torch.jit.load(  # type: ignore[no-untyped-call]
        str(newest_version(DEFAULT_DIR) / "model.pt"), map_location="cpu"
    )
    with torch.inference_mode():
        direct = module(torch.from_numpy(x)).float().numpy()[:, 0]
    assert np.array_equal(direct, local.predict(x))


def test_a_folder_without_versions_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        newest_version(tmp_path)
