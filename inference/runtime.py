"""Running the exported model in-process (offline scoring, tests, a fallback).

``RiskModel`` is what scoring code depends on: windows ``float32[B, WINDOW, F]`` (from
:func:`inference.features.feature_window`) -> probabilities ``float64/float32[B]``.
:class:`LocalTorchModel` runs the same TorchScript file Triton serves;
:class:`inference.client.TritonRiskClient` is the served, async counterpart.

An ensemble version (built by :mod:`inference.ensemble`) is one TorchScript file too: the
transformer, the gradient-boosting trees and the stacking weights are all inside it, so
loading and :meth:`LocalTorchModel.predict` are unchanged; its components' probabilities
are available through :meth:`LocalTorchModel.components` (for the evaluation report).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
import torch

from inference.errors import ModelError
from inference.features import FEATURE_SPEC_FILE, WINDOW, FeatureSpec, newest_version_dir

F32 = npt.NDArray[np.float32]
# TorchScript methods an ensemble exports next to ``forward`` (inference.ensemble):
# component name -> method name.
COMPONENT_METHODS: Final = {"transformer": "transformer_probability", "gbm": "gbm_probability"}


@runtime_checkable
class RiskModel(Protocol):
    """A sepsis-risk model: windows float32[B, WINDOW, F] -> probabilities float32[B]."""

    def predict(self, windows: npt.ArrayLike) -> F32: ...


def check_windows(windows: npt.ArrayLike, n_features: int) -> F32:
    """The windows as C-contiguous float32[B, WINDOW, F]; ModelError if they cannot be."""
    arr = np.asarray(windows)
    if arr.dtype != np.float32:
        if not np.issubdtype(arr.dtype, np.floating):
            raise ModelError(f"windows must be float32, got {arr.dtype}")
        arr = arr.astype(np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1:] != (WINDOW, n_features):
        raise ModelError(f"windows must be [B, {WINDOW}, {n_features}], got {list(arr.shape)}")
    return np.ascontiguousarray(arr)


class LocalTorchModel:
    """The newest version of a Triton model folder, run with torch in this process."""

    def __init__(
        self,
        module: torch.jit.ScriptModule,
        spec: FeatureSpec,
        card: dict[str, Any],
        version: int,
        max_batch: int = 1024,
    ) -> None:
        self.module = module.eval()
        self.spec = spec
        self.card = card
        self.version = version
        self.max_batch = max_batch

    @classmethod
    def from_dir(cls, model_dir: Path | str, device: str = "cpu") -> LocalTorchModel:
        """Load ``<model_dir>/<newest version>/model.pt`` and ``<model_dir>/model_card.json``."""
        model_dir = Path(model_dir)
        vdir = newest_version_dir(model_dir)
        module = torch.jit.load(  # type: ignore[no-untyped-call]
            str(vdir / "model.pt"), map_location=device
        )
        card: dict[str, Any] = json.loads((model_dir / "model_card.json").read_text())
        spec_path = vdir / FEATURE_SPEC_FILE
        spec = (
            FeatureSpec.load(spec_path)
            if spec_path.exists()
            else FeatureSpec.from_dict(card["feature_spec"])
        )
        return cls(module, spec, card, int(vdir.name))

    @property
    def alert_threshold(self) -> float:
        """The model card's alert threshold (chosen on the test split)."""
        return float(self.card["alert_threshold"])

    def predict(self, windows: npt.ArrayLike) -> F32:
        """Probabilities float32[B] (a single window [WINDOW, F] gives B = 1)."""
        x = check_windows(windows, self.spec.n_features)
        out = []
        with torch.inference_mode():
            for i in range(0, x.shape[0], self.max_batch):
                out.append(self.module(torch.from_numpy(x[i : i + self.max_batch])).numpy())
        if not out:
            return np.zeros(0, dtype=np.float32)
        probs: F32 = np.concatenate(out)[:, 0].astype(np.float32)
        return probs

    def component_names(self) -> list[str]:
        """The components this model exports (``[]`` for a single model). Raises nothing."""
        return [k for k, m in COMPONENT_METHODS.items() if hasattr(self.module, m)]

    def components(self, windows: npt.ArrayLike) -> dict[str, npt.NDArray[np.float64]]:
        """Each component's probability float64[B] for the windows (``{}`` for a single
        model); ``ModelError`` for windows of the wrong shape. Nothing is retried."""
        x = check_windows(windows, self.spec.n_features)
        out: dict[str, list[npt.NDArray[np.float64]]] = {k: [] for k in self.component_names()}
        with torch.inference_mode():
            for i in range(0, x.shape[0], self.max_batch):
                batch = torch.from_numpy(x[i : i + self.max_batch])
                for k in out:
                    method = getattr(self.module, COMPONENT_METHODS[k])
                    out[k].append(method(batch).double().numpy())
        return {
            k: np.concatenate(v) if v else np.zeros(0, dtype=np.float64) for k, v in out.items()
        }
