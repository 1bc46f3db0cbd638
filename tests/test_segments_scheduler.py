"""segment_evaluator: which segments are due, one job per segment, claims, staleness, and a rules
change evaluated at once (woken by NOTIFY, not the poll); and `geniehelper scheduler segment_evaluator`
as a real process."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import asyncpg
from arq.connections import ArqRedis

from geniehelper.db import Database
from geniehelper.runtime.queue import JobQueue
from geniehelper.runtime.registry import JobRegistry
from geniehelper.segments import evaluation
from geniehelper.settings import Settings
from jobs.evaluate_segment import EVALUATE_SEGMENT
from schedulers import SCHEDULERS
from schedulers.base import SchedulerContext, SchedulerRunner
from schedulers.segment_evaluator import SegmentEvaluator
from tests.conftest import make_creator
from tests.helpers import BIN, drain_queue, spawn
from tests.segment_fans import Fans, build_cast

JOBS = JobRegistry([EVALUATE_SEGMENT])


async def jobs_for(owner: asyncpg.Connection, segment_ids: list[uuid.UUID]) -> dict[uuid.UUID, int]:
    """evaluate_segment records per segment."""
    rows = await owner.fetch(
        "select subject_id, count(*)::int as n from media_jobs where job_name = 'evaluate_segment'"
        " and subject_id = any($1) group by 1", segment_ids,
    )  # fmt: skip
    return {r["subject_id"]: r["n"] for r in rows}


async def wait_for(check: Callable[[], Coroutine[Any, Any, bool]], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "state not reached in time"
        await asyncio.sleep(0.05)


async def test_due_segments_get_one_job_each_and_fresh_or_paused_ones_none(
    db: Database, owner: asyncpg.Connection, arq_redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    fans = await build_cast(db, await make_creator(owner))
    async with db.creator_tx(fans.user_id) as conn:
        new = await evaluation.create_segment(conn, fans.user_id, "new", {"tag": {"name": "whale"}})
        paused = await evaluation.create_segment(conn, fans.user_id, "paused", {"all": []}, status="paused")
        fresh = await evaluation.create_segment(conn, fans.user_id, "fresh", {"all": []})
        stale = await evaluation.create_segment(conn, fans.user_id, "stale", {"all": []})
        changed = await evaluation.create_segment(conn, fans.user_id, "changed", {"all": []})
        for segment in (fresh, stale, changed):
            await evaluation.refresh(conn, fans.user_id, segment.id)
        await evaluation.update_rules(conn, fans.user_id, changed.id, {"tag": {"name": "city"}})
    await owner.execute(
        "update fan_segments set last_evaluated_at = now() - interval '2 hours' where id = $1", stale.id
    )
    ours = [new.id, paused.id, fresh.id, stale.id, changed.id]
    settings = Settings(database_url=database_url, redis_url=redis_url, segment_stale_after_s=3600)
    ctx = SchedulerContext(settings, db, arq_redis, JobQueue(db, arq_redis, JOBS), database_url)

    result = await SegmentEvaluator().tick(ctx)
    assert result.enqueued >= 3
    assert await jobs_for(owner, ours) == {new.id: 1, stale.id: 1, changed.id: 1}
    claimed = await owner.fetch("select id from fan_segments where evaluation_claimed_at is not null and id = any($1)",
                                ours)  # fmt: skip
    assert {r["id"] for r in claimed} == {new.id, stale.id, changed.id}
    # Claimed: the next tick enqueues nothing more for them.
    await SegmentEvaluator().tick(ctx)
    assert await jobs_for(owner, ours) == {new.id: 1, stale.id: 1, changed.id: 1}

    await drain_queue(settings, JOBS, "bulk")
    rows = await owner.fetch("select id, evaluation_claimed_at, evaluated_rules_version, rules_version,"
                             " member_count from fan_segments where id = any($1)", ours)  # fmt: skip
    by_id = {r["id"]: r for r in rows}
    for segment_id in (new.id, stale.id, changed.id):
        row = by_id[segment_id]
        assert row["evaluation_claimed_at"] is None and row["evaluated_rules_version"] == row["rules_version"]
    assert (by_id[new.id]["member_count"], by_id[changed.id]["member_count"]) == (1, 2)
    # All evaluated and fresh: nothing is due.
    await SegmentEvaluator().tick(ctx)
    assert await jobs_for(owner, ours) == {new.id: 1, stale.id: 1, changed.id: 1}

    # A claim whose job was lost is claimed again once SEGMENT_REQUEUE_AFTER_S has passed.
    await owner.execute(
        "update fan_segments set last_evaluated_at = now() - interval '3 hours', evaluation_claimed_at = now()"
        " - interval '20 minutes' where id = $1", fresh.id,
    )  # fmt: skip
    await SegmentEvaluator().tick(ctx)
    assert (await jobs_for(owner, [fresh.id])) == {fresh.id: 1}


async def test_the_claim_writes_only_its_own_column_as_the_system_role(db: Database, owner: asyncpg.Connection) -> None:
    fans = Fans(await make_creator(owner))
    async with db.creator_tx(fans.user_id) as conn:
        segment = await evaluation.create_segment(conn, fans.user_id, "s", {"all": []})
    async with db.system_tx() as conn:
        claimed = await conn.fetch(evaluation.CLAIM_DUE, 10_000, 3600.0, 600.0)
        assert segment.id in {r["id"] for r in claimed}
        for sql in ("update fan_segments set rules = '{}' where id = $1",
                    "update fan_segments set user_id = user_id where id = $1"):  # fmt: skip
            try:
                async with conn.transaction():
                    await conn.execute(sql, segment.id)
            except asyncpg.InsufficientPrivilegeError:
                continue
            raise AssertionError(f"the system role could run: {sql}")
    row = await owner.fetchrow("select rules, rules_version, evaluation_claimed_at from fan_segments where id = $1",
                               segment.id)  # fmt: skip
    assert row is not None and row["rules"] == {"all": []} and row["rules_version"] == 1
    assert row["evaluation_claimed_at"] is not None


async def test_a_rules_change_is_evaluated_at_once_not_at_the_next_poll(
    db: Database, owner: asyncpg.Connection, database_url: str, redis_url: str
) -> None:
    fans = await build_cast(db, await make_creator(owner))
    async with db.creator_tx(fans.user_id) as conn:
        segment = await evaluation.create_segment(conn, fans.user_id, "whales", {"tag": {"name": "whale"}})
        await evaluation.refresh(conn, fans.user_id, segment.id)  # evaluated: not due
    settings = Settings(database_url=database_url, redis_url=redis_url, scheduler_jitter_s=0,
                        segment_evaluator_interval_s=300, health_interval_s=1)  # fmt: skip
    runner = SchedulerRunner(SegmentEvaluator(), settings, database_url, redis_url)
    task = asyncio.create_task(runner.run())
    try:
        await wait_for(lambda: asyncio.sleep(0, runner.ticks >= 1))
        assert await jobs_for(owner, [segment.id]) == {}
        changed_at = time.monotonic()
        async with db.creator_tx(fans.user_id) as conn:
            await evaluation.update_rules(conn, fans.user_id, segment.id, {"tag": {"name": "city"}})

        async def enqueued() -> bool:
            return await jobs_for(owner, [segment.id]) == {segment.id: 1}

        await wait_for(enqueued, timeout_s=10)
        assert time.monotonic() - changed_at < 5  # the poll is 300 s away
        assert runner.ticks >= 2
    finally:
        runner.stop.set()
        await asyncio.wait_for(task, 15)


def test_segment_evaluator_is_registered_for_scheduler_all() -> None:
    from geniehelper.cli import _scheduler_selection

    assert SCHEDULERS["segment_evaluator"] is SegmentEvaluator
    assert "segment_evaluator" in _scheduler_selection(["all"])


async def test_geniehelper_scheduler_segment_evaluator_runs_as_a_process(
    db: Database, owner: asyncpg.Connection, project_env: dict[str, str], database_url: str, redis_url: str
) -> None:
    fans = Fans(await make_creator(owner))
    async with db.creator_tx(fans.user_id) as conn:
        segment = await evaluation.create_segment(conn, fans.user_id, "everyone", {"all": []})
    env = {**project_env, "DATABASE_URL": database_url, "REDIS_URL": redis_url, "LOG_FORMAT": "json",
           "SCHEDULER_JITTER_S": "0"}  # fmt: skip
    process = spawn([str(BIN / "geniehelper"), "scheduler", "segment_evaluator"], env)
    try:
        ticked = r"scheduler\.tick.*segment_evaluator|segment_evaluator.*scheduler\.tick"
        await asyncio.to_thread(process.wait_for, ticked, 60)

        async def enqueued() -> bool:
            return await jobs_for(owner, [segment.id]) == {segment.id: 1}

        await wait_for(enqueued, timeout_s=10)
    finally:
        process.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.proc.wait, 30) == 0, process.text()


async def claimed_now(db: Database) -> set[uuid.UUID]:
    async with db.system_tx() as conn:
        return {r["id"] for r in await conn.fetch(evaluation.CLAIM_DUE, 10_000, 3600.0, 600.0)}


async def add_event(conn: Any, user_id: uuid.UUID, event_type: str) -> None:
    await conn.execute(
        "insert into domain_events (user_id, event_type, source_key, occurred_at) values ($1, $2, $3, now())",
        user_id, event_type, f"test:{uuid.uuid4()}",
    )  # fmt: skip


async def test_an_input_event_since_the_last_evaluation_makes_a_segment_due(
    db: Database, owner: asyncpg.Connection
) -> None:
    fans = await build_cast(db, await make_creator(owner))
    other = await make_creator(owner)
    async with db.creator_tx(fans.user_id) as conn:
        segment = await evaluation.create_segment(conn, fans.user_id, "whales", {"tag": {"name": "whale"}})
        await evaluation.refresh(conn, fans.user_id, segment.id)
    assert segment.id not in await claimed_now(db)  # evaluated, fresh, nothing new

    async with db.creator_tx(other) as conn:  # another creator's purchase is not this segment's input
        await add_event(conn, other, "purchase")
    async with db.creator_tx(fans.user_id) as conn:  # a segment's own output is not an input either
        await add_event(conn, fans.user_id, "segment_join")
    assert segment.id not in await claimed_now(db)

    async with db.creator_tx(fans.user_id) as conn:
        await add_event(conn, fans.user_id, "purchase")
    assert segment.id in await claimed_now(db)
    async with db.creator_tx(fans.user_id) as conn:
        await evaluation.refresh(conn, fans.user_id, segment.id)  # the evaluation saw it: not due again
    assert segment.id not in await claimed_now(db)

    # A sync that began before an evaluation and commits after it: its event was not seen, so the
    # segment is due (a timestamp comparison would miss it: the event is stamped before the evaluation).
    async with db.creator_tx(fans.user_id) as sync_conn:
        await add_event(sync_conn, fans.user_id, "tip")
        async with db.creator_tx(fans.user_id) as conn:
            await evaluation.refresh(conn, fans.user_id, segment.id)
    stamps = await owner.fetchrow(
        "select (select max(created_at) from domain_events where user_id = $1 and event_type = 'tip') as event_at,"
        " last_evaluated_at from fan_segments where id = $2", fans.user_id, segment.id,
    )  # fmt: skip
    assert stamps is not None and stamps["event_at"] < stamps["last_evaluated_at"]
    assert segment.id in await claimed_now(db)
