"""Window summaries for the gradient-boosting part of the ensemble (feature set 2).

The served model receives only the stream's window ``float32[B, WINDOW, F]`` (layout in
:mod:`inference.features`: values ``[0, C)``, measured-masks ``[C, 2C)``, staleness
``[2C, 3C)``, stay time ``[3C]``), so every derived feature is computed from the window,
twice: :func:`window_features` in numpy (training, the reference) and
:class:`WindowFeatures` in torch (scripted into the exported model). Both run the same
float operations in the same order (every sum over hours is an explicit loop over the
hours, newest first, in float64), so they agree bit for bit and a tree split never goes
the other way between training and serving.

Features, in order (``C`` codes, ``F = 3C + 1``):

* ``last[F]`` the window's last hour (values, masks, staleness = time since each code was
  last measured, stay hours),
* ``mean48[2C]``, ``mean24[2C]``, ``mean6[2C]`` means of the values and measured-masks
  over the last 48, 24 and 6 hours (a mask mean is a measurement frequency),
* ``mean12m[C]`` measured-mask means over the last 12 hours,
* ``delta6[C]``, ``delta12[C]``, ``delta24[C]`` change of each value over 6, 12, 24 h,
* ``min24[C]``, ``max24[C]``, ``min48[C]``, ``max48[C]``, ``std24[C]`` of the values,
* ``counts[8]``: measurements of vital signs, then of labs, in the last 6, 24 and 48 h
  (vitals 6, 24, 48, labs 6, 24, 48), the staleness of the newest lab, and how many codes
  were measured within the staleness cap.

Means and the standard deviation are rounded once to float32, like the window itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from inference.features import WINDOW

FEATURE_SET: Final = 2
# PhysioNet 2019's "vital signs" columns (the rest of the model's codes are its
# "laboratory values"); lab-ordering frequency is predictive there, so the two are counted
# apart. Not fhir.events.VITAL_CODES: that list is the project's bedside codes (GCS, FiO2,
# O2 flow too), while the challenge files FiO2 among the labs, and the feature set was
# chosen and trained with the challenge's grouping.
VITAL_CODES: Final = (
    "heart_rate",
    "spo2",
    "temperature",
    "systolic_bp",
    "mean_bp",
    "diastolic_bp",
    "respiratory_rate",
    "etco2",
)
N_COUNTS: Final = 8
F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


def n_window_features(n_codes: int, n_extra: int = 0) -> int:
    """How many features :func:`window_features` gives for ``n_codes`` codes and
    ``n_extra`` columns after the stay time (the patient context), carried in ``last``."""
    return (
        (3 * n_codes + 1 + n_extra) + 6 * n_codes + n_codes + 3 * n_codes + 5 * n_codes + N_COUNTS
    )


def feature_names(codes: Sequence[str], extra: Sequence[str] = ()) -> list[str]:
    """Names of the :func:`window_features` columns, in order (``extra``: the names of the
    columns after the stay time)."""
    c = list(codes)
    last = [f"last:value:{x}" for x in c] + [f"last:measured:{x}" for x in c]
    last += [f"last:staleness:{x}" for x in c] + ["last:stay_hours"]
    last += [f"last:{x}" for x in extra]

    def vm(tag: str) -> list[str]:
        return [f"{tag}:value:{x}" for x in c] + [f"{tag}:measured:{x}" for x in c]

    names = last + vm("mean48") + vm("mean24") + vm("mean6")
    names += [f"mean12:measured:{x}" for x in c]
    for tag in ("delta6", "delta12", "delta24", "min24", "max24", "min48", "max48", "std24"):
        names += [f"{tag}:value:{x}" for x in c]
    names += [f"count{h}:vitals" for h in (6, 24, 48)] + [f"count{h}:labs" for h in (6, 24, 48)]
    names += ["newest_lab_staleness", "codes_measured"]
    return names


def lab_mask(codes: Sequence[str]) -> F64:
    """1.0 for each code that is a lab (not in :data:`VITAL_CODES`), else 0.0."""
    return np.asarray([0.0 if x in VITAL_CODES else 1.0 for x in codes], dtype=np.float64)


def window_features(windows: npt.ArrayLike, n_codes: int, is_lab: npt.ArrayLike) -> F32:
    """Feature set 2 of windows ``float32[B, WINDOW, 3 * n_codes + 1 (+ extra)]`` ->
    ``float32[B, n_window_features(n_codes, extra)]`` (see the module docstring; columns
    after the stay time, the patient context, are taken from the last hour); ``is_lab`` is
    :func:`lab_mask` of the codes. One window alone gives the same numbers as in a batch.
    Raises ``ValueError`` for windows of another shape or an ``is_lab`` of another length.
    """
    w = np.asarray(windows, dtype=np.float32)
    c = n_codes
    lab = np.asarray(is_lab, dtype=np.float64)
    if w.ndim != 3 or w.shape[1] != WINDOW or w.shape[2] < 3 * c + 1:
        raise ValueError(f"windows must be [B, {WINDOW}, >= {3 * c + 1}], got {list(w.shape)}")
    if lab.shape != (c,):
        raise ValueError(f"is_lab must have {c} entries, got {list(lab.shape)}")
    vm = w[:, :, : 2 * c].astype(np.float64)
    v = w[:, :, :c]
    last = w[:, -1, :]
    # sums over hours: newest first, one hour at a time (the torch twin does the same)
    acc = np.zeros((w.shape[0], 2 * c), np.float64)
    sums: dict[int, F64] = {}
    for h in range(1, WINDOW + 1):
        acc = acc + vm[:, WINDOW - h, :]
        if h in (6, 12, 24, 48):
            sums[h] = acc
    mean48 = (sums[48] / 48.0).astype(np.float32)
    mean24 = (sums[24] / 24.0).astype(np.float32)
    mean6 = (sums[6] / 6.0).astype(np.float32)
    mean12m = (sums[12][:, c:] / 12.0).astype(np.float32)
    deltas = [last[:, :c] - w[:, -1 - h, :c] for h in (6, 12, 24)]
    v24 = v[:, -24:, :]
    mu = sums[24][:, :c] / 24.0
    sq = np.zeros((w.shape[0], c), np.float64)
    for h in range(1, 25):
        d = vm[:, WINDOW - h, :c] - mu
        sq = sq + d * d
    std24 = np.sqrt(sq / 24.0).astype(np.float32)
    # per-hour measurement counts are integers, so their sums are exact in any order
    m = vm[:, :, c:]
    labs_h = (m * lab).sum(axis=2)
    vitals_h = m.sum(axis=2) - labs_h
    counts = [vitals_h[:, -h:].sum(axis=1) for h in (6, 24, 48)]
    counts += [labs_h[:, -h:].sum(axis=1) for h in (6, 24, 48)]
    stale = last[:, 2 * c : 3 * c].astype(np.float64)
    # no lab among the codes: the newest lab is "never measured" (staleness 1)
    no_lab = np.ones(stale.shape[0], np.float64)
    counts.append(np.where(lab > 0, stale, np.inf).min(axis=1) if lab.any() else no_lab)
    counts.append((stale < 1.0).sum(axis=1).astype(np.float64))
    out: F32 = np.concatenate(
        [
            last,
            mean48,
            mean24,
            mean6,
            mean12m,
            *deltas,
            v24.min(axis=1),
            v24.max(axis=1),
            v.min(axis=1),
            v.max(axis=1),
            std24,
            np.stack(counts, axis=1).astype(np.float32),
        ],
        axis=1,
    ).astype(np.float32)
    return out


def bank_window_features(
    rows: F32,
    starts: npt.NDArray[np.int64],
    n_codes: int,
    is_lab: npt.ArrayLike,
    chunk: int = 4096,
) -> F32:
    """:func:`window_features` of every sample row of a bank (``rows``/``starts`` as in
    ``train.Bank``), a chunk of windows at a time so memory stays small. Raises
    ``ValueError`` as :func:`window_features`."""
    parts = [np.zeros((0, n_window_features(n_codes, rows.shape[1] - 3 * n_codes - 1)), np.float32)]
    for i in range(0, starts.size, chunk):
        gather = starts[i : i + chunk, None] + np.arange(WINDOW)[None, :]
        parts.append(window_features(rows[gather], n_codes, is_lab))
    return np.concatenate(parts, axis=0)


class WindowFeatures(nn.Module):
    """:func:`window_features` in torch: ``float32[B, WINDOW, F]`` -> ``float64[B, K]``
    (float32 numbers, widened for the trees' float64 thresholds)."""

    def __init__(self, n_codes: int, is_lab: npt.ArrayLike) -> None:
        super().__init__()
        lab = np.asarray(is_lab, dtype=np.float64)
        if lab.shape != (n_codes,):
            raise ValueError(f"is_lab must have {n_codes} entries, got {list(lab.shape)}")
        self.n_codes = int(n_codes)
        self.window = int(WINDOW)
        self.any_lab = bool(lab.any())
        self.register_buffer("is_lab", torch.from_numpy(lab.copy()))
        # +inf where a code is a vital sign, so the lab minimum skips it
        self.register_buffer(
            "not_lab_inf", torch.from_numpy(np.where(lab > 0, 0.0, np.inf).astype(np.float64))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.n_codes
        b = x.shape[0]
        vm = x[:, :, : 2 * c].double()
        v = x[:, :, :c]
        last = x[:, -1, :]
        acc = torch.zeros((b, 2 * c), dtype=torch.float64, device=x.device)
        s6 = acc
        s12 = acc
        s24 = acc
        n = self.window
        for h in range(1, n + 1):
            acc = acc + vm[:, n - h, :]
            if h == 6:
                s6 = acc
            elif h == 12:
                s12 = acc
            elif h == 24:
                s24 = acc
        mean48 = (acc / 48.0).float()
        mean24 = (s24 / 24.0).float()
        mean6 = (s6 / 6.0).float()
        mean12m = (s12[:, c:] / 12.0).float()
        d6 = last[:, :c] - x[:, -7, :c]
        d12 = last[:, :c] - x[:, -13, :c]
        d24 = last[:, :c] - x[:, -25, :c]
        v24 = v[:, -24:, :]
        mu = s24[:, :c] / 24.0
        sq = torch.zeros((b, c), dtype=torch.float64, device=x.device)
        for h in range(1, 25):
            d = vm[:, n - h, :c] - mu
            sq = sq + d * d
        std24 = torch.sqrt(sq / 24.0).float()
        is_lab: torch.Tensor = self.is_lab  # type: ignore[assignment]
        not_lab_inf: torch.Tensor = self.not_lab_inf  # type: ignore[assignment]
        m = vm[:, :, c:]
        labs_h = (m * is_lab).sum(2)
        vitals_h = m.sum(2) - labs_h
        stale = last[:, 2 * c : 3 * c].double()
        no_lab = torch.ones((b,), dtype=torch.float64, device=x.device)
        newest_lab = (stale + not_lab_inf).min(1).values if self.any_lab else no_lab
        counts = torch.stack(
            [
                vitals_h[:, -6:].sum(1),
                vitals_h[:, -24:].sum(1),
                vitals_h[:, -48:].sum(1),
                labs_h[:, -6:].sum(1),
                labs_h[:, -24:].sum(1),
                labs_h[:, -48:].sum(1),
                newest_lab,
                (stale < 1.0).double().sum(1),
            ],
            1,
        ).float()
        return torch.cat(
            [
                last,
                mean48,
                mean24,
                mean6,
                mean12m,
                d6,
                d12,
                d24,
                v24.min(1).values,
                v24.max(1).values,
                v.min(1).values,
                v.max(1).values,
                std24,
                counts,
            ],
            1,
        ).double()
