"""The analyst and alerting API (``wardwatch api``) and the dashboard it serves.

FastAPI over the same database as the worker (``WARDWATCH_DATABASE_URL``):

* ``GET /scores`` — scores by patient, time range, minimum risk and model, with cursor
  pagination (``next_cursor``); ``GET /patients/{patient}/timeline`` — a patient's
  state, scores and alerts; ``GET /alerts`` — by status, severity, since;
  ``POST /alerts/{alert_id}/acknowledge`` and ``/resolve`` — recorded with by whom and
  when; ``GET /alerts/stream`` — new alerts as Server-Sent Events (the server polls the
  ``alerts`` table by row id, so every alert the worker stored is sent once per
  connection, in order, and a client that reconnects with ``Last-Event-ID`` misses none).
* ``GET /health`` (liveness, no database) and ``GET /ready`` (the database answers and is
  migrated); OpenAPI documentation at ``/docs`` (Swagger UI from vendored files, no
  CDN) and ``/openapi.json``.
* ``GET /`` — the dashboard (static files in ``streams/dashboard/``).

Access control: ``Authorization: Bearer <token>`` (``wardwatch token create``). Roles:
analyst reads scores and alerts; alerting reads and acknowledges/resolves alerts; admin
may do everything. No or an unknown/revoked token: 401; a role without the right: 403.
Every read of patient data and every alert transition is written to ``audit_log``
(who, role, action, resource, when, the patients returned — their pseudonyms up to
``storage.access.AUDIT_MAX_PATIENTS``, always their count — and the SHA-256 of the
normalised query) *before* the data is returned; if the audit write fails the request
fails (503) rather than serve unaudited data. The alert stream audits each batch of
events before sending it, and re-checks its token every ``stream_recheck_s``: a revoked
token's stream ends with an ``event: revoked``.

Database errors: :class:`~storage.errors.StorageUnavailable` becomes 503 with a
``Retry-After`` header (clients may retry); nothing is retried inside the server.
"""

# No ``from __future__ import annotations``: FastAPI resolves the dependency annotations
# of the handlers, which name closures of create_api, at definition time.
import asyncio
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from sqlalchemy import Engine, text
from sse_starlette.sse import EventSourceResponse

from storage import access
from storage.access import Principal
from storage.errors import StorageUnavailable
from streams.cds_auth import CdsTokenVerifier
from streams.cds_hooks import cds_router
from streams.fhir_read import fhir_router
from streams.settings import Settings

from .api_subscriptions import subscription_router
from .tls import TlsFiles, uvicorn_config

DASHBOARD_DIR = Path(__file__).resolve().parent / "dashboard"

READ_SCORES = ("analyst", "admin")
READ_ALERTS = ("analyst", "alerting", "admin")
CHANGE_ALERTS = ("alerting", "admin")

_bearer = HTTPBearer(auto_error=False, description="A token from `wardwatch token create`.")


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _aware(value: datetime | None, name: str) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise HTTPException(422, f"{name}: give a time zone (e.g. 2026-01-01T08:00:00Z)")
    return value


def create_api(
    engine: Engine,
    *,
    stream_poll_s: float = 1.0,
    stream_recheck_s: float = 5.0,
    settings: Settings | None = None,
) -> FastAPI:
    """The FastAPI application over ``engine`` (already migrated, or ``/ready`` says so).

    ``stream_poll_s``: how often ``/alerts/stream`` looks for new alerts;
    ``stream_recheck_s``: how often an open stream re-validates its token (0: at every
    poll). ``settings`` configure CDS Hooks (``cds_*``, the pseudonym key); None: hook
    calls answer 503. Raises ValueError / OSError for a bad CDS Hooks configuration (see
    :class:`~streams.cds_auth.CdsTokenVerifier`); request handlers raise HTTPException
    (4xx) or answer 503 when the database is away.
    """
    # /docs is served below from vendored Swagger UI files: FastAPI's default page loads
    # them from a CDN, which a hospital network without internet access cannot reach
    # (a blank page). ReDoc would need a CDN too, so it is off.
    api = FastAPI(
        title="WardWatch analyst API",
        version="1",
        docs_url=None,
        redoc_url=None,
        description=(
            "Scores and alerts of WardWatch (clinical decision support, not a diagnosis). "
            "Patients are pseudonyms. Authenticate with `Authorization: Bearer <token>` "
            "(`wardwatch token create --role analyst|alerting|admin --name WHO`)."
        ),
    )

    @api.exception_handler(StorageUnavailable)
    async def _unavailable(_request: Request, exc: StorageUnavailable) -> JSONResponse:
        return JSONResponse(
            {"detail": f"database unavailable: {exc.reason}"},
            status_code=503,
            headers={"Retry-After": "5"},
        )

    def principal(
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Principal:
        if creds is None or creds.scheme.lower() != "bearer":
            raise HTTPException(
                401, "a bearer token is required", headers={"WWW-Authenticate": "Bearer"}
            )
        who = access.authenticate(engine, creds.credentials)
        if who is None:
            raise HTTPException(
                401,
                "unknown or revoked token",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        return who

    def require(*roles: str) -> Callable[[Principal], Principal]:
        def check(who: Annotated[Principal, Depends(principal)]) -> Principal:
            if who.role not in roles:
                raise HTTPException(
                    403, f"role {who.role!r} may not do this (needs one of {', '.join(roles)})"
                )
            return who

        return check

    def resource(request: Request) -> str:
        q = request.url.query
        return f"{request.method} {request.url.path}" + (f"?{q}" if q else "")

    # ------------------------------------------------------------- health

    @api.get("/health", tags=["health"], summary="Liveness: the process answers")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/ready", tags=["health"], summary="Readiness: the database answers, migrated")
    def ready() -> JSONResponse:
        try:
            with engine.connect() as conn:
                version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except Exception as exc:  # any failure means "not ready"; the reason is reported
            return JSONResponse(
                {"status": "unavailable", "reason": f"{type(exc).__name__}: {exc}"[:300]},
                status_code=503,
            )
        return JSONResponse({"status": "ready", "schema": version})

    # ------------------------------------------------------------- scores

    @api.get("/scores", tags=["scores"], summary="Scores, oldest first, cursor-paginated")
    def scores(
        request: Request,
        who: Annotated[Principal, Depends(require(*READ_SCORES))],
        patient: str | None = None,
        start: Annotated[datetime | None, Query(alias="from")] = None,
        end: Annotated[datetime | None, Query(alias="to", description="exclusive")] = None,
        min_risk: Annotated[float | None, Query(ge=0.0, le=1.0)] = None,
        model: Annotated[str | None, Query(description="model name or version")] = None,
        cursor: str | None = None,
        limit: Annotated[int, Query(ge=1, le=5000)] = 100,
        features: Annotated[bool, Query(description="include feature snapshots")] = False,
    ) -> dict[str, Any]:
        try:
            rows, nxt = access.query_scores(
                engine,
                patient=patient,
                start=_aware(start, "from"),
                end=_aware(end, "to"),
                min_risk=min_risk,
                model=model,
                cursor=cursor,
                limit=limit,
                with_features=features,
            )
        except access.CursorError as exc:
            raise HTTPException(400, str(exc)) from exc
        query = {"patient": patient, "from": start, "to": end, "min_risk": min_risk}
        query |= {"model": model, "cursor": cursor, "limit": limit, "features": features}
        access.audit(
            engine,
            who,
            "read",
            resource(request),
            patient,
            patients=[r["patient"] for r in rows],
            query=access.query_sha256("scores", query),
        )
        return {"scores": rows, "next_cursor": nxt}

    @api.get(
        "/patients/{patient}/timeline",
        tags=["scores"],
        summary="A patient's current state, scores and alerts over time",
    )
    def patient_timeline(
        request: Request,
        patient: str,
        who: Annotated[Principal, Depends(require(*READ_SCORES))],
        start: Annotated[datetime | None, Query(alias="from")] = None,
        end: Annotated[datetime | None, Query(alias="to")] = None,
        limit: Annotated[int, Query(ge=1, le=20000)] = 5000,
    ) -> dict[str, Any]:
        data = access.timeline(
            engine, patient, _aware(start, "from"), _aware(end, "to"), limit=limit
        )
        if data["patient"] is None and not data["scores"] and not data["alerts"]:
            raise HTTPException(404, f"no patient {patient!r}")
        query = {"patient": patient, "from": start, "to": end, "limit": limit}
        access.audit(
            engine,
            who,
            "read",
            resource(request),
            patient,
            patients=[patient],
            query=access.query_sha256("timeline", query),
        )
        return data

    # ------------------------------------------------------------- alerts

    @api.get("/alerts", tags=["alerts"], summary="Alerts, newest first")
    def alerts(
        request: Request,
        who: Annotated[Principal, Depends(require(*READ_ALERTS))],
        status: Literal["open", "acknowledged", "resolved"] | None = None,
        severity: Literal["info", "warning", "critical"] | None = None,
        since: Annotated[datetime | None, Query(description="raised at or after")] = None,
        patient: str | None = None,
        limit: Annotated[int, Query(ge=1, le=5000)] = 100,
    ) -> dict[str, Any]:
        rows = access.query_alerts(
            engine,
            status=status,
            severity=severity,
            since=_aware(since, "since"),
            patient=patient,
            limit=limit,
        )
        query = {"status": status, "severity": severity, "since": since, "patient": patient}
        access.audit(
            engine,
            who,
            "read",
            resource(request),
            patient,
            patients=[r["patient"] for r in rows],
            query=access.query_sha256("alerts", query | {"limit": limit}),
        )
        return {"alerts": rows}

    def _transition(request: Request, alert_id: str, action: str, who: Principal) -> Any:
        try:
            row = access.transition_alert(engine, alert_id, action, who.name)
        except access.AlertNotFound as exc:
            raise HTTPException(404, str(exc)) from exc
        except access.AlertStateError as exc:
            raise HTTPException(409, str(exc)) from exc
        access.audit(
            engine, who, action, resource(request), row["patient"], patients=[row["patient"]]
        )
        return row

    @api.post(
        "/alerts/{alert_id}/acknowledge",
        tags=["alerts"],
        summary="Acknowledge an open alert (records by whom and when)",
    )
    def acknowledge(
        request: Request,
        alert_id: str,
        who: Annotated[Principal, Depends(require(*CHANGE_ALERTS))],
    ) -> Any:
        return _transition(request, alert_id, "acknowledge", who)

    @api.post(
        "/alerts/{alert_id}/resolve",
        tags=["alerts"],
        summary="Resolve an open or acknowledged alert (records by whom and when)",
    )
    def resolve(
        request: Request,
        alert_id: str,
        who: Annotated[Principal, Depends(require(*CHANGE_ALERTS))],
    ) -> Any:
        return _transition(request, alert_id, "resolve", who)

    @api.get(
        "/alerts/stream",
        tags=["alerts"],
        summary="New alerts as Server-Sent Events (event `alert`, id = row id)",
        response_class=EventSourceResponse,
    )
    async def alert_stream(
        request: Request,
        who: Annotated[Principal, Depends(require(*READ_ALERTS))],
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        after: Annotated[
            int | None,
            Query(description="send alerts with row id above this (default: only new ones)"),
        ] = None,
        limit: Annotated[
            int | None, Query(ge=1, description="close the stream after this many alerts")
        ] = None,
    ) -> EventSourceResponse:
        last_event_id = request.headers.get("last-event-id")
        if after is None and last_event_id is not None and last_event_id.isdigit():
            after = int(last_event_id)
        start = after if after is not None else await asyncio.to_thread(access.max_alert_id, engine)
        where = resource(request)
        query = access.query_sha256("alerts/stream", {"after": start, "limit": limit})
        await asyncio.to_thread(
            access.audit, engine, who, "stream", where, None, patients=[], query=query
        )
        # principal() refused a request without credentials, so creds is set here.
        token = creds.credentials if creds is not None else ""

        async def still_allowed() -> bool:
            now = await asyncio.to_thread(access.authenticate, engine, token)
            return now is not None and now.role in READ_ALERTS

        async def events() -> AsyncIterator[dict[str, Any]]:
            last, sent, checked = start, 0, time.monotonic()
            while True:
                try:
                    # A token revoked while the stream is open stops it within
                    # stream_recheck_s: nothing stored after that is sent on it.
                    if time.monotonic() - checked >= stream_recheck_s:
                        if not await still_allowed():
                            yield {"event": "revoked", "data": "token revoked or not allowed"}
                            return
                        checked = time.monotonic()
                    rows = await asyncio.to_thread(
                        access.query_alerts, engine, after_id=last, limit=500, newest_first=False
                    )
                    if limit is not None:
                        rows = rows[: limit - sent]
                    if rows:
                        # Audited before a byte of the batch is sent, with its patients.
                        await asyncio.to_thread(
                            access.audit,
                            engine,
                            who,
                            "stream",
                            f"{where} events {rows[0]['id']}..{rows[-1]['id']}",
                            None,
                            patients=[r["patient"] for r in rows],
                            query=query,
                        )
                except StorageUnavailable as exc:
                    # Not retried here: the client reconnects with Last-Event-ID and
                    # misses nothing (unaudited alerts were never sent).
                    yield {"event": "error", "data": f"database unavailable: {exc.reason}"}
                    return
                for row in rows:
                    last = row["id"]
                    yield {
                        "event": "alert",
                        "id": str(row["id"]),
                        "data": orjson.dumps(row, default=_json_default).decode(),
                    }
                    sent += 1
                if limit is not None and sent >= limit:
                    return
                if await request.is_disconnected():
                    return
                await asyncio.sleep(stream_poll_s)

        return EventSourceResponse(events(), ping=15)

    # ------------------------------------------------------------- dashboard

    @api.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(DASHBOARD_DIR / "index.html")

    @api.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        swagger = "/static/vendor/swagger-ui"
        return get_swagger_ui_html(
            openapi_url=api.openapi_url or "/openapi.json",
            title=f"{api.title} (OpenAPI)",
            swagger_js_url=f"{swagger}/swagger-ui-bundle.js",
            swagger_css_url=f"{swagger}/swagger-ui.css",
            swagger_favicon_url=f"{swagger}/favicon-32x32.png",
        )

    # ------------------------------------------------------------- CDS Hooks, FHIR

    cds = settings if settings is not None and settings.cds_jwks else None
    issuers = [i.strip() for i in cds.cds_issuers.split(",") if i.strip()] if cds else []
    api.include_router(
        cds_router(
            engine,
            verifier=CdsTokenVerifier(cds.cds_jwks, issuers) if cds and cds.cds_jwks else None,
            pseudonym_key=cds.pseudonym_key.get_secret_value().encode() if cds else b"",
            base_url=cds.cds_base_url if cds else None,
            reader=require(*READ_SCORES),
        )
    )
    api.include_router(fhir_router(engine, reader=require(*READ_SCORES)))

    api.mount("/static", StaticFiles(directory=DASHBOARD_DIR), name="static")
    # FHIR Subscriptions (issue 19): rest-hook alert delivery, $status and $events.
    api.include_router(subscription_router(engine, require(*CHANGE_ALERTS)))
    return api


def server_config(
    engine: Engine,
    host: str,
    port: int,
    *,
    stream_poll_s: float = 1.0,
    stream_recheck_s: float = 5.0,
    tls: TlsFiles | None = None,
    settings: Settings | None = None,
) -> Any:
    """The loaded uvicorn configuration of the API; HTTPS with ``tls`` (and client
    certificates required when it names a client CA). Raises TlsConfigError (not retried)
    for unusable TLS files."""
    return uvicorn_config(
        create_api(
            engine,
            stream_poll_s=stream_poll_s,
            stream_recheck_s=stream_recheck_s,
            settings=settings,
        ),
        tls,
        host=host,
        port=port,
        log_level="info",
        proxy_headers=False,
    )


def serve(config: Any) -> None:
    """Run the API with uvicorn on ``config`` (from :func:`server_config`) until
    interrupted. Raises OSError if the port is taken."""
    import uvicorn

    uvicorn.Server(config).run()
