"""``wardwatch rekey``: rotate the pseudonym key without splitting patients' histories.

Pseudonyms are one-way, so re-keying has two steps (docs/operations.md, "Rotating the
pseudonym key"):

1. ``rekey map`` runs at the edge, where the site's identifiers may be read: for each
   identifier in ``--ids`` it writes the pair (pseudonym under the current key, pseudonym
   under ``WARDWATCH_NEW_PSEUDONYM_KEY``), never the identifier itself.
2. ``rekey apply`` renames the stored pseudonyms by that map, in one transaction, as the
   schema owner; then every component restarts on the new key.
"""

from __future__ import annotations

import csv
from pathlib import Path

import click

FHIR_ID = "fhir-id"  # --system's name for FHIR logical ids (Patient/<id>), as validate-site


@click.group(name="rekey")
def rekey_cmd() -> None:
    """Rotate the pseudonym key: map old pseudonyms to new ones, then apply the map."""


@rekey_cmd.command(name="map")
@click.option(
    "--ids",
    "ids_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="The site's patient identifiers, one per line (PHI: keep the file on the edge host).",
)
@click.option(
    "--system",
    required=True,
    help="The identifiers' system as the edge keys them: the assigning authority of PID-3 "
    "(PID-3.4) for HL7 v2, `fhir-id` for FHIR Patient ids, `physionet2019` for replayed stays.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="CSV of old,new pseudonym pairs (no identifiers).",
)
def rekey_map_cmd(ids_path: Path, system: str, out: Path) -> None:
    """Write the old -> new pseudonym of each identifier in IDS (current key ->
    WARDWATCH_NEW_PSEUDONYM_KEY). Appends to OUT, so several systems can share one map."""
    from fhir.pseudonym import pseudonymise

    from .cli_context import require_safe, settings

    s = settings()
    if s.new_pseudonym_key is None:
        raise click.ClickException("set WARDWATCH_NEW_PSEUDONYM_KEY (the key to rotate to)")
    new_s = s.model_copy(update={"pseudonym_key": s.new_pseudonym_key})
    require_safe(new_s, "rekey map", database=False)  # the new key must be a safe one too
    old_key = s.pseudonym_key.get_secret_value().encode()
    new_key = s.new_pseudonym_key.get_secret_value().encode()
    if old_key == new_key:
        raise click.ClickException("WARDWATCH_NEW_PSEUDONYM_KEY is the current key")
    sys_ = "" if system == FHIR_ID else system
    n = 0
    with ids_path.open(encoding="utf-8") as ids, out.open("a", newline="") as f:
        w = csv.writer(f)
        if f.tell() == 0:
            w.writerow(["old", "new"])
        for line in ids:
            ident = line.strip()
            if ident:
                w.writerow([pseudonymise(ident, old_key, sys_), pseudonymise(ident, new_key, sys_)])
                n += 1
    click.echo(f"wrote {n} pseudonym pairs to {out}")


@rekey_cmd.command(name="apply")
@click.option(
    "--map",
    "map_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="The CSV that `rekey map` wrote.",
)
@click.option("--dry-run", is_flag=True, help="Count the rows it would rename; change nothing.")
def rekey_apply_cmd(map_path: Path, dry_run: bool) -> None:
    """Rename the stored pseudonyms by MAP (patients, scores, alerts), in one transaction.

    Connects as the schema owner (WARDWATCH_MIGRATION_DATABASE_URL, or
    WARDWATCH_DATABASE_URL). Refuses, changing nothing, when a new pseudonym already has
    rows. The audit log keeps the pseudonyms it was written with. Audited.
    """
    from storage import access
    from storage.db import make_engine
    from storage.errors import StorageError
    from storage.rekey import rekey

    from .cli_context import settings, who

    with map_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    mapping = {r["old"]: r["new"] for r in rows}
    if len(mapping) != len(rows):
        raise click.ClickException(f"{map_path}: an old pseudonym appears twice")
    s = settings()
    engine = make_engine(s.migration_database_url or s.database_url)
    try:
        result = rekey(engine, mapping, dry_run=dry_run)
        if not dry_run:
            # a change, audited with the (new) pseudonyms it touched
            access.audit(
                engine,
                access.Principal(who(), "cli"),
                "rekey",
                "patients",
                patients=mapping.values(),
            )
    except (StorageError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        engine.dispose()
    verb = "would rename" if dry_run else "renamed"
    click.echo(
        f"{verb} {sum(result.rows.values())} rows for {len(mapping)} pairs: "
        + ", ".join(f"{t} {n}" for t, n in result.rows.items())
    )


COMMANDS: tuple[click.Command, ...] = (rekey_cmd,)
