"""fan_scorer: creators whose fans were never scored, or scored longer ago than FAN_SCORES_STALE_AFTER_S,
get one score_fans job each; score_fans records its run and clears the claim."""

from __future__ import annotations

import uuid

import asyncpg
import pytest
from arq.connections import ArqRedis

from geniehelper.db import Database
from geniehelper.runtime.queue import JobQueue
from geniehelper.runtime.registry import JobRegistry
from geniehelper.segments import scoring
from geniehelper.settings import Settings
from jobs.score_fans import SCORE_FANS
from schedulers import SCHEDULERS
from schedulers.base import SchedulerContext
from schedulers.fan_scorer import FanScorer
from tests.conftest import make_creator
from tests.helpers import drain_queue
from tests.segment_fans import build_cast

JOBS = JobRegistry([SCORE_FANS])


async def jobs_for(owner: asyncpg.Connection, creators: list[uuid.UUID]) -> dict[uuid.UUID, int]:
    rows = await owner.fetch(
        "select user_id, count(*)::int as n from media_jobs where job_name = 'score_fans' and user_id = any($1)"
        " group by 1", creators,
    )  # fmt: skip
    return {r["user_id"]: r["n"] for r in rows}


async def test_due_creators_get_one_score_fans_job_each_and_the_run_is_recorded(
    db: Database, owner: asyncpg.Connection, arq_redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    never = await build_cast(db, await make_creator(owner))
    fresh = await build_cast(db, await make_creator(owner))
    stale = await build_cast(db, await make_creator(owner))
    for fans in (fresh, stale):
        async with db.creator_tx(fans.user_id) as conn:
            await scoring.score_fans(conn, fans.user_id)
    await owner.execute("update fan_scoring set last_scored_at = now() - interval '2 days' where user_id = $1",
                        stale.user_id)  # fmt: skip
    ours = [never.user_id, fresh.user_id, stale.user_id]
    settings = Settings(database_url=database_url, redis_url=redis_url)
    ctx = SchedulerContext(settings, db, arq_redis, JobQueue(db, arq_redis, JOBS), database_url)

    await FanScorer().tick(ctx)
    assert await jobs_for(owner, ours) == {never.user_id: 1, stale.user_id: 1}
    await FanScorer().tick(ctx)  # claimed: nothing more
    assert await jobs_for(owner, ours) == {never.user_id: 1, stale.user_id: 1}

    await drain_queue(settings, JOBS, "bulk")
    rows = {r["user_id"]: r for r in await owner.fetch("select * from fan_scoring where user_id = any($1)", ours)}
    for fans in (never, stale):
        row = rows[fans.user_id]
        assert row["claimed_at"] is None and row["fans_scored"] == 4 and row["model_version"] == scoring.MODEL_VERSION
    assert rows[stale.user_id]["last_scored_at"] > rows[fresh.user_id]["last_scored_at"]
    assert await owner.fetchval("select count(*) from fan_scores where user_id = $1", never.user_id) == 4
    await FanScorer().tick(ctx)  # all scored recently: nothing due
    assert await jobs_for(owner, ours) == {never.user_id: 1, stale.user_id: 1}

    # A claim whose job was lost is claimed again after FAN_SCORER_REQUEUE_AFTER_S.
    await owner.execute("update fan_scoring set last_scored_at = null, claimed_at = now() - interval '2 hours'"
                        " where user_id = $1", fresh.user_id)  # fmt: skip
    await FanScorer().tick(ctx)
    assert (await jobs_for(owner, [fresh.user_id])) == {fresh.user_id: 1}


async def test_the_system_role_writes_only_the_claim(db: Database, owner: asyncpg.Connection) -> None:
    creator = await make_creator(owner)
    async with db.system_tx() as conn:
        claimed = await conn.fetch(scoring.CLAIM_DUE, 100_000, 86_400.0, 3_600.0)
        assert creator in {r["user_id"] for r in claimed}
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            async with conn.transaction():
                await conn.execute("update fan_scoring set last_scored_at = now() where user_id = $1", creator)
    assert await owner.fetchval("select last_scored_at from fan_scoring where user_id = $1", creator) is None


def test_fan_scorer_is_registered_for_scheduler_all() -> None:
    from geniehelper.cli import _scheduler_selection

    assert SCHEDULERS["fan_scorer"] is FanScorer and "fan_scorer" in _scheduler_selection(["all"])
