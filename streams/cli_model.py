"""``wardwatch`` commands for the risk model: evaluation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
import numpy as np
import numpy.typing as npt

from .settings import Settings


def _settings() -> Settings:
    from .cli import settings

    return settings()


def _policy_counter(
    s: Settings, model_dir: Path
) -> Callable[[Sequence[npt.NDArray[np.float64]], Sequence[npt.NDArray[np.float64]]], int]:
    """Counts the alerts the stream's policy (:func:`streams.alerting.step`) raises over
    hourly risks and NEWS2 (-1 = null) per stay, at the model card's threshold."""
    from .alerting import AlertPolicy, AlertState, step
    from .model_info import read_card

    threshold = s.alert_threshold
    if threshold is None:
        threshold = float(read_card(model_dir)["alert_threshold"])
    policy = AlertPolicy(threshold, s.alert_clear_margin, s.alert_suppress_hours)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)

    def count(
        risks: Sequence[npt.NDArray[np.float64]], news2: Sequence[npt.NDArray[np.float64]]
    ) -> int:
        n = 0
        for r, n2 in zip(risks, news2, strict=True):
            state = AlertState()
            for h, (risk, score) in enumerate(zip(r, n2, strict=True)):
                state, decision = step(
                    state,
                    patient="p",
                    as_of=t0 + timedelta(hours=h),
                    risk=float(risk),
                    news2=None if score < 0 else int(score),
                    policy=policy,
                )
                n += decision is not None
        return n

    return count


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
    from inference.evaluate import evaluate

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
            policy_alerts=_policy_counter(s, mdir),
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
    click.echo(f"report written to {out}/report.md ({report['wall_seconds']} s)")


COMMANDS: tuple[click.Command, ...] = (evaluate_cmd,)
