"""The synthetic stay generator."""

from __future__ import annotations

import itertools

from fhir.codes import CodeTable
from fhir.physionet import COLUMNS, column_map, read_psv
from fhir.synthetic import generate_stays


def test_same_seed_same_output_other_seed_differs() -> None:
    a = list(generate_stays(20, seed=3))
    assert a == list(generate_stays(20, seed=3))
    assert a != list(generate_stays(20, seed=4))
    assert list(itertools.islice(generate_stays(30, seed=3), 20)) == a


def test_format_and_plausibility(table: CodeTable) -> None:
    stays = list(generate_stays(150, seed=11))
    assert len({pid for pid, _ in stays}) == 150
    septic = 0
    cmap = column_map()
    for _, text in stays:
        assert text.splitlines()[0] == "|".join(COLUMNS)
        rows = read_psv(text)
        assert 12 <= len(rows) <= 96
        assert [r["ICULOS"] for r in rows] == [float(i + 1) for i in range(len(rows))]
        labels = [r["SepsisLabel"] or 0.0 for r in rows]
        assert labels == sorted(labels)  # 0...0 1...1
        septic += labels[-1] == 1.0
        hr_present = sum(r["HR"] is not None for r in rows)
        assert hr_present >= 0.6 * (len(rows) - 1)
        for r in rows:
            for col, code in cmap.items():
                v = r[col]
                if v is not None:
                    assert table.is_plausible(code, v), (col, v)
            if r["SBP"] is not None and r["DBP"] is not None and r["MAP"] is not None:
                assert r["SBP"] > r["MAP"] > r["DBP"]
    assert 3 <= septic <= 30  # ~8 % of 150


def test_septic_patients_deteriorate() -> None:
    for _, text in generate_stays(200, seed=5):
        rows = read_psv(text)
        if rows[-1]["SepsisLabel"] != 1.0:
            continue
        first = rows.index(next(r for r in rows if r["SepsisLabel"] == 1.0))
        before = [r["HR"] for r in rows[:first] if r["HR"] is not None]
        after = [r["HR"] for r in rows[first + 8 :] if r["HR"] is not None]
        if before and len(after) >= 3:
            assert sum(after) / len(after) > sum(before) / len(before)
