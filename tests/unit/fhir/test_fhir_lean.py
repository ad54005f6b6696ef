"""The lean decoder (fhir/lean.py) against full fhir.resources validation: same decisions.

Two levels, on the same inputs:

* the checker itself: wherever :func:`fhir.lean.check_observation` or
  :func:`~fhir.lean.check_bundle_shell` decides (valid / invalid), fhir.resources' R4B model
  must decide the same way;
* the whole parse: ``parse_resource(..., validation="lean")`` and ``validation="full"`` give the
  same events, ignored lines, rejected entries (class, resource) and raised error class.

Inputs: the FHIR R4 spec examples and Synthea bundles in ../shared, PhysioNet row Bundles,
the project's own fuzz base, and systematic and random mutations of Observations.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fhir.lean
import fhir.parse
from fhir.errors import InvalidResource, InvalidTime, PermanentInputError
from fhir.lean import check_bundle_shell, check_observation
from fhir.parse import ParseResult, parse_resource
from fhir.physionet import read_psv, row_bundle
from tests.unit.fhir.test_fhir_fuzz_and_corpus import _paths, mutate

from .conftest import observation, shared_dir
from .test_fhir_fuzz_and_corpus import BASE, PATHS, _json


@pytest.fixture(autouse=True)
def _lean_bugs_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    """In production a bug in the lean checks falls back to full validation (same decision,
    only slower); here it must fail the test instead of hiding."""
    monkeypatch.setattr(fhir.lean, "RAISE_INTERNAL_ERRORS", True)


def _model(name: str) -> Any:
    from fhir.resources.R4B import get_fhir_model_class

    return get_fhir_model_class(name)


def _model_accepts(name: str, doc: Any) -> bool:
    try:
        _model(name).model_validate(doc)
    except Exception:  # pydantic ValidationError and fhir.resources' own errors
        return False
    return True


def _shell(bundle: dict[str, Any]) -> dict[str, Any]:
    """What fhir.parse validates of a Bundle: itself without its entries' resources."""
    shell = {k: v for k, v in bundle.items() if k != "entry"}
    entries = [{k: v for k, v in e.items() if k != "resource"} for e in bundle.get("entry", [])]
    if [e for e in entries if e]:
        shell["entry"] = [e for e in entries if e]
    return shell


def _outcome(raw: bytes, mode: str) -> tuple[Any, ...]:
    """Everything a caller sees of one parse, reasons' wording aside."""
    try:
        res: ParseResult = parse_resource(raw, validation=mode)  # type: ignore[arg-type]
    except PermanentInputError as exc:
        return ("raised", type(exc).__name__, exc.resource_type, exc.resource_id)
    rejected = [(type(e).__name__, e.resource_type, e.resource_id) for e in res.rejected]
    return (res.events, res.ignored, rejected, res.resources, res.observations)


def assert_same(raw: bytes) -> tuple[Any, ...]:
    lean, full = _outcome(raw, "lean"), _outcome(raw, "full")
    assert lean == full, raw[:300]
    return lean


class Tally:
    """How often the lean checker decided, and how; every decision checked against pydantic."""

    def __init__(self) -> None:
        self.counts = {"valid": 0, "invalid": 0, "unsure": 0}

    def observation(self, obs: Any) -> None:
        self._one("Observation", obs, check_observation(obs))

    def bundle(self, bundle: dict[str, Any]) -> None:
        self._one("Bundle", _shell(bundle), check_bundle_shell(bundle))

    def _one(self, name: str, doc: Any, verdict: list[tuple[str, str]] | None) -> None:
        if verdict is None:
            self.counts["unsure"] += 1
            return
        self.counts["valid" if not verdict else "invalid"] += 1
        assert _model_accepts(name, doc) == (not verdict), (verdict, str(doc)[:300])


def _walk(doc: Any, tally: Tally) -> None:
    """Check every Observation and Bundle inside ``doc``."""
    if isinstance(doc, dict):
        rt = doc.get("resourceType")
        if rt == "Observation":
            tally.observation(doc)
        elif (
            rt == "Bundle"
            and isinstance(doc.get("entry", []), list)
            and all(isinstance(e, dict) for e in doc.get("entry", []))
        ):
            tally.bundle(doc)
        for v in doc.values():
            _walk(v, tally)
    elif isinstance(doc, list):
        for v in doc:
            _walk(v, tally)


def _corpus(name: str) -> Tally:
    tally = Tally()
    for f in sorted(shared_dir(name).glob("*.json")):
        raw = f.read_bytes()
        assert_same(raw)
        _walk(orjson.loads(raw), tally)
    return tally


@pytest.mark.shared
def test_fhir_r4_examples_same_decisions() -> None:
    tally = _corpus("fhir-r4-examples")
    print("fhir-r4-examples", tally.counts)
    # the lean path must actually be exercised: most spec Observations are plain enough
    assert tally.counts["valid"] >= 400


@pytest.mark.shared
def test_synthea_same_decisions() -> None:
    tally = _corpus("synthea-r4")
    print("synthea-r4", tally.counts)
    assert tally.counts["valid"] >= 1000


# ------------------------------------------------------------------ PhysioNet: the hot path
def _physionet_bodies(n_stays: int) -> list[bytes]:
    stays = sorted((shared_dir("physionet2019") / "training_setB").glob("*.psv"))[:n_stays]
    start = datetime(2026, 1, 1, tzinfo=UTC)
    out = []
    for path in stays:
        for hour, row in enumerate(read_psv(path.read_text())):
            bundle = row_bundle(f"pt-{path.stem}", start, hour, row)
            if bundle is not None:
                out.append(orjson.dumps(bundle))
    return out


@pytest.mark.shared
def test_physionet_bundles_take_the_lean_path(monkeypatch: pytest.MonkeyPatch) -> None:
    bodies = _physionet_bodies(3)
    calls: list[str] = []
    full_validate = fhir.parse._validate

    def counting(resource_type: str, doc: Any, rid: str | None) -> None:
        calls.append(resource_type)
        full_validate(resource_type, doc, rid)

    monkeypatch.setattr(fhir.parse, "_validate", counting)
    n_obs = sum(parse_resource(b, validation="full").observations for b in bodies)
    # the counter sees the full path: one call per Observation and per Bundle shell
    assert len(calls) == n_obs + len(bodies) and n_obs > 100
    calls.clear()
    outcomes = [assert_same(b) for b in bodies[:50]]
    assert all(o[0] and not o[2] for o in outcomes)  # events, nothing rejected
    calls.clear()
    for b in bodies:
        parse_resource(b, validation="lean")
    decisive = 1 - len(calls) / (n_obs + len(bodies))
    print(f"lean decisive on {decisive:.1%} of {n_obs} Observations + {len(bodies)} Bundles")
    assert calls == []  # 100%: the fast path is taken for every PhysioNet-shaped resource


# ------------------------------------------------------------------ mutations
def _rich_observation() -> dict[str, Any]:
    obs = observation("85354-9", None, None)
    obs.update(
        {
            "meta": {
                "versionId": "1",
                "lastUpdated": "2026-01-01T10:00:00.123+01:00",
                "profile": ["http://hl7.org/fhir/StructureDefinition/vitalsigns"],
            },
            "text": {"status": "generated", "div": "<div>bp</div>"},
            "identifier": [{"system": "urn:ietf:rfc:3986", "value": "urn:uuid:1"}],
            "encounter": {"reference": "Encounter/e1", "display": "stay"},
            "performer": [{"reference": "Practitioner/p1"}],
            "issued": "2026-01-01T10:05:00Z",
            "interpretation": [{"text": "normal"}],
            "note": [{"text": "sitting", "authorString": "nurse"}],
            "component": [
                {
                    "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                    "valueQuantity": {"value": 120, "unit": "mmHg", "code": "mm[Hg]"},
                    "referenceRange": [{"low": {"value": 90}, "high": {"value": 140.5}}],
                },
                {
                    "code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
                    "valueQuantity": {"value": 80.0, "code": "mm[Hg]"},
                },
            ],
        }
    )
    return obs


BAD_VALUES: list[Any] = [
    5,
    1.5,
    True,
    "x",
    "",
    " x",
    "x  y",
    [],
    {},
    None,
    [None],
    [5],
    {"foo": 1},
    "2026-02-30T00:00:00Z",
    "2026-01-01T10:00:00",
    "not-a-date",
    "a" * 300,
]
SPECIFIC: list[tuple[str, dict[str, Any]]] = [
    ("two values", {"valueString": "x"}),
    ("two effective", {"effectivePeriod": {"start": "2026-01-01T00:00:00Z"}}),
    ("instant effective too", {"effectiveInstant": "2026-01-01T00:00:00Z"}),
    ("unknown key", {"valueQuantityX": 1}),
    ("unknown time-like key", {"issuedAt": "2026-01-01T00:00:00Z"}),
    ("extension", {"extension": [{"url": "http://x", "valueString": "y"}]}),
    ("modifierExtension", {"modifierExtension": [{"url": "http://x", "valueString": "y"}]}),
    ("primitive extension", {"_status": {"extension": [{"url": "http://x"}]}}),
    ("fhir_comments", {"fhir_comments": "hello"}),
    ("field name", {"status__ext": {"extension": [{"url": "http://x"}]}}),
    ("contained", {"contained": [{"resourceType": "Patient", "id": "p"}]}),
    ("status enum", {"status": "bogus"}),
    ("status spaces", {"status": "final "}),
    ("status cancelled", {"status": "cancelled"}),
    ("status unicode", {"status": "fïnal"}),
    ("date only", {"effectiveDateTime": "2026-01-01"}),
    ("partial date", {"effectiveDateTime": "2026-02"}),
    ("year", {"effectiveDateTime": "2026"}),
    ("feb 29 non-leap", {"effectiveDateTime": "2025-02-29T00:00:00Z"}),
    ("feb 29 leap", {"effectiveDateTime": "2024-02-29T00:00:00Z"}),
    ("leap second", {"effectiveDateTime": "2016-12-31T23:59:60Z"}),
    ("lower t", {"effectiveDateTime": "2026-01-01t00:00:00Z"}),
    ("+15:00", {"effectiveDateTime": "2026-01-01T00:00:00+15:00"}),
    ("long fraction", {"effectiveDateTime": "2026-01-01T00:00:00.1234567890Z"}),
    ("epoch number", {"effectiveDateTime": 1767225600}),
    ("issued date", {"issued": "2026-01-01"}),
    ("issued bad + bad id", {"issued": "x", "id": "a b"}),
    ("period bad end", {"effectivePeriod": {"end": "tomorrow"}}),
    ("id 64", {"id": "a" * 64}),
    ("id 255", {"id": "a" * 255}),
    ("id 256", {"id": "a" * 256}),
    ("id underscore", {"id": "a_b"}),
    ("value string number", {"valueQuantity": {"value": "72"}}),
    ("value bool", {"valueQuantity": {"value": True}}),
    ("value exp string", {"valueQuantity": {"value": "1e5"}}),
    ("value huge", {"valueQuantity": {"value": 1e300}}),
    ("valueInteger float", {"valueInteger": 72.0}),
    ("valueBoolean string", {"valueBoolean": "true"}),
    ("valueString vt", {"valueString": "\x0b"}),
    ("valueString nbsp", {"valueString": "\xa0"}),
    ("valueString ctrl", {"valueString": "\x1c"}),
    ("code as JSON string", {"code": '{"text": "hr"}'}),
    ("category object", {"category": {"text": "x"}}),
    ("category string", {"category": "vital-signs"}),
    ("subject empty ref", {"subject": {"reference": ""}}),
    ("subject number", {"subject": {"reference": 5}}),
    ("subject extra", {"subject": {"ref": "Patient/p"}}),
    ("nested resourceType", {"code": {"resourceType": "CodeableConcept", "text": "x"}}),
    ("nested wrong resourceType", {"code": {"resourceType": "Coding", "text": "x"}}),
    ("coding code spaces", {"code": {"coding": [{"system": "http://loinc.org", "code": " 1"}]}}),
    ("userSelected string", {"code": {"coding": [{"code": "1", "userSelected": "yes"}]}}),
    ("meta lastUpdated date", {"meta": {"lastUpdated": "2026-01-01"}}),
    ("meta profile number", {"meta": {"profile": [5]}}),
    ("narrative no div", {"text": {"status": "generated"}}),
    (
        "annotation two authors",
        {"note": [{"text": "n", "authorString": "a", "authorReference": {}}]},
    ),
    ("annotation no text", {"note": [{"authorString": "a"}]}),
    ("timing", {"effectiveTiming": {"event": ["2026-01-01T00:00:00Z"]}}),
    ("range", {"valueRange": {"low": {"value": 1}}}),
]


def _mutants() -> Iterator[tuple[str, Any]]:
    base = _rich_observation()
    for label, patch in SPECIFIC:
        for b in (base, observation()):
            yield label, {**b, **patch}
    for key in base:
        yield f"drop {key}", {k: v for k, v in base.items() if k != key}
    paths = [p for p in _paths(base) if p]
    for path in paths:
        for bad in BAD_VALUES:
            doc = copy.deepcopy(base)
            node = doc
            for p in path[:-1]:
                node = node[p]
            node[path[-1]] = bad
            yield f"{'.'.join(map(str, path))}={str(bad)[:20]!r}", doc


def test_mutated_observations_same_decisions() -> None:
    tally = Tally()
    n = 0
    for _label, obs in _mutants():
        tally.observation(obs)
        raw = orjson.dumps(obs)
        assert_same(raw)
        bundle = {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [
                {"fullUrl": "urn:uuid:p", "resource": {"resourceType": "Patient", "id": "pt-abc"}},
                {"fullUrl": "urn:uuid:o", "resource": obs},
            ],
        }
        tally.bundle(bundle)
        assert_same(orjson.dumps(bundle))
        n += 1
    print(n, tally.counts)
    # the lean checker decided (and agreed) on most mutants, both ways
    assert tally.counts["valid"] >= 50 and tally.counts["invalid"] >= 300


def test_lean_rejections_name_the_problem() -> None:
    bad_time = {**observation(), "effectiveDateTime": "2026-02-30T10:00:00Z"}
    with pytest.raises(InvalidTime, match=r"effectiveDateTime: '2026-02-30T10:00:00Z'"):
        parse_resource(orjson.dumps(bad_time), strict=True, validation="lean")
    both = {**observation(), "valueString": "72"}
    with pytest.raises(InvalidResource, match="only one of valueQuantity, valueString"):
        parse_resource(orjson.dumps(both), strict=True, validation="lean")
    extra = {**observation(), "flavour": "x"}
    with pytest.raises(InvalidResource, match="flavour: Extra inputs are not permitted"):
        parse_resource(orjson.dumps(extra), strict=True, validation="lean")
    assert check_observation(extra) == [("flavour", "Extra inputs are not permitted")]
    assert check_observation({**observation(), "extension": []}) is None  # not sure


def test_bundle_shell_mutations_same_decisions() -> None:
    tally = Tally()
    base: dict[str, Any] = copy.deepcopy(BASE)
    base.update(id="b1", timestamp="2026-01-01T00:00:00Z", total=2)
    base["link"] = [{"relation": "self", "url": "http://x/Bundle/b1"}]
    base["entry"][1]["request"] = {"method": "PUT", "url": "Observation/o"}
    base["entry"][2]["response"] = {"status": "201 Created", "lastModified": "2026-01-01T00:00:00Z"}
    base["entry"][2]["search"] = {"mode": "match", "score": "0.5"}
    variants: list[dict[str, Any]] = [base]
    for path in [
        *_paths({k: v for k, v in base.items() if k != "entry"}),
        ("entry", 1, "request", "method"),
        ("entry", 1, "request"),
        ("entry", 1, "fullUrl"),
        ("entry", 2, "search", "score"),
        ("entry", 2, "response", "status"),
    ]:
        if not path or path == ("resourceType",):
            continue
        for bad in BAD_VALUES:
            doc = copy.deepcopy(base)
            node = doc
            for p in path[:-1]:
                node = node[p]
            node[path[-1]] = bad
            variants.append(doc)
        doc = copy.deepcopy(base)
        node = doc
        for p in path[:-1]:
            node = node[p]
        del node[path[-1]]
        variants.append(doc)
    for doc in variants:
        if isinstance(doc.get("entry"), list):
            tally.bundle(doc)
        assert_same(orjson.dumps(doc))
    print(len(variants), tally.counts)
    assert tally.counts["valid"] >= 10 and tally.counts["invalid"] >= 50


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(PATHS), _json, st.booleans()), max_size=4))
def test_random_mutations_same_decisions(
    mutations: list[tuple[tuple[Any, ...], Any, bool]],
) -> None:
    doc = mutate(BASE, mutations, replace_root=False)
    assert_same(orjson.dumps(doc))
    tally = Tally()
    _walk(doc, tally)


def test_validation_argument_is_checked() -> None:
    with pytest.raises(ValueError, match="validation"):
        parse_resource(orjson.dumps(observation()), validation="fast")  # type: ignore[arg-type]


def test_physionet_rows_without_shared_data() -> None:
    """The hot-path shape, built here (no ../shared needed): decided by the lean path."""
    row = {"HR": 80.0, "O2Sat": 97.0, "Temp": 37.2, "SBP": 120.0, "MAP": 90.0, "Resp": 18.0}
    bundle = row_bundle("pt-x", datetime(2026, 1, 1, tzinfo=UTC), 3, row)
    assert bundle is not None
    assert check_bundle_shell(bundle) == []
    for e in bundle["entry"]:
        assert check_observation(e["resource"]) == []
    out = assert_same(orjson.dumps(bundle))
    assert len(out[0]) == 6
