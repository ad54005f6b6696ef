"""The canonical code table: which FHIR codes and units map to which canonical codes.

Loaded once at start-up from the packaged ``fhir/data/codes.yaml`` (the only file I/O in
``fhir``) and validated: every canonical code of :mod:`fhir.events` present exactly once, every
unit table containing the canonical unit with factor 1, sane ranges, no LOINC (or local code)
mapped twice. A broken table raises :class:`ValueError` naming the file and the entry: that is a
deployment error, not bad input, and the process should refuse to start.

After loading, every method is pure and cheap (dict look-ups).

Example::

    table = load_code_table()
    table.lookup("http://loinc.org", "8867-4")        # "heart_rate"
    table.convert("temperature", 98.6, "[degF]")       # 37.0
    table.check_plausible("heart_rate", 400.0)         # raises ImplausibleValue
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, cast

import yaml

from fhir.errors import ImplausibleValue, UnitError, UnknownCode
from fhir.events import CATEGORICAL_CODES, LAB_CODES, VITAL_CODES

LOINC_SYSTEM = "http://loinc.org"
UCUM_SYSTEM = "http://unitsofmeasure.org"
DATA_DIR = Path(__file__).resolve().parent / "data"
CODES_FILE = DATA_DIR / "codes.yaml"

CodeKind = Literal["vital", "lab"]


@dataclass(frozen=True, slots=True)
class Conversion:
    """``canonical = value * factor + offset``."""

    factor: float
    offset: float = 0.0

    def apply(self, value: float) -> float:
        """Convert ``value``; never raises."""
        if self.offset == 0.0:
            return value * self.factor if self.factor != 1.0 else value
        return value * self.factor + self.offset


@dataclass(frozen=True, slots=True)
class CodeSpec:
    """One canonical code's entry of codes.yaml."""

    code: str
    kind: CodeKind
    unit: str
    display: str
    loinc: tuple[str, ...]
    loinc_lab: tuple[str, ...]
    units: Mapping[str, Conversion]
    low: float | None
    high: float | None
    values: Mapping[str, str] = field(default_factory=dict)

    @property
    def categorical(self) -> bool:
        """True for codes whose value travels in ``value_code`` (ACVPU, O2 device)."""
        return self.code in CATEGORICAL_CODES

    @property
    def primary_loinc(self) -> str | None:
        """The LOINC code used when WardWatch writes FHIR (first of ``loinc``/``loinc_lab``)."""
        if self.loinc:
            return self.loinc[0]
        return self.loinc_lab[0] if self.loinc_lab else None

    @property
    def category(self) -> str:
        """The FHIR observation-category code for this kind: vital-signs or laboratory."""
        return "laboratory" if self.kind == "lab" else "vital-signs"


@dataclass(frozen=True, slots=True)
class CodeTable:
    """The validated code table (build it with :func:`load_code_table`)."""

    specs: Mapping[str, CodeSpec]
    unit_aliases: Mapping[str, str]
    # (system, code) -> canonical code; the lab map applies only to laboratory Observations
    by_coding: Mapping[tuple[str, str], str]
    by_coding_lab: Mapping[tuple[str, str], str]
    source: str = str(CODES_FILE)

    # ---------------------------------------------------------------- look-ups
    def lookup(self, system: str, code: str, *, laboratory: bool = False) -> str | None:
        """The canonical code for a coding, or None if WardWatch does not use it.

        ``laboratory`` says the Observation has the ``laboratory`` category, which selects
        the ``loinc_lab`` mappings first (2708-6 is SaO2 from the lab, SpO2 otherwise).
        Never raises.
        """
        key = (system, code)
        if laboratory:
            hit = self.by_coding_lab.get(key)
            if hit is not None:
                return hit
        return self.by_coding.get(key)

    def spec(self, code: str) -> CodeSpec:
        """The entry of canonical ``code``. Raises UnknownCode (permanent) if there is none."""
        try:
            return self.specs[code]
        except KeyError:
            raise UnknownCode(f"unknown canonical code {code!r}") from None

    def normalise_unit(self, unit: str | None) -> str:
        """The UCUM code for a unit as sent (``"mmHg"`` -> ``"mm[Hg]"``); "" for none."""
        if not unit:
            return ""
        u = unit.strip()
        return self.unit_aliases.get(u, u)

    def convert(self, code: str, value: float, unit: str | None) -> float:
        """``value`` in ``unit`` converted to ``code``'s canonical unit.

        ``unit`` is a UCUM code or a known alias; "" or None means "no unit", accepted only
        where codes.yaml lists ``""`` (scores, pH). Raises UnknownCode for an unknown canonical
        code and UnitError (permanent) for a unit that is not accepted for it or a non-finite
        value. Does not check plausibility (see :meth:`check_plausible`).
        """
        spec = self.spec(code)
        if not math.isfinite(value):
            raise UnitError(f"{code}: value {value!r} is not a finite number")
        u = self.normalise_unit(unit)
        conv = spec.units.get(u)
        if conv is None:
            shown = repr(unit) if unit else "no unit"
            raise UnitError(
                f"{code}: unit {shown} is not convertible to {spec.unit!r} "
                f"(accepted: {', '.join(repr(k) for k in spec.units) or 'none'})"
            )
        return conv.apply(value)

    def is_plausible(self, code: str, value: float) -> bool:
        """True if ``value`` (canonical unit) is within ``code``'s possible range.

        Raises UnknownCode for an unknown canonical code.
        """
        spec = self.spec(code)
        if not math.isfinite(value):
            return False
        if spec.low is not None and value < spec.low:
            return False
        return not (spec.high is not None and value > spec.high)

    def check_plausible(self, code: str, value: float, *, where: str = "") -> None:
        """Raise ImplausibleValue (permanent) if ``value`` is outside ``code``'s range.

        ``where`` (``"Observation/abc"``) is put into the error. Raises UnknownCode for an
        unknown canonical code.
        """
        if not self.is_plausible(code, value):
            spec = self.specs[code]
            rtype, _, rid = where.partition("/")
            raise ImplausibleValue(
                f"{code} = {value:g} {spec.unit} is outside the possible range "
                f"[{spec.low:g}, {spec.high:g}]",
                resource_type=rtype or None,
                resource_id=rid or None,
            )

    def categorical_value(self, code: str, system: str, value: str) -> str | None:
        """The canonical ``value_code`` for a coded answer, or None if not in the table.

        Raises UnknownCode for an unknown canonical code.
        """
        return self.spec(code).values.get(f"{system}|{value}")


# ---------------------------------------------------------------------- loading
def _fail(path: Path, entry: str, msg: str) -> ValueError:
    return ValueError(f"{path}: {entry}: {msg}")


def _number(path: Path, entry: str, x: object) -> float:
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(float(x)):
        raise _fail(path, entry, f"expected a finite number, got {x!r}")
    return float(x)


def _str_list(path: Path, entry: str, x: object) -> tuple[str, ...]:
    if x is None:
        return ()
    if not isinstance(x, list) or not all(isinstance(i, str) and i for i in x):
        raise _fail(path, entry, f"expected a list of non-empty strings, got {x!r}")
    return tuple(cast(list[str], x))


def _parse_spec(path: Path, code: str, raw: object) -> CodeSpec:
    entry = f"codes.{code}"
    if not isinstance(raw, dict):
        raise _fail(path, entry, "expected a mapping")
    known = {"kind", "unit", "display", "loinc", "loinc_lab", "units", "range", "values"}
    extra = set(raw) - known
    if extra:
        raise _fail(path, entry, f"unknown keys {sorted(extra)}")
    kind = raw.get("kind")
    if kind not in ("vital", "lab"):
        raise _fail(path, entry, f"kind must be vital or lab, got {kind!r}")
    expected_kind = "lab" if code in LAB_CODES else "vital"
    if kind != expected_kind:
        raise _fail(path, entry, f"kind must be {expected_kind} (fhir/events.py), got {kind}")
    unit = raw.get("unit")
    if not isinstance(unit, str):
        raise _fail(path, entry, f"unit must be a string, got {unit!r}")
    display = raw.get("display", code)
    if not isinstance(display, str) or not display:
        raise _fail(path, entry, "display must be a non-empty string")
    loinc = _str_list(path, f"{entry}.loinc", raw.get("loinc"))
    loinc_lab = _str_list(path, f"{entry}.loinc_lab", raw.get("loinc_lab"))
    for lc in loinc + loinc_lab:
        head, dash, check = lc.partition("-")
        if not (dash and head.isdigit() and check.isdigit() and len(check) == 1):
            raise _fail(path, entry, f"{lc!r} is not a LOINC code (NNNN-N)")
    units_raw = raw.get("units") or {}
    if not isinstance(units_raw, dict):
        raise _fail(path, f"{entry}.units", "expected a mapping")
    units: dict[str, Conversion] = {}
    for u, c in units_raw.items():
        uentry = f"{entry}.units[{u!r}]"
        if not isinstance(u, str):
            raise _fail(path, uentry, "unit must be a string")
        if isinstance(c, dict):
            if set(c) - {"factor", "offset"} or "factor" not in c:
                raise _fail(path, uentry, "expected {factor: f, offset: o}")
            conv = Conversion(
                _number(path, uentry, c["factor"]), _number(path, uentry, c.get("offset", 0))
            )
        else:
            conv = Conversion(_number(path, uentry, c))
        if conv.factor <= 0:
            raise _fail(path, uentry, "factor must be > 0")
        units[u] = conv
    categorical = code in CATEGORICAL_CODES
    values_raw = raw.get("values") or {}
    if not isinstance(values_raw, dict) or not all(
        isinstance(k, str) and "|" in k and isinstance(v, str) and v for k, v in values_raw.items()
    ):
        raise _fail(path, f"{entry}.values", "expected a mapping 'system|code' -> value")
    values = cast(dict[str, str], values_raw)
    low: float | None = None
    high: float | None = None
    if categorical:
        if unit != "" or units:
            raise _fail(path, entry, "a categorical code has unit '' and no units")
        if not values:
            raise _fail(path, entry, "a categorical code needs values")
        if raw.get("range") is not None:
            raise _fail(path, entry, "a categorical code has no range")
    else:
        if values:
            raise _fail(path, entry, "values are only for categorical codes")
        if not unit:
            raise _fail(path, entry, "a numeric code needs a canonical unit")
        canon = units.get(unit)
        if canon is None or canon.factor != 1.0 or canon.offset != 0.0:
            raise _fail(path, entry, f"units must map the canonical unit {unit!r} to 1")
        rng = raw.get("range")
        if not isinstance(rng, list) or len(rng) != 2:
            raise _fail(path, f"{entry}.range", f"expected [low, high], got {rng!r}")
        low = _number(path, f"{entry}.range", rng[0])
        high = _number(path, f"{entry}.range", rng[1])
        if not low < high:
            raise _fail(path, f"{entry}.range", f"low {low} must be < high {high}")
    return CodeSpec(
        code=code,
        kind=cast(CodeKind, kind),
        unit=unit,
        display=display,
        loinc=loinc,
        loinc_lab=loinc_lab,
        units=units,
        low=low,
        high=high,
        values=values,
    )


def parse_code_table(doc: object, path: Path = CODES_FILE) -> CodeTable:
    """Validate a parsed codes.yaml document and build the table.

    Raises ValueError (a start-up/configuration error, not retryable) naming ``path`` and the
    offending entry.
    """
    if not isinstance(doc, dict):
        raise _fail(path, "<root>", "expected a mapping")
    codes_raw = doc.get("codes")
    if not isinstance(codes_raw, dict):
        raise _fail(path, "codes", "expected a mapping of canonical code -> entry")
    wanted = set(VITAL_CODES) | set(LAB_CODES) | set(CATEGORICAL_CODES)
    missing = sorted(wanted - set(codes_raw))
    if missing:
        raise _fail(path, "codes", f"canonical codes missing: {missing}")
    unknown = sorted(set(codes_raw) - wanted)
    if unknown:
        raise _fail(path, "codes", f"not canonical codes of fhir/events.py: {unknown}")
    specs = {code: _parse_spec(path, code, codes_raw[code]) for code in sorted(wanted)}

    aliases_raw = doc.get("unit_aliases") or {}
    if not isinstance(aliases_raw, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in aliases_raw.items()
    ):
        raise _fail(path, "unit_aliases", "expected a mapping of strings")
    aliases = cast(dict[str, str], aliases_raw)

    by_coding: dict[tuple[str, str], str] = {}
    by_coding_lab: dict[tuple[str, str], str] = {}
    for spec in specs.values():
        for lc in spec.loinc:
            prev = by_coding.get((LOINC_SYSTEM, lc))
            if prev is not None:
                raise _fail(
                    path, f"codes.{spec.code}.loinc", f"LOINC {lc} already mapped to {prev}"
                )
            by_coding[(LOINC_SYSTEM, lc)] = spec.code
        for lc in spec.loinc_lab:
            prev = by_coding_lab.get((LOINC_SYSTEM, lc))
            if prev is not None:
                raise _fail(
                    path, f"codes.{spec.code}.loinc_lab", f"LOINC {lc} already mapped to {prev}"
                )
            by_coding_lab[(LOINC_SYSTEM, lc)] = spec.code
    for key, code in by_coding_lab.items():
        if by_coding.get(key) == code:
            raise _fail(path, f"codes.{code}.loinc_lab", f"LOINC {key[1]} is also in its loinc")

    local = doc.get("local_codes") or []
    if not isinstance(local, list):
        raise _fail(path, "local_codes", "expected a list")
    for i, item in enumerate(local):
        entry = f"local_codes[{i}]"
        if not isinstance(item, dict) or set(item) != {"system", "code", "canonical"}:
            raise _fail(path, entry, "expected {system, code, canonical}")
        system, lcode, canonical = item["system"], item["code"], item["canonical"]
        if not all(isinstance(x, str) and x for x in (system, lcode, canonical)):
            raise _fail(path, entry, "system, code and canonical must be non-empty strings")
        if canonical not in specs:
            raise _fail(path, entry, f"{canonical!r} is not a canonical code")
        if system == LOINC_SYSTEM:
            raise _fail(path, entry, "LOINC codes belong in codes.<code>.loinc")
        prev = by_coding.get((system, lcode))
        if prev is not None:
            raise _fail(path, entry, f"{system}|{lcode} already mapped to {prev}")
        by_coding[(system, lcode)] = canonical

    return CodeTable(
        specs=specs,
        unit_aliases=aliases,
        by_coding=by_coding,
        by_coding_lab=by_coding_lab,
        source=str(path),
    )


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the code table: {exc}") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from exc


@lru_cache(maxsize=8)
def load_code_table(path: Path | None = None) -> CodeTable:
    """Load and validate the code table (default: the packaged ``fhir/data/codes.yaml``).

    Cached: call it freely. Raises ValueError (configuration error, not retryable) naming the
    file and entry when the table is unreadable or inconsistent.
    """
    p = CODES_FILE if path is None else Path(path)
    return parse_code_table(_read_yaml(p), p)


__all__ = [
    "CODES_FILE",
    "LOINC_SYSTEM",
    "UCUM_SYSTEM",
    "CodeSpec",
    "CodeTable",
    "Conversion",
    "load_code_table",
    "parse_code_table",
]
