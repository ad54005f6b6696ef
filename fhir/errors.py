"""Errors raised by WardWatch's FHIR mapping (``fhir.*``).

Every error here is **permanent**: the same input will fail the same way however often it is
retried, so the caller must not retry it but dead-letter it (``topic_dlq``) with ``reason``.
The package is pure (no I/O after start-up), so there are **no transient errors** in it: a
broker, database or network failure can only come from the caller's own I/O, never from here.

Start-up problems with the packaged mapping tables (``fhir/data/*.yaml``) are configuration
errors, not input errors; :mod:`fhir.codes` raises a plain :class:`ValueError` for them.
"""

from __future__ import annotations


class PermanentInputError(Exception):
    """Bad input: dead-letter it, never retry (not retryable).

    ``reason`` is a short human-readable explanation for the dead-letter record;
    ``resource_type``/``resource_id`` name the offending resource where known.
    """

    def __init__(
        self,
        reason: str,
        *,
        resource_type: str | None = None,
        resource_id: str | None = None,
    ) -> None:
        self.reason = reason
        self.resource_type = resource_type
        self.resource_id = resource_id
        super().__init__(self.__str__())

    @property
    def kind(self) -> str:
        """The error's class name, e.g. ``"UnitError"`` (a stable label for metrics/DLQ)."""
        return type(self).__name__

    def where(self) -> str:
        """``"Observation/abc"``, ``"Observation"`` or ``""``: where the error was found."""
        if self.resource_type and self.resource_id:
            return f"{self.resource_type}/{self.resource_id}"
        return self.resource_type or (self.resource_id or "")

    def __str__(self) -> str:
        where = self.where()
        return f"{where}: {self.reason}" if where else self.reason

    def __reduce__(self) -> tuple[object, ...]:  # keep pickling (multiprocessing) working
        return (_rebuild, (type(self), self.reason, self.resource_type, self.resource_id))


def _rebuild(
    cls: type[PermanentInputError], reason: str, rtype: str | None, rid: str | None
) -> PermanentInputError:
    return cls(reason, resource_type=rtype, resource_id=rid)


class MalformedJson(PermanentInputError):  # noqa: N818 (names fixed by the brief)
    """The bytes are not JSON, or not a JSON object."""


class InvalidResource(PermanentInputError):  # noqa: N818 (names fixed by the brief)
    """JSON, but not a valid FHIR resource (no/unknown resourceType, fails R4B validation,
    wrong JSON type such as a string where a number is required)."""


class UnsupportedResource(InvalidResource):
    """A resourceType FHIR R4B does not define (e.g. ``"Foo"``), or nesting too deep."""


class UnknownCode(PermanentInputError):  # noqa: N818 (names fixed by the brief)
    """A code or categorical value the code table does not know (where one is required)."""


class MissingSubject(PermanentInputError):  # noqa: N818 (names fixed by the brief)
    """An Observation WardWatch would use has no resolvable ``Patient`` subject reference."""


class InvalidTime(PermanentInputError):  # noqa: N818 (names fixed by the brief)
    """No effective time, or a time without a time zone, or an unparseable time."""


class ImplausibleValue(PermanentInputError):  # noqa: N818 (names fixed by the brief)
    """A value outside the physiologically possible range of its code (after conversion)."""


class UnitError(PermanentInputError):
    """A unit that cannot be converted to the code's canonical unit (or a missing unit)."""


class MalformedPsv(PermanentInputError):  # noqa: N818 (names fixed by the brief)
    """A PhysioNet ``.psv`` text that does not have the challenge's layout."""


__all__ = [
    "ImplausibleValue",
    "InvalidResource",
    "InvalidTime",
    "MalformedJson",
    "MalformedPsv",
    "MissingSubject",
    "PermanentInputError",
    "UnitError",
    "UnknownCode",
    "UnsupportedResource",
]
