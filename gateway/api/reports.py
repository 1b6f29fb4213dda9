"""``GET /v1/reports/{name}``: the tenant's reports as JSON, or CSV (``?format=csv`` or
``Accept: text/csv``). The operator may pick a tenant with ``?tenant=`` (else: everyone's)."""

import csv
import io
from datetime import date, datetime, time, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from aiohttp import web
from pydantic import BaseModel, Field, model_validator

from gateway import reports
from gateway.api.auth import tenant_scope
from gateway.api.errors import GATEWAY, not_found
from gateway.api.inputs import Query, query
from gateway.api.routes import Route


class ReportQuery(Query):
    """The period (calendar days in the stores' time zone, both included) and the format."""

    since: date | None = Field(default=None, description="first day, YYYY-MM-DD")
    until: date | None = Field(default=None, description="last day, YYYY-MM-DD")
    tenant: str | None = Field(default=None, max_length=16, description="operator only")
    format: Literal["json", "csv"] | None = None

    @model_validator(mode="after")
    def _ordered(self) -> "ReportQuery":
        if self.since is not None and self.until is not None and self.since > self.until:
            raise ValueError("since is after until")
        return self


class ReasonRow(BaseModel):
    """``return_reasons``."""

    reason: str
    count: int


class DropoffRow(BaseModel):
    """``dropoffs``."""

    store: str
    day: str
    count: int


class RefundTimeRow(BaseModel):
    """``refund_time``: seconds from drop-off to refund."""

    count: int
    p50_s: float | None
    p90_s: float | None
    mean_s: float | None


class ExceptionRow(BaseModel):
    """``carrier_exceptions``."""

    reason: str
    carrier: str | None
    count: int
    open: int


class Report(BaseModel):
    """A report's rows; their shape depends on the report."""

    report: reports.ReportName
    tenant: str | None
    since: str | None
    until: str | None
    rows: list[ReasonRow] | list[DropoffRow] | list[RefundTimeRow] | list[ExceptionRow]


def _bounds(q: ReportQuery, timezone: str) -> tuple[float, float]:
    zone = ZoneInfo(timezone)
    start = 0.0
    end = 1e11
    if q.since is not None:
        start = datetime.combine(q.since, time(), zone).timestamp()
    if q.until is not None and q.until < date.max:
        end = datetime.combine(q.until + timedelta(days=1), time(), zone).timestamp()
    return start, end


def _csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return out.getvalue()


def _wants_csv(request: web.Request, q: ReportQuery) -> bool:
    if q.format is not None:
        return q.format == "csv"
    return "text/csv" in request.headers.get("Accept", "")


async def get_report(request: web.Request) -> web.Response:
    """``GET /v1/reports/{name}?since=&until=&tenant=&format=``."""
    try:
        name = reports.ReportName(request.match_info["name"])
    except ValueError:
        raise not_found("report") from None
    q = query(request, ReportQuery)
    tenant = await tenant_scope(request, q.tenant)
    gateway = request.app[GATEWAY]
    timezone = gateway.config.consolidation.timezone
    start, end = _bounds(q, timezone)
    rows = await reports.run(gateway.db, name, reports.Scope(tenant, start, end, timezone))
    if _wants_csv(request, q):
        return web.Response(
            text=_csv(rows),
            content_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{name.value}.csv"'},
        )
    since = None if q.since is None else q.since.isoformat()
    until = None if q.until is None else q.until.isoformat()
    return web.json_response(
        {"report": name.value, "tenant": tenant, "since": since, "until": until, "rows": rows}
    )


ROUTES: list[Route] = [
    Route("GET", "/v1/reports/{name}", get_report, "merchant",
          "A report: return_reasons, dropoffs, refund_time, carrier_exceptions",
          query=ReportQuery, response=Report, content=("application/json", "text/csv"),
          errors=(404, 422), path_values={"name": tuple(n.value for n in reports.ReportName)}),
]  # fmt: skip
