"""The ``wardwatch`` command.

The group loads a command's module only when that command runs, so ``wardwatch --help``
and the light commands (``convert``) do not pay for Faust, torch or the database
drivers. ``wardwatch worker`` is Faust's worker (all its options apply): only that
command builds the Faust app.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from .cli_context import settings

HELP = """WardWatch: real-time deterioration and sepsis-risk scoring (decision support,
not a diagnosis).

\b
Main commands:
  worker    run a stream worker (Faust): normalise -> score -> persist
  replay    publish FHIR files, NDJSON, Bundles or PhysioNet .psv to fhir.inbound
  score     score input files offline through the stream's own code
  demo      end to end on the local services: worker + replay + summary
  synth     write a synthetic ICU feed (PhysioNet .psv format)
  train     train and export the transformer risk model
  evaluate  write the model's evaluation report (metrics, plots, baselines)
  recalibrate  adopt a site's recalibration as a new model version
  validate-site  this site's stored scores against its outcomes (before go-live)
  gateway   the edge: HL7 v2 over MLLP and FHIR over HTTP into Kafka
  convert   run the edge's parsing offline (canonical events + rejects)
  dlq       list and re-drive dead letters
  api       the analyst and alerting API, with the live dashboard
  deliver   send alerts to FHIR Subscriptions (rest-hook) from the outbox
  token     create and revoke API tokens
  db        upgrade the schema; grant the API's and workers' database roles
  rekey     rotate the pseudonym key (map at the edge, apply to the database)
  scores    print stored scores
  alerts    print stored alerts
  export    write scores for analysts (csv, parquet)
  purge     delete scores and alerts past the retention window

Settings come from WARDWATCH_* environment variables (see README.md).
"""

# Command name -> "module:attribute". Each area keeps its commands in a module of its own
# (and lists them in its ``COMMANDS``; a test checks the two agree).
LAZY_COMMANDS: dict[str, str] = {
    "replay": "streams.cli_run:replay_cmd",
    "score": "streams.cli_run:score_cmd",
    "synth": "streams.cli_run:synth_cmd",
    "demo": "streams.cli_run:demo_cmd",
    "train": "streams.cli_run:train_cmd",
    "gateway": "streams.cli_edge:gateway_cmd",
    "convert": "streams.cli_edge:convert_cmd",
    "dlq": "streams.cli_edge:dlq_group",
    "evaluate": "streams.cli_model:evaluate_cmd",
    "recalibrate": "streams.cli_model:recalibrate_cmd",
    "api": "streams.cli_analyst:api_cmd",
    "token": "streams.cli_analyst:token_cmd",
    "scores": "streams.cli_analyst:scores_cmd",
    "alerts": "streams.cli_analyst:alerts_cmd",
    "export": "streams.cli_analyst:export_cmd",
    "purge": "streams.cli_analyst:purge_cmd",
    "validate-site": "streams.cli_site:validate_site_cmd",
    "db": "streams.cli_db:db_cmd",
    "rekey": "streams.cli_rekey:rekey_cmd",
    "deliver": "streams.cli_deliver:deliver_cmd",
}
COMMAND_MODULES = tuple(dict.fromkeys(t.split(":")[0] for t in LAZY_COMMANDS.values()))
# Faust's own command line runs these (it builds the app: Faust, torch, the model client).
FAUST_COMMANDS = frozenset({"worker"})


class LazyGroup(click.Group):
    """A click group whose commands are imported on first use (click's documented
    lazy-loading pattern)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*LAZY_COMMANDS, *FAUST_COMMANDS])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = LAZY_COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, attr = target.split(":")
        cmd = getattr(importlib.import_module(module), attr)
        if not isinstance(cmd, click.Command):  # a wrong table entry is a bug: say so
            raise TypeError(f"{target} is not a click command")
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # The help text lists the commands; asking each for its short help would import
        # every command's module.
        return


@click.group(cls=LazyGroup, help=HELP, context_settings={"help_option_names": ["-h", "--help"]})
def wardwatch() -> None:
    """The ``wardwatch`` command group."""
    from .logs import configure_logging

    # JSON (or text) log lines for every command.
    configure_logging(settings().log_format)


def _subcommand(args: list[str]) -> str | None:
    """The first argument that is not an option (the command's name), if any."""
    return next((a for a in args if not a.startswith("-")), None)


def _run_faust(argv: list[str]) -> Any:
    """``wardwatch worker ...``: Faust's command line over the WardWatch app."""
    from streams.worker.app import create_app

    from .cli_context import require_safe
    from .logs import configure_logging

    configure_logging(settings().log_format)  # until Faust's worker sets up its own
    if settings().log_format == "json":
        # Faust prints a start-up banner to stdout unless --quiet (which silences only
        # that): it would be the one non-JSON block in the worker's output.
        argv.insert(1, "--quiet")
    try:
        if not {"-h", "--help"} & set(argv):  # the help needs no safe settings
            require_safe(
                settings(),
                "worker",
                database=settings().worker_role != "score",
                dead_letters=True,
            )
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    sys.argv[:] = argv
    return create_app(settings()).main()


def main() -> None:
    """Entry point of the ``wardwatch`` command."""
    if _subcommand(sys.argv[1:]) in FAUST_COMMANDS:
        _run_faust(sys.argv)
        return
    wardwatch(prog_name="wardwatch")
