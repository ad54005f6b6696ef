"""`wardwatch convert` input discovery and summary (the shared-data run is in
tests/unit/fhir/test_fhir_conformance.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.convert import ConvertStats, convert, expand_inputs, summary_lines
from streams.settings import Settings


def test_expand_and_psv_sample(tmp_path: Path) -> None:
    for name in ("b.psv", "a.psv", "c.psv", "x.hl7", "y.json", "z.txt"):
        (tmp_path / name).write_text("")
    got = [p.name for p in expand_inputs([tmp_path], psv_sample=2)]
    assert got == ["a.psv", "b.psv", "x.hl7", "y.json"]
    with pytest.raises(FileNotFoundError, match="nope"):
        expand_inputs([tmp_path / "nope"])


def test_bad_psv_and_binary_json_are_rejects_not_crashes(tmp_path: Path) -> None:
    (tmp_path / "p.psv").write_text("not|a|physionet|header\n1|2\n")
    (tmp_path / "g.json").write_bytes(b"\x00\xff\xfe garbage")
    (tmp_path / "e.hl7").write_bytes(b"")
    stats = convert(
        [tmp_path],
        tmp_path / "o" / "ev.ndjson",
        tmp_path / "o" / "rej.ndjson",
        Settings(),
        progress=False,
    )
    assert stats.crashes == 0
    assert stats.kinds["psv"].rejected == 1 and stats.kinds["fhir-json"].rejected == 1
    assert stats.kinds["hl7v2"].inputs == 0
    assert len((tmp_path / "o" / "rej.ndjson").read_bytes().splitlines()) == 2


def test_summary_lines() -> None:
    s = ConvertStats()
    s.kind("hl7v2").files = 1
    s.codes.update({"heart_rate": 3, "spo2": 1})
    text = "\n".join(summary_lines(s))
    assert "hl7v2" in text and "heart_rate" in text and "INTERNAL" not in text
