"""scrape_scheduler on real PostgreSQL and valkey: due times spread over the cadence and kept from cycle
to cycle, a connection never scheduled twice while its jobs are active, cadence by tier, auth-expired
connections only health-checked on the slow cadence, and the scheduler run as its own process."""

from __future__ import annotations

import json
import signal
import uuid
from datetime import timedelta

import asyncpg
from arq.connections import ArqRedis

from geniehelper.cli import _scheduler_selection
from geniehelper.db import Database
from geniehelper.domain import scraping
from schedulers import SCHEDULERS
from schedulers.base import TickResult
from schedulers.scrape_scheduler import ScrapeScheduler
from tests.conftest import make_creator
from tests.helpers import BIN, spawn
from tests.sync_support import park_connections, scheduler_tick, settings_for
from tests.test_data_model import scans_of


async def add_connections(owner: asyncpg.Connection, user_id: uuid.UUID, n: int, **columns: str) -> list[uuid.UUID]:
    """`n` connections of a creator (no token: the scheduler only reads the schedule), `columns` set on each."""
    ids: list[uuid.UUID] = [
        r["id"] for r in await owner.fetch(
            "insert into platform_connections (user_id, platform, external_account_id, status, health)"
            " select $1, 'sandbox', 'acct_' || gen_random_uuid(), $3, $4 from generate_series(1, $2) returning id",
            user_id, n, columns.get("status", "active"), columns.get("health", "unknown"),
        )
    ]  # fmt: skip
    return ids


async def test_due_connections_are_spread_over_the_cadence_and_never_scheduled_twice(
    db: Database, owner: asyncpg.Connection, arq_redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    settings = settings_for(database_url, redis_url)  # pro: hourly
    await park_connections(owner)
    ids = []
    for _ in range(20):
        ids += await add_connections(owner, await make_creator(owner, tier="pro"), 10)

    first = await scheduler_tick(settings, db, arq_redis)
    assert (first.found, first.enqueued, first.skipped) == (200, 400, 0)  # a scrape and a sync each
    slots = await owner.fetch(
        "select id, extract(epoch from next_scrape_at - now())::float8 as in_s, next_scrape_at"
        " from platform_connections where id = any($1)",
        ids,
    )
    assert all(0 < s["in_s"] <= 3_600 for s in slots)
    buckets = [0] * 10  # six-minute buckets over the hour
    for s in slots:
        buckets[min(9, int(s["in_s"] // 360))] += 1
    assert max(buckets) <= 45 and min(buckets) >= 3, buckets  # ~20 each: no herd at any one time
    assert (await scheduler_tick(settings, db, arq_redis)).found == 0  # nothing due until its slot

    # Due again while every job is still queued: claimed, but nothing enqueued twice.
    await owner.execute(
        "update platform_connections set next_scrape_at = now() - interval '1 s' where id = any($1)", ids
    )
    again = await scheduler_tick(settings, db, arq_redis)
    assert (again.found, again.enqueued, again.skipped) == (200, 0, 400)
    assert await owner.fetchval(
        "select count(*) from media_jobs where subject_id = any($1) and status = 'queued'", ids
    ) == 400
    # Each connection keeps its slot: claimed again before it, the next slot is the same one.
    kept = {r["id"]: r["next_scrape_at"] for r in await owner.fetch(
        "select id, next_scrape_at from platform_connections where id = any($1)", ids
    )}  # fmt: skip
    assert kept == {s["id"]: s["next_scrape_at"] for s in slots}


async def test_cadence_follows_the_tier_and_expired_auth_is_only_health_checked_slowly(
    db: Database, owner: asyncpg.Connection, database_url: str, redis_url: str
) -> None:
    settings = settings_for(
        database_url, redis_url, scrape_tier_intervals_s={"pro": 600, "studio": 300}, scrape_interval_s=1_200,
        scrape_auth_expired_interval_s=7_200,
    )  # fmt: skip
    await park_connections(owner)
    (starter,) = await add_connections(owner, await make_creator(owner, tier="starter"), 1)
    pro = await make_creator(owner, tier="pro")
    (pro_ok,) = await add_connections(owner, pro, 1)
    (pro_expired,) = await add_connections(owner, pro, 1, health="auth_expired")
    await add_connections(owner, pro, 1, status="paused")
    (studio,) = await add_connections(owner, await make_creator(owner, tier="studio"), 1)

    async with db.system_tx() as conn:
        claimed = {r["id"]: r for r in await ScrapeScheduler().claim(conn, settings, 100)}
    assert set(claimed) == {starter, pro_ok, pro_expired, studio}  # never a paused connection
    assert {k: (r["every_s"], r["health_only"]) for k, r in claimed.items()} == {
        starter: (1_200, False), pro_ok: (600, False), pro_expired: (7_200, True), studio: (300, False),
    }  # fmt: skip
    for r in claimed.values():
        assert timedelta(0) < r["next_scrape_at"] - r["cycle_at"] <= timedelta(seconds=r["every_s"])
    # What each becomes: a health-only scrape for the expired one; a scrape and a sync otherwise.
    counted = TickResult(details={"health_only": 0})
    expired_jobs = ScrapeScheduler().requests(claimed[pro_expired], settings, counted)
    assert [(name, dict(req.payload)["health_only"]) for _, name, req in expired_jobs] == [  # type: ignore[arg-type]
        ("scrape_connection", True)
    ]
    assert [name for _, name, _ in ScrapeScheduler().requests(claimed[pro_ok], settings, counted)] == [
        "scrape_connection", "sync_fans",
    ]  # fmt: skip
    assert counted.details["health_only"] == 1


async def test_the_scheduler_runs_as_its_own_process_and_in_the_host(
    owner: asyncpg.Connection, project_env: dict[str, str], database_url: str, redis_url: str
) -> None:
    assert "scrape_scheduler" in SCHEDULERS and "scrape_scheduler" in _scheduler_selection(["all"])
    await park_connections(owner)
    (connection,) = await add_connections(owner, await make_creator(owner, tier="pro"), 1)
    env = dict(project_env, DATABASE_URL=database_url, SCRAPE_SCHEDULER_INTERVAL_S="0.5", SCHEDULER_JITTER_S="0",
               LOG_FORMAT="json")  # fmt: skip
    process = spawn([str(BIN / "geniehelper"), "scheduler", "scrape_scheduler"], env)
    try:
        line = process.wait_for(r'^(\{.*"event": "scheduler.tick".*\})$', timeout_s=30)[0].group(1)
        tick = json.loads(line)
        assert (tick["scheduler"], tick["found"], tick["enqueued"]) == ("scrape_scheduler", 1, 2)
        process.wait_for(r'"found": 0, .*"event": "scheduler.tick"', timeout_s=10)  # the next tick: nothing due
    finally:
        process.proc.send_signal(signal.SIGTERM)
        process.proc.wait(20)
    assert process.proc.returncode == 0
    jobs = await owner.fetch("select job_name from media_jobs where subject_id = $1 order by job_name", connection)
    assert [j["job_name"] for j in jobs] == ["scrape_connection", "sync_fans"]


async def test_the_claim_reads_only_due_connections_through_its_index(
    db: Database, owner: asyncpg.Connection, database_url: str, redis_url: str
) -> None:
    settings = settings_for(database_url, redis_url)
    await park_connections(owner)
    creator = await make_creator(owner, tier="pro")
    await owner.execute(
        "insert into platform_connections (user_id, platform, external_account_id, next_scrape_at)"
        " select $1, 'sandbox', 'idx_' || g, now() + make_interval(hours => 1, secs => g)"
        " from generate_series(1, 50_000) g",
        creator,
    )
    due = await add_connections(owner, creator, 3)
    await owner.execute("analyze platform_connections")
    group = settings.scrape_scheduler
    tiers = sorted(group.tier_cadence_s)
    # A batch of 20: claiming SCRAPE_DISPATCH_BATCH (500) of 50,000 rows, the planner rightly hashes the
    # whole table for the UPDATE's join instead of 500 primary-key probes; the due rows still come
    # from the index either way.
    params = (20, tiers, [group.tier_cadence_s[t] for t in tiers], group.default_cadence_s,
              group.auth_expired_cadence_s)  # fmt: skip
    async with db.system_tx() as conn:
        plan = await conn.fetchval("explain (format json) " + scraping.CLAIM_DUE, *params)
        claimed = await conn.fetch(scraping.CLAIM_DUE, *params)
    scans = scans_of(plan, "platform_connections")
    assert {index for _, index in scans} == {"platform_connections_next_scrape_idx", "platform_connections_pkey"}, scans
    assert sorted(r["id"] for r in claimed) == sorted(due)
