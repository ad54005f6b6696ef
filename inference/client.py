"""Async gRPC client of the served sepsis-risk model (Triton).

``await TritonRiskClient(url).predict(windows)`` splits the windows into chunks of at most
``max_batch`` and returns probabilities ``float32[B]`` in input order. At most
``max_inflight`` requests are in flight at a time, counted over every ``predict`` call on
the client (the stream sends one batch as several concurrent calls, one per chunk it has
prepared; Triton's dynamic batcher merges the requests with other workers'). Each request
has its own deadline (``timeout_s``) counted from when it is sent: a big batch is not
failed because its last chunks queued behind the first ones (a 500-message batch is eight
requests; with all of them in flight at once on a busy CPU server the last ones overran a
5 s deadline).
Errors follow :mod:`inference.errors`: unreachable / not ready / deadline / overloaded
-> :class:`ModelUnavailable` (retry); a request that does not fit the model ->
:class:`ModelError` (do not retry).

``observer`` (optional) is told of every request sent: ``observer(batch, seconds,
outcome)`` with outcome ``"ok"``, ``"unavailable"`` or ``"error"``; the stream feeds its
metrics from it (so this package needs no metrics library).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from inference.errors import ModelError, ModelUnavailable
from inference.runtime import check_windows

INPUT_NAME: Final = "FEATURES"
OUTPUT_NAME: Final = "RISK"
# gRPC status codes that mean "this request can never succeed" (checked as substrings of
# tritonclient's status string, e.g. "StatusCode.INVALID_ARGUMENT").
_PERMANENT: Final = ("INVALID_ARGUMENT", "NOT_FOUND", "UNIMPLEMENTED", "OUT_OF_RANGE")

F32 = npt.NDArray[np.float32]
# Told of each request: (windows in it, seconds it took, "ok" | "unavailable" | "error").
RequestObserver = Callable[[int, float, str], None]


# gRPC backs off reconnecting up to 120 s by default: after a Triton restart the model
# would stay "unavailable" (scores degraded) long after it is back. Retry every <= 2 s.
# The other entries are what tritonclient sets when given no channel_args.
_CHANNEL_ARGS: Final = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


def classify(exc: BaseException, what: str) -> Exception:
    """Map a client-side exception to ModelError (permanent) or ModelUnavailable."""
    if isinstance(exc, InferenceServerException):
        status = str(exc.status() or "")
        # A model being (un)loaded, as while Triton starts or stops, answers NOT_FOUND
        # "has no available versions": that is unavailability, not a bad request.
        if "no available versions" in str(exc.message()):
            return ModelUnavailable(f"{what}: {status} {exc.message()}")
        if any(code in status for code in _PERMANENT):
            return ModelError(f"{what}: {status} {exc.message()}")
        return ModelUnavailable(f"{what}: {status or 'error'} {exc.message()}")
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return ModelUnavailable(f"{what}: deadline exceeded")
    return ModelUnavailable(f"{what}: {type(exc).__name__}: {exc}")


class TritonRiskClient:
    """Sepsis-risk predictions from Triton over gRPC (asyncio)."""

    def __init__(
        self,
        url: str = "127.0.0.1:8001",
        model_name: str = "sepsis_transformer",
        *,
        n_features: int | None = None,
        max_batch: int = 64,
        max_inflight: int = 2,
        timeout_s: float = 2.0,
        model_version: str = "",
        observer: RequestObserver | None = None,
        ssl: bool = False,
        root_certificates: str | None = None,
        private_key: str | None = None,
        certificate_chain: str | None = None,
    ) -> None:
        """``n_features``: checked locally before sending when given (else Triton checks);
        ``observer``: told of every request (see the module docstring). ``ssl``: TLS to
        Triton, verified against the PEM file ``root_certificates`` (None: the system's
        CAs), presenting ``certificate_chain`` and ``private_key`` (PEM files) when given;
        tritonclient reads the files when the channel is first made (OSError then, not
        retried)."""
        if max_batch < 1 or max_inflight < 1:
            raise ValueError("max_batch and max_inflight must be >= 1")
        self.url = url
        self.model_name = model_name
        self.model_version = model_version
        self.n_features = n_features
        self.max_batch = max_batch
        self.max_inflight = max_inflight
        self.timeout_s = timeout_s
        self.observer = observer
        self._tls: dict[str, Any] = {
            "ssl": ssl,
            "root_certificates": root_certificates,
            "private_key": private_key,
            "certificate_chain": certificate_chain,
        }
        self._client: Any = None
        # One limit for all of this client's calls, made in (and bound to) the running
        # loop on first use: a client used from a new loop (tests) gets a new one.
        self._slots: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None

    def _slots_here(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._slots is None or self._slots[0] is not loop:
            self._slots = (loop, asyncio.Semaphore(self.max_inflight))
        return self._slots[1]

    def _get(self) -> Any:
        if self._client is None:
            self._client = grpcclient.InferenceServerClient(
                url=self.url, channel_args=_CHANNEL_ARGS, **self._tls
            )
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    async def __aenter__(self) -> TritonRiskClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def is_ready(self) -> bool:
        """True if the server is up and the model is loaded; never raises."""
        try:
            ready = await asyncio.wait_for(
                self._get().is_model_ready(
                    self.model_name, self.model_version, client_timeout=self.timeout_s
                ),
                self.timeout_s + 0.5,
            )
            return bool(ready)
        except Exception:
            return False

    def _validate(self, windows: npt.ArrayLike) -> F32:
        if self.n_features is not None:
            return check_windows(windows, self.n_features)
        arr = np.asarray(windows)
        if arr.dtype != np.float32 and np.issubdtype(arr.dtype, np.floating):
            arr = arr.astype(np.float32)
        if arr.dtype != np.float32 or arr.ndim != 3:
            raise ModelError(f"windows must be float32[B, T, F], got {arr.dtype}{arr.shape}")
        return np.ascontiguousarray(arr)

    async def _infer_chunk(self, chunk: F32) -> F32:
        if self.observer is None:
            return await self._send_chunk(chunk)
        start, outcome = time.perf_counter(), "error"
        try:
            out = await self._send_chunk(chunk)
            outcome = "ok"
            return out
        except (ModelUnavailable, asyncio.CancelledError):
            # cancelled: the call's overall deadline passed (predict raises ModelUnavailable)
            outcome = "unavailable"
            raise
        finally:
            # Observing must never fail a prediction.
            with contextlib.suppress(Exception):
                self.observer(int(chunk.shape[0]), time.perf_counter() - start, outcome)

    async def _send_chunk(self, chunk: F32) -> F32:
        inp = grpcclient.InferInput(INPUT_NAME, list(chunk.shape), "FP32")
        inp.set_data_from_numpy(chunk)
        out = grpcclient.InferRequestedOutput(OUTPUT_NAME)
        try:
            result = await self._get().infer(
                self.model_name,
                [inp],
                model_version=self.model_version,
                outputs=[out],
                client_timeout=self.timeout_s,
            )
        except Exception as exc:
            raise classify(exc, f"infer {self.model_name}@{self.url}") from exc
        risk = result.as_numpy(OUTPUT_NAME)
        if risk is None or risk.shape[0] != chunk.shape[0]:
            raise ModelError(f"unexpected {OUTPUT_NAME} output shape from {self.model_name}")
        return np.asarray(risk, dtype=np.float32).reshape(chunk.shape[0], -1)[:, 0]

    async def predict(self, windows: npt.ArrayLike) -> F32:
        """Probabilities float32[B] for windows float32[B, WINDOW, F]."""
        x = self._validate(windows)
        if x.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        chunks = [x[i : i + self.max_batch] for i in range(0, x.shape[0], self.max_batch)]
        slots = self._slots_here()

        async def send(chunk: F32) -> F32:
            async with slots:
                return await self._infer_chunk(chunk)

        # Each request carries its own deadline; this outer one only guards against a
        # client that hangs past them, so it allows one deadline per wave of requests.
        waves = -(-len(chunks) // self.max_inflight)
        try:
            parts = await asyncio.wait_for(
                asyncio.gather(*(send(c) for c in chunks)), waves * (self.timeout_s + 0.5)
            )
        except (ModelError, ModelUnavailable):
            raise
        except Exception as exc:
            raise classify(exc, f"infer {self.model_name}@{self.url}") from exc
        return np.concatenate(parts)
