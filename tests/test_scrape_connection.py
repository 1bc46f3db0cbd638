"""scrape_connection against the sandbox platform over real HTTP, through a real bulk worker: every run
writes one health-check row (failures too), each cycle appends its snapshots and moves the current
state, a retried cycle adds no snapshot, and one connection never has two jobs running at once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
from arq.connections import ArqRedis

from geniehelper.db import Database
from geniehelper.domain import platform as connections
from tests.sync_support import (
    Connected,
    Sandbox,
    cipher,
    connect,
    enqueue_scrape,
    park_connections,
    publish,
    run_bulk,
    sandbox,
    scheduler_tick,
    settings_for,
)

__all__ = ["sandbox"]  # the module's fixture


async def health_rows(owner: asyncpg.Connection, c: Connected) -> list[dict[str, object]]:
    rows = await owner.fetch(
        "select auth_ok, latency_ms, error_class, error_message, checked_at from platform_health_checks"
        " where platform_connection_id = $1 order by checked_at, created_at",
        c.connection_id,
    )
    return [dict(r) for r in rows]


async def make_due(owner: asyncpg.Connection, c: Connected) -> None:
    await owner.execute(
        "update platform_connections set next_scrape_at = now() - interval '1 second' where id = $1", c.connection_id
    )


async def test_each_cycle_appends_snapshots_and_moves_current_state_and_a_retried_cycle_adds_none(
    db: Database, owner: asyncpg.Connection, sandbox: Sandbox, arq_redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    settings = settings_for(database_url, redis_url)
    await park_connections(owner)
    c = await connect(db, owner, sandbox, seed=10, n_fans=20, base_followers=1_000)
    posts = [await publish(db, sandbox, c, f"post {i}") for i in range(2)]
    sandbox.clock.advance(3_600)  # an hour of growth: followers and views

    tick = await scheduler_tick(settings, db, arq_redis)
    assert (tick.found, tick.enqueued, tick.skipped) == (1, 2, 0)  # scrape_connection + sync_fans
    await run_bulk(settings, db, arq_redis, owner)

    (check,) = await health_rows(owner, c)
    assert check["auth_ok"] is True and check["error_class"] is None and check["latency_ms"] is not None
    conn = await owner.fetchrow("select * from platform_connections where id = $1", c.connection_id)
    assert conn["health"] == "healthy" and conn["last_scraped_at"] is not None
    assert conn["follower_count"] == 1_000 + 20 + 360  # base + fans + an hour's growth
    snapshots = await owner.fetch(
        "select captured_at, follower_count from platform_stats_snapshots where platform_connection_id = $1",
        c.connection_id,
    )
    assert [s["follower_count"] for s in snapshots] == [1_380]
    first_cycle = snapshots[0]["captured_at"]
    post_rows = await owner.fetch(
        "select scheduled_post_id, captured_at, views, likes, comments from post_performance_snapshots"
        " where user_id = $1 order by scheduled_post_id",
        c.user_id,
    )
    assert sorted(r["scheduled_post_id"] for r in post_rows) == sorted(posts)
    assert {(r["captured_at"], r["views"], r["likes"], r["comments"]) for r in post_rows} == {
        (first_cycle, 3_600, 360, 72)
    }

    # The next cycle, an hour later: new snapshots appended, current state moved, nothing updated.
    sandbox.clock.advance(3_600)
    await make_due(owner, c)
    tick = await scheduler_tick(settings, db, arq_redis)
    assert (tick.found, tick.enqueued) == (1, 2)
    await run_bulk(settings, db, arq_redis, owner)
    assert len(await health_rows(owner, c)) == 2
    stats = await owner.fetch(
        "select follower_count from platform_stats_snapshots where platform_connection_id = $1 order by captured_at",
        c.connection_id,
    )
    assert [s["follower_count"] for s in stats] == [1_380, 1_740]
    assert await owner.fetchval("select follower_count from platform_connections where id = $1", c.connection_id) == (
        1_740
    )
    views = await owner.fetch(
        "select views from post_performance_snapshots where user_id = $1 order by captured_at, scheduled_post_id",
        c.user_id,
    )
    assert [v["views"] for v in views] == [3_600, 3_600, 7_200, 7_200]

    # The first cycle run again (a retry after its record was settled): a health check, no snapshot.
    await enqueue_scrape(db, arq_redis, settings, c, first_cycle)
    await run_bulk(settings, db, arq_redis, owner)
    assert len(await health_rows(owner, c)) == 3
    assert await owner.fetchval(
        "select count(*) from platform_stats_snapshots where platform_connection_id = $1", c.connection_id
    ) == 2
    assert await owner.fetchval("select count(*) from post_performance_snapshots where user_id = $1", c.user_id) == 4
    # A stale cycle never moves the current counts back.
    assert await owner.fetchval("select follower_count from platform_connections where id = $1", c.connection_id) == (
        1_740
    )


async def test_a_failing_platform_gives_an_unhealthy_check_and_no_crash_and_429_is_honoured(
    db: Database, owner: asyncpg.Connection, sandbox: Sandbox, arq_redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    settings = settings_for(database_url, redis_url)
    c = await connect(db, owner, sandbox, seed=11, n_fans=3)
    await sandbox.fault(kind="server_error", status=503, count=1, path_prefix="/v1/stats", account_id=c.account_id)
    await sandbox.fault(kind="rate_limit", retry_after_s=2, count=1, path_prefix="/v1/me", account_id=c.account_id)
    job = await enqueue_scrape(db, arq_redis, settings, c, datetime.now(UTC))
    await run_bulk(settings, db, arq_redis, owner)

    limited, unavailable, healthy = await health_rows(owner, c)
    assert (limited["auth_ok"], limited["error_class"]) == (False, "rate_limited")
    assert "429" in str(limited["error_message"])
    assert (unavailable["auth_ok"], unavailable["error_class"]) == (True, "platform_unavailable")
    assert "503" in str(unavailable["error_message"])
    assert (healthy["auth_ok"], healthy["error_class"]) == (True, None)
    gap = unavailable["checked_at"] - limited["checked_at"]  # type: ignore[operator]
    assert gap >= timedelta(seconds=2), gap  # Retry-After: 2
    record = await owner.fetchrow("select status, attempts from media_jobs where id = $1", job.id)
    assert (record["status"], record["attempts"]) == ("completed", 3)
    row = await owner.fetchrow("select health, health_reason from platform_connections where id = $1", c.connection_id)
    assert (row["health"], row["health_reason"]) == ("healthy", None)
    assert await owner.fetchval(
        "select count(*) from platform_stats_snapshots where platform_connection_id = $1", c.connection_id
    ) == 1

    # A platform that keeps failing: every attempt is an unhealthy row, the job fails, nothing crashes.
    await sandbox.fault(kind="server_error", status=500, count=100, path_prefix="/v1/me", account_id=c.account_id)
    settings = settings_for(database_url, redis_url)
    job = await enqueue_scrape(db, arq_redis, settings, c, datetime.now(UTC))
    await run_bulk(settings, db, arq_redis, owner)
    await sandbox.clear_faults()
    record = await owner.fetchrow("select status, attempts from media_jobs where id = $1", job.id)
    assert (record["status"], record["attempts"]) == ("failed", 4)
    failing = (await health_rows(owner, c))[3:]
    assert [(r["auth_ok"], r["error_class"]) for r in failing] == [(False, "platform_unavailable")] * 4
    row = await owner.fetchrow("select health, health_reason from platform_connections where id = $1", c.connection_id)
    assert row["health"] == "unhealthy" and "500" in row["health_reason"]


async def test_expired_auth_is_recorded_then_only_health_checked_until_reconnected(
    db: Database, owner: asyncpg.Connection, sandbox: Sandbox, arq_redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    settings = settings_for(database_url, redis_url)
    await park_connections(owner)
    c = await connect(db, owner, sandbox, seed=12, n_fans=3)
    sandbox.platform.expire_token(c.account_id)
    assert (await scheduler_tick(settings, db, arq_redis)).enqueued == 2
    await run_bulk(settings, db, arq_redis, owner)

    (check,) = await health_rows(owner, c)
    assert (check["auth_ok"], check["error_class"]) == (False, "auth_expired")
    assert await owner.fetchval("select health from platform_connections where id = $1", c.connection_id) == (
        "auth_expired"
    )
    outcomes = await owner.fetch(
        "select job_name, status, result->>'outcome' as outcome from media_jobs where user_id = $1 order by job_name",
        c.user_id,
    )
    assert [tuple(r) for r in outcomes] == [
        ("scrape_connection", "completed", "auth_expired"), ("sync_fans", "completed", "auth_expired"),
    ]  # fmt: skip
    assert await owner.fetchval("select count(*) from platform_stats_snapshots where user_id = $1", c.user_id) == 0

    # Due again: a health check only, no sync; still expired, and scheduled a day out.
    await make_due(owner, c)
    tick = await scheduler_tick(settings, db, arq_redis)
    assert (tick.found, tick.enqueued, tick.details["health_only"]) == (1, 1, 1)
    due = await owner.fetchval(
        "select next_scrape_at - now() from platform_connections where id = $1", c.connection_id
    )
    assert timedelta(0) < due <= timedelta(days=1)
    await run_bulk(settings, db, arq_redis, owner)
    assert [r["error_class"] for r in await health_rows(owner, c)] == ["auth_expired", "auth_expired"]
    assert await owner.fetchval("select count(*) from media_jobs where user_id = $1", c.user_id) == 3

    # Reconnected: due at once, and scraped in full.
    token = sandbox.platform.rotate_token(c.account_id)
    async with db.creator_tx(c.user_id) as conn:
        await connections.connect_account(conn, cipher(), user_id=c.user_id, platform="sandbox",
                                          external_account_id=c.account_id, token=token)  # fmt: skip
    tick = await scheduler_tick(settings, db, arq_redis)
    assert (tick.found, tick.enqueued, tick.details["health_only"]) == (1, 2, 0)
    await run_bulk(settings, db, arq_redis, owner)
    assert await owner.fetchval("select health from platform_connections where id = $1", c.connection_id) == "healthy"
    assert await owner.fetchval("select count(*) from fan_platform_accounts where user_id = $1", c.user_id) == 3


async def test_two_connections_run_at_once_but_one_connection_never_runs_two_jobs_at_once(
    db: Database, owner: asyncpg.Connection, sandbox: Sandbox, arq_redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    settings = settings_for(database_url, redis_url)
    await park_connections(owner)
    a = await connect(db, owner, sandbox, seed=13, n_fans=5)
    b = await connect(db, owner, sandbox, user_id=a.user_id, seed=14, n_fans=5)
    for account in (a.account_id, b.account_id):  # each job's first request takes a second
        await sandbox.fault(kind="slow", delay_s=1.0, count=1, path_prefix="/v1/me", account_id=account)
        await sandbox.fault(kind="slow", delay_s=1.0, count=1, path_prefix="/v1/fans", account_id=account)
    assert (await scheduler_tick(settings, db, arq_redis)).enqueued == 4
    await run_bulk(settings, db, arq_redis, owner)

    rows = await owner.fetch(
        "select subject_id, job_name, status, started_at, finished_at from media_jobs where user_id = $1", a.user_id
    )
    assert len(rows) == 4 and {r["status"] for r in rows} == {"completed"}

    def overlap(x: asyncpg.Record, y: asyncpg.Record) -> bool:
        return bool(x["started_at"] < y["finished_at"] and y["started_at"] < x["finished_at"])

    for connection in (a.connection_id, b.connection_id):
        first, second = [r for r in rows if r["subject_id"] == connection]
        assert not overlap(first, second), (first, second)
    across = [overlap(x, y) for x in rows for y in rows if x["subject_id"] == a.connection_id != y["subject_id"]]
    assert any(across), rows
