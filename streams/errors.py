"""Errors of the stream layer: what is dead-lettered and what is retried.

* :class:`PermanentError` — retrying cannot help (bad input, a record that breaks a
  constraint). The message goes to the dead-letter topic with its original bytes and
  the reason, and the stream goes on.
* :class:`TransientError` — the world is briefly unavailable (Kafka, the database,
  Triton). The agent retries with backoff; when the retry budget is spent it stops the
  worker *without* acknowledging, so the input is processed again after restart.

The other packages have their own ``errors.py``; :func:`is_permanent` maps theirs onto
this split so agents need one ``except`` clause per kind.
"""

from __future__ import annotations

import re

from fhir.errors import PermanentInputError
from inference.errors import ModelError, ModelUnavailable
from inference.errors import reason_of as reason_of  # the core words reasons too
from storage.errors import StoragePermanentError, StorageUnavailable


class PermanentError(Exception):
    """A message that can never be processed as it is; dead-letter it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TransientError(Exception):
    """A dependency is unavailable; retry, then stop without committing."""


class WorkerStopError(Exception):
    """The worker cannot go on correctly (too many dead letters: the fault is ours, not
    the senders'). The agent stops the worker without acknowledging its batch."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


PERMANENT: tuple[type[BaseException], ...] = (
    PermanentError,
    PermanentInputError,
    ModelError,
    StoragePermanentError,
)
TRANSIENT: tuple[type[BaseException], ...] = (TransientError, ModelUnavailable, StorageUnavailable)


def is_permanent(exc: BaseException) -> bool:
    """True when ``exc`` means "dead-letter this input", False when it means "retry"."""
    return isinstance(exc, PERMANENT)


_QUOTED = re.compile(r"""'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*\"""")
# A Patient reference whose id is not a pseudonym (input that skipped the edge), and
# conditional references by identifier.
_RAW_PATIENT = re.compile(r"Patient/(?!pt-[a-z2-7]{20}\b)[^\s'\";,)]+|Patient\?[^\s'\";,)]*")
_LONG_NUMBER = re.compile(r"\d{6,}")


def safe_reason(reason: str, limit: int = 300) -> str:
    """A dead-letter reason fit for a log line or a dead letter's headers: the error kind
    and what was wrong, without values quoted from the input (quoted literals, raw Patient
    references, long numbers such as record numbers). The input itself is kept, encrypted,
    in the dead letter (:mod:`streams.sealing`)."""
    out = _QUOTED.sub("'…'", reason)
    out = _RAW_PATIENT.sub("Patient/…", out)
    out = _LONG_NUMBER.sub("#…", out)
    return out[:limit]
