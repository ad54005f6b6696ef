"""Per-patient attribution of the risk model's output: which measurements drove it.

Method: **occlusion by code**. For each numeric code the model reads, the code's whole
48-hour history is removed from the window (its value, measured-mask and staleness columns
set to what the feature code writes for "never measured": value 0, mask 0, staleness 1)
and the model is run again; the code's contribution is ``risk(window) - risk(occluded)``,
in probability units. Positive: the code's values pushed the risk up. All occluded windows
go through the model as one batch (1 + C windows), so an explanation costs one forward
pass of about 35 windows: affordable for alerting patients only.

Deterministic for a given model and window (no sampling); ties are broken by code name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from inference.features import FeatureSpec
from inference.runtime import RiskModel

METHOD: Final = (
    "occlusion: risk minus the risk with the code's whole 48 h history removed "
    "(treated as never measured), same model, same window"
)
TOP_K: Final = 5


@dataclass(frozen=True, slots=True)
class Contribution:
    """One code's contribution to one patient's risk."""

    code: str
    contribution: float

    def to_dict(self) -> dict[str, Any]:
        return {"feature": self.code, "contribution": self.contribution}


@dataclass(frozen=True, slots=True)
class Attribution:
    """The risk, the method and every code's contribution (largest increase first)."""

    risk: float
    method: str
    contributions: tuple[Contribution, ...]

    def top(self, k: int = TOP_K) -> tuple[Contribution, ...]:
        """The ``k`` codes that raised the risk most (sorted; may include negatives when
        fewer than ``k`` codes raised it)."""
        return self.contributions[:k]


def occlusion_windows(
    window: npt.NDArray[np.float32], spec: FeatureSpec
) -> npt.NDArray[np.float32]:
    """``[1 + C, WINDOW, F]``: the window itself, then one copy per code with that code
    occluded. Raises ``ValueError`` when the window does not match ``spec``."""
    c = len(spec.codes)
    if window.ndim != 2 or window.shape[1] != spec.n_features:
        raise ValueError(f"window shape {window.shape} does not match {spec.n_features} features")
    batch = np.repeat(window[None].astype(np.float32), 1 + c, axis=0)
    for k in range(c):
        batch[1 + k, :, k] = 0.0
        batch[1 + k, :, c + k] = 0.0
        batch[1 + k, :, 2 * c + k] = 1.0
    return batch


def occlusion(model: RiskModel, window: npt.NDArray[np.float32], spec: FeatureSpec) -> Attribution:
    """Occlusion attribution of ``model`` on one window (see the module docstring).

    Raises ``ValueError`` on a window that does not match ``spec`` and whatever
    ``model.predict`` raises (:class:`inference.errors.ModelError`); not retried here.
    """
    return from_occlusion(model.predict(occlusion_windows(window, spec)), spec)


def from_occlusion(probs: npt.ArrayLike, spec: FeatureSpec) -> Attribution:
    """The attribution from the model's outputs on :func:`occlusion_windows` (``1 + C``
    probabilities, the unoccluded window first), however they were computed: in-process
    or by the inference server. Raises ``ValueError`` on the wrong number of outputs."""
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    if probs.shape[0] != 1 + len(spec.codes):
        raise ValueError(f"{probs.shape[0]} outputs for {1 + len(spec.codes)} occluded windows")
    base = float(probs[0])
    contribs = [
        Contribution(code, round(base - float(p), 6))
        for code, p in zip(spec.codes, probs[1:], strict=True)
    ]
    contribs.sort(key=lambda x: (-x.contribution, x.code))
    return Attribution(risk=round(base, 6), method=METHOD, contributions=tuple(contribs))
