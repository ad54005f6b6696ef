"""Shared fixtures for the fhir package tests (no services needed)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fhir.codes import CodeTable, load_code_table

REPO_ROOT = Path(__file__).resolve().parents[3]
SHARED_DATA = (REPO_ROOT / ".." / "shared" / "data").resolve()


def shared_dir(name: str) -> Path:
    """``../shared/data/<name>``; skip when absent, fail when absent in CI (CI=true)."""
    path = SHARED_DATA / name
    if not path.is_dir():
        msg = f"shared data {path} is absent (it lives next to the repository as ../shared/data)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg + "; CI must provide it")
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def table() -> CodeTable:
    return load_code_table()


def observation(
    loinc: str = "8867-4",
    value: Any = 72,
    unit: str | None = "/min",
    *,
    system: str = "http://loinc.org",
    **extra: Any,
) -> dict[str, Any]:
    """A minimal valid vital-sign Observation (override/extend with ``extra``)."""
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": "obs-1",
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": system, "code": loinc}]},
        "subject": {"reference": "Patient/pt-abc"},
        "effectiveDateTime": "2026-01-01T10:00:00+01:00",
    }
    if value is not None:
        q: dict[str, Any] = {"value": value}
        if unit is not None:
            q.update(unit=unit, system="http://unitsofmeasure.org", code=unit)
        obs["valueQuantity"] = q
    obs.update(extra)
    return obs


ObsFactory = Callable[..., dict[str, Any]]


@pytest.fixture
def make_obs() -> ObsFactory:
    return observation
