"""``wardwatch`` commands for the risk model: evaluation and a site's recalibration."""

from __future__ import annotations

from pathlib import Path

import click

from .settings import Settings


def _settings() -> Settings:
    from .cli_context import settings

    return settings()


@click.command(name="evaluate")
@click.option(
    "--model-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Triton model folder (default: WARDWATCH_MODEL_DIR); its newest version is evaluated.",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="PhysioNet 2019 .psv folder (default: ../shared/data/physionet2019/training_setB).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Report folder (default: var/report/<model version>).",
)
@click.option(
    "--split",
    type=click.Choice(["validation", "test"]),
    default="validation",
    show_default=True,
    help="Which split to report (validation: held out from every training choice).",
)
@click.option("--bootstrap", type=int, default=200, show_default=True, help="Resamples.")
@click.option("--max-patients", type=int, default=None, help="Use only the first N stays.")
@click.option("--threads", type=int, default=2, show_default=True, help="Torch threads.")
def evaluate_cmd(
    model_dir: Path | None,
    data_dir: Path | None,
    out_dir: Path | None,
    split: str,
    bootstrap: int,
    max_patients: int | None,
    threads: int,
) -> None:
    """Write the evaluation report of the served model: hourly AUROC/AUPRC with 95%
    bootstrap intervals, PhysioNet normalised utility at the model card's threshold,
    alerts per patient-day, ROC/PR/calibration/utility plots, and the same for NEWS2 >= 5,
    qSOFA >= 2 and a gradient-boosting baseline on the same rows (report.md, metrics.json).
    """
    from inference import physionet_data as pdata
    from inference.alert_metrics import summary_line
    from inference.evaluate import evaluate
    from inference.scoring.model_info import read_card
    from streams.model_settings import policy_of

    s = _settings()
    mdir = model_dir or s.model_dir
    try:
        report = evaluate(
            mdir,
            data_dir or pdata.PHYSIONET_DIR,
            out_dir,
            split=split,
            n_boot=bootstrap,
            max_patients=max_patients,
            threads=threads,
            policy=policy_of(read_card(mdir), s),
        )
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    out = out_dir or Path("var") / "report" / str(report["model"]["version"])
    for name, m in report["methods"].items():
        click.echo(
            f"{name:<42} AUROC {m['auroc']:.3f} [{m['auroc_ci95'][0]:.3f}, "
            f"{m['auroc_ci95'][1]:.3f}]  AUPRC {m['auprc']:.3f}  utility {m['utility']:.3f}  "
            f"alerts/patient-day {m['alerts_per_patient_day']:.2f}"
        )
    for name, a in report["alert_state"]["methods"].items():
        click.echo(summary_line(name, a))
    click.echo(f"report written to {out}/report.md ({report['wall_seconds']} s)")


@click.command(name="recalibrate")
@click.option(
    "--from",
    "recal_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="validate-site's recalibration.json.",
)
@click.option("--version", type=click.IntRange(min=1), required=True, help="The new version.")
@click.option(
    "--model-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="The served model folder (default: WARDWATCH_MODEL_DIR).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=Path("var") / "model-build" / "recalibrated",
    show_default=True,
    help="Where the new model folder is written (it must not exist yet).",
)
def recalibrate_cmd(recal_path: Path, version: int, model_dir: Path | None, out_dir: Path) -> None:
    """Adopt this site's recalibration (from `wardwatch validate-site`) as a new model
    version: the same ensemble with the recalibration folded into its stacking, checked
    against the recalibrated old output, and a card with this site's threshold and base
    rate. Serving is not changed: point WARDWATCH_MODEL_DIR (and Triton's repository) at
    the new folder after validating it silently again.
    """
    import json

    from inference import recalibrated_version

    mdir = model_dir or _settings().model_dir
    try:
        card = recalibrated_version.build(
            mdir, json.loads(recal_path.read_text()), version, out_dir
        )
    except (FileNotFoundError, KeyError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    r = card["recalibration"]
    click.echo(
        f"version {version} written to {out_dir / mdir.name}: recalibration a={r['a']:.4f} "
        f"b={r['b']:.4f} of version {r['of_version']} (checked to "
        f"{r['max_difference_checked']:.1e}), alert threshold {card['alert_threshold']:.4g}"
    )


COMMANDS: tuple[click.Command, ...] = (evaluate_cmd, recalibrate_cmd)
