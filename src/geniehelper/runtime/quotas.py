"""Tier quotas (`tier_rate_limits.json`), checked and consumed atomically before a job is enqueued.

Counters live in `user_usage_counts`, one row per (creator, operation, period). The period is the
calendar month in UTC. Consuming is one update under the counter's row lock: there is no
read-then-write race, so N concurrent callers at the limit admit exactly the limit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime
from importlib import resources
from typing import Any, Literal
from uuid import UUID

import asyncpg
from pydantic import BaseModel, ConfigDict

UNLIMITED = -1
NOT_IN_TIER = 0


class TierLimits(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")
    period: Literal["calendar_month_utc"]
    tiers: dict[str, dict[str, int]]

    def limit(self, tier: str, operation: str) -> int:
        """The limit for an operation; an operation a tier does not list is not in that tier."""
        return self.tiers.get(tier, {}).get(operation, NOT_IN_TIER)


def load_tier_limits() -> TierLimits:
    text = resources.files("geniehelper.runtime").joinpath("tier_rate_limits.json").read_text(encoding="utf-8")
    return TierLimits.model_validate(json.loads(text))


def period_bounds(now: datetime) -> tuple[date, datetime]:
    """(first day of this period, when the next period starts), calendar month in UTC."""
    now = now.astimezone(UTC)
    start = date(now.year, now.month, 1)
    reset = datetime(now.year + (now.month == 12), now.month % 12 + 1, 1, tzinfo=UTC)
    return start, reset


@dataclass
class QuotaExceeded(Exception):
    reason: Literal["limit_reached", "not_in_tier"]
    operation: str
    tier: str
    limit: int
    resets_at: datetime | None

    def __str__(self) -> str:
        if self.reason == "not_in_tier":
            return f"{self.operation} is not included in the {self.tier} tier"
        return (
            f"{self.operation}: the {self.tier} tier allows {self.limit} per month; "
            f"the limit is reached until {self.resets_at:%Y-%m-%d %H:%M} UTC"
        )

    def as_dict(self) -> dict[str, Any]:
        """The refusal body services return (same shape as the original HTTP 403)."""
        return {
            "error": "tier_limit_reached",
            "reason": self.reason,
            "message": str(self),
            "operation": self.operation,
            "tier": self.tier,
            "limit": self.limit,
            "resets_at": self.resets_at.isoformat() if self.resets_at else None,
        }


# Creating the period's row first means the row lock below always exists to serialise on.
ENSURE_COUNTER = """
insert into user_usage_counts (user_id, operation, period_start, used) values ($1, $2, $3, 0)
on conflict (user_id, operation, period_start) do nothing
"""

# Admit up to $4 uses under the limit $5 (-1 = unlimited) in one locked read-modify-write: the
# subquery takes the row lock, so concurrent callers queue up and each sees the previous total.
CONSUME_UP_TO = """
update user_usage_counts u
   set used = u.used + least($4::int, case when $5::int < 0 then $4::int else greatest(0, $5::int - o.used) end),
       updated_at = now()
  from (select used from user_usage_counts
         where user_id = $1 and operation = $2 and period_start = $3 for update) o
 where u.user_id = $1 and u.operation = $2 and u.period_start = $3
returning u.used - o.used as admitted
"""


async def creator_tier(conn: asyncpg.Connection, user_id: UUID) -> str:
    tier: str | None = await conn.fetchval("select tier from creators where id = $1", user_id)
    if tier is None:
        raise LookupError(f"creator {user_id} not found")
    return tier


async def consume_up_to(
    conn: asyncpg.Connection,
    limits: TierLimits,
    user_id: UUID,
    operation: str,
    count: int,
    *,
    tier: str | None = None,
    now: datetime | None = None,
) -> tuple[int, QuotaExceeded | None]:
    """Admit up to `count` uses for the creator of this transaction: (admitted, refusal for the rest)."""
    tier = tier or await creator_tier(conn, user_id)
    limit = limits.limit(tier, operation)
    if limit == NOT_IN_TIER:
        return 0, QuotaExceeded("not_in_tier", operation, tier, limit, None)
    period_start, resets_at = period_bounds(now or datetime.now(UTC))
    await conn.execute(ENSURE_COUNTER, user_id, operation, period_start)
    admitted = int(await conn.fetchval(CONSUME_UP_TO, user_id, operation, period_start, count, limit))
    refusal = None if admitted == count else QuotaExceeded("limit_reached", operation, tier, limit, resets_at)
    return admitted, refusal
