"""The due-work base (schedulers.due_work): claim batches until a short one, one creator transaction
per creator (records and refusals together), push, count; and post_scheduler's quota refusals on it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import asyncpg
import pytest
from arq.connections import ArqRedis

from geniehelper.db import Database
from geniehelper.runtime.queue import EnqueuedJob, JobQueue, JobRequest
from geniehelper.runtime.quotas import QuotaExceeded
from geniehelper.runtime.registry import JobRegistry
from geniehelper.settings import Settings
from jobs.publish_post import PUBLISH_POST
from schedulers.base import SchedulerContext, TickResult
from schedulers.due_work import DueWorkScheduler
from schedulers.post_scheduler import PostScheduler
from tests import jobs_for_tests
from tests.conftest import make_creator


class CountingQueue(JobQueue):
    """The real queue, noting each record_many (creator, requests) and each push_many (jobs)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.recorded: list[tuple[uuid.UUID | None, int]] = []
        self.pushed: list[int] = []

    async def record_many(
        self, conn: asyncpg.Connection, job_name: str, requests: list[JobRequest], *, user_id: uuid.UUID | None
    ) -> list[EnqueuedJob | QuotaExceeded]:
        self.recorded.append((user_id, len(requests)))
        return await super().record_many(conn, job_name, requests, user_id=user_id)

    async def push_many(self, jobs: list[EnqueuedJob]) -> int:
        self.pushed.append(len(jobs))
        return await super().push_many(jobs)


class EchoDue(DueWorkScheduler[dict[str, Any]]):
    """Due rows from a list (the claim takes them off it), each an echo job under the creator's quota."""

    name: ClassVar[str] = "test_due_echo"
    job_name: ClassVar[str] = "t_quota"  # posts_published: 5 a month on the starter tier

    def __init__(self, rows: list[dict[str, Any]], batch: int, *, fail_refusals: bool = False) -> None:
        self.waiting = list(rows)
        self.batch = batch
        self.fail_refusals = fail_refusals
        self.claims: list[int] = []
        self.claim_roles: set[str] = set()
        self.refusals: list[tuple[str, str, str]] = []  # (row text, app.user_id in the hook's transaction, reason)

    def interval_s(self, settings: Settings) -> float:
        return 60.0

    def batch_size(self, settings: Settings) -> int:
        return self.batch

    async def claim(self, conn: asyncpg.Connection, settings: Settings, limit: int) -> list[dict[str, Any]]:
        self.claim_roles.add(await conn.fetchval("select current_user"))
        taken, self.waiting = self.waiting[:limit], self.waiting[limit:]
        self.claims.append(len(taken))
        return taken

    def initial_details(self) -> dict[str, Any]:
        return {"settled": 0}

    def request(
        self, row: dict[str, Any], settings: Settings, result: TickResult
    ) -> tuple[uuid.UUID, JobRequest] | None:
        if row.get("settled"):
            result.details["settled"] += 1
            return None
        return row["user_id"], JobRequest({"text": row["text"]}, key=f"due:{row['text']}")

    async def refused(
        self, conn: asyncpg.Connection, row: dict[str, Any], refusal: QuotaExceeded, result: TickResult
    ) -> None:
        if self.fail_refusals:
            raise RuntimeError("cannot settle the refused row")
        acting_for = await conn.fetchval("select current_setting('app.user_id')")
        self.refusals.append((row["text"], acting_for, refusal.reason))


@pytest.fixture
def queue(db: Database, arq_redis: ArqRedis) -> CountingQueue:
    return CountingQueue(db, arq_redis, jobs_for_tests.REGISTRY)


def context(db: Database, arq_redis: ArqRedis, queue: JobQueue, database_url: str, **settings: Any) -> SchedulerContext:
    return SchedulerContext(Settings(database_url=database_url, **settings), db, arq_redis, queue, database_url)


async def jobs_of(owner: asyncpg.Connection, user_id: uuid.UUID) -> list[asyncpg.Record]:
    """The creator's job records, by payload text (one statement records a batch: no order within it)."""
    return await owner.fetch(
        "select payload->>'text' as text, enqueued_at from media_jobs where user_id = $1 order by 1", user_id
    )


async def test_due_work_claims_until_a_short_batch_records_per_creator_settles_refusals_and_pushes(
    db: Database, arq_redis: ArqRedis, owner: asyncpg.Connection, queue: CountingQueue, database_url: str
) -> None:
    starter, pro = await make_creator(owner, tier="starter"), await make_creator(owner, tier="pro")
    rows = [{"user_id": starter, "text": f"s{i}"} for i in range(7)]
    rows[1:1] = [{"user_id": pro, "text": "p0"}, {"user_id": pro, "text": "p1"}]
    rows.append({"user_id": pro, "text": "p2", "settled": True})  # claimed, not to be enqueued
    scheduler = EchoDue(rows, batch=4)
    ctx = context(db, arq_redis, queue, database_url)

    result = await scheduler.tick(ctx)

    assert scheduler.claims == [4, 4, 2]  # the third batch is short: no fourth claim
    assert scheduler.claim_roles == {"geniehelper_system"}
    # Per batch, one record_many per creator: [s0 p0 p1 s1] [s2 s3 s4 s5] [s6 p2-settled].
    assert queue.recorded == [(starter, 2), (pro, 2), (starter, 4), (starter, 1)]
    assert queue.pushed == [4, 3, 0]
    assert (result.found, result.enqueued, result.skipped) == (10, 7, 0)
    assert result.details == {"settled": 1, "refused": 2}
    # The quota (5) refused the starter's last two, in the starter's own transaction.
    assert scheduler.refusals == [("s5", str(starter), "limit_reached"), ("s6", str(starter), "limit_reached")]
    starter_jobs, pro_jobs = await jobs_of(owner, starter), await jobs_of(owner, pro)
    assert [j["text"] for j in starter_jobs] == ["s0", "s1", "s2", "s3", "s4"]
    assert [j["text"] for j in pro_jobs] == ["p0", "p1"]
    assert all(j["enqueued_at"] is not None for j in starter_jobs + pro_jobs)  # pushed, not left to the relay

    # The same rows again while their jobs are active: the keys collapse them, nothing new is recorded.
    again = await EchoDue([r for r in rows if r["user_id"] == pro], batch=4).tick(ctx)
    assert (again.found, again.enqueued, again.skipped) == (3, 0, 2)
    assert len(await jobs_of(owner, pro)) == 2


async def test_due_work_refusal_hook_runs_in_the_creator_transaction_that_records_the_jobs(
    db: Database, arq_redis: ArqRedis, owner: asyncpg.Connection, queue: CountingQueue, database_url: str
) -> None:
    starter = await make_creator(owner, tier="starter")
    scheduler = EchoDue([{"user_id": starter, "text": f"r{i}"} for i in range(6)], batch=10, fail_refusals=True)
    with pytest.raises(RuntimeError, match="cannot settle"):
        await scheduler.tick(context(db, arq_redis, queue, database_url))
    # The hook failed, so the transaction rolled back: no record, no quota used, nothing pushed.
    assert await jobs_of(owner, starter) == []
    assert await owner.fetchval("select coalesce(sum(used), 0) from user_usage_counts where user_id = $1", starter) == 0
    assert queue.pushed == []


async def test_post_scheduler_marks_posts_over_the_quota_failed_and_dispatches_the_rest(
    db: Database, arq_redis: ArqRedis, owner: asyncpg.Connection, database_url: str
) -> None:
    starter = await make_creator(owner, tier="starter")  # posts_published: 5 a month
    connection_id = await owner.fetchval(
        "insert into platform_connections (user_id, platform, external_account_id) values ($1, 'sandbox', 'q1')"
        " returning id", starter,
    )  # fmt: skip
    now = datetime.now(UTC)
    scheduled = []
    for i in range(7):
        post_id = await owner.fetchval(
            "insert into content_posts (user_id, caption) values ($1, $2) returning id", starter, f"post {i}"
        )
        scheduled.append(await owner.fetchval(
            "insert into scheduled_posts (user_id, content_post_id, platform_connection_id, platform, scheduled_time)"
            " values ($1, $2, $3, 'sandbox', $4) returning id",
            starter, post_id, connection_id, now - timedelta(seconds=60 - i),
        ))  # fmt: skip
    queue = JobQueue(db, arq_redis, JobRegistry([PUBLISH_POST]))

    result = await PostScheduler().tick(context(db, arq_redis, queue, database_url, post_dispatch_batch=3))

    assert (result.found, result.enqueued, result.skipped) == (7, 5, 0)
    assert (result.details["refused"], result.details["missed"]) == (2, 0)
    posts = {r["id"]: r for r in await owner.fetch("select id, status, error_message from scheduled_posts"
                                                   " where user_id = $1", starter)}  # fmt: skip
    assert [posts[i]["status"] for i in scheduled] == ["queued"] * 5 + ["failed"] * 2  # oldest first
    for refused in scheduled[5:]:
        reason = posts[refused]["error_message"]
        assert reason.startswith("tier_limit_reached: posts_published: the starter tier allows 5 per month"), reason
    jobs = await owner.fetch("select subject_id, enqueued_at from media_jobs where user_id = $1", starter)
    assert sorted(j["subject_id"] for j in jobs) == sorted(scheduled[:5])
    assert all(j["enqueued_at"] is not None for j in jobs)
