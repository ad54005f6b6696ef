"""``wardwatch`` commands for analyst and alerting access: api, tokens, scores, alerts, export."""

from __future__ import annotations

import click

COMMANDS: tuple[click.Command, ...] = ()
