"""Tier quotas, charged atomically in PostgreSQL before a job is enqueued (and when a record made
any other way starts).

The limits are `tier_quotas` rows, written from `tier_rate_limits.json` by every `geniehelper
migrate` (`sync_tier_quotas`). Counters live in `user_usage_counts`, one row per (creator,
operation, calendar month in UTC). Only `charge_quota()` (migration 0015, SECURITY DEFINER) writes
them: the app role may read its counters, never write them, and cannot change its tier. Charging is
one update under the counter's row lock, so N concurrent callers at the limit admit exactly the
limit; each record charged is marked with the operation (`media_jobs.quota_charged`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any, Literal
from uuid import UUID

import asyncpg
from pydantic import BaseModel, ConfigDict

UNLIMITED = -1
NOT_IN_TIER = 0


class TierLimits(BaseModel):
    """The tier file: operation limits per tier per calendar month (-1 unlimited; absent: not in the tier)."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    period: Literal["calendar_month_utc"]
    tiers: dict[str, dict[str, int]]


def load_tier_limits() -> TierLimits:
    text = resources.files("geniehelper.runtime").joinpath("tier_rate_limits.json").read_text(encoding="utf-8")
    return TierLimits.model_validate(json.loads(text))


# The whole file replaces what the table held (an operation removed from a tier leaves it).
SYNC_TIER_QUOTAS = """
with wanted as (
    select * from unnest($1::text[], $2::text[], $3::int[]) as t(tier, operation, monthly_limit)
), removed as (
    delete from tier_quotas q
     where not exists (select 1 from wanted w where w.tier = q.tier and w.operation = q.operation)
)
insert into tier_quotas (tier, operation, monthly_limit) select tier, operation, monthly_limit from wanted
on conflict (tier, operation) do update set monthly_limit = excluded.monthly_limit
 where tier_quotas.monthly_limit is distinct from excluded.monthly_limit
"""


async def sync_tier_quotas(conn: asyncpg.Connection, limits: TierLimits) -> None:
    """Write the tier file into `tier_quotas` (as the schema owner, at migrate)."""
    rows = [(tier, op, limit) for tier, ops in limits.tiers.items() for op, limit in ops.items()]
    await conn.execute(SYNC_TIER_QUOTAS, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])


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


CHARGE_QUOTA = "select admitted, tier, monthly_limit, resets_at from charge_quota($1, $2, $3)"


async def charge(
    conn: asyncpg.Connection, user_id: UUID, operation: str, record_ids: list[UUID]
) -> tuple[int, QuotaExceeded | None]:
    """Charge one use per record (in the creator's transaction, in order): (how many were admitted,
    the refusal for the rest). The records admitted are marked charged; the caller removes or fails
    the others."""
    row = await conn.fetchrow(CHARGE_QUOTA, user_id, operation, record_ids)
    assert row is not None  # charge_quota returns one row or raises
    admitted = int(row["admitted"])
    if admitted == len(record_ids):
        return admitted, None
    if row["monthly_limit"] == NOT_IN_TIER:
        return admitted, QuotaExceeded("not_in_tier", operation, row["tier"], NOT_IN_TIER, None)
    return admitted, QuotaExceeded("limit_reached", operation, row["tier"], row["monthly_limit"], row["resets_at"])
