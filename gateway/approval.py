"""Auto-approval of new returns, per tenant (ADR 0013).

Rules are checked in this order; the first that applies decides:

1. ``review_above_minor``: a refund above this amount goes to ``review``.
2. ``approve_within_days``: delivered at most this many days ago (``delivered_at``) and
   every item reported unopened (``opened: false``) → approved. Unknown inputs never match.
3. ``otherwise``: what happens to the rest, ``approve`` or ``review``.

A tenant without rules gets :data:`DEFAULT_RULES`, which approve everything (the gateway's
behaviour before rules existed). A return in ``review`` has no voucher until a person
approves it (``gateway/review.py``).
"""

import time
from collections.abc import Sequence
from enum import StrEnum
from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from gateway.database import Database, Transaction


class ApprovalRules(BaseModel):
    """A tenant's auto-approval rules (``PUT /v1/approval-rules``)."""

    model_config = ConfigDict(extra="forbid")

    review_above_minor: int | None = Field(default=None, ge=0, le=100_000_000)
    approve_within_days: int | None = Field(default=None, ge=0, le=3650)
    otherwise: Literal["approve", "review"] = "approve"


DEFAULT_RULES = ApprovalRules()


class Rule(StrEnum):
    """Which rule decided."""

    AMOUNT_ABOVE = "amount_above"
    RECENT_UNOPENED = "recent_unopened"
    OTHERWISE = "otherwise"


class Decision(NamedTuple):
    """Approve now, or send to review, and the rule that said so."""

    approve: bool
    rule: Rule


def decide(
    rules: ApprovalRules,
    *,
    amount_minor: int,
    delivered_at: float | None,
    opened: Sequence[bool | None],
    now: float,
) -> Decision:
    """Apply ``rules`` to one return request."""
    if rules.review_above_minor is not None and amount_minor > rules.review_above_minor:
        return Decision(False, Rule.AMOUNT_ABOVE)
    if (
        rules.approve_within_days is not None
        and delivered_at is not None
        and 0 <= now - delivered_at <= rules.approve_within_days * 86_400
        and all(o is False for o in opened)
    ):
        return Decision(True, Rule.RECENT_UNOPENED)
    return Decision(rules.otherwise == "approve", Rule.OTHERWISE)


async def load(tx: Transaction, tenant: str) -> ApprovalRules:
    """The tenant's rules, or the defaults."""
    row = await tx.fetchone("SELECT rules FROM approval_rules WHERE merchant = ?", (tenant,))
    return DEFAULT_RULES if row is None else ApprovalRules.model_validate_json(str(row[0]))


async def save(db: Database, tenant: str, rules: ApprovalRules) -> None:
    """Replace the tenant's rules."""
    async with db.transaction() as tx:
        await tx.execute(
            "INSERT INTO approval_rules (merchant, rules, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (merchant) DO UPDATE SET rules = excluded.rules, "
            "updated_at = excluded.updated_at",
            (tenant, rules.model_dump_json(), time.time()),
        )
