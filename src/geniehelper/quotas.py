"""Tier quotas (`tier_rate_limits.json`), checked and consumed atomically before a job is enqueued.

Counters live in `user_usage_counts`, one row per (creator, operation, period). The period is the
calendar month in UTC. Consuming is one conditional upsert: there is no read-then-write race, so N
concurrent callers at the limit admit exactly the limit.
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
    text = resources.files("geniehelper").joinpath("tier_rate_limits.json").read_text(encoding="utf-8")
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


CONSUME_SQL = """
insert into user_usage_counts (user_id, operation, period_start, used)
values ($1, $2, $3, 1)
on conflict (user_id, operation, period_start) do update
    set used = user_usage_counts.used + 1, updated_at = now()
    where $4::int < 0 or user_usage_counts.used + 1 <= $4::int
returning used
"""


async def consume(
    conn: asyncpg.Connection, limits: TierLimits, user_id: UUID, operation: str, *, now: datetime | None = None
) -> int:
    """Count one use of `operation` for the creator of this transaction, or raise QuotaExceeded."""
    tier = await conn.fetchval("select tier from creators where id = $1", user_id)
    if tier is None:
        raise LookupError(f"creator {user_id} not found")
    limit = limits.limit(tier, operation)
    if limit == NOT_IN_TIER:
        raise QuotaExceeded("not_in_tier", operation, tier, limit, None)
    period_start, resets_at = period_bounds(now or datetime.now(UTC))
    used = await conn.fetchval(CONSUME_SQL, user_id, operation, period_start, limit)
    if used is None:
        raise QuotaExceeded("limit_reached", operation, tier, limit, resets_at)
    return int(used)
