"""The gateway fetching the focus resources of id-only and empty subscription
notifications from the notifying FHIR server.

A notification Bundle (R4B/R5 ``subscription-notification`` with a SubscriptionStatus, or
an R4 Backport ``history`` Bundle with a status Parameters) that carries no resources of
its own names its focus resources instead: in the status (``notificationEvent.focus``,
or the Backport's ``notification-event.focus``) and as bare ``fullUrl`` entries.
:meth:`FetchBack.complete` fetches each from ``WARDWATCH_GATEWAY_FETCH_BASE_URL`` (with
``WARDWATCH_GATEWAY_FETCH_TOKEN`` as bearer token) and returns the Bundle's entries with
the fetched resources in full, which the gateway's bundle handler then checks,
pseudonymises and publishes exactly like a full-resource notification.

Only ``<base>/<Type>/<id>`` (optionally ``/_history/<version>``) is fetched: a focus
anywhere else is refused, so a notification cannot make the gateway call an address of
its choosing. Logs carry counts, types and error kinds, never a reference (it can name a
patient).
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import aiohttp
import orjson

from fhir.errors import PermanentInputError

from .delivery import backoff_s
from .settings import Settings

log = logging.getLogger("wardwatch.gateway.fetch_back")
STATUS_TYPES = frozenset({"SubscriptionStatus", "Parameters"})
MAX_FOCUS = 200  # more than this in one notification is refused, not fetched
GONE = frozenset({404, 410})  # the server has no such resource: refused, not retried
_RELATIVE = re.compile(
    r"^(?P<type>[A-Z][A-Za-z]{1,63})/[A-Za-z0-9\-.]{1,64}(/_history/[A-Za-z0-9\-.]{1,64})?$"
)


class FocusRefusedError(PermanentInputError):
    """A focus the gateway will not fetch: outside the configured base, not a
    ``Type/id`` reference, too many, or no base configured (422; never retried)."""


class FocusGoneError(FocusRefusedError):
    """The notifying server answered 404 or 410 for a focus: it has no such resource
    (deleted since, or the fetch base names another server). Resending will not bring
    it back, so the notification is refused 422 and dead-lettered, never retried."""


class FetchFailedError(Exception):
    """A focus resource could not be fetched after the retries (transient: the gateway
    answers 503 with Retry-After and the notifying server resends)."""


def _status_entries(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        e["resource"]
        for e in entries
        if isinstance(e.get("resource"), dict) and e["resource"].get("resourceType") in STATUS_TYPES
    ]


def needs_fetch(entries: list[dict[str, Any]]) -> bool:
    """True for a notification that carries a status and no other resource (id-only or
    empty payload). Raises nothing."""
    if not _status_entries(entries):
        return False
    return not any(
        isinstance(e.get("resource"), dict)
        and e["resource"].get("resourceType") not in STATUS_TYPES
        for e in entries
    )


def notification_type(entries: list[dict[str, Any]]) -> str:
    """The notification's type (handshake, heartbeat, event-notification...), sanitised
    for a log line; "unknown" when it has none. Raises nothing."""
    for status in _status_entries(entries):
        t = status.get("type")
        for p in status.get("parameter") or []:
            if isinstance(p, dict) and p.get("name") == "type":
                t = p.get("valueCode")
        if isinstance(t, str) and re.fullmatch(r"[a-z-]{1,40}", t):
            return t
    return "unknown"


def focus_references(entries: list[dict[str, Any]]) -> list[str]:
    """Every focus reference of a notification, first occurrence first: the status's
    event focuses, then the fullUrl of each entry without a resource. Raises nothing."""
    refs: list[str] = []
    for status in _status_entries(entries):
        for ev in status.get("notificationEvent") or []:
            if isinstance(ev, dict) and isinstance(ev.get("focus"), dict):
                refs.append(str(ev["focus"].get("reference", "")))
        for p in status.get("parameter") or []:
            if not isinstance(p, dict) or p.get("name") != "notification-event":
                continue
            for part in p.get("part") or []:
                if isinstance(part, dict) and part.get("name") == "focus":
                    refs.append(str((part.get("valueReference") or {}).get("reference", "")))
    for e in entries:
        if e.get("resource") is None and isinstance(e.get("fullUrl"), str):
            refs.append(e["fullUrl"])
    return list(dict.fromkeys(r for r in refs if r))


def resolve(reference: str, base: str) -> tuple[str, str]:
    """(URL to fetch, expected resourceType) of ``reference`` (absolute under ``base``,
    or relative ``Type/id``). Raises :class:`FocusRefusedError` for anything else."""
    root = base.rstrip("/") + "/"
    relative = reference.removeprefix(root) if reference.startswith(root) else reference
    if "://" in relative or reference.startswith("urn:"):
        raise FocusRefusedError("a focus reference is outside WARDWATCH_GATEWAY_FETCH_BASE_URL")
    m = _RELATIVE.match(relative)
    if m is None:
        raise FocusRefusedError("a focus reference is not <Type>/<id> under the fetch base")
    return root + relative, m["type"]


class FetchBack:
    """Fetches notification focus resources for the gateway (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self._s = settings

    async def complete(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``entries`` with every focus fetched in full (status entries kept, bare
        fullUrl entries replaced). A notification without focus (a heartbeat,
        handshake) comes back as it is, logged at info. Raises
        :class:`FocusRefusedError` (422, not retried; :class:`FocusGoneError` when the
        server has no such focus) and :class:`FetchFailedError`
        (503: retried here ``gateway_fetch_retries`` times first)."""
        ntype = notification_type(entries)
        refs = focus_references(entries)
        if not refs:
            log.info("subscription notification (%s) without focus: nothing to fetch", ntype)
            return entries
        base = self._s.gateway_fetch_base_url
        if not base:
            raise FocusRefusedError(
                "id-only notifications need WARDWATCH_GATEWAY_FETCH_BASE_URL on the gateway"
            )
        if len(refs) > MAX_FOCUS:
            raise FocusRefusedError(f"more than {MAX_FOCUS} focus resources in one notification")
        targets = [resolve(r, base) for r in refs]
        headers = {"Accept": "application/fhir+json"}
        if self._s.gateway_fetch_token is not None:
            headers["Authorization"] = f"Bearer {self._s.gateway_fetch_token.get_secret_value()}"
        timeout = aiohttp.ClientTimeout(total=self._s.gateway_fetch_timeout_s)
        limit = asyncio.Semaphore(8)  # a few at a time: the notifying server is one server
        async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:

            async def one(url: str, rtype: str) -> dict[str, Any]:
                async with limit:
                    return await self._fetch(session, url, rtype)

            try:
                fetched = await asyncio.gather(*(one(u, t) for u, t in targets))
            except FetchFailedError as exc:
                log.warning(
                    "subscription notification (%s): fetching %d focus resources failed "
                    "(%s); answered 503",
                    ntype, len(targets), exc,
                )  # fmt: skip
                raise
        log.info("subscription notification (%s): fetched %d focus resources", ntype, len(fetched))
        kept = [e for e in entries if e.get("resource") is not None]
        return kept + [{"resource": r} for r in fetched]

    async def _fetch(self, session: aiohttp.ClientSession, url: str, rtype: str) -> dict[str, Any]:
        """GET one resource, retried with backoff. Raises FocusGoneError at once on 404
        or 410 (not retried), FetchFailedError after the last retry of anything else
        (the reason names a status or an error kind, never the URL)."""
        reason = ""
        for attempt in range(self._s.gateway_fetch_retries + 1):
            if attempt:
                await asyncio.sleep(backoff_s(attempt, self._s.gateway_fetch_backoff_s, 30.0))
            try:
                async with session.get(url, allow_redirects=False) as resp:
                    body = await resp.content.read(self._s.gateway_max_body_bytes + 1)
                    if resp.status in GONE:
                        raise FocusGoneError(
                            f"the notifying server answered HTTP {resp.status} for a focus "
                            f"{rtype}: it has no such resource (deleted, or "
                            "WARDWATCH_GATEWAY_FETCH_BASE_URL names another server)"
                        )
                    if resp.status != 200:
                        reason = f"HTTP {resp.status}"
                        continue
                if len(body) > self._s.gateway_max_body_bytes:
                    reason = "resource larger than WARDWATCH_GATEWAY_MAX_BODY_BYTES"
                    continue
                doc = orjson.loads(body)
                if not isinstance(doc, dict) or doc.get("resourceType") != rtype:
                    reason = f"the answer is not a {rtype}"
                    continue
                return doc
            except orjson.JSONDecodeError:
                reason = "the answer is not JSON"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                reason = type(exc).__name__
        raise FetchFailedError(f"{reason} after {self._s.gateway_fetch_retries + 1} tries")
