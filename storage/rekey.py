"""Re-keying the stored pseudonyms after a pseudonym-key rotation.

Pseudonyms are one-way (HMAC), so only the edge, which sees the raw identifiers, can say
which new pseudonym an old one becomes: ``wardwatch rekey map`` computes the pairs from the
site's identifier list with both keys, and :func:`rekey` applies them here, in one
transaction, to every column that holds a patient pseudonym: ``patients.patient``,
``scores.patient``, ``alerts.patient``. The audit log is append-only and keeps the
pseudonyms it was written with (the map file joins old audit rows to new pseudonyms).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, bindparam, select, update

from storage.errors import classified
from storage.models import Alert, Patient, Score

REKEYED_TABLES = (Patient, Score, Alert)
_CHUNK = 500  # pairs per statement (SQLite's bound-parameter limit is far above this)


@dataclass(frozen=True, slots=True)
class RekeyResult:
    """Rows changed per table (``patients``, ``scores``, ``alerts``)."""

    rows: dict[str, int]


class RekeyConflictError(ValueError):
    """A new pseudonym already has rows: the site's traffic reached the new key before the
    stored rows were re-keyed. Permanent: nothing was changed."""


def _with_rows(conn: Connection, pseudonyms: list[str]) -> list[str]:
    """The pseudonyms of ``pseudonyms`` that have rows in any re-keyed table, in order."""
    found: set[str] = set()
    for i in range(0, len(pseudonyms), _CHUNK):
        chunk = pseudonyms[i : i + _CHUNK]
        for table in REKEYED_TABLES:
            found.update(
                conn.execute(select(table.patient).where(table.patient.in_(chunk)).distinct())
                .scalars()
                .all()
            )
    return [p for p in pseudonyms if p in found]


def rekey(engine: Engine, mapping: Mapping[str, str], *, dry_run: bool = False) -> RekeyResult:
    """Rename old pseudonyms to new ones in every pseudonym column, in one transaction.

    Old pseudonyms with no rows are skipped, so applying a map twice changes nothing the
    second time. Raises ValueError for a map that is not one-to-one or renames a pseudonym
    to itself, RekeyConflictError when a new pseudonym already has rows (nothing changed),
    StorageError subclasses (storage.errors) for database failures. Not retried.
    """
    if len(set(mapping.values())) != len(mapping):
        raise ValueError("the map gives two old pseudonyms the same new one")
    if set(mapping) & set(mapping.values()):
        raise ValueError("the map's old and new pseudonyms overlap (same key twice?)")
    counts = {t.__tablename__: 0 for t in REKEYED_TABLES}
    with classified(), engine.connect() as conn, conn.begin() as trans:
        # Only pairs whose old pseudonym still has rows: a map applied twice renames
        # nothing the second time.
        pairs = [(o, mapping[o]) for o in _with_rows(conn, list(mapping))]
        taken = _with_rows(conn, [new for _, new in pairs])
        if taken:
            raise RekeyConflictError(
                f"{len(taken)} new pseudonyms already have rows: re-key before the "
                "components start on the new key (nothing was changed)"
            )
        for table in REKEYED_TABLES:
            stmt = (
                update(table)
                .where(table.patient == bindparam("old"))
                .values(patient=bindparam("new"))
                .execution_options(synchronize_session=False)
            )
            for i in range(0, len(pairs), _CHUNK):
                chunk = [{"old": o, "new": n} for o, n in pairs[i : i + _CHUNK]]
                result = conn.execute(stmt, chunk)
                counts[table.__tablename__] += max(result.rowcount, 0)
        if dry_run:  # counted, then undone
            trans.rollback()
    return RekeyResult(counts)
