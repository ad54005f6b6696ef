"""TritonRiskClient without a server: error classification, validation, closed port."""

from __future__ import annotations

import asyncio
import socket
import time

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from inference.client import TritonRiskClient, classify
from inference.errors import InferenceError, ModelError, ModelUnavailable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_classify() -> None:
    bad = InferenceServerException("bad shape", status="StatusCode.INVALID_ARGUMENT")
    assert isinstance(classify(bad, "x"), ModelError)
    down = InferenceServerException("no", status="StatusCode.UNAVAILABLE")
    assert isinstance(classify(down, "x"), ModelUnavailable)
    late = InferenceServerException("late", status="StatusCode.DEADLINE_EXCEEDED")
    assert isinstance(classify(late, "x"), ModelUnavailable)
    assert isinstance(classify(TimeoutError(), "x"), ModelUnavailable)
    assert isinstance(classify(OSError("refused"), "x"), ModelUnavailable)
    assert ModelUnavailable.retryable
    assert not ModelError.retryable
    assert issubclass(ModelError, InferenceError)


def test_closed_port_is_unavailable_quickly() -> None:
    async def run() -> None:
        async with TritonRiskClient(f"127.0.0.1:{free_port()}", timeout_s=1.0) as client:
            assert not await client.is_ready()
            t0 = time.monotonic()
            with pytest.raises(ModelUnavailable):
                await client.predict(np.zeros((3, 48, 7), np.float32))
            assert time.monotonic() - t0 < 3.0

    asyncio.run(run())


def test_bad_windows_are_model_errors_before_sending() -> None:
    async def run() -> None:
        client = TritonRiskClient(f"127.0.0.1:{free_port()}", n_features=7)
        with pytest.raises(ModelError):
            await client.predict(np.zeros((3, 48, 8), np.float32))
        with pytest.raises(ModelError):
            await client.predict(np.zeros((3, 48, 7), np.int64))
        assert (await client.predict(np.zeros((0, 48, 7), np.float32))).shape == (0,)
        await client.close()

    asyncio.run(run())
