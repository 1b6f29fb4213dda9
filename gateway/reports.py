"""The merchant reports (``GET /v1/reports/{name}``): plain SQL both backends run, with the
grouping by day and the percentiles done here so that they mean the same on both.

Every report covers ``[start, end)`` in Unix seconds and one tenant (None: all of them):

| report             | rows                                         | the range applies to  |
|--------------------|----------------------------------------------|-----------------------|
| return_reasons     | ``reason``, ``count``                        | the return's creation |
| dropoffs           | ``store``, ``day``, ``count``                | the drop-off          |
| refund_time        | ``count``, ``p50_s``, ``p90_s``, ``mean_s``  | the refund            |
| carrier_exceptions | ``reason``, ``carrier``, ``count``, ``open`` | its opening           |

``refund_time`` measures from drop-off to refund, in seconds (nearest-rank percentiles).

Days are calendar days in the stores' time zone (``consolidation.timezone``).
"""

import math
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

from gateway.database import Database


class ReportName(StrEnum):
    """The reports there are."""

    RETURN_REASONS = "return_reasons"
    DROPOFFS = "dropoffs"
    REFUND_TIME = "refund_time"
    CARRIER_EXCEPTIONS = "carrier_exceptions"


@dataclass(frozen=True)
class Scope:
    """Whose data and which period."""

    tenant: str | None
    start: float
    end: float
    timezone: str = "UTC"

    def where(self, time_column: str, merchant_column: str) -> tuple[str, list[Any]]:
        """The SQL condition (without WHERE) and its arguments."""
        sql = f"{time_column} >= ? AND {time_column} < ?"
        args: list[Any] = [self.start, self.end]
        if self.tenant is not None:
            sql += f" AND {merchant_column} = ?"
            args.append(self.tenant)
        return sql, args


Rows = list[dict[str, Any]]


async def return_reasons(db: Database, scope: Scope) -> Rows:
    """How many returns per reason, most frequent first."""
    where, args = scope.where("created_at", "merchant")
    rows = await db.fetchall(
        f"SELECT reason, count(*) FROM returns WHERE {where} GROUP BY reason "
        "ORDER BY count(*) DESC, reason",
        args,
    )
    return [{"reason": str(r), "count": int(n)} for r, n in rows]


async def dropoffs(db: Database, scope: Scope) -> Rows:
    """Drop-offs per store and day."""
    where, args = scope.where("h.at", "r.merchant")
    rows = await db.fetchall(
        "SELECT r.store, h.at FROM return_history h JOIN returns r ON r.id = h.return_id "
        f"WHERE h.to_state = 'dropped_off' AND {where}",
        args,
    )
    zone = ZoneInfo(scope.timezone)
    counts = Counter(
        (str(store), datetime.fromtimestamp(float(at), UTC).astimezone(zone).date().isoformat())
        for store, at in rows
    )
    return [{"store": store, "day": day, "count": n} for (store, day), n in sorted(counts.items())]


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile of sorted ``values`` (not empty)."""
    return values[max(0, math.ceil(p / 100 * len(values)) - 1)]


async def refund_time(db: Database, scope: Scope) -> Rows:
    """Seconds from drop-off to refund over the returns refunded in the period."""
    where, args = scope.where("f.at", "r.merchant")
    rows = await db.fetchall(
        "SELECT r.id, min(d.at), min(f.at) FROM returns r "
        "JOIN return_history d ON d.return_id = r.id AND d.to_state = 'dropped_off' "
        "JOIN return_history f ON f.return_id = r.id AND f.to_state = 'refunded' "
        f"WHERE {where} GROUP BY r.id",
        args,
    )
    waits = sorted(max(0.0, float(refunded) - float(dropped)) for _, dropped, refunded in rows)
    if not waits:
        return [{"count": 0, "p50_s": None, "p90_s": None, "mean_s": None}]
    return [
        {
            "count": len(waits),
            "p50_s": percentile(waits, 50),
            "p90_s": percentile(waits, 90),
            "mean_s": sum(waits) / len(waits),
        }
    ]


async def carrier_exceptions(db: Database, scope: Scope) -> Rows:
    """Carrier exceptions per reason and carrier; a tenant sees those that touched one of
    its returns (directly, through its tote, or by holding it)."""
    sql = "e.opened_at >= ? AND e.opened_at < ?"
    args: list[Any] = [scope.start, scope.end]
    if scope.tenant is not None:
        sql += (
            " AND EXISTS (SELECT 1 FROM returns r WHERE r.merchant = ? AND (r.id = e.return_id "
            "OR r.tote_id = e.tote_id OR r.id IN (SELECT h.return_id FROM return_history h "
            "WHERE h.cause_id = e.id)))"
        )
        args.append(scope.tenant)
    rows = await db.fetchall(
        "SELECT e.reason, e.carrier, count(*), "
        "sum(CASE WHEN e.resolved_at IS NULL THEN 1 ELSE 0 END) "
        f"FROM carrier_exceptions e WHERE {sql} GROUP BY e.reason, e.carrier "
        "ORDER BY e.reason, e.carrier",
        args,
    )
    return [
        {"reason": str(reason), "carrier": carrier, "count": int(n), "open": int(o or 0)}
        for reason, carrier, n, o in rows
    ]


REPORTS: dict[ReportName, Callable[[Database, Scope], Awaitable[Rows]]] = {
    ReportName.RETURN_REASONS: return_reasons,
    ReportName.DROPOFFS: dropoffs,
    ReportName.REFUND_TIME: refund_time,
    ReportName.CARRIER_EXCEPTIONS: carrier_exceptions,
}


async def run(db: Database, name: ReportName, scope: Scope) -> Rows:
    """The rows of one report."""
    return await REPORTS[name](db, scope)
