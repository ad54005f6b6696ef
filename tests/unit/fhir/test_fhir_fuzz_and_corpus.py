"""parse_resource never raises anything but PermanentInputError; the shared FHIR corpora."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fhir.errors import PermanentInputError
from fhir.parse import ParseResult, parse_resource

from .conftest import observation, shared_dir


def _safe_parse(raw: bytes) -> ParseResult | None:
    try:
        return parse_resource(raw)
    except PermanentInputError:
        return None


def mutate(
    base: Any, mutations: list[tuple[tuple[Any, ...], Any, bool]], *, replace_root: bool
) -> Any:
    """A deep copy of ``base`` with each (path, value, delete) applied where the path still
    exists; an empty path replaces the whole document when ``replace_root``."""
    doc: Any = copy.deepcopy(base)
    for path, value, delete in mutations:
        if not path:
            if replace_root:
                doc = value
            continue
        node = doc
        try:
            for p in path[:-1]:
                node = node[p]
            if isinstance(node, dict) and not isinstance(path[-1], str):
                continue  # an earlier mutation turned a list into an object: JSON keys are text
            if delete and isinstance(node, dict):
                node.pop(path[-1], None)
            else:
                node[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue
    return doc


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_arbitrary_bytes(raw: bytes) -> None:
    _safe_parse(raw)


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
    max_leaves=8,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _base() -> dict[str, Any]:
    obs = observation("85354-9", None, None)
    obs["component"] = [
        {
            "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
            "valueQuantity": {"value": 120, "code": "mm[Hg]"},
        }
    ]
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:p", "resource": {"resourceType": "Patient", "id": "p"}},
            {"fullUrl": "urn:uuid:o", "resource": obs},
            {"fullUrl": "urn:uuid:o2", "resource": observation()},
        ],
    }


BASE = _base()
PATHS = _paths(BASE)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(PATHS), _json, st.booleans()), max_size=4))
def test_mutated_observations(mutations: list[tuple[tuple[Any, ...], Any, bool]]) -> None:
    doc = mutate(BASE, mutations, replace_root=True)
    _safe_parse(orjson.dumps(doc))
    # the single Observation on its own, too
    entry = doc.get("entry") if isinstance(doc, dict) else None
    if isinstance(entry, list) and len(entry) > 1 and isinstance(entry[1], dict):
        _safe_parse(orjson.dumps(entry[1].get("resource")))


def _run_corpus(files: list[Path]) -> dict[str, int]:
    counts = {"files": 0, "raised": 0, "events": 0, "ignored": 0, "rejected": 0, "obs": 0}
    for f in files:
        counts["files"] += 1
        try:
            res = parse_resource(f.read_bytes())
        except PermanentInputError:
            counts["raised"] += 1
            continue
        counts["events"] += len(res.events)
        counts["ignored"] += len(res.ignored)
        counts["rejected"] += len(res.rejected)
        counts["obs"] += res.observations
    return counts


@pytest.mark.shared
def test_fhir_r4_examples_corpus() -> None:
    files = sorted(shared_dir("fhir-r4-examples").glob("*.json"))
    counts = _run_corpus(files)
    print("fhir-r4-examples", counts)
    assert counts["files"] >= 500
    assert counts["events"] >= 5


@pytest.mark.shared
def test_synthea_corpus() -> None:
    files = sorted(shared_dir("synthea-r4").glob("*.json"))
    counts = _run_corpus(files)
    print("synthea-r4", counts)
    assert counts["raised"] == 0
    assert counts["events"] >= 500
