"""``wardwatch`` commands for the risk model: evaluation."""

from __future__ import annotations

import click

COMMANDS: tuple[click.Command, ...] = ()
