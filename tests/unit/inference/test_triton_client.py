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


class SlowServer:
    """Stands in for the request sender: each request takes ``seconds``, returns the
    first value of each window, and the most requests ever in flight is kept."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.in_flight, self.peak = seconds, 0, 0

    async def send(self, chunk: np.ndarray) -> np.ndarray:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        await asyncio.sleep(self.seconds)
        self.in_flight -= 1
        return chunk[:, 0, 0].copy()


def test_chunks_wait_their_turn_and_come_back_in_order() -> None:
    # Seven chunks of 0.3 s each against a 0.5 s per-request deadline: sent all at once
    # to one busy server the late ones would overrun it; two at a time, none does.
    server = SlowServer(0.3)

    async def run() -> np.ndarray:
        client = TritonRiskClient(f"127.0.0.1:{free_port()}", max_batch=4, timeout_s=0.5)
        client._send_chunk = server.send  # type: ignore[method-assign]
        windows = np.arange(26, dtype=np.float32)[:, None, None] * np.ones((1, 48, 7), np.float32)
        return await client.predict(windows)

    out = asyncio.run(run())
    assert server.peak == 2
    assert out.tolist() == list(range(26))


def test_inflight_limit_holds_across_concurrent_calls() -> None:
    # The stream sends one batch as several concurrent predict calls (one per prepared
    # chunk): the limit is the client's, not each call's.
    server = SlowServer(0.05)

    async def run() -> list[list[float]]:
        client = TritonRiskClient(f"127.0.0.1:{free_port()}", max_batch=4, max_inflight=2)
        client._send_chunk = server.send  # type: ignore[method-assign]
        calls = [
            np.arange(k, k + 6, dtype=np.float32)[:, None, None] * np.ones((1, 48, 7), np.float32)
            for k in (0, 10, 20, 30)
        ]
        outs = await asyncio.gather(*(client.predict(w) for w in calls))
        return [o.tolist() for o in outs]

    out = asyncio.run(run())
    assert server.peak == 2
    assert out == [list(range(k, k + 6)) for k in (0, 10, 20, 30)]


def test_max_inflight_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_inflight"):
        TritonRiskClient(max_inflight=0)
