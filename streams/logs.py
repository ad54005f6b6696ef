"""Log lines: one JSON object each (or plain text), with message payloads redacted.

Cheap to import (no Faust): every command sets up its logging from here, and the
worker's Faust logging configuration names these formatters.
"""

from __future__ import annotations

import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

from pythonjsonlogger.json import JsonFormatter

# Faust's reprs of events and messages carry the payload: ``<Event: k=b'..' v=b'..'>``,
# ``PendingMessage(..., key=b'..', value=b'..', ...)``, and its debug "send: ... k=.. v=..".
_PAYLOAD = re.compile(r"""\b(k|v|key|value)=(?:b?'(?:[^'\\]|\\.)*'|b?"(?:[^"\\]|\\.)*")""", re.S)


def redact_payloads(text: str) -> str:
    """``text`` with message/event payloads in Faust reprs replaced by ``<redacted>``."""
    return _PAYLOAD.sub(r"\1=<redacted>", text) if "=" in text else text


class JsonLogFormatter(JsonFormatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``, then any ``extra=`` fields (``topic``, ``partition``, ``offset``, ...),
    and ``exc_info`` for exceptions. Payloads in Faust reprs are redacted."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.pop("format", None)  # mode's config passes its text format
        super().__init__(
            "%(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger"},
            json_ensure_ascii=False,
            **kwargs,
        )

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        log_data["time"] = (
            datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        ).replace("+00:00", "Z")
        super().add_fields(log_data, record, message_dict)
        # mode attaches its text-format helpers to records; they are not log fields.
        for name in ("extra", "data", "color_message"):
            log_data.pop(name, None)
        for name in ("message", "exc_info", "stack_info"):
            value = log_data.get(name)
            if isinstance(value, str):
                log_data[name] = redact_payloads(value)


class TextLogFormatter(logging.Formatter):
    """Plain text (``WARDWATCH_LOG_FORMAT=text``), payloads redacted, event fields appended."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.pop("format", None)
        kwargs.pop("fmt", None)
        super().__init__("[%(asctime)s] [%(process)s] [%(levelname)s] %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = redact_payloads(super().format(record))
        where = [
            f"{k}={record.__dict__[k]}"
            for k in ("topic", "partition", "offset")
            if k in record.__dict__
        ]
        return f"{text} ({' '.join(where)})" if where else text


def _formatter(fmt: str) -> dict[str, Any]:
    if fmt not in ("json", "text"):
        raise ValueError(f"log format must be json or text, got {fmt!r}")
    cls = JsonLogFormatter if fmt == "json" else TextLogFormatter
    return {"()": f"{__name__}.{cls.__name__}"}


def logging_config(fmt: str) -> dict[str, Any]:
    """Faust's ``logging_config`` setting for log format ``fmt`` (json or text).

    It is merged into the configuration mode builds from the worker's ``-l``/``-f``
    options (``merge``): only the two formatters mode's handlers use are replaced, so
    the level and the log file still come from the command line. Raises ValueError
    for another format (a configuration error, not retried).
    """
    f = _formatter(fmt)
    return {"merge": True, "formatters": {"default": f, "colored": f}}


def configure_logging(fmt: str, level: int | str = logging.WARNING) -> None:
    """Log to stderr in format ``fmt`` (for the commands other than ``worker``, whose
    logging Faust sets up from :func:`logging_config`). Raises ValueError for another
    format."""
    _formatter(fmt)  # validates fmt
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter() if fmt == "json" else TextLogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
