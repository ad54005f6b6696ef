"""The model's input: a 48-hour window of per-hour feature vectors.

One code path for training and serving. The stream calls :func:`feature_window` on the
live :class:`~inference.state.PatientState`; training calls :func:`windows_from_hourly` on
a stay's hourly matrix (PhysioNet rows are exactly one hour apart). Both give the same
numbers (``tests/unit/inference/test_features.py`` checks it on real stays, row by row).

Layout of one window, ``float32[WINDOW, n_features(spec)]``:

* Row ``j`` (0..WINDOW-1) is hour bin ``i = WINDOW-1-j``: rows run oldest -> newest, the
  last row is bin 0 = the hour ending at ``as_of``. Bin ``i`` covers
  ``(as_of-(i+1) h, as_of-i h]``; its *end* is ``as_of - i h``.
* Columns, with ``C = len(spec.codes)`` in ``spec.codes`` order:

  - ``[0, C)`` value: the newest value at or before the bin's end (so: the last value in
    the bin, else carried forward), normalised ``(v - mean) / std`` and clipped to
    ``[-CLIP, CLIP]``; 0 when the code was never measured up to then.
  - ``[C, 2C)`` mask: 1 if the code was measured inside the bin, else 0.
  - ``[2C, 3C)`` staleness: hours from the newest measurement to the bin's end, capped at
    ``LAST_CAP_HOURS`` and divided by it; 1 when never measured.
  - ``[3C]`` stay time: hours from ``state.first_seen`` to the bin's end, clipped to
    ``[0, FIRST_CAP_HOURS]`` and divided by it (0 before the first observation).
  - with ``spec.context`` (feature spec version 2), :data:`CONTEXT_FEATURES` more: the
    patient context a hospital sends (:class:`StayContext`: Patient.birthDate's year and
    gender, Encounter admissions; HL7 v2 PID-7, PID-8, PV1-3, PV1-44), each value beside
    a known flag, so a patient without a Patient or Encounter is scored with the context
    marked unknown: age in years / 100 at the bin's end, female (1) or male (0), hours
    since the hospital admission (clipped to ``[0, HOSPITAL_CAP_HOURS]``, divided by it)
    and since the ICU admission (``[0, FIRST_CAP_HOURS]``), each the latest admission at
    or before the bin's end. All are 0 in bins that end before the first observation,
    like the stay time, so the padding before a stay in training is the same.

Categorical codes are not model inputs. The normalisation (per-code mean and std over the
measured hourly values of the training split) lives in :class:`FeatureSpec`, stored in
the model folder next to the model it was trained with.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from inference.state import PatientState, TimeLike, to_epoch

WINDOW: Final = 48
HOUR: Final = 3600.0
CLIP: Final = 5.0
LAST_CAP_HOURS: Final = 48.0
FIRST_CAP_HOURS: Final = 336.0
HOSPITAL_CAP_HOURS: Final = 720.0
CONTEXT_FEATURES: Final = (
    "age_years",
    "age_known",
    "female",
    "sex_known",
    "hospital_hours",
    "hospital_known",
    "icu_hours",
    "icu_known",
)
FEATURE_SPEC_FILE: Final = "feature_spec.json"
DEFAULT_MODEL_DIR: Final = (
    Path(__file__).resolve().parent / "model_repository" / "sepsis_transformer"
)

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class StayContext:
    """The patient context the features read: birth year, sex (FHIR administrative
    gender), and the times (epoch seconds, ascending) of hospital and ICU admissions."""

    birth_year: float | None = None
    sex: str | None = None
    admissions: tuple[float, ...] = ()
    icu_admissions: tuple[float, ...] = ()

    @classmethod
    def of_state(cls, state: PatientState) -> StayContext:
        """The context a patient's state holds (:data:`fhir.events.STAY_CODES`). Raises
        nothing."""
        year = state.stay_fact("birth_year")
        sex = state.stay_fact("sex")
        return cls(
            birth_year=float(year) if isinstance(year, int | float) else None,
            sex=sex if isinstance(sex, str) else None,
            admissions=tuple(state.stay_times("admission")),
            icu_admissions=tuple(state.stay_times("icu_admission")),
        )


def _since(ends: F64, times: tuple[float, ...], cap: float) -> tuple[F64, F64]:
    """(hours since the latest of ``times`` at or before each end / cap, known flag)."""
    if not times:
        zero = np.zeros_like(ends)
        return zero, zero
    t = np.asarray(times, dtype=np.float64)
    i = np.searchsorted(t, ends, side="right") - 1
    known = i >= 0
    hours = np.where(known, (ends - t[np.maximum(i, 0)]) / HOUR, 0.0)
    return np.minimum(hours, cap) / cap, known.astype(np.float64)


def context_columns(ends: F64, first_seen: float | None, ctx: StayContext) -> F64:
    """The :data:`CONTEXT_FEATURES` columns ``float64[len(ends), 8]`` for bins ending at
    ``ends`` (epoch seconds). One function for serving (:func:`feature_window`) and
    training (:func:`hourly_rows`). Raises nothing."""
    out = np.zeros((ends.size, len(CONTEXT_FEATURES)), dtype=np.float64)
    if first_seen is None:
        return out
    if ctx.birth_year is not None:
        years = ends.astype(np.int64).astype("datetime64[s]").astype("datetime64[Y]")
        age = years.astype(np.int64) + 1970 - ctx.birth_year
        out[:, 0] = np.clip(age, 0.0, 120.0) / 100.0
        out[:, 1] = 1.0
    if ctx.sex in ("female", "male"):
        out[:, 2] = 1.0 if ctx.sex == "female" else 0.0
        out[:, 3] = 1.0
    out[:, 4], out[:, 5] = _since(ends, ctx.admissions, HOSPITAL_CAP_HOURS)
    out[:, 6], out[:, 7] = _since(ends, ctx.icu_admissions, FIRST_CAP_HOURS)
    out[ends < first_seen] = 0.0  # before the first observation, as the stay time
    return out


@dataclass(frozen=True)
class FeatureSpec:
    """Which numeric codes the model reads, in column order, and their normalisation;
    ``context``: whether the window carries the patient-context columns (spec version 2).
    """

    codes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    context: bool = False

    def __post_init__(self) -> None:
        if not (len(self.codes) == len(self.mean) == len(self.std)):
            raise ValueError("codes, mean and std must have the same length")
        if any(s <= 0 for s in self.std):
            raise ValueError("std must be positive")

    @property
    def n_features(self) -> int:
        return 3 * len(self.codes) + 1 + (len(CONTEXT_FEATURES) if self.context else 0)

    @cached_property
    def arrays(self) -> tuple[F64, F64]:
        """``(mean, std)`` as read-only float64 arrays, made once per spec."""
        mean = np.asarray(self.mean, dtype=np.float64)
        std = np.asarray(self.std, dtype=np.float64)
        mean.flags.writeable = std.flags.writeable = False
        return mean, std

    def feature_names(self) -> list[str]:
        c = self.codes
        return (
            [f"value:{x}" for x in c]
            + [f"measured:{x}" for x in c]
            + [f"staleness:{x}" for x in c]
            + ["stay_hours"]
            + ([f"context:{x}" for x in CONTEXT_FEATURES] if self.context else [])
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "window_hours": WINDOW,
            "codes": list(self.codes),
            "mean": list(self.mean),
            "std": list(self.std),
            "clip": CLIP,
            "last_cap_hours": LAST_CAP_HOURS,
            "first_cap_hours": FIRST_CAP_HOURS,
            "n_features": self.n_features,
            "layout": "value[C] | measured[C] | staleness[C] | stay_hours; rows oldest->newest",
        }
        if self.context:  # absent in version 1 specs, which stay byte-identical
            d["version"] = 2
            d["context"] = list(CONTEXT_FEATURES)
            d["hospital_cap_hours"] = HOSPITAL_CAP_HOURS
            d["layout"] += " | " + " | ".join(CONTEXT_FEATURES)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSpec:
        if int(d.get("window_hours", WINDOW)) != WINDOW:
            raise ValueError(f"feature spec window {d['window_hours']} != {WINDOW}")
        for key, want in (
            ("clip", CLIP),
            ("last_cap_hours", LAST_CAP_HOURS),
            ("first_cap_hours", FIRST_CAP_HOURS),
        ):
            if key in d and float(d[key]) != want:
                raise ValueError(f"feature spec {key}={d[key]} differs from this code's {want}")
        context = d.get("context")
        if context is not None and list(context) != list(CONTEXT_FEATURES):
            raise ValueError(f"feature spec context {context} differs from this code's")
        spec = cls(
            codes=tuple(d["codes"]),
            mean=tuple(float(x) for x in d["mean"]),
            std=tuple(float(x) for x in d["std"]),
            context=context is not None,
        )
        if "n_features" in d and int(d["n_features"]) != spec.n_features:
            raise ValueError(f"feature spec n_features {d['n_features']} != {spec.n_features}")
        return spec

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> FeatureSpec:
        return cls.from_dict(json.loads(path.read_text()))


def newest_version_dir(model_dir: Path) -> Path:
    """The highest numbered version folder of a Triton model folder."""
    versions = sorted(
        (p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()),
        key=lambda p: int(p.name),
    )
    if not versions:
        raise FileNotFoundError(f"no version folder in {model_dir}")
    return versions[-1]


@lru_cache(maxsize=1)
def default_spec() -> FeatureSpec:
    """The feature spec of the newest committed model version."""
    return FeatureSpec.load(newest_version_dir(DEFAULT_MODEL_DIR) / FEATURE_SPEC_FILE)


def empty_row(spec: FeatureSpec) -> F32:
    """The feature vector of an hour with nothing known (also the padding before a stay)."""
    c = len(spec.codes)
    row = np.zeros(spec.n_features, dtype=np.float32)
    row[2 * c : 3 * c] = 1.0
    return row


def _normalise(values: F64, spec: FeatureSpec) -> F64:
    mean, std = spec.arrays
    # np.minimum/np.maximum: the same numbers as np.clip (NaN included), without its
    # Python-level dispatch, which costs more than the arithmetic on a 48 x C window.
    # (Bound first: np.maximum(lo, x) picks what np.clip picks, NaN and signed zeros too.)
    out: F64 = np.minimum(CLIP, np.maximum(-CLIP, (values - mean) / std))
    return out


# Hours back from as_of of each bin's end, oldest -> newest, in seconds.
_BACK: Final = HOUR * np.arange(WINDOW - 1, -1, -1, dtype=np.float64)
_BACK.flags.writeable = False


@lru_cache(maxsize=8)
def _codes_key(c: int) -> npt.NDArray[np.intp]:
    """``k * (WINDOW + 1)`` for k in 0..c-1 (see feature_window)."""
    key = np.arange(c, dtype=np.intp) * (WINDOW + 1)
    key.flags.writeable = False
    return key


@lru_cache(maxsize=8)
def _queries(c: int) -> npt.NDArray[np.intp]:
    """``int[WINDOW, c]``: ``k * (WINDOW + 1) + j`` at row j, column k (see feature_window)."""
    q = (
        np.arange(c, dtype=np.intp)[None, :] * (WINDOW + 1)
        + np.arange(WINDOW, dtype=np.intp)[:, None]
    )
    q.flags.writeable = False
    return q


def feature_window(state: PatientState, as_of: TimeLike, spec: FeatureSpec | None = None) -> F32:
    """The model input for one patient at ``as_of``: ``float32[WINDOW, spec.n_features]``.

    Only observations with time <= as_of are used. See the module docstring for the layout.
    Raises ``ValueError`` when ``as_of`` is a naive datetime.
    """
    spec = spec or default_spec()
    c = len(spec.codes)
    t_end = to_epoch(as_of)
    ends = t_end - _BACK  # oldest -> newest, non-decreasing
    # All codes' series in one array, code after code (each time-ordered), so that the
    # lookups below are a few whole-array numpy calls instead of several per code (the
    # per-code loop was most of this function's cost).
    times, values, lens = state.concatenated(spec.codes)
    out = np.empty((WINDOW, spec.n_features), dtype=np.float32)
    if times:
        t = np.array(times, dtype=np.float64)
        v = np.array(values, dtype=np.float64)
        # The newest observation of code k at or before ends[j]: with r = how many ends
        # lie before an observation's time, "time <= ends[j]" is exactly "r <= j" (ends
        # non-decreasing), so with key = k * (WINDOW + 1) + r (sorted: codes in order,
        # times sorted within a code) it is the last key <= k * (WINDOW + 1) + j. Integer
        # keys, so one searchsorted answers every (bin, code) with no float rounding.
        r = np.searchsorted(ends, t, side="left")
        n = np.array(lens, dtype=np.intp)
        key = np.repeat(_codes_key(c), n)
        key += r
        pos = np.searchsorted(key, _queries(c), side="right")
        first = np.cumsum(n)
        first -= n  # where each code's stretch starts
        have = pos > first[None, :]
        idx = np.where(have, pos - 1, 0)
        last_t = t[idx]
        raw = np.where(have, v[idx], 0.0)
        col = ends[:, None]
        out[:, :c] = np.where(have, _normalise(raw, spec), 0.0)
        out[:, c : 2 * c] = have & (last_t > col - HOUR)
        out[:, 2 * c : 3 * c] = np.where(
            have, np.minimum((col - last_t) / HOUR, LAST_CAP_HOURS) / LAST_CAP_HOURS, 1.0
        )
    else:
        out[:, : 2 * c] = 0.0
        out[:, 2 * c : 3 * c] = 1.0
    if state.first_seen is None:
        out[:, 3 * c] = 0.0
    else:
        hours = np.clip((ends - state.first_seen) / HOUR, 0.0, FIRST_CAP_HOURS)
        out[:, 3 * c] = hours / FIRST_CAP_HOURS
    if spec.context:
        out[:, 3 * c + 1 :] = context_columns(ends, state.first_seen, StayContext.of_state(state))
    return out


def hourly_rows(
    matrix: npt.ArrayLike,
    spec: FeatureSpec | None = None,
    context: StayContext | None = None,
    start: float = 0.0,
) -> F32:
    """Per-row feature vectors ``float32[T, F]`` of a stay's hourly matrix.

    ``matrix[t, k]`` is the value of ``spec.codes[k]`` at hour ``t`` of the stay (NaN = not
    measured), in canonical units; row t's values are observed at ``start`` (epoch
    seconds) + t hours. With ``spec.context``, ``context`` (None: all unknown) fills the
    context columns. Row t of the result equals the last row of ``feature_window`` as of
    hour t.
    """
    spec = spec or default_spec()
    m = np.asarray(matrix, dtype=np.float64)
    n, c = m.shape
    if c != len(spec.codes):
        raise ValueError(f"matrix has {c} columns, spec has {len(spec.codes)} codes")
    seen = ~np.isnan(m)
    rows = np.arange(n)
    last = np.where(seen, rows[:, None], -1)
    last = np.maximum.accumulate(last, axis=0) if n else last
    have = last >= 0
    filled = np.take_along_axis(m, np.maximum(last, 0), axis=0)
    out = np.empty((n, spec.n_features), dtype=np.float32)
    out[:, :c] = np.where(have, _normalise(np.where(have, filled, 0.0), spec), 0.0)
    out[:, c : 2 * c] = seen
    stale = np.minimum(rows[:, None] - last, LAST_CAP_HOURS) / LAST_CAP_HOURS
    out[:, 2 * c : 3 * c] = np.where(have, stale, 1.0)
    any_seen = seen.any(axis=1)
    first: int | None = None
    if any_seen.any():
        first = int(np.argmax(any_seen))
        hours = np.clip((rows - first).astype(np.float64), 0.0, FIRST_CAP_HOURS)
        out[:, 3 * c] = hours / FIRST_CAP_HOURS
    else:
        out[:, 3 * c] = 0.0
    if spec.context:
        ends = start + HOUR * rows.astype(np.float64)
        first_seen = None if first is None else start + HOUR * first
        out[:, 3 * c + 1 :] = context_columns(ends, first_seen, context or StayContext())
    return out


def windows_from_rows(
    rows: F32, t_indices: Sequence[int] | npt.ArrayLike, spec: FeatureSpec
) -> F32:
    """Windows ``float32[B, WINDOW, F]`` ending at rows ``t_indices`` of :func:`hourly_rows`."""
    t = np.asarray(t_indices, dtype=np.int64)
    n = rows.shape[0]
    if t.size and (t.min() < 0 or t.max() >= n):
        raise IndexError(f"t_indices out of range [0, {n})")
    pad = np.broadcast_to(empty_row(spec), (WINDOW - 1, spec.n_features))
    padded = np.concatenate([pad, rows], axis=0)
    gather = t[:, None] + np.arange(WINDOW)[None, :]
    out: F32 = padded[gather]
    return out


def windows_from_hourly(
    matrix: npt.ArrayLike,
    t_indices: Sequence[int] | npt.ArrayLike,
    spec: FeatureSpec | None = None,
    context: StayContext | None = None,
    start: float = 0.0,
) -> F32:
    """Vectorised :func:`feature_window` for training: ``float32[B, WINDOW, F]``.

    Window b equals ``feature_window(state of rows 0..t, as_of = stay start + t h)`` with
    ``t = t_indices[b]``; see :func:`hourly_rows` for ``matrix``, ``context`` and
    ``start``.
    """
    spec = spec or default_spec()
    return windows_from_rows(hourly_rows(matrix, spec, context, start), t_indices, spec)
