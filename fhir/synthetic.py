"""Seeded synthetic ICU stays in the PhysioNet 2019 ``.psv`` format, for machines without the
challenge data (demos, CI smoke runs, load tests). Not for training or evaluating a model.

:func:`generate_stays` yields ``(patient_id, psv_text)``; the text has exactly the challenge's
41-column header, one row per ICU hour, ``NaN`` for "not measured", and reads back with
:func:`fhir.physionet.read_psv`. Physiology: hourly vitals from a per-patient baseline with
AR(1) drift and measurement noise (SBP > MAP > DBP, MAP ~ DBP + (SBP - DBP)/3), vitals
missing ~8-15% of hours; labs every 6-24 h; 12-96 h stays. About 8% of patients become septic:
from an onset hour, HR and respiratory rate rise, blood pressure falls, temperature goes up
(or, for a few, down), lactate and WBC rise and platelets fall; ``SepsisLabel`` is 1 from 6 h
before onset (as in the challenge) to the end of the stay.

Deterministic: only :class:`numpy.random.Generator` seeded with ``seed`` (PCG64); the same
(n_patients, seed) gives byte-identical output. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from fhir.physionet import COLUMNS

SEPSIS_FRACTION = 0.08
_LABS: dict[str, tuple[float, float, float, float]] = {
    # column: (mean, sd, low clip, high clip) for a non-septic ICU patient
    "BaseExcess": (0.0, 3.0, -25.0, 15.0),
    "HCO3": (24.0, 3.0, 8.0, 40.0),
    "pH": (7.39, 0.05, 6.9, 7.6),
    "PaCO2": (40.0, 6.0, 20.0, 90.0),
    "SaO2": (96.0, 2.5, 70.0, 100.0),
    "AST": (45.0, 30.0, 8.0, 3000.0),
    "BUN": (20.0, 10.0, 3.0, 150.0),
    "Alkalinephos": (90.0, 35.0, 20.0, 800.0),
    "Calcium": (8.5, 0.6, 5.5, 12.0),
    "Chloride": (104.0, 4.0, 85.0, 125.0),
    "Creatinine": (1.1, 0.5, 0.3, 10.0),
    "Bilirubin_direct": (0.3, 0.2, 0.05, 15.0),
    "Glucose": (130.0, 35.0, 50.0, 500.0),
    "Lactate": (1.3, 0.5, 0.4, 20.0),
    "Magnesium": (2.0, 0.25, 1.0, 4.0),
    "Phosphate": (3.5, 0.8, 1.0, 9.0),
    "Potassium": (4.1, 0.45, 2.5, 7.0),
    "Bilirubin_total": (0.8, 0.5, 0.1, 25.0),
    "TroponinI": (0.05, 0.2, 0.01, 50.0),
    "Hct": (31.0, 5.0, 18.0, 50.0),
    "Hgb": (10.4, 1.7, 6.0, 17.0),
    "PTT": (32.0, 8.0, 20.0, 150.0),
    "WBC": (10.0, 3.5, 1.0, 60.0),
    "Fibrinogen": (320.0, 90.0, 80.0, 900.0),
    "Platelets": (210.0, 70.0, 10.0, 800.0),
}
# Labs drawn in the common panels (others are rarer).
_COMMON_LABS = ("BUN", "Creatinine", "Glucose", "Potassium", "Chloride", "Calcium", "Hct",
                "Hgb", "WBC", "Platelets", "Magnesium", "HCO3", "Phosphate")  # fmt: skip


def _fmt(x: float) -> str:
    if np.isnan(x):
        return "NaN"
    return f"{x:.6g}"


def _stay(rng: np.random.Generator, septic: bool) -> list[list[float]]:
    n_hours = int(rng.integers(12, 97))
    onset = -1
    if septic:
        onset = int(rng.integers(min(10, n_hours - 2), n_hours))  # first septic hour
    age = float(np.clip(rng.normal(63, 16), 18, 100))
    gender = float(rng.integers(0, 2))
    unit1 = float(rng.integers(0, 2))
    unit = (unit1, 1.0 - unit1) if rng.random() < 0.8 else (float("nan"), float("nan"))
    hosp_adm = -float(np.round(rng.exponential(20.0), 2))
    hypothermic = septic and rng.random() < 0.2
    base = {
        "HR": rng.normal(84, 12),
        "O2Sat": rng.normal(97, 1.5),
        "Temp": rng.normal(36.9, 0.35),
        "SBP": rng.normal(122, 15),
        "DBP": rng.normal(62, 8),
        "Resp": rng.normal(18, 3),
        "EtCO2": rng.normal(36, 4),
    }
    lab_base = {k: rng.normal(m, s * 0.6) for k, (m, s, _, _) in _LABS.items()}
    drift = dict.fromkeys(base, 0.0)
    rows: list[list[float]] = []
    ventilated = rng.random() < 0.3
    next_lab = int(rng.integers(0, 6))
    for h in range(n_hours):
        sev = 0.0
        if septic:
            # severity ramps from 0 at onset-6h to 1 at onset+6h
            sev = float(np.clip((h - (onset - 6)) / 12.0, 0.0, 1.0))
        for k in drift:
            drift[k] = 0.85 * drift[k] + rng.normal(0, 1.0)
        row = dict.fromkeys(COLUMNS, float("nan"))
        hr = base["HR"] + 3 * drift["HR"] + 30 * sev + rng.normal(0, 3)
        resp = base["Resp"] + 0.8 * drift["Resp"] + 9 * sev + rng.normal(0, 1.5)
        sbp = base["SBP"] + 3 * drift["SBP"] - 30 * sev + rng.normal(0, 5)
        dbp = min(base["DBP"] + 2 * drift["DBP"] - 14 * sev + rng.normal(0, 3), sbp - 15)
        temp_shift = (-1.8 if hypothermic else 1.7) * sev
        temp = base["Temp"] + 0.1 * drift["Temp"] + temp_shift + rng.normal(0, 0.15)
        o2 = base["O2Sat"] + 0.3 * drift["O2Sat"] - 4 * sev + rng.normal(0, 0.8)
        vitals = {
            "HR": float(np.clip(hr, 30, 220)),
            "O2Sat": float(np.clip(o2, 70, 100)),
            "Temp": float(np.clip(temp, 32.0, 42.0)),
            "SBP": float(np.clip(sbp, 50, 250)),
            "DBP": float(np.clip(dbp, 20, 150)),
            "Resp": float(np.clip(resp, 6, 50)),
        }
        vitals["MAP"] = vitals["DBP"] + (vitals["SBP"] - vitals["DBP"]) / 3.0 + rng.normal(0, 1)
        for k, v in vitals.items():
            p_missing = 0.6 if k == "Temp" else 0.1
            if h > 0 and rng.random() >= p_missing:
                row[k] = round(v, 1 if k in ("Temp", "O2Sat", "MAP") else 0)
        if ventilated and rng.random() < 0.5:
            row["EtCO2"] = round(float(np.clip(base["EtCO2"] + drift["EtCO2"], 15, 80)), 0)
            row["FiO2"] = round(float(np.clip(rng.normal(0.4 + 0.2 * sev, 0.05), 0.21, 1.0)), 2)
        if h >= next_lab:
            next_lab = h + int(rng.integers(6, 25))
            for k, (_m, s, lo, hi) in _LABS.items():
                if k not in _COMMON_LABS and rng.random() < 0.7:
                    continue
                if k == "Lactate" and not (septic or rng.random() < 0.4):
                    continue
                v = lab_base[k] + rng.normal(0, s * 0.25)
                if k == "Lactate":
                    v += 3.5 * sev
                elif k == "WBC":
                    v += 9.0 * sev
                elif k == "Platelets":
                    v -= 110.0 * sev
                elif k == "Creatinine":
                    v += 0.9 * sev
                elif k in ("pH",):
                    v -= 0.08 * sev
                elif k in ("HCO3", "BaseExcess"):
                    v -= 5.0 * sev
                row[k] = round(float(np.clip(v, lo, hi)), 2)
        row["Age"] = round(age, 2)
        row["Gender"] = gender
        row["Unit1"], row["Unit2"] = unit
        row["HospAdmTime"] = hosp_adm
        row["ICULOS"] = float(h + 1)
        row["SepsisLabel"] = 1.0 if septic and h >= onset - 6 else 0.0
        rows.append([row[c] for c in COLUMNS])
    return rows


def generate_stays(n_patients: int, seed: int) -> Iterator[tuple[str, str]]:
    """Yield ``(patient_id, psv_text)`` for ``n_patients`` synthetic ICU stays.

    Patient ids are ``s<seed>-<nnnnnn>``. Deterministic in (n_patients, seed); about
    :data:`SEPSIS_FRACTION` of the stays are septic. Raises ValueError for a negative
    ``n_patients`` (a programming error).
    """
    if n_patients < 0:
        raise ValueError("n_patients must be >= 0")
    rng = np.random.Generator(np.random.PCG64(seed))
    header = "|".join(COLUMNS)
    for i in range(n_patients):
        septic = bool(rng.random() < SEPSIS_FRACTION)
        rows = _stay(rng, septic)
        lines = [header, *("|".join(_fmt(x) for x in r) for r in rows)]
        yield f"s{seed}-{i + 1:06d}", "\n".join(lines) + "\n"


__all__ = ["SEPSIS_FRACTION", "generate_stays"]
