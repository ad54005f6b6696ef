"""``wardwatch validate-site``: this site's stored scores against the outcomes it gives.

Reads the scores of one model version from the WardWatch database (one ordered query,
a patient at a time: :mod:`storage.site_scores`), joins them with the site's outcome
labels and writes the report of :mod:`inference.site_validation` (``report.md``,
``metrics.json``, ``recalibration.json``, plots). The read is written to the audit log
(who, and how many patients) before the report is written. Serving is not changed.
"""

from __future__ import annotations

from pathlib import Path

import click

from .cli_context import who
from .client_security import database_connect_args
from .settings import Settings

DEFAULT_OUT = Path("var") / "site-validation"
# --id-system's name for FHIR logical ids (the edge pseudonymises Patient/<id> with system "").
FHIR_ID = "fhir-id"


def _settings() -> Settings:
    from .cli_context import settings

    return settings()


@click.command(name="validate-site")
@click.option(
    "--labels",
    "labels_path",
    required=True,
    type=click.Path(path_type=Path),
    help="Outcome labels: a CSV or NDJSON of patient,onset (ISO 8601; empty = never "
    "septic), or FHIR Conditions (a .json, an .ndjson or a folder of them).",
)
@click.option(
    "--database-url", default=None, help="SQLAlchemy URL (default: WARDWATCH_DATABASE_URL)."
)
@click.option("--model-version", default=None, help="Only the scores of this model version.")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=DEFAULT_OUT,
    show_default=True,
    help="Report folder.",
)
@click.option(
    "--bootstrap",
    type=click.IntRange(min=0),
    default=200,
    show_default=True,
    help="Patient bootstrap resamples (0: no intervals).",
)
@click.option(
    "--id-system",
    default=None,
    metavar="SYSTEM",
    help="The labels name patients by this site's identifiers, not pseudonyms: the "
    "identifier system (the HL7 v2 assigning authority of PID-3, or the FHIR "
    f"Patient.identifier system), or '{FHIR_ID}' for FHIR Patient ids (Patient/<id>). "
    "They are pseudonymised with the edge's key (WARDWATCH_PSEUDONYM_KEY).",
)
@click.option(
    "--unlabelled-negative",
    is_flag=True,
    help="Count patients without a label as never septic (default: leave them out).",
)
def validate_site_cmd(
    labels_path: Path,
    database_url: str | None,
    model_version: str | None,
    out_dir: Path,
    bootstrap: int,
    id_system: str | None,
    unlabelled_negative: bool,
) -> None:
    """Validate the served model on THIS site's stored scores before go-live.

    \b
    Joins the scores in the database with the site's outcome labels and writes, to OUT:
      report.md, metrics.json  hourly AUROC/AUPRC with patient-bootstrap intervals,
                               decile calibration, alert burden and lead time of the
                               stored alert state, risk >= threshold and NEWS2 >= 5
      recalibration.json       a Platt recalibration (a, b) with its cross-validated
                               effect and the threshold for a new model version's card
    Hourly rows: the last score in each UTC hour; an hour is positive from onset - 6 h
    (PhysioNet's SepsisLabel). Patients without a label are left out and counted. The
    threshold is the model card's (WARDWATCH_MODEL_DIR, WARDWATCH_ALERT_THRESHOLD).
    """
    from fhir.pseudonym import pseudonymise
    from inference import site_labels, site_report
    from inference import site_validation as sv
    from inference.alert_metrics import summary_line
    from inference.scoring.model_info import read_card
    from storage import access, site_scores
    from storage.db import make_engine, migrate
    from storage.errors import StorageError
    from streams.model_settings import policy_of

    s = _settings()
    try:
        labels = site_labels.read_labels(labels_path)
        if id_system is not None:
            # The site's own identifiers: pseudonymised as the edge does, so they meet
            # the stored scores; a raw identifier is never printed or written.
            key = s.pseudonym_key.get_secret_value().encode()
            system = "" if id_system == FHIR_ID else id_system
            labels = site_labels.pseudonymised(
                labels, lambda raw: pseudonymise(raw, key, system=system)
            )
    except (site_labels.LabelError, OSError, UnicodeDecodeError, ValueError) as exc:
        raise click.ClickException(f"labels: {exc}") from exc
    try:
        card = read_card(s.model_dir)
        policy = policy_of(card, s)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        raise click.ClickException(f"model card: {exc}") from exc

    engine = make_engine(database_url or s.database_url, connect_args=database_connect_args(s))
    try:
        migrate(engine)
        stored = site_scores.model_versions(engine)
        chosen = {k: n for k, n in stored.items() if model_version in (None, k[1])}
        if not chosen:
            have = ", ".join(f"{m} {v} ({n})" for (m, v), n in sorted(stored.items()))
            raise click.ClickException(
                "no scores in the database"
                + (f" of model version {model_version}" if model_version else "")
                + (f" (stored: {have})" if have else "")
            )
        if len(chosen) > 1:
            have = ", ".join(f"{m} {v} ({n} scores)" for (m, v), n in sorted(chosen.items()))
            raise click.ClickException(
                f"scores of several models in the database: {have}; choose one with "
                "--model-version (one model's scores per validation)"
            )
        (model, version), _ = next(iter(chosen.items()))
        data = sv.assemble(
            site_scores.iter_patient_scores(engine, model=model, model_version=version),
            labels,
            unlabelled_negative=unlabelled_negative,
        )
        c = data.counts
        access.audit(
            engine,
            access.Principal(who(), "cli"),
            "read",
            f"scores for validate-site: model {model} version {version}, "
            f"{c['patients_with_scores']} patients, {c['scores_read']} scores",
        )
        warnings = []
        if str(card.get("version")) != version:
            warnings.append(
                f"the scores are of model version {version} but the threshold is the card's "
                f"of version {card.get('version')} ({s.model_dir}); set "
                "WARDWATCH_MODEL_DIR to the scored version's folder or "
                "WARDWATCH_ALERT_THRESHOLD to its threshold"
            )
        report = sv.validate(
            data,
            policy,
            model={"name": model, "version": version, "card_version": card.get("version")},
            n_boot=bootstrap,
            warnings=warnings,
        )
        site_report.write_report(report, data, out_dir)
    except StorageError as exc:
        raise click.ClickException(f"database: {exc.reason}") from exc
    except sv.SiteValidationError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        engine.dispose()

    c = report["counts"]
    d = report["discrimination"][sv.MODEL_NAME]
    ci = d.get("auroc_ci95")
    click.echo(
        f"{c['patients']} patients ({c['septic_patients']} septic, "
        f"{c['patients_no_outcome_given']} with no outcome given "
        f"{'counted as negative' if unlabelled_negative else 'left out'}), {c['rows']} hours"
    )
    click.echo(
        f"AUROC {d['auroc']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
        + f"  AUPRC {d['auprc']:.3f}"
    )  # fmt: skip
    for name, a in report["alert_state"]["methods"].items():
        click.echo(summary_line(name, a, width=32))
    th = report["threshold"]
    rc = report["recalibration"]
    click.echo(
        f"recalibration a={rc['a']:.4f} b={rc['b']:.4f}; threshold {th['decision']} "
        f"({th['served']:.4g} -> {th['proposed_served_space']:.4g})"
    )
    click.echo(f"report written to {out_dir}/report.md")


COMMANDS: tuple[click.Command, ...] = (validate_site_cmd,)
