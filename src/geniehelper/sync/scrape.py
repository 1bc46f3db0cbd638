"""One scrape of one platform connection: a health check, the account's stats, its posts' metrics.

Every run writes exactly one `platform_health_checks` row, failure included (a platform error, a
rate limit, expired auth, a platform with no registered address, unreadable credentials), and sets
the connection's current health from it: `healthy` when the whole scrape succeeded, `auth_expired`
when the platform refused the token, `unhealthy` otherwise (the reason in `health_reason`). A
successful scrape writes its health row, its stats snapshot, the connection's current counts and one
snapshot per published post in one transaction. A post the platform no longer knows (404) is
counted, not an error.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from geniehelper.domain import scraping
from geniehelper.domain.platform import PlatformConnection
from geniehelper.domain.scraping import HealthCheck, PostSnapshot, PublishedPostRef
from geniehelper.platforms import (
    AuthExpired,
    PermanentPlatformError,
    PlatformClient,
    PlatformError,
    PostMetrics,
    RateLimited,
    TransientPlatformError,
)

Tx = Callable[[], AbstractAsyncContextManager[Any]]

# Metrics requests in flight at once per scrape.
METRICS_CONCURRENCY = 8
MAX_MESSAGE = 500


@dataclass(frozen=True)
class ScrapeResult:
    check: HealthCheck
    followers: int | None = None
    subscribers: int | None = None
    stats_snapshot_new: bool = False
    post_snapshots: int = 0
    posts_not_found: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "outcome": "health_checked" if self.followers is None else "scraped", "health": self.check.health,
            "latency_ms": self.check.latency_ms, "followers": self.followers, "subscribers": self.subscribers,
            "stats_snapshot_new": self.stats_snapshot_new, "post_snapshots": self.post_snapshots,
            "posts_not_found": self.posts_not_found,
        }  # fmt: skip


def error_class(exc: BaseException) -> str:
    """The `error_class` recorded for a failed check."""
    if isinstance(exc, AuthExpired):
        return "auth_expired"
    if isinstance(exc, RateLimited):
        return "rate_limited"
    if isinstance(exc, TransientPlatformError):
        return "platform_unavailable"
    if isinstance(exc, PlatformError):
        return "platform_error"
    return type(exc).__name__


async def record_failure(
    tx: Tx, connection: PlatformConnection, error_class: str, message: str, *, auth_ok: bool = False,
    latency_ms: int | None = None,
) -> HealthCheck:  # fmt: skip
    """The run's health row when it failed (before or while talking to the platform)."""
    check = HealthCheck(auth_ok, latency_ms, error_class, message[:MAX_MESSAGE])
    async with tx() as conn:
        await scraping.record_health_check(conn, connection.user_id, connection.id, check)
    return check


async def scrape(
    tx: Tx, client: PlatformClient, connection: PlatformConnection, *, cycle_at: datetime, health_only: bool,
) -> ScrapeResult:  # fmt: skip
    """Scrape `connection` (or only check its auth); raises the PlatformError that stopped it, after
    recording it."""
    started = time.monotonic()
    auth_ok = False
    latency_ms: int | None = None
    try:
        await client.check_auth()
        latency_ms = _ms_since(started)
        auth_ok = True
        if health_only:
            check = HealthCheck(True, latency_ms, None, None)
            async with tx() as conn:  # auth works again: the full scrape is due at once
                await scraping.record_health_check(conn, connection.user_id, connection.id, check, due_now=True)
            return ScrapeResult(check)
        async with tx() as conn:
            posts = await scraping.published_posts(conn, connection.user_id, connection.id)
        stats = await client.get_account_stats()
        snapshots, not_found = await _post_metrics(client, posts)
    except PlatformError as exc:
        await record_failure(
            tx, connection, error_class(exc), str(exc), auth_ok=auth_ok,
            latency_ms=latency_ms if latency_ms is not None else _ms_since(started),
        )  # fmt: skip
        raise
    check = HealthCheck(True, latency_ms, None, None)
    async with tx() as conn:
        await scraping.record_health_check(conn, connection.user_id, connection.id, check)
        new = await scraping.record_stats(
            conn, connection.user_id, connection.id, connection.platform, cycle_at, stats.followers,
            stats.subscribers, stats.as_of,
        )  # fmt: skip
        written = await scraping.record_post_snapshots(
            conn, connection.user_id, connection.platform, cycle_at, snapshots
        )
    return ScrapeResult(check, stats.followers, stats.subscribers, new, written, not_found)


async def _post_metrics(client: PlatformClient, posts: list[PublishedPostRef]) -> tuple[list[PostSnapshot], int]:
    """Each post's metrics, METRICS_CONCURRENCY at a time; (snapshots, posts the platform does not know)."""
    gate = asyncio.Semaphore(METRICS_CONCURRENCY)

    async def one(post: PublishedPostRef) -> PostMetrics:
        async with gate:
            return await client.get_post_metrics(post.external_post_id)

    answers = await asyncio.gather(*(one(p) for p in posts), return_exceptions=True)
    snapshots: list[PostSnapshot] = []
    not_found = 0
    for post, answer in zip(posts, answers, strict=True):
        if isinstance(answer, PermanentPlatformError) and answer.status_code == 404:
            not_found += 1
        elif isinstance(answer, BaseException):
            raise answer
        else:
            snapshots.append(PostSnapshot(post, answer.views, answer.likes, answer.comments))
    return snapshots, not_found


def _ms_since(started: float) -> int:
    return max(0, round((time.monotonic() - started) * 1000))
