"""What every ``wardwatch`` command shares: the settings, built once, and the refusal to
start on unsafe settings as a command-line error.

Kept apart from :mod:`streams.cli` so that command modules import it without importing
the command group that lists them (no import cycle), and cheap to import.
"""

from __future__ import annotations

import getpass
from datetime import datetime
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from .settings import Settings

_SETTINGS: Settings | None = None


def settings() -> Settings:
    """The settings of this command run (built on first use from ``WARDWATCH_*``)."""
    global _SETTINGS
    if _SETTINGS is None:
        from .settings import Settings

        _SETTINGS = Settings()
    return _SETTINGS


def require_safe(
    s: Settings, component: str, *, database: bool = True, dead_letters: bool = False
) -> None:
    """:func:`streams.deploy_checks.require_safe`, as a command-line error.

    Raises click.ClickException (exit status 1) naming the unsafe setting; never retried.
    """
    from .deploy_checks import UnsafeSettingsError
    from .deploy_checks import require_safe as check

    try:
        check(s, component, database=database, dead_letters=dead_letters)
    except UnsafeSettingsError as exc:
        raise click.ClickException(str(exc)) from exc


def stay_start(s: Settings) -> datetime:
    """The wall-clock time at which a replayed PhysioNet stay starts."""
    return datetime.fromisoformat(s.physionet_stay_start)


def who() -> str:
    """The audit log's name of the person running a command: ``cli:<login name>``."""
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):  # no login name in some containers
        return "cli:unknown"
