"""Scraping: health checks, account growth snapshots and per-post performance snapshots.

Current state lives on `platform_connections` (health, follower/subscriber counts, when it was last
checked and scraped); history in the append-only `platform_health_checks`,
`platform_stats_snapshots` and `post_performance_snapshots`. A scrape's snapshots all carry the
scrape cycle's time as `captured_at`, so a retried scrape adds nothing (ON CONFLICT DO NOTHING on
each table's one-row-per-scrape key), and the next cycle appends new rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

# --- scrape_scheduler (system role) --------------------------------------------------------------

# Claims up to $1 due active connections and moves each one's next_scrape_at to its next slot, in
# one statement (SKIP LOCKED: copies never claim a row twice). A connection's slots are
# `phase + k * cadence`, its phase a hash of its id: due times are spread evenly over the cadence
# (no herd at the top of the hour) and stay put from cycle to cycle. The cadence is the tier's
# ($2 tiers, $3 seconds; $4 for a tier not listed), or $5 for a connection whose auth expired
# (health-checked only). A connection never scheduled is due at once.
CLAIM_DUE = """
with due as (
    select c.id, c.user_id, c.platform, c.health, cr.tier
      from platform_connections c
      join creators cr on cr.id = c.user_id
     where c.status = 'active' and coalesce(c.next_scrape_at, '-infinity'::timestamptz) <= now()
     order by coalesce(c.next_scrape_at, '-infinity'::timestamptz)
     limit $1
       for update of c skip locked
), planned as (
    select due.*, due.health = 'auth_expired' as health_only,
           case when due.health = 'auth_expired' then $5::float8 else coalesce(t.every_s, $4::float8) end as every_s
      from due
      left join unnest($2::text[], $3::float8[]) as t(tier, every_s) on t.tier = due.tier
), phased as (
    select planned.*,
           ((hashtextextended(planned.id::text, 0) & 9223372036854775807)
             % greatest(1, (planned.every_s * 1000)::bigint)) / 1000.0 as phase_s
      from planned
)
update platform_connections c
   set next_scrape_at = to_timestamp(
           (floor((extract(epoch from now()) - p.phase_s) / p.every_s) + 1) * p.every_s + p.phase_s)
  from phased p
 where c.id = p.id
returning c.id, c.user_id, c.platform, p.health_only, p.every_s, c.next_scrape_at, now() as cycle_at
"""

# --- the scrape job (the creator's transaction) ---------------------------------------------------

INSERT_HEALTH_CHECK = """
insert into platform_health_checks (user_id, platform_connection_id, auth_ok, latency_ms, error_class, error_message)
values ($1, $2, $3, $4, $5, $6)
"""

# The connection's current health. A passing health-only check of an auth-expired connection makes
# it due at once ($4): the full scrape follows on the next tick, not a day later.
SET_HEALTH = """
update platform_connections
   set health = $2, health_reason = $3, last_health_check_at = now(),
       next_scrape_at = case when $4 then null else next_scrape_at end
 where id = $1
"""

# Current counts move only forward in time: a stale retry never overwrites a newer scrape's.
SET_CURRENT_STATS = """
update platform_connections
   set follower_count = $2, subscriber_count = $3, stats_updated_at = $4, last_scraped_at = now()
 where id = $1 and (stats_updated_at is null or stats_updated_at <= $4)
"""

INSERT_STATS_SNAPSHOT = """
insert into platform_stats_snapshots (user_id, platform_connection_id, platform, captured_at, follower_count,
                                      subscriber_count)
values ($1, $2, $3, $4, $5, $6)
on conflict (user_id, platform_connection_id, captured_at) do nothing
"""

# The connection's published posts: what a scrape asks the platform about.
PUBLISHED_POSTS = """
select id, content_post_id, external_post_id
  from scheduled_posts
 where user_id = $1 and platform_connection_id = $2 and status = 'posted' and external_post_id is not null
 order by posted_at, id
"""

# One statement for the whole scrape's post snapshots.
INSERT_POST_SNAPSHOTS = """
insert into post_performance_snapshots (user_id, content_post_id, scheduled_post_id, platform, external_post_id,
                                        captured_at, views, likes, comments)
select $1, p.content_post_id, p.scheduled_post_id, $2, p.external_post_id, $3, p.views, p.likes, p.comments
  from unnest($4::uuid[], $5::uuid[], $6::text[], $7::bigint[], $8::bigint[], $9::bigint[])
       as p(content_post_id, scheduled_post_id, external_post_id, views, likes, comments)
on conflict (user_id, platform, external_post_id, captured_at) do nothing
"""


@dataclass(frozen=True)
class PublishedPostRef:
    scheduled_post_id: UUID
    content_post_id: UUID
    external_post_id: str


@dataclass(frozen=True)
class PostSnapshot:
    post: PublishedPostRef
    views: int
    likes: int
    comments: int


@dataclass(frozen=True)
class HealthCheck:
    """One check's outcome, as recorded (`platform_health_checks`) and as the connection's health."""

    auth_ok: bool
    latency_ms: int | None
    error_class: str | None
    error_message: str | None

    @property
    def health(self) -> str:
        if self.error_class is None:
            return "healthy"
        return "auth_expired" if self.error_class == "auth_expired" else "unhealthy"


async def record_health_check(
    conn: Any, user_id: UUID, connection_id: UUID, check: HealthCheck, *, due_now: bool = False
) -> None:
    await conn.execute(
        INSERT_HEALTH_CHECK, user_id, connection_id, check.auth_ok, check.latency_ms, check.error_class,
        check.error_message,
    )  # fmt: skip
    await conn.execute(SET_HEALTH, connection_id, check.health, check.error_message, due_now)


async def published_posts(conn: Any, user_id: UUID, connection_id: UUID) -> list[PublishedPostRef]:
    rows = await conn.fetch(PUBLISHED_POSTS, user_id, connection_id)
    return [PublishedPostRef(r["id"], r["content_post_id"], r["external_post_id"]) for r in rows]


async def record_stats(
    conn: Any, user_id: UUID, connection_id: UUID, platform: str, captured_at: datetime,
    followers: int, subscribers: int, as_of: datetime,
) -> bool:  # fmt: skip
    """Append the cycle's snapshot and move the current counts; False when this cycle's was already there."""
    inserted = await conn.execute(
        INSERT_STATS_SNAPSHOT, user_id, connection_id, platform, captured_at, followers, subscribers
    )
    await conn.execute(SET_CURRENT_STATS, connection_id, followers, subscribers, as_of)
    return bool(inserted == "INSERT 0 1")


async def record_post_snapshots(
    conn: Any, user_id: UUID, platform: str, captured_at: datetime, snapshots: list[PostSnapshot]
) -> int:
    """Append the cycle's post snapshots in one statement; returns how many were new."""
    if not snapshots:
        return 0
    status = await conn.execute(
        INSERT_POST_SNAPSHOTS, user_id, platform, captured_at,
        [s.post.content_post_id for s in snapshots], [s.post.scheduled_post_id for s in snapshots],
        [s.post.external_post_id for s in snapshots], [s.views for s in snapshots], [s.likes for s in snapshots],
        [s.comments for s in snapshots],
    )  # fmt: skip
    return int(status.rsplit(" ", 1)[1])
