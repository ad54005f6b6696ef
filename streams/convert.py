"""``wardwatch convert``: the edge's parsing, offline, over files -> canonical events NDJSON.

Reads FHIR JSON (one resource or a Bundle per file), NDJSON (FHIR Bulk Data: one resource
per line), HL7 v2 files (one or many messages each) and PhysioNet ``.psv``; pseudonymises
them exactly as the gateway and ``wardwatch replay`` do; maps them with :mod:`fhir.parse`
(and :mod:`fhir.hl7v2`); writes one canonical event per line to ``--out`` and one reject per
line to ``--rejects`` (``input``, ``position``, ``reason``). Every input is accounted for:
events, a reject with its reason, or counted as having nothing clinical (a Patient, an
Organization ...). No Kafka, no network.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO

import orjson
from tqdm import tqdm

from fhir.errors import PermanentInputError
from fhir.hl7v2 import Hl7Error, map_message, split_messages
from fhir.parse import ParseResult, parse_resource

from .settings import Settings
from .sources import expand, fhir_message, psv_messages

KINDS = {
    ".json": "fhir-json",
    ".ndjson": "ndjson",
    ".jsonl": "ndjson",
    ".hl7": "hl7v2",
    ".psv": "psv",
}


@dataclass(slots=True)
class KindCounts:
    """Counts of one file kind."""

    files: int = 0
    inputs: int = 0  # resources/lines/messages/rows read
    with_events: int = 0
    rejected: int = 0  # inputs refused as a whole
    nothing_clinical: int = 0  # understood, but no event (Patient, unknown codes ...)
    events: int = 0
    entry_rejects: int = 0  # bad Bundle entries of otherwise accepted inputs


@dataclass(slots=True)
class ConvertStats:
    """What :func:`convert` did: per file kind and per canonical code."""

    kinds: dict[str, KindCounts] = field(default_factory=dict)
    codes: Counter[str] = field(default_factory=Counter)
    crashes: int = 0  # exceptions that are not PermanentInputError: bugs (should be 0)

    def kind(self, k: str) -> KindCounts:
        return self.kinds.setdefault(k, KindCounts())

    def as_dict(self) -> dict[str, object]:
        """JSON-ready summary."""
        return {
            "kinds": {k: vars_of(v) for k, v in sorted(self.kinds.items())},
            "codes": dict(sorted(self.codes.items())),
            "crashes": self.crashes,
        }


def vars_of(k: KindCounts) -> dict[str, int]:
    return {f: getattr(k, f) for f in KindCounts.__dataclass_fields__}


def expand_inputs(paths: Sequence[Path], psv_sample: int = 0) -> list[Path]:
    """Files to convert (folders searched for the known suffixes, sorted). With
    ``psv_sample`` > 0 only the first that many ``.psv`` files (in name order) are taken.
    Raises FileNotFoundError naming a path that does not exist."""
    out = expand(paths, KINDS)
    if psv_sample > 0:
        psv = [p for p in out if p.suffix == ".psv"][:psv_sample]
        keep = set(psv)
        out = [p for p in out if p.suffix != ".psv" or p in keep]
    return out


@dataclass(frozen=True, slots=True)
class _Unit:
    position: str
    fhir: bytes | None  # pseudonymised FHIR JSON to parse
    error: PermanentInputError | None = None


def _units(path: Path, kind: str, key: bytes, settings: Settings) -> Iterator[_Unit]:
    if kind == "psv":
        stay = datetime.fromisoformat(settings.physionet_stay_start)
        for m in psv_messages(path, key, stay):
            yield _Unit(m.origin, m.value)
    elif kind == "ndjson":
        with path.open("rb") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    yield _Unit(f"{path}:{n}", _fhir(line.strip(), key))
    elif kind == "hl7v2":
        for i, text in enumerate(split_messages(path.read_bytes()), 1):
            pos = f"{path}:message {i}"
            try:
                mapped = map_message(text, key, default_tz=settings.gateway_default_tz)
            except Hl7Error as exc:
                yield _Unit(pos, None, exc)
                continue
            yield _Unit(pos, orjson.dumps(mapped.bundle))
    else:
        yield _Unit(str(path), _fhir(path.read_bytes(), key))


def _fhir(raw: bytes, key: bytes) -> bytes:
    return fhir_message(raw, key, origin="", stem="").value


def _write_reject(f: IO[bytes], path: Path, position: str, exc: PermanentInputError) -> None:
    f.write(
        orjson.dumps(
            {
                "input": str(path),
                "position": position,
                "reason": str(exc),
                "error": exc.kind,
                **({"resource": exc.where()} if exc.where() else {}),
            }
        )
        + b"\n"
    )


def convert(
    paths: Sequence[Path],
    out: Path,
    rejects: Path,
    settings: Settings,
    *,
    psv_sample: int = 0,
    progress: bool = True,
) -> ConvertStats:
    """Convert every input; write events to ``out`` and rejects to ``rejects``.

    Raises FileNotFoundError for a missing input and OSError when an output cannot be
    written (neither retried). Bad input never raises: it becomes a reject line.
    """
    files = expand_inputs(paths, psv_sample)
    key = settings.pseudonym_key.get_secret_value().encode()
    stats = ConvertStats()
    out.parent.mkdir(parents=True, exist_ok=True)
    rejects.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as fo, rejects.open("wb") as fr:
        for path in tqdm(files, unit="file", desc="convert", disable=not progress):
            kind = KINDS.get(path.suffix, "fhir-json")
            kc = stats.kind(kind)
            kc.files += 1
            units = _units(path, kind, key, settings)
            while True:
                try:
                    unit = next(units, None)
                except Exception as exc:  # unreadable file, bad .psv layout
                    kc.inputs += 1
                    kc.rejected += 1
                    err = (
                        exc
                        if isinstance(exc, PermanentInputError)
                        else PermanentInputError(f"cannot read the file: {exc}")
                    )
                    _write_reject(fr, path, str(path), err)
                    break
                if unit is None:
                    break
                kc.inputs += 1
                if unit.error is not None or unit.fhir is None:
                    kc.rejected += 1
                    _write_reject(fr, path, unit.position, unit.error or PermanentInputError("?"))
                    continue
                try:
                    result = parse_resource(unit.fhir)
                except PermanentInputError as exc:
                    kc.rejected += 1
                    _write_reject(fr, path, unit.position, exc)
                    continue
                except Exception as exc:  # a bug: count it, keep going
                    stats.crashes += 1
                    kc.rejected += 1
                    _write_reject(
                        fr, path, unit.position, PermanentInputError(f"internal error: {exc!r}")
                    )
                    continue
                _account(result, kc, stats, fo, fr, path, unit.position)
    return stats


def _account(
    result: ParseResult,
    kc: KindCounts,
    stats: ConvertStats,
    fo: IO[bytes],
    fr: IO[bytes],
    path: Path,
    position: str,
) -> None:
    for ev in result.events:
        fo.write(orjson.dumps(ev.to_dict()) + b"\n")
        stats.codes[ev.code] += 1
    kc.events += len(result.events)
    for exc in result.rejected:
        _write_reject(fr, path, position, exc)
    kc.entry_rejects += len(result.rejected)
    if result.events:
        kc.with_events += 1
    elif result.rejected:
        kc.rejected += 1
    else:
        kc.nothing_clinical += 1


def summary_lines(stats: ConvertStats) -> Iterator[str]:
    """Human-readable summary: a table per file kind, then events per code."""
    yield (
        f"{'kind':<10} {'files':>6} {'inputs':>7} {'w/events':>8} {'rejected':>8} "
        f"{'no-clin.':>8} {'events':>8} {'bad-entries':>11}"
    )
    for k, c in sorted(stats.kinds.items()):
        yield (
            f"{k:<10} {c.files:>6} {c.inputs:>7} {c.with_events:>8} {c.rejected:>8} "
            f"{c.nothing_clinical:>8} {c.events:>8} {c.entry_rejects:>11}"
        )
    yield "events per code:"
    pairs = sorted(stats.codes.items(), key=lambda kv: (-kv[1], kv[0]))
    for i in range(0, len(pairs), 4):
        yield "  " + "  ".join(f"{c:<20} {n:>7}" for c, n in pairs[i : i + 4])
    if stats.crashes:
        yield f"INTERNAL ERRORS: {stats.crashes} (a bug: please report with the rejects file)"


__all__ = ["KINDS", "ConvertStats", "KindCounts", "convert", "expand_inputs", "summary_lines"]
