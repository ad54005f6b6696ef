"""The model as a port of the scoring core: windows in, risks out, and occlusion
explanations of a batch's new alerts.

Adapters: :class:`ServedModel` for a model behind a server (Triton in the worker:
:class:`inference.client.TritonRiskClient`), :class:`InProcessModel` for a model run in
this process (``wardwatch score``: :class:`inference.runtime.LocalTorchModel`), and a fake
in the unit tests. The core only ever awaits :meth:`RiskPort.predict` and
:meth:`RiskPort.explain`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from inference.attribution import Attribution, from_occlusion, occluded_codes, occlusion_windows
from inference.errors import ModelError, ModelUnavailable, reason_of
from inference.features import FeatureSpec
from inference.runtime import RiskModel

from .model_info import Explainer

F32 = npt.NDArray[np.float32]
log = logging.getLogger("wardwatch.stream")


class RiskPort(Protocol):
    """What the scoring core needs of a model."""

    async def predict(self, windows: F32) -> F32 | None:
        """Risks float32[B] of windows float32[B, WINDOW, F], or None when the model is
        unavailable (the batch's scores are then degraded: rule scores only)."""
        ...

    async def explain(self, windows: Sequence[F32]) -> list[Attribution | str | None]:
        """One attribution per window (of an alert raised with a risk), a string saying
        why none is available, or None where none is asked for. Must not raise for a
        model failure: an explanation never stops an alert."""
        ...


class AsyncRiskModel(Protocol):
    """A model behind a server: :class:`inference.client.TritonRiskClient`."""

    def predict(self, windows: npt.ArrayLike) -> Awaitable[F32]: ...


class ServedModel:
    """:class:`RiskPort` over a model server. A model fault (server away, wrong shape,
    unknown model) degrades the scores rather than stopping them: it is logged and the
    risks are None. Explanations of a batch's alerts go to the server in one request."""

    def __init__(self, client: AsyncRiskModel, spec: FeatureSpec) -> None:
        self.client = client
        self.spec = spec

    async def predict(self, windows: F32) -> F32 | None:
        """The server's risks, or None while it is away or refuses (logged). Not retried:
        the next batch asks again."""
        try:
            return await self.client.predict(windows)
        except ModelUnavailable as exc:
            log.warning("model unavailable, scoring rules only: %s", reason_of(exc))
            return None
        except ModelError as exc:
            # A permanent model fault (wrong shape, unknown model) must not stop the rule
            # scores either: every score says it is degraded, and this says why.
            log.error("model error, scoring rules only: %s", reason_of(exc))
            return None

    async def explain(self, windows: Sequence[F32]) -> list[Attribution | str | None]:
        """Occlusion attributions, computed by the server in one request (the worker never
        runs the model). A failure gives every card the reason instead. Raises nothing."""
        if not windows:
            return []
        try:
            # Codes never measured in a window are not run: their contribution is 0.
            plans = [(w, occluded_codes(w, self.spec)) for w in windows]
            probs = await self.client.predict(
                np.concatenate([occlusion_windows(w, self.spec, codes) for w, codes in plans])
            )
            out: list[Attribution | str | None] = []
            start = 0
            for _, codes in plans:
                end = start + 1 + len(codes)
                out.append(from_occlusion(probs[start:end], self.spec, codes))
                start = end
            return out
        except Exception as exc:  # an explanation must never stop an alert
            log.warning("alert explanations unavailable: %s", reason_of(exc))
            return [f"{type(exc).__name__}: {reason_of(exc)}"] * len(windows)


class InProcessModel:
    """:class:`RiskPort` over a model run in this process. Its errors propagate (an
    offline run stops on them); ``explainer`` (None: cards carry no attribution)
    explains one window at a time, and its failure is stated in the card."""

    def __init__(self, model: RiskModel, explainer: Explainer | None = None) -> None:
        self.model = model
        self.explainer = explainer

    async def predict(self, windows: F32) -> F32 | None:
        """The model's risks. Raises what the model raises (``ModelError``)."""
        return self.model.predict(windows)

    async def explain(self, windows: Sequence[F32]) -> list[Attribution | str | None]:
        """The explainer's attribution of each window, or why it failed. Raises nothing."""
        out: list[Attribution | str | None] = []
        for w in windows:
            if self.explainer is None:
                out.append(None)
                continue
            try:
                out.append(self.explainer(w))
            except Exception as exc:  # an explanation must never stop an alert
                out.append(f"{type(exc).__name__}: {exc}")
        return out
