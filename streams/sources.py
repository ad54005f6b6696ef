"""Turn input files into the messages the edge publishes on ``fhir.inbound``.

Shared by ``wardwatch replay`` (publishes them), ``wardwatch score`` (scores them
offline, through the same code as the stream) and the demo. Identity is pseudonymised
here, at the edge: what leaves this module carries no names, addresses or raw ids.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from fhir.physionet import PsvRow, context_entries, read_psv, row_bundle
from fhir.pseudonym import pseudonymise, strip_phi

SUFFIXES = (".psv", ".json", ".ndjson", ".jsonl")


@dataclass(frozen=True, slots=True)
class Message:
    """One message for ``fhir.inbound``: key = patient pseudonym, value = FHIR bytes.

    ``origin`` says where it came from (file and line or row) for progress and errors;
    ``hour`` is the PhysioNet row index for ``.psv`` input.
    """

    key: bytes
    value: bytes
    origin: str
    stem: str
    hour: int | None = None


def expand(paths: Sequence[Path], suffixes: Collection[str] = SUFFIXES) -> list[Path]:
    """Files to read: the given files, and files with ``suffixes`` under given folders.

    Raises ``FileNotFoundError`` naming the path when one does not exist.
    """
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*") if q.suffix in suffixes and q.is_file()))
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    return out


def _subject_key(resource: dict[str, Any]) -> str | None:
    """The (already pseudonymised) patient a resource or Bundle is about."""
    if resource.get("resourceType") == "Patient":
        rid = resource.get("id")
        return str(rid) if rid else None
    for field in ("subject", "patient"):
        ref = resource.get(field)
        if isinstance(ref, dict):
            r = ref.get("reference")
            if isinstance(r, str) and r.startswith("Patient/"):
                return r.removeprefix("Patient/")
    if resource.get("resourceType") == "Bundle":
        for entry in resource.get("entry") or []:
            if isinstance(entry, dict) and isinstance(entry.get("resource"), dict):
                k = _subject_key(entry["resource"])
                if k:
                    return k
    return None


def fhir_message(raw: bytes, key: bytes, *, origin: str, stem: str) -> Message:
    """Pseudonymise one FHIR resource (or Bundle) for publishing.

    Input that is not a JSON object cannot be pseudonymised or keyed; it is passed on
    unchanged under the key ``unparsed`` so the stream dead-letters it with its bytes.
    """
    try:
        resource = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return Message(b"unparsed", raw, origin, stem)
    if not isinstance(resource, dict):
        return Message(b"unparsed", raw, origin, stem)
    clean = strip_phi(resource, key)
    subject = _subject_key(clean)
    return Message((subject or "unkeyed").encode(), orjson.dumps(clean), origin, stem)


def psv_messages(
    path: Path, key: bytes, stay_start: datetime, rows: Sequence[PsvRow] | None = None
) -> Iterator[Message]:
    """One transaction Bundle per PhysioNet row that has any measurement; the first also
    carries the stay's Patient and Encounter (``fhir.physionet.context_entries``) before
    its Observations, as a hospital sends them before the first result.

    ``rows`` are the file's rows when the caller has read them already.
    """
    pseudonym = pseudonymise(path.stem, key, system="physionet2019")
    rows = read_psv(path.read_text()) if rows is None else rows
    context: list[dict[str, Any]] | None = context_entries(pseudonym, stay_start, list(rows))
    for hour, row in enumerate(rows):
        bundle = row_bundle(pseudonym, stay_start, hour, row, context=context)
        if bundle is None:
            continue
        context = None  # sent once
        yield Message(
            pseudonym.encode(), orjson.dumps(bundle), f"{path}:{hour + 2}", path.stem, hour
        )


def file_messages(path: Path, key: bytes, stay_start: datetime) -> Iterator[Message]:
    """The messages of one file, by its suffix. Raises ``OSError`` if it can't be read."""
    if path.suffix == ".psv":
        yield from psv_messages(path, key, stay_start)
    elif path.suffix in (".ndjson", ".jsonl"):
        with path.open("rb") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    yield fhir_message(line.strip(), key, origin=f"{path}:{n}", stem=path.stem)
    else:
        yield fhir_message(path.read_bytes(), key, origin=str(path), stem=path.stem)


def messages(paths: Sequence[Path], key: bytes, stay_start: datetime) -> Iterator[Message]:
    """All messages of all inputs, file by file, in file order."""
    for path in expand(paths):
        yield from file_messages(path, key, stay_start)


def count_messages(paths: Sequence[Path]) -> int | None:
    """A cheap upper bound of the message count for progress bars (None if unknown)."""
    total = 0
    for path in expand(paths):
        if path.suffix == ".psv":
            with path.open("rb") as f:
                total += max(sum(1 for _ in f) - 1, 0)
        elif path.suffix in (".ndjson", ".jsonl"):
            with path.open("rb") as f:
                total += sum(1 for line in f if line.strip())
        else:
            total += 1
    return total
