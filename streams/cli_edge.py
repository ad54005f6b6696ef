"""``wardwatch`` commands for the edge: gateway, convert, dead letters."""

from __future__ import annotations

import click

COMMANDS: tuple[click.Command, ...] = ()
