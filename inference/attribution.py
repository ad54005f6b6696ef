"""Per-patient attribution of the risk model's output: which measurements drove it.

Method: **occlusion by code**. For each numeric code the model reads, the code's whole
48-hour history is removed from the window (its value, measured-mask and staleness columns
set to what the feature code writes for "never measured": value 0, mask 0, staleness 1)
and the model is run again; the code's contribution is ``risk(window) - risk(occluded)``,
in probability units. Positive: the code's values pushed the risk up. A code never
measured in the window already reads as occluded, so occluding it gives the same window
and its contribution is exactly 0 without running the model (:func:`occluded_codes`; in
PhysioNet stays about half the codes, mostly labs, are absent from a 48 h window). The
other occluded windows go through the model as one batch with the window itself (at most
1 + C windows): one forward pass, affordable for alerting patients only.

Deterministic for a given model and window (no sampling); ties are broken by code name.
"""

from __future__ import annotations

from collections.abc import Sequence
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


def _check(window: npt.NDArray[np.float32], spec: FeatureSpec) -> None:
    if window.ndim != 2 or window.shape[1] != spec.n_features:
        raise ValueError(f"window shape {window.shape} does not match {spec.n_features} features")


def occluded_codes(window: npt.NDArray[np.float32], spec: FeatureSpec) -> tuple[int, ...]:
    """Indices (into ``spec.codes``) of the codes whose occlusion changes ``window``:
    those with any value, measured-mask or staleness cell not already at its
    never-measured value. Raises ``ValueError`` when the window does not match ``spec``."""
    _check(window, spec)
    c = len(spec.codes)
    changed = (
        (window[:, :c] != 0.0).any(axis=0)
        | (window[:, c : 2 * c] != 0.0).any(axis=0)
        | (window[:, 2 * c : 3 * c] != 1.0).any(axis=0)
    )
    return tuple(int(k) for k in np.flatnonzero(changed))


def occlusion_windows(
    window: npt.NDArray[np.float32], spec: FeatureSpec, codes: Sequence[int] | None = None
) -> npt.NDArray[np.float32]:
    """``[1 + K, WINDOW, F]``: the window itself, then one copy per code in ``codes``
    (default: every code, K = C) with that code occluded. Raises ``ValueError`` when the
    window does not match ``spec``."""
    _check(window, spec)
    c = len(spec.codes)
    todo = range(c) if codes is None else codes
    batch = np.repeat(window[None].astype(np.float32), 1 + len(todo), axis=0)
    for i, k in enumerate(todo, 1):
        batch[i, :, k] = 0.0
        batch[i, :, c + k] = 0.0
        batch[i, :, 2 * c + k] = 1.0
    return batch


def occlusion(model: RiskModel, window: npt.NDArray[np.float32], spec: FeatureSpec) -> Attribution:
    """Occlusion attribution of ``model`` on one window (see the module docstring): the
    model runs on the window and the windows of :func:`occluded_codes` only.

    Raises ``ValueError`` on a window that does not match ``spec`` and whatever
    ``model.predict`` raises (:class:`inference.errors.ModelError`); not retried here.
    """
    codes = occluded_codes(window, spec)
    return from_occlusion(model.predict(occlusion_windows(window, spec, codes)), spec, codes)


def from_occlusion(
    probs: npt.ArrayLike, spec: FeatureSpec, codes: Sequence[int] | None = None
) -> Attribution:
    """The attribution from the model's outputs on :func:`occlusion_windows` for
    ``codes`` (default every code): ``1 + len(codes)`` probabilities, the unoccluded
    window first, however they were computed (in-process or by the inference server).
    Codes not in ``codes`` contribute exactly 0 (their occlusion left the window as it
    was). Raises ``ValueError`` on the wrong number of outputs."""
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    todo = range(len(spec.codes)) if codes is None else codes
    if probs.shape[0] != 1 + len(todo):
        raise ValueError(f"{probs.shape[0]} outputs for {1 + len(todo)} occluded windows")
    base = float(probs[0])
    delta = dict.fromkeys(range(len(spec.codes)), 0.0)
    for k, p in zip(todo, probs[1:], strict=True):
        delta[k] = round(base - float(p), 6)
    contribs = [Contribution(code, delta[k]) for k, code in enumerate(spec.codes)]
    contribs.sort(key=lambda x: (-x.contribution, x.code))
    return Attribution(risk=round(base, 6), method=METHOD, contributions=tuple(contribs))
