"""Clinical context the scores read: which patients are scored on NEWS2 SpO2 scale 2.

The mapping is data (``inference/data/news2_scale2.yaml``): Flag/Goal codes that state a
prescribed 88-92 % SpO2 target, and Condition codes (hypercapnic respiratory failure)
that imply it. Pure apart from reading that file once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Final

import yaml

from inference.state import PatientState, TimeLike

SCALE2_FILE: Final = Path(__file__).resolve().parent / "data" / "news2_scale2.yaml"


def _norm(value_code: str) -> str:
    system, sep, code = value_code.strip().partition("|")
    return f"{system.strip().lower()}{sep}{code.strip()}" if sep else code.strip()


@dataclass(frozen=True, slots=True)
class Scale2Codes:
    """The ``"<system>|<code>"`` values that select SpO2 scale 2 (normalised)."""

    flag_or_goal: frozenset[str]
    condition: frozenset[str]

    @classmethod
    def from_lists(cls, flag_or_goal: Iterable[str], condition: Iterable[str]) -> Scale2Codes:
        return cls(frozenset(map(_norm, flag_or_goal)), frozenset(map(_norm, condition)))

    def selects(self, flags: Iterable[str], conditions: Iterable[str]) -> bool:
        """True when any flag/goal or condition code is listed. Raises nothing."""
        return any(_norm(c) in self.flag_or_goal for c in flags) or any(
            _norm(c) in self.condition for c in conditions
        )


@lru_cache(maxsize=4)
def load_scale2_codes(path: Path = SCALE2_FILE) -> Scale2Codes:
    """The scale-2 code lists from ``path``.

    Raises ``OSError`` when the file cannot be read and ``ValueError`` when it is not a
    mapping of two lists (permanent: a packaging error; not retried).
    """
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping with flag_or_goal and condition")
    lists = {}
    for key in ("flag_or_goal", "condition"):
        items = data.get(key) or []
        if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
            raise ValueError(f"{path}: {key} must be a list of '<system>|<code>' strings")
        lists[key] = items
    return Scale2Codes.from_lists(lists["flag_or_goal"], lists["condition"])


def uses_spo2_scale2(
    state: PatientState, as_of: TimeLike, codes: Scale2Codes | None = None
) -> bool:
    """Whether NEWS2 should use SpO2 scale 2 for this patient at ``as_of``: a listed Flag or
    Goal, or a listed Condition, recorded at or before ``as_of`` and not retracted.

    Raises what :func:`load_scale2_codes` raises when ``codes`` is None.
    """
    table = codes if codes is not None else load_scale2_codes()
    flags = state.context("flag", as_of) | state.context("goal", as_of)
    return table.selects(flags, state.context("condition", as_of))
