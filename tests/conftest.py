"""Shared test fixtures.

Data in ../shared is read where it lies. On a user's machine without it, tests that need
it skip with the reason; in CI (CI=true) its absence is a failure, never a skip. Tests
that need a service carry its marker (kafka, postgres, triton); they talk to the real
service that `make up` started and fail when it is not there.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
PHYSIONET = SHARED_DATA / "physionet2019" / "training_setB"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# The tests run the components on the local services' public credentials and the default
# pseudonym key, which only development mode allows (tests of the refusal set it off).
os.environ.setdefault("WARDWATCH_DEV_MODE", "1")


def require_shared(path: Path = SHARED_DATA) -> Path:
    """Return ``path`` or skip (fail in CI) when the shared data is absent."""
    if not path.exists():
        msg = f"{path} is absent: the public test data in ../shared is not on this machine"
        if IN_CI:
            pytest.fail(msg + " (CI must have it)")
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return require_shared(SHARED_DATA)


@pytest.fixture(scope="session")
def physionet_dir() -> Path:
    return require_shared(PHYSIONET)
