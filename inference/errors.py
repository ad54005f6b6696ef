"""Errors of the model-serving path, split by what a caller should do about them.

* :class:`ModelUnavailable` is **transient**: the server could not be reached, was not
  ready, answered too late (deadline), or was overloaded. Retry the same request later
  (with back-off); the stream keeps the patient's state and rescoring will succeed once
  the server is back. Meanwhile the early-warning scores (NEWS2, qSOFA) still run.
* :class:`ModelError` is **permanent**: the request itself is wrong for the served model
  (shape or dtype mismatch, unknown model or input name, a model that fails on the
  input). Retrying the same request cannot succeed; the caller should log it, send the
  input to the dead-letter path and alert an operator (usually a model/feature-spec
  version mismatch).
"""

from __future__ import annotations


class InferenceError(Exception):
    """Base class of the serving path's errors."""

    retryable: bool = False


class ModelUnavailable(InferenceError):  # noqa: N818 (name fixed by the contract)
    """Transient: server unreachable, not ready, timed out or overloaded. Retried."""

    retryable = True


class ModelError(InferenceError):
    """Permanent: the request does not fit the model (shape, dtype, names). Not retried."""

    retryable = False


def reason_of(exc: BaseException) -> str:
    """A one-line reason a person can act on, for dead-letter headers and logs. Raises
    nothing."""
    reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {reason}".replace("\n", " ")[:1000]
