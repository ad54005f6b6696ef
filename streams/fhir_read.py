"""FHIR R4 read and search of stored scores as RiskAssessment, as a FastAPI router.

* ``GET /fhir/RiskAssessment?subject=Patient/<pseudonym>&date=ge2026-01-01&_sort=-date
  &_count=50`` — a searchset Bundle (``total``, ``self``/``next`` links). Parameters:
  ``subject`` or ``patient`` (``Patient/<pseudonym>`` or the bare pseudonym), ``date``
  (repeatable, prefixes ``eq`` (default), ``ge``, ``gt``, ``le``, ``lt``; a date, year
  or year-month is that UTC day/month/year, a dateTime needs a time zone), ``_sort``
  (``date``, ``-date``; default ``date``), ``_count`` (0-500, default 50: 0 gives the
  total only), ``_offset`` (paging: the ``next`` link carries it).
* ``GET /fhir/RiskAssessment/{id}`` — one score (id ``score-<row id>``).
* ``GET /fhir/metadata`` — the CapabilityStatement (no token).

Unknown search parameters follow FHIR's default ``handling=lenient``: ignored, left out of
the ``self`` link and named in an OperationOutcome entry (``search.mode`` outcome);
``Prefer: handling=strict`` makes them a 400 OperationOutcome. Bad values are a 400
OperationOutcome, an unknown id a 404 one. The API's token and roles apply (analyst,
admin read scores) and every read is written to the audit log before it is answered.
"""

# No ``from __future__ import annotations``: FastAPI resolves the handlers' annotations,
# which name parameters of the factory, at definition time.
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy import Engine

from fhir.risk_assessment import operation_outcome, score_id, score_risk_assessment, searchset
from storage import access, score_search
from storage.access import Principal
from storage.score_search import TimeBound

FHIR_JSON = "application/fhir+json"
MAX_COUNT = 500
KNOWN = frozenset({"subject", "patient", "date", "_sort", "_count", "_offset", "_format"})
CAPABILITY_DATE = "2026-12-01"
_DATE = re.compile(
    r"^(?P<prefix>eq|ne|gt|lt|ge|le|sa|eb|ap)?"
    r"(?P<value>(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})(?P<time>T.+)?)?)?)$"
)


class SearchError(ValueError):
    """A search parameter FHIR's rules or this server cannot take (400)."""


def _fhir(body: dict[str, Any], status: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status, media_type=FHIR_JSON)


def _period(match: re.Match[str]) -> tuple[datetime, datetime]:
    """The [start, end) a FHIR date or dateTime stands for (its precision)."""
    y, m, d, t = match["y"], match["m"], match["d"], match["time"]
    if t is not None:
        try:
            start = datetime.fromisoformat(match["value"])
        except ValueError as e:
            raise SearchError(f"date: {match['value']!r} is not a FHIR dateTime") from e
        if start.tzinfo is None:
            raise SearchError(f"date: {match['value']!r} needs a time zone (e.g. Z)")
        if "." in t:
            step = timedelta(microseconds=1)
        elif t.count(":") >= 2 and re.match(r"T\d{2}:\d{2}:\d{2}", t):
            step = timedelta(seconds=1)
        else:
            step = timedelta(minutes=1)
        return start.astimezone(UTC), start.astimezone(UTC) + step
    try:
        if d is not None:
            start = datetime(int(y), int(m), int(d), tzinfo=UTC)
            return start, start + timedelta(days=1)
        if m is not None:
            start = datetime(int(y), int(m), 1, tzinfo=UTC)
            nxt = datetime(int(y) + (int(m) == 12), int(m) % 12 + 1, 1, tzinfo=UTC)
            return start, nxt
        return datetime(int(y), 1, 1, tzinfo=UTC), datetime(int(y) + 1, 1, 1, tzinfo=UTC)
    except ValueError as e:
        raise SearchError(f"date: {match['value']!r} is not a date") from e


def date_bounds(values: list[str]) -> list[TimeBound]:
    """The time bounds of FHIR ``date`` search values (``ge2026-01-01``, ...): a value
    matches scores inside the period it names (eq), from it (ge), after it (gt), up to its
    end (le) or before it (lt). Raises :class:`SearchError` for a malformed value or an
    unsupported prefix (ne, sa, eb, ap)."""
    out: list[TimeBound] = []
    for raw in values:
        match = _DATE.match(raw)
        if match is None:
            raise SearchError(f"date: {raw!r} is not [prefix]YYYY[-MM[-DD[Thh:mm[:ss]+zz]]]")
        prefix = match["prefix"] or "eq"
        if prefix not in ("eq", "ge", "gt", "le", "lt"):
            raise SearchError(f"date: prefix {prefix!r} is not supported (eq, ge, gt, le, lt)")
        start, end = _period(match)
        if prefix == "eq":
            out += [TimeBound("ge", start), TimeBound("lt", end)]
        elif prefix == "ge":
            out.append(TimeBound("ge", start))
        elif prefix == "gt":
            out.append(TimeBound("ge", end))
        elif prefix == "le":
            out.append(TimeBound("lt", end))
        else:
            out.append(TimeBound("lt", start))
    return out


def _patient(subject: str | None, patient: str | None) -> str | None:
    names = set()
    for name, value in (("subject", subject), ("patient", patient)):
        if value is None:
            continue
        pid = value.removeprefix("Patient/")
        if not pid or "/" in pid:
            raise SearchError(f"{name}: {value!r} is not Patient/<id>")
        names.add(pid)
    if len(names) > 1:
        raise SearchError("subject and patient name different patients")
    return names.pop() if names else None


def capability_statement(base: str) -> dict[str, Any]:
    """This server's FHIR R4 CapabilityStatement. Raises nothing."""
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": CAPABILITY_DATE,
        "publisher": "WardWatch",
        "kind": "instance",
        "software": {"name": "WardWatch"},
        "implementation": {"description": "WardWatch sepsis risk scores", "url": base},
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "cors": False,
                    "description": "Authorization: Bearer <token> (`wardwatch token create`); "
                    "roles analyst and admin read RiskAssessment. Every read is audited.",
                },
                "resource": [
                    {
                        "type": "RiskAssessment",
                        "interaction": [{"code": "read"}, {"code": "search-type"}],
                        "searchParam": [
                            {"name": "subject", "type": "reference"},
                            {"name": "patient", "type": "reference"},
                            {
                                "name": "date",
                                "type": "date",
                                "documentation": "prefixes eq, ge, gt, le, lt",
                            },
                            {
                                "name": "_offset",
                                "type": "number",
                                "documentation": "paging offset (from the next link)",
                            },
                        ],
                    }
                ],
            }
        ],
    }


def fhir_router(engine: Engine, *, reader: Callable[..., Principal]) -> APIRouter:
    """The FHIR routes over ``engine``; ``reader`` is the API's dependency for a principal
    allowed to read scores. Raises nothing; handlers answer OperationOutcomes on 400/404
    and the API's errors (401/403/503) otherwise."""
    router = APIRouter(prefix="/fhir", tags=["fhir"])

    def base(request: Request) -> str:
        return str(request.base_url).rstrip("/") + "/fhir"

    @router.get("/metadata", summary="FHIR CapabilityStatement (no token)")
    def metadata(request: Request) -> JSONResponse:
        return _fhir(capability_statement(base(request)))

    @router.get("/RiskAssessment", summary="Search scores as FHIR RiskAssessment (searchset)")
    def search(
        request: Request,
        who: Annotated[Principal, Depends(reader)],
        subject: Annotated[str | None, Query(description="Patient/<pseudonym>")] = None,
        patient: Annotated[str | None, Query(description="Patient/<pseudonym>")] = None,
        date: Annotated[list[str] | None, Query(description="e.g. ge2026-01-01")] = None,
        sort: Annotated[str, Query(alias="_sort", pattern="^-?date$")] = "date",
        count: Annotated[int, Query(alias="_count", ge=0, le=MAX_COUNT)] = 50,
        offset: Annotated[int, Query(alias="_offset", ge=0)] = 0,
    ) -> JSONResponse:
        unknown = sorted({k for k in request.query_params if k not in KNOWN})
        strict = "handling=strict" in request.headers.get("prefer", "").replace(" ", "")
        if unknown and strict:
            text = f"unknown search parameters: {', '.join(unknown)}"
            return _fhir(operation_outcome("error", "not-supported", text), 400)
        try:
            pseudonym = _patient(subject, patient)
            bounds = date_bounds(date or [])
        except SearchError as e:
            return _fhir(operation_outcome("error", "invalid", str(e)), 400)
        rows, total = score_search.search_scores(
            engine,
            patient=pseudonym,
            bounds=bounds,
            newest_first=sort == "-date",
            limit=count,
            offset=offset,
        )
        kept = [(k, v) for k, v in request.query_params.multi_items() if k in KNOWN]
        url = f"{base(request)}/RiskAssessment"

        def page(at: int) -> str:
            return (
                url
                + "?"
                + urlencode([*(kv for kv in kept if kv[0] != "_offset"), ("_offset", str(at))])
            )

        more = count > 0 and offset + len(rows) < total
        outcome = None
        if unknown:
            outcome = operation_outcome(
                "warning", "not-supported", f"ignored search parameters: {', '.join(unknown)}"
            )
        bundle = searchset(
            [score_risk_assessment(r) for r in rows],
            base=base(request),
            total=total,
            self_url=url + ("?" + urlencode(kept) if kept else ""),
            next_url=page(offset + len(rows)) if more else None,
            outcome=outcome,
        )
        query = access.query_sha256(
            "fhir-riskassessment",
            {
                "patient": pseudonym,
                "date": sorted(date or []) or None,
                "sort": sort,
                "count": count,
                "offset": offset,
            },
        )
        access.audit(
            engine,
            who,
            "read",
            _resource(request),
            pseudonym,
            patients=[str(r["patient"]) for r in rows],
            query=query,
        )
        return _fhir(bundle)

    @router.get("/RiskAssessment/{resource_id}", summary="Read one score as RiskAssessment")
    def read(
        request: Request,
        resource_id: str,
        who: Annotated[Principal, Depends(reader)],
    ) -> JSONResponse:
        sid = score_id(resource_id)
        row = score_search.get_score(engine, sid) if sid is not None else None
        if row is None:
            text = f"no RiskAssessment {resource_id!r}"
            return _fhir(operation_outcome("error", "not-found", text), 404)
        access.audit(engine, who, "read", _resource(request), str(row["patient"]))
        return _fhir(score_risk_assessment(row))

    return router


def _resource(request: Request) -> str:
    q = request.url.query
    return f"{request.method} {request.url.path}" + (f"?{q}" if q else "")
