"""``wardwatch`` commands that run the pipeline: replay, score, synth, demo, train."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .cli_context import require_safe, settings, stay_start


@click.command(name="replay")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--rate", type=float, default=0.0, help="Messages per second (0: as fast as possible)."
)
@click.option("--limit", type=int, default=0, help="Stop after this many messages (0: all).")
@click.option(
    "--topic", default=None, help="Topic to publish to (default: WARDWATCH_TOPIC_INBOUND)."
)
def replay_cmd(paths: tuple[Path, ...], rate: float, limit: int, topic: str | None) -> None:
    """Publish FHIR JSON, NDJSON, Bundles and PhysioNet .psv files to fhir.inbound.

    PATHS are files or folders (searched for *.psv, *.json, *.ndjson). Patient identity
    is pseudonymised before anything is sent. Each PhysioNet row becomes one FHIR
    transaction Bundle of vital-sign and lab Observations (LOINC, UCUM), effective at
    WARDWATCH_PHYSIONET_STAY_START plus the row's hour. Every message is acknowledged by
    the broker (acks=all, idempotent producer) before the command reports success.
    """
    from .replay import replay

    s = settings()
    require_safe(s, "replay", database=False)
    stats = replay(list(paths), s, rate=rate, limit=limit, topic=topic or s.topic_inbound)
    click.echo(
        f"published {stats.sent} messages from {stats.files} files "
        f"in {stats.seconds:.1f}s ({stats.sent / max(stats.seconds, 1e-9):.0f} msg/s)"
    )
    if stats.failed:
        raise click.ClickException(f"{stats.failed} messages were not acknowledged by Kafka")


@click.command(name="score")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--out", "out_path", required=True, type=click.Path(path_type=Path), help="JSON lines output."
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def score_cmd(inputs: tuple[Path, ...], out_path: Path, quiet: bool) -> None:
    """Score INPUT files offline, through the same code as the stream (no Kafka, no Triton).

    \b
    PhysioNet .psv: one line per row,
      {"patient": "<file stem>", "hour": t, "risk": p, "alert": b, "news2": n, "qsofa": q}
    using rows 0..t only. FHIR input: one line per patient and scoring time, with "time"
    in place of "hour". The model runs in-process from WARDWATCH_MODEL_DIR.
    """
    from inference.runtime import LocalTorchModel
    from streams.model_settings import load_model_info

    from .offline import score_files

    s = settings()
    loaded = load_model_info(s)
    model = LocalTorchModel.from_dir(s.model_dir)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with out_path.open("w") as out:
        stats = score_files(
            list(inputs),
            out,
            model=model,
            loaded=loaded,
            key=s.pseudonym_key.get_secret_value().encode(),
            stay_start=stay_start(s),
            staleness_hours=s.staleness_hours,
            progress=not quiet,
        )
    click.echo(
        f"scored {stats.files} files: {stats.lines} lines, {stats.alerts} alerts raised, "
        f"{stats.rejected} inputs rejected -> {out_path}"
    )
    for reject in stats.rejects[:20]:
        click.echo(f"  rejected: {reject}", err=True)


@click.command(name="synth")
@click.option("--patients", type=int, default=50, show_default=True, help="ICU stays to write.")
@click.option("--seed", type=int, default=2019, show_default=True, help="Random seed.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Folder.")
def synth_cmd(patients: int, seed: int, out_dir: Path) -> None:
    """Write a synthetic, seeded ICU feed in PhysioNet .psv format (for machines without data)."""
    from fhir.synthetic import generate_stays

    out_dir.mkdir(parents=True, exist_ok=True)
    n = 0
    for pid, text in generate_stays(patients, seed):
        (out_dir / f"{pid}.psv").write_text(text)
        n += 1
    click.echo(f"wrote {n} synthetic stays to {out_dir}")


@click.command(name="demo")
@click.option("--patients", type=int, default=100, show_default=True, help="Stays to replay.")
@click.option("--rate", type=float, default=100.0, show_default=True, help="Messages/s offered.")
@click.option("--timeout", type=float, default=300.0, show_default=True, help="Give up after s.")
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder of .psv stays (default: ../shared PhysioNet data, else synthetic).",
)
def demo_cmd(patients: int, rate: float, timeout: float, data: Path | None) -> None:
    """Run the main job end to end on the running services and print a summary.

    Starts a worker, replays PATIENTS stays (PhysioNet from ../shared when present,
    otherwise a synthetic feed) plus a few deliberately malformed messages, waits until
    every message is accounted for (scored, or dead-lettered with its reason), prints
    the summary and stops the worker. Needs `make up` first (`make demo` does it all).
    """
    from .demo import run_demo

    # The demo runs on the local services: development mode, whatever the environment says.
    s = settings().model_copy(update={"dev_mode": True})
    ok = run_demo(s, patients=patients, rate=rate, timeout=timeout, data=data)
    if not ok:
        raise click.ClickException("not every message was accounted for; see the summary")


@click.command(
    name="train",
    add_help_option=False,
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
)
@click.pass_context
def train_cmd(ctx: click.Context) -> None:
    """Train and export the risk model (options: `wardwatch train --help`)."""
    from inference.train import main as train_main

    sys.exit(train_main(list(ctx.args)))


COMMANDS = (replay_cmd, score_cmd, synth_cmd, demo_cmd, train_cmd)
