"""Analytics: account growth (`platform_stats_snapshots`), per-post engagement
(`post_performance_snapshots`), period earnings (`creator_earnings`) and goal progress over time.

The two snapshot tables are append-only ledgers: an append returns `None` when the same scrape
(same natural key) is already recorded. Earnings are upserted while their period is open.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict

PeriodKind = Literal["day", "week", "month", "billing_cycle"]
EarningsContentType = Literal["subscription", "ppv", "tip", "paid_message", "custom_request", "bundle", "other"]


class PlatformStatsSnapshot(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: UUID
    user_id: UUID
    platform_connection_id: UUID
    platform: str
    captured_at: datetime
    follower_count: int | None
    subscriber_count: int | None
    churn_rate: Decimal | None


class PostPerformanceSnapshot(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: UUID
    user_id: UUID
    content_post_id: UUID | None
    scheduled_post_id: UUID | None
    platform: str
    external_post_id: str
    captured_at: datetime
    views: int | None
    likes: int | None
    comments: int | None
    shares: int | None
    ppv_revenue: Decimal | None
    currency: str


class CreatorEarnings(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: UUID
    user_id: UUID
    period_kind: PeriodKind
    period_start: date
    period_end: date
    platform: str
    content_type: EarningsContentType
    gross_amount: Decimal
    fees_amount: Decimal
    net_amount: Decimal
    currency: str
    transaction_count: int
    captured_at: datetime
    finalized_at: datetime | None


class GoalSnapshot(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: UUID
    user_id: UUID
    creator_goal_id: UUID
    captured_at: datetime
    current_value: Decimal
    progress_pct: Decimal


STATS_COLUMNS = """id, user_id, platform_connection_id, platform, captured_at, follower_count, subscriber_count,
       churn_rate"""
POST_COLUMNS = """id, user_id, content_post_id, scheduled_post_id, platform, external_post_id, captured_at, views,
       likes, comments, shares, ppv_revenue, currency"""
EARNINGS_COLUMNS = """id, user_id, period_kind, period_start, period_end, platform, content_type, gross_amount,
       fees_amount, net_amount, currency, transaction_count, captured_at, finalized_at"""
GOAL_SNAPSHOT_COLUMNS = "id, user_id, creator_goal_id, captured_at, current_value, progress_pct"

# platform must be the connection's platform (composite foreign key).
APPEND_PLATFORM_STATS = (
    """
insert into platform_stats_snapshots (user_id, platform_connection_id, platform, captured_at, follower_count,
                                      subscriber_count, churn_rate)
values ($1, $2, $3, $4, $5, $6, $7)
on conflict (user_id, platform_connection_id, captured_at) do nothing
returning """
    + STATS_COLUMNS
)

APPEND_POST_PERFORMANCE = (
    """
insert into post_performance_snapshots (user_id, platform, external_post_id, captured_at, content_post_id,
                                        scheduled_post_id, views, likes, comments, shares, ppv_revenue, currency)
values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
on conflict (user_id, platform, external_post_id, captured_at) do nothing
returning """
    + POST_COLUMNS
)

# A finalized period is closed: the upsert leaves it as it is and returns it unchanged.
UPSERT_EARNINGS = (
    """
insert into creator_earnings (user_id, period_kind, period_start, period_end, platform, content_type, gross_amount,
                              fees_amount, net_amount, currency, transaction_count, captured_at)
values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, coalesce($12, now()))
on conflict (user_id, period_kind, period_start, platform, content_type) do update
    set period_end = excluded.period_end,
        gross_amount = excluded.gross_amount,
        fees_amount = excluded.fees_amount,
        net_amount = excluded.net_amount,
        currency = excluded.currency,
        transaction_count = excluded.transaction_count,
        captured_at = excluded.captured_at
  where creator_earnings.finalized_at is null
returning """
    + EARNINGS_COLUMNS
)

GET_EARNINGS = (
    "select "
    + EARNINGS_COLUMNS
    + """ from creator_earnings
 where user_id = $1 and period_kind = $2 and period_start = $3 and platform = $4 and content_type = $5"""
)

APPEND_GOAL_SNAPSHOT = (
    """
insert into creator_goal_snapshots (user_id, creator_goal_id, captured_at, current_value, progress_pct)
values ($1, $2, $3, $4, $5)
on conflict (user_id, creator_goal_id, captured_at) do nothing
returning """
    + GOAL_SNAPSHOT_COLUMNS
)


async def append_platform_stats_snapshot(
    conn: Any,
    user_id: UUID,
    platform_connection_id: UUID,
    platform: str,
    captured_at: datetime,
    *,
    follower_count: int | None = None,
    subscriber_count: int | None = None,
    churn_rate: Decimal | None = None,
) -> PlatformStatsSnapshot | None:
    row = await conn.fetchrow(
        APPEND_PLATFORM_STATS, user_id, platform_connection_id, platform, captured_at, follower_count,
        subscriber_count, churn_rate,
    )  # fmt: skip
    return PlatformStatsSnapshot.model_validate(dict(row)) if row else None


async def append_post_performance_snapshot(
    conn: Any,
    user_id: UUID,
    platform: str,
    external_post_id: str,
    captured_at: datetime,
    *,
    content_post_id: UUID | None = None,
    scheduled_post_id: UUID | None = None,
    views: int | None = None,
    likes: int | None = None,
    comments: int | None = None,
    shares: int | None = None,
    ppv_revenue: Decimal | None = None,
    currency: str = "USD",
) -> PostPerformanceSnapshot | None:
    row = await conn.fetchrow(
        APPEND_POST_PERFORMANCE, user_id, platform, external_post_id, captured_at, content_post_id,
        scheduled_post_id, views, likes, comments, shares, ppv_revenue, currency,
    )  # fmt: skip
    return PostPerformanceSnapshot.model_validate(dict(row)) if row else None


async def upsert_creator_earnings(
    conn: Any,
    user_id: UUID,
    period_kind: PeriodKind,
    period_start: date,
    period_end: date,
    platform: str,
    content_type: EarningsContentType,
    *,
    gross_amount: Decimal,
    fees_amount: Decimal = Decimal("0"),
    net_amount: Decimal | None = None,
    currency: str = "USD",
    transaction_count: int = 0,
    captured_at: datetime | None = None,
) -> CreatorEarnings:
    """Set the totals of an open period (net defaults to gross - fees); a finalized period is
    returned as it is."""
    net = gross_amount - fees_amount if net_amount is None else net_amount
    row = await conn.fetchrow(
        UPSERT_EARNINGS, user_id, period_kind, period_start, period_end, platform, content_type, gross_amount,
        fees_amount, net, currency, transaction_count, captured_at,
    )  # fmt: skip
    if row is None:
        row = await conn.fetchrow(GET_EARNINGS, user_id, period_kind, period_start, platform, content_type)
    return CreatorEarnings.model_validate(dict(row))


async def append_goal_snapshot(
    conn: Any,
    user_id: UUID,
    creator_goal_id: UUID,
    captured_at: datetime,
    current_value: Decimal,
    progress_pct: Decimal,
) -> GoalSnapshot | None:
    row = await conn.fetchrow(APPEND_GOAL_SNAPSHOT, user_id, creator_goal_id, captured_at, current_value, progress_pct)
    return GoalSnapshot.model_validate(dict(row)) if row else None
