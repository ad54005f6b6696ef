"""The served sepsis model (Triton, started by `make up`) equals the local TorchScript run.

Needs a Triton server at ``WARDWATCH_TRITON_GRPC_URL`` (default 127.0.0.1:8001) serving
``inference/model_repository``. A missing server is a failure, not a skip.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest

from inference import physionet_data as pdata
from inference.client import TritonRiskClient
from inference.errors import ModelUnavailable
from inference.features import windows_from_hourly
from inference.runtime import LocalTorchModel

pytestmark = pytest.mark.triton

ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = ROOT / "inference" / "model_repository" / "sepsis_transformer"
URL = os.environ.get("WARDWATCH_TRITON_GRPC_URL", "127.0.0.1:8001")


def real_windows(model: LocalTorchModel, n: int) -> np.ndarray:
    if not pdata.PHYSIONET_DIR.is_dir():
        msg = f"PhysioNet data absent at {pdata.PHYSIONET_DIR}"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    out = []
    for path in pdata.stay_files(pdata.PHYSIONET_DIR)[:40]:
        matrix, labels = pdata.stay_matrix(path, model.spec.codes)
        out.append(windows_from_hourly(matrix, np.arange(len(labels)), model.spec))
    w = np.concatenate(out)
    return w[np.linspace(0, len(w) - 1, n).astype(int)]


async def _served(windows: np.ndarray, n_features: int) -> tuple[np.ndarray, float]:
    async with TritonRiskClient(URL, n_features=n_features, timeout_s=10.0) as client:
        if not await client.is_ready():
            pytest.fail(f"Triton model sepsis_transformer is not ready at {URL} (run `make up`)")
        await client.predict(windows[:1])  # warm-up
        t0 = time.perf_counter()
        p = await client.predict(windows)
        return p, time.perf_counter() - t0


@pytest.mark.parametrize("batch", [1, 7, 64, 150])
def test_served_equals_local(batch: int) -> None:
    model = LocalTorchModel.from_dir(MODEL_DIR)
    windows = real_windows(model, batch)
    served, seconds = asyncio.run(_served(windows, model.spec.n_features))
    local = model.predict(windows)
    assert served.shape == (batch,)
    assert served.dtype == np.float32
    np.testing.assert_allclose(served, local, atol=1e-5, rtol=0)
    print(f"batch {batch}: {seconds * 1000:.1f} ms")


def test_closed_port_raises_model_unavailable_quickly() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def run() -> None:
        async with TritonRiskClient(f"127.0.0.1:{port}", timeout_s=1.0) as client:
            with pytest.raises(ModelUnavailable):
                await client.predict(np.zeros((2, 48, 103), np.float32))

    t0 = time.monotonic()
    asyncio.run(run())
    assert time.monotonic() - t0 < 3.0
