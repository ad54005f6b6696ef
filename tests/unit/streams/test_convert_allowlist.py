"""`wardwatch convert` of real Synthea bundles: the edge's allow-list (fhir/data/phi_allow.yaml)
changes nothing but identity. The canonical events written from the pseudonymised bundles are
those of the original bundles with each patient replaced by its pseudonym (and a
DocumentReference's note text, which never passes the edge, left out)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import SecretStr

from fhir.parse import parse_resource
from fhir.pseudonym import pseudonymise
from streams.convert import convert
from streams.settings import Settings
from tests.conftest import SHARED_DATA, require_shared

pytestmark = pytest.mark.shared

KEY = "convert-allowlist-key"


def test_convert_of_synthea_bundles_keeps_every_event(tmp_path: Path) -> None:
    src = require_shared(SHARED_DATA / "synthea-r4")
    files = sorted(src.glob("*.json"))[:6]
    assert len(files) == 6
    inputs = tmp_path / "in"
    inputs.mkdir()
    for f in files:  # links, not copies, of the shared data
        (inputs / f.name).symlink_to(f)
    out, rejects = tmp_path / "ev.ndjson", tmp_path / "rej.ndjson"
    stats = convert([inputs], out, rejects, Settings(pseudonym_key=SecretStr(KEY)), progress=False)
    assert stats.crashes == 0
    assert rejects.read_bytes() == b""
    got = [orjson.loads(line) for line in out.read_bytes().splitlines()]

    expected: list[dict[str, Any]] = []
    for f in files:
        for e in parse_resource(f.read_bytes()).events:
            d = e.to_dict()
            pseudo = pseudonymise(e.patient, KEY.encode())
            d["patient"] = pseudo
            if d["source"] == f"Patient/{e.patient}":
                d["source"] = f"Patient/{pseudo}"
            d.pop("text", None)  # a note's text (to_dict leaves out a None text)
            expected.append(d)
    assert len(got) > 300  # vitals, labs, conditions, encounters, demographics
    assert {d["kind"] for d in got} >= {"vital", "lab", "condition", "encounter", "demographic"}
    assert [orjson.loads(orjson.dumps(d)) for d in expected] == got
