"""Publishing end to end against the sandbox platform over real HTTP: post_scheduler → publish_post."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import psutil
import pytest
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix

from geniehelper.db import Database
from geniehelper.domain import platform as connections
from geniehelper.domain import publishing
from geniehelper.platforms import HttpPlatformClient, PostToPublish
from geniehelper.platforms.sandbox import NewAccount, SandboxPlatform, run_sandbox
from geniehelper.runtime.delivery import redrive_expired_leases, relay_unpushed
from geniehelper.runtime.queue import JobQueue
from geniehelper.runtime.registry import JobRegistry
from geniehelper.runtime.transport import arq_job_id
from geniehelper.settings import Settings
from jobs.publish_post import PUBLISH_POST
from schedulers.base import SchedulerContext, SchedulerRunner
from schedulers.post_scheduler import PostScheduler
from tests.conftest import make_creator
from tests.helpers import BIN, drain_queue, spawn
from tests.sync_support import KEY_B64, cipher, settings_for

JOBS = JobRegistry([PUBLISH_POST])


@dataclass
class Sandbox:
    url: str
    platform: SandboxPlatform
    http: httpx.AsyncClient

    async def posts(self, account_id: str) -> list[dict[str, Any]]:
        response = await self.http.get(f"{self.url}/admin/accounts/{account_id}/posts")
        response.raise_for_status()
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    async def fault(self, **spec: Any) -> None:
        (await self.http.post(f"{self.url}/admin/faults", json=spec)).raise_for_status()


@pytest.fixture(scope="module")
async def sandbox() -> AsyncIterator[Sandbox]:
    platform = SandboxPlatform()
    async with run_sandbox(platform=platform) as url, httpx.AsyncClient() as http:
        with pytest.MonkeyPatch.context() as env:  # the platform registry, for Settings and spawned processes
            env.setenv("PLATFORM_API_URLS", json.dumps({"sandbox": url}))
            yield Sandbox(url, platform, http)


@dataclass
class Creator:
    user_id: uuid.UUID
    account_id: str
    connection_id: uuid.UUID


async def make_connected_creator(
    db: Database, owner: asyncpg.Connection, sandbox: Sandbox, tier: str = "pro"
) -> Creator:
    user_id = await make_creator(owner, tier=tier)
    account_id, token = sandbox.platform.create_account(NewAccount(username=f"c{user_id.hex[:8]}"))
    async with db.creator_tx(user_id) as conn:
        connection_id = await connections.connect_account(
            conn, cipher(), user_id=user_id, platform="sandbox", external_account_id=account_id, token=token,
        )  # fmt: skip
    return Creator(user_id, account_id, connection_id)


async def schedule_post(
    db: Database, creator: Creator, *, due_in_s: float = -1.0, caption: str = "hello fans", platform: str = "sandbox"
) -> uuid.UUID:
    async with db.creator_tx(creator.user_id) as conn:
        post_id = await conn.fetchval(
            "insert into content_posts (user_id, caption, hashtags, platform_targets, status)"
            " values ($1, $2, '{launch}', '{sandbox}', 'scheduled') returning id",
            creator.user_id, caption,
        )  # fmt: skip
        scheduled_id: uuid.UUID = await conn.fetchval(
            "insert into scheduled_posts (user_id, content_post_id, platform_connection_id, platform, scheduled_time)"
            " values ($1, $2, $3, $4, $5) returning id",
            creator.user_id, post_id, creator.connection_id, platform, datetime.now(UTC) + timedelta(seconds=due_in_s),
        )  # fmt: skip
    return scheduled_id


async def scheduler_tick(settings: Settings, db: Database, redis: ArqRedis, database_url: str) -> Any:
    ctx = SchedulerContext(
        settings, db, redis, JobQueue(db, redis, JOBS), database_url,
    )  # fmt: skip
    return await PostScheduler().tick(ctx)


async def run_worker(settings: Settings) -> None:
    await drain_queue(settings, JOBS)


async def post_row(owner: asyncpg.Connection, scheduled_id: uuid.UUID) -> dict[str, Any]:
    row = await owner.fetchrow("select * from scheduled_posts where id = $1", scheduled_id)
    assert row is not None
    return dict(row)


@dataclass
class FaultyPost:
    creator: Creator
    scheduled_id: uuid.UUID
    job_id: uuid.UUID


async def dispatch_post_meeting_fault(
    db: Database, owner: asyncpg.Connection, sandbox: Sandbox, arq_redis: ArqRedis, settings: Settings, **fault: Any
) -> FaultyPost:
    """A connected creator's due post, dispatched, with a fault waiting for its publish call."""
    assert settings.database_url
    creator = await make_connected_creator(db, owner, sandbox)
    scheduled_id = await schedule_post(db, creator)
    await sandbox.fault(count=1, path_prefix="/v1/posts", method="POST", account_id=creator.account_id, **fault)
    await scheduler_tick(settings, db, arq_redis, settings.database_url)
    job_id = await owner.fetchval("select id from media_jobs where subject_id = $1", scheduled_id)
    return FaultyPost(creator, scheduled_id, job_id)


async def wait_for_row(owner: asyncpg.Connection, sql: str, *args: Any, timeout_s: float = 30.0) -> asyncpg.Record:
    """Poll `sql` until it returns a row (the state we wait for), failing after the deadline."""
    deadline = time.monotonic() + timeout_s
    while (row := await owner.fetchrow(sql, *args)) is None:
        assert time.monotonic() < deadline, f"timed out waiting for: {sql}"
        await asyncio.sleep(0.05)
    return row


async def wait_until_overdue(owner: asyncpg.Connection, scheduled_id: uuid.UUID, seconds: float) -> None:
    """Wait (on the database clock, which the lateness checks use) until the post is overdue by more."""
    await wait_for_row(
        owner, "select 1 from scheduled_posts where id = $1 and scheduled_time < now() - make_interval(secs => $2)",
        scheduled_id, seconds,
    )  # fmt: skip


async def job_records(owner: asyncpg.Connection, scheduled_id: uuid.UUID) -> list[dict[str, Any]]:
    rows = await owner.fetch(
        "select id, status, attempts, result->>'outcome' as outcome from media_jobs where subject_id = $1"
        " order by created_at",
        scheduled_id,
    )
    return [dict(r) for r in rows]


def spawn_worker_process(project_env: dict[str, str], database_url: str, **settings: str) -> Any:
    env = dict(project_env, DATABASE_URL=database_url, CREDENTIALS_ENC_KEY_B64=KEY_B64, LOG_FORMAT="json", **settings)
    return spawn([str(BIN / "geniehelper"), "worker", "default"], env)


async def test_due_post_is_published_exactly_once(
    db: Database, owner: asyncpg.Connection, sandbox: Sandbox, arq_redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    settings = settings_for(database_url, redis_url)
    creator = await make_connected_creator(db, owner, sandbox)
    scheduled_id = await schedule_post(db, creator)
    later_id = await schedule_post(db, creator, due_in_s=3600)
    first = await scheduler_tick(settings, db, arq_redis, database_url)
    assert (first.found, first.enqueued) == (1, 1)
    again = await scheduler_tick(settings, db, arq_redis, database_url)
    assert again.found == 0
    await run_worker(settings)
    posts = await sandbox.posts(creator.account_id)
    assert len(posts) == 1 and posts[0]["text"] == "hello fans #launch"
    row = await post_row(owner, scheduled_id)
    assert row["status"] == "posted" and row["external_post_id"] == posts[0]["external_post_id"]
    assert row["posted_at"] is not None
    attempt = await owner.fetchrow("select * from publish_attempts where scheduled_post_id = $1", scheduled_id)
    assert attempt["external_post_id"] == row["external_post_id"] and attempt["confirmed_at"] is not None
    content = await owner.fetchrow(
        "select cp.status, cp.published_at from content_posts cp join scheduled_posts sp on sp.content_post_id = cp.id"
        " where sp.id = $1",
        scheduled_id,
    )
    assert content["status"] == "published" and content["published_at"] is not None
    assert (await post_row(owner, later_id))["status"] == "scheduled"
    job = await owner.fetchrow("select * from media_jobs where subject_id = $1", scheduled_id)
    assert job["status"] == "completed" and job["job_name"] == "publish_post"


async def test_two_schedulers_and_two_workers_still_publish_each_post_once(
    db: Database, owner: asyncpg.Connection, sandbox: Sandbox, database_url: str, redis_url: str
) -> None:
    settings = settings_for(database_url, redis_url, post_scheduler_interval_s=0.2)
    creators = [await make_connected_creator(db, owner, sandbox) for _ in range(4)]
    scheduled = [await schedule_post(db, c, caption=f"post {i}") for c in creators for i in range(10)]
    runners = [SchedulerRunner(PostScheduler(), settings, database_url, redis_url) for _ in range(2)]
    tasks = [asyncio.create_task(r.run()) for r in runners]
    deadline = time.monotonic() + 20
    waiting = "select count(*) from scheduled_posts where id = any($1::uuid[]) and status = 'scheduled'"
    while await owner.fetchval(waiting, scheduled):
        assert time.monotonic() < deadline, "the schedulers did not dispatch the due posts"
        await asyncio.sleep(0.05)
    await asyncio.gather(run_worker(settings), run_worker(settings))
    for runner in runners:
        runner.stop.set()
    await asyncio.gather(*tasks)
    await asyncio.gather(run_worker(settings), run_worker(settings))
    statuses = await owner.fetch("select status from scheduled_posts where id = any($1::uuid[])", scheduled)
    assert {r["status"] for r in statuses} == {"posted"}
    for creator in creators:
        posts = await sandbox.posts(creator.account_id)
        assert len(posts) == 10
        assert len({p["idempotency_key"] for p in posts}) == 10


async def test_post_overdue_beyond_max_lateness_is_marked_missed_not_published(
    db: Database, owner: asyncpg.Connection, sandbox: Sandbox, arq_redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    settings = settings_for(database_url, redis_url, post_max_lateness_s=600)
    creator = await make_connected_creator(db, owner, sandbox)
    stale_id = await schedule_post(db, creator, due_in_s=-3600)
    result = await scheduler_tick(settings, db, arq_redis, database_url)
    assert result.details["missed"] == 1 and result.enqueued == 0
    row = await post_row(owner, stale_id)
    assert row["status"] == "missed"
    assert "beyond the maximum lateness of 600 s" in row["error_message"]
    await run_worker(settings)
    assert await sandbox.posts(creator.account_id) == []


async def test_rate_limit_is_honoured_then_the_post_goes_out_once(
    db: Database, owner: asyncpg.Connection, sandbox: Sandbox, arq_redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    settings = settings_for(database_url, redis_url)
    post = await dispatch_post_meeting_fault(db, owner, sandbox, arq_redis, settings, kind="rate_limit",
                                             retry_after_s=1.5)  # fmt: skip
    creator, scheduled_id = post.creator, post.scheduled_id
    started = time.monotonic()
    await run_worker(settings)
    assert time.monotonic() - started >= 1.5
    job = await owner.fetchrow("select * from media_jobs where subject_id = $1", scheduled_id)
    assert job["status"] == "completed" and job["attempts"] == 2
    assert len(await sandbox.posts(creator.account_id)) == 1
    assert (await post_row(owner, scheduled_id))["status"] == "posted"


async def test_expired_auth_marks_the_connection_and_fails_the_post(
    db: Database, owner: asyncpg.Connection, sandbox: Sandbox, arq_redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    settings = settings_for(database_url, redis_url)
    creator = await make_connected_creator(db, owner, sandbox)
    scheduled_id = await schedule_post(db, creator)
    sandbox.platform.expire_token(creator.account_id)
    await scheduler_tick(settings, db, arq_redis, database_url)
    await run_worker(settings)
    row = await post_row(owner, scheduled_id)
    assert row["status"] == "failed" and "auth expired" in row["error_message"]
    connection = await owner.fetchrow("select * from platform_connections where id = $1", creator.connection_id)
    assert connection["health"] == "auth_expired"
    job = await owner.fetchrow("select * from media_jobs where subject_id = $1", scheduled_id)
    assert job["status"] == "failed" and job["attempts"] == 1


async def test_tampered_ciphertext_and_wrong_key_are_detected(
    db: Database, owner: asyncpg.Connection, sandbox: Sandbox, arq_redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    settings = settings_for(database_url, redis_url)
    tampered = await make_connected_creator(db, owner, sandbox)
    stored = await owner.fetchval(
        "select auth_token_enc from platform_connections where id = $1", tampered.connection_id
    )
    flipped = stored[:-3] + ("A" if stored[-3] != "A" else "B") + stored[-2:]
    await owner.execute("update platform_connections set auth_token_enc = $2 where id = $1", tampered.connection_id,
                        flipped)  # fmt: skip
    tampered_post = await schedule_post(db, tampered)
    await scheduler_tick(settings, db, arq_redis, database_url)
    await run_worker(settings)
    row = await post_row(owner, tampered_post)
    assert row["status"] == "failed" and "stored credentials cannot be used" in row["error_message"]
    health = await owner.fetchval("select health from platform_connections where id = $1", tampered.connection_id)
    assert health == "unhealthy"

    other = await make_connected_creator(db, owner, sandbox)
    other_post = await schedule_post(db, other)
    wrong_key = settings_for(database_url, redis_url, credentials_enc_key_b64=base64.b64encode(os.urandom(32)).decode())
    await scheduler_tick(settings, db, arq_redis, database_url)
    await run_worker(wrong_key)
    row = await post_row(owner, other_post)
    assert row["status"] == "failed" and "stored credentials cannot be used" in row["error_message"]
    assert await sandbox.posts(tampered.account_id) == [] and await sandbox.posts(other.account_id) == []


async def test_a_token_goes_only_to_the_registered_address_of_its_platform(
    db: Database, owner: asyncpg.Connection, sandbox: Sandbox, arq_redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    creator = await make_connected_creator(db, owner, sandbox)
    # A connection cannot carry an address of its own any more (the creator-writable column is gone) ...
    async with db.creator_tx(creator.user_id) as conn:
        with pytest.raises(asyncpg.UndefinedColumnError, match="api_base_url"):
            await conn.execute("update platform_connections set api_base_url = 'http://attacker.test' where id = $1",
                               creator.connection_id)  # fmt: skip
    # ... and a platform the registry does not know gets nothing: the job fails before decrypting the token.
    async with db.creator_tx(creator.user_id) as conn:
        elsewhere = await connections.connect_account(
            conn, cipher(), user_id=creator.user_id, platform="elsewhere", external_account_id=creator.account_id,
            token="a-token-that-must-stay-home",
        )  # fmt: skip
    post = await schedule_post(db, Creator(creator.user_id, creator.account_id, elsewhere), platform="elsewhere")
    settings = settings_for(database_url, redis_url)
    await scheduler_tick(settings, db, arq_redis, database_url)
    before = sandbox.platform.request_counts()
    await run_worker(settings)
    row = await post_row(owner, post)
    assert row["status"] == "failed", row
    assert "platform 'elsewhere' has no registered API address (PLATFORM_API_URLS knows ['sandbox'])" in (
        row["error_message"]
    )
    assert await sandbox.posts(creator.account_id) == []
    assert sandbox.platform.request_counts() == before  # no request at all reached a platform


async def test_timeout_after_accept_is_verified_not_reposted(
    db: Database, owner: asyncpg.Connection, sandbox: Sandbox, arq_redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    settings = settings_for(database_url, redis_url, platform_timeout_s=1)
    post = await dispatch_post_meeting_fault(db, owner, sandbox, arq_redis, settings, kind="accept_then_timeout",
                                             delay_s=3)  # fmt: skip
    creator, scheduled_id = post.creator, post.scheduled_id
    await run_worker(settings)
    assert len(await sandbox.posts(creator.account_id)) == 1
    row = await post_row(owner, scheduled_id)
    assert row["status"] == "posted"
    attempt = await owner.fetchrow("select * from publish_attempts where scheduled_post_id = $1", scheduled_id)
    assert attempt["attempts"] == 2 and attempt["external_post_id"] == row["external_post_id"]


async def test_worker_killed_after_the_platform_accepted_does_not_post_twice(
    db: Database, owner: asyncpg.Connection, sandbox: Sandbox, arq_redis: ArqRedis, database_url: str, redis_url: str,
    project_env: dict[str, str],
) -> None:
    settings = settings_for(database_url, redis_url)
    # The platform stores the post, then holds the response: the worker is killed while it waits.
    post = await dispatch_post_meeting_fault(db, owner, sandbox, arq_redis, settings, kind="accept_then_timeout",
                                             delay_s=30)  # fmt: skip
    creator, scheduled_id = post.creator, post.scheduled_id
    worker = spawn_worker_process(
        project_env, database_url, PLATFORM_TIMEOUT_S="60", JOB_LEASE_S="2", JOB_HEARTBEAT_INTERVAL_S="0.5"
    )
    try:
        deadline = time.monotonic() + 30
        while not await sandbox.posts(creator.account_id):
            assert time.monotonic() < deadline, worker.text()
            await asyncio.sleep(0.1)
        psutil.Process(worker.proc.pid).send_signal(signal.SIGKILL)
        worker.proc.wait(10)
    finally:
        if worker.proc.poll() is None:
            worker.proc.kill()
    assert (await post_row(owner, scheduled_id))["status"] == "publishing"
    # The dead attempt's lease runs out; the outbox relay re-drives the record (a new dispatch) and pushes it.
    await wait_for_row(owner, "select 1 from media_jobs where id = $1 and lease_expires_at < now()", post.job_id)
    assert await redrive_expired_leases(db) == 1
    assert (await relay_unpushed(db, arq_redis, grace_s=0, ttl_s=settings.job_dispatch_ttl_s))[0] == 1
    # arq would deliver the dead worker's dispatch again once its in-progress marker expires (well past
    # the job's timeout): expire it now; that stale dispatch then does nothing.
    assert await arq_redis.delete(in_progress_key_prefix + arq_job_id(post.job_id, 1)) == 1
    await run_worker(settings)
    posts = await sandbox.posts(creator.account_id)
    assert len(posts) == 1
    row = await post_row(owner, scheduled_id)
    assert row["status"] == "posted" and row["external_post_id"] == posts[0]["external_post_id"]
    assert (await owner.fetchval("select attempts from media_jobs where id = $1", post.job_id)) == 2


async def test_post_scheduled_soon_is_dispatched_within_a_second_of_its_time(
    db: Database, owner: asyncpg.Connection, sandbox: Sandbox, database_url: str, redis_url: str
) -> None:
    settings = settings_for(database_url, redis_url, post_scheduler_interval_s=60)
    creator = await make_connected_creator(db, owner, sandbox)
    runner = SchedulerRunner(PostScheduler(), settings, database_url, redis_url)
    task = asyncio.create_task(runner.run())
    try:
        deadline = time.monotonic() + 10
        while runner.ticks < 1:  # the first (empty) tick has run; the next poll is a minute away
            assert time.monotonic() < deadline, "the scheduler never ticked"
            await asyncio.sleep(0.05)
        scheduled_id = await schedule_post(db, creator, due_in_s=2.0)
        due = (await post_row(owner, scheduled_id))["scheduled_time"]
        deadline = time.monotonic() + 10
        while (await post_row(owner, scheduled_id))["status"] == "scheduled":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        row = await post_row(owner, scheduled_id)
        assert row["status"] == "queued"
        assert timedelta(0) <= row["queued_at"] - due < timedelta(seconds=1)
    finally:
        runner.stop.set()
        await task


async def test_sigterm_hands_a_running_job_back_and_it_completes_once(
    db: Database, owner: asyncpg.Connection, sandbox: Sandbox, arq_redis: ArqRedis, database_url: str, redis_url: str,
    project_env: dict[str, str],
) -> None:
    settings = settings_for(database_url, redis_url)
    post = await dispatch_post_meeting_fault(db, owner, sandbox, arq_redis, settings, kind="slow", delay_s=30)
    creator, scheduled_id, job_id = post.creator, post.scheduled_id, post.job_id
    worker = spawn_worker_process(project_env, database_url, PLATFORM_TIMEOUT_S="60", WORKER_SHUTDOWN_GRACE_S="1")
    try:
        worker.wait_for(r'"event": "job.started"')
        worker.proc.send_signal(signal.SIGTERM)
        assert worker.proc.wait(20) == 0, worker.text()
    finally:
        if worker.proc.poll() is None:
            worker.proc.kill()
    assert '"event": "job.interrupted"' in worker.text()
    handed_back = await owner.fetchrow("select status, error_kind from media_jobs where id = $1", job_id)
    assert (handed_back["status"], handed_back["error_kind"]) == ("queued", "interrupted")
    await run_worker(settings)
    assert (await post_row(owner, scheduled_id))["status"] == "posted"
    assert len(await sandbox.posts(creator.account_id)) == 1



async def test_a_post_whose_job_the_runtime_gives_up_on_is_marked_failed(
    db: Database, owner: asyncpg.Connection, sandbox: Sandbox, arq_redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    import dataclasses

    settings = settings_for(database_url, redis_url, platform_timeout_s=30)
    post = await dispatch_post_meeting_fault(db, owner, sandbox, arq_redis, settings, kind="slow", delay_s=10)
    scheduled_id = post.scheduled_id
    # This job may have one attempt of half a second (attempts are fixed on the record at enqueue).
    await owner.execute("update media_jobs set max_attempts = 1 where subject_id = $1", scheduled_id)
    impatient = dataclasses.replace(PUBLISH_POST, policy=dataclasses.replace(PUBLISH_POST.policy, timeout_s=0.5))
    await drain_queue(settings, JobRegistry([impatient]))
    row = await post_row(owner, scheduled_id)
    assert row["status"] == "failed"
    assert row["error_message"] == "not published: retries exhausted after 1 attempt; last error: timed out after 0.5s"
    job = await owner.fetchrow("select status, error_kind from media_jobs where subject_id = $1", scheduled_id)
    assert (job["status"], job["error_kind"]) == ("failed", "timeout")


# --- revisions ----------------------------------------------------------------------------------


async def test_time_and_content_changes_bump_the_revision_and_nothing_else_does(
    db: Database, owner: asyncpg.Connection, sandbox: Sandbox
) -> None:
    creator = await make_connected_creator(db, owner, sandbox)
    scheduled_id = await schedule_post(db, creator, due_in_s=3600)
    content_id = (await post_row(owner, scheduled_id))["content_post_id"]
    posted_id = await owner.fetchval(  # the same content, already posted on another occasion
        "insert into scheduled_posts (user_id, content_post_id, platform_connection_id, platform, scheduled_time,"
        " status) values ($1, $2, $3, 'sandbox', now() - interval '1 day', 'posted') returning id",
        creator.user_id, content_id, creator.connection_id,
    )  # fmt: skip

    async def revision_after(sql: str, row_id: uuid.UUID) -> int:
        async with db.creator_tx(creator.user_id) as conn:  # the app role, as a creator's edit runs
            assert await conn.execute(sql, row_id) == "UPDATE 1"
        return int((await post_row(owner, scheduled_id))["revision"])

    move = "update scheduled_posts set scheduled_time = scheduled_time + interval '1 hour'"
    assert await revision_after(move + " where id = $1", scheduled_id) == 2
    # The old convention (bumping by hand with the change) still yields one bump, not two.
    assert await revision_after(move + ", revision = revision + 1 where id = $1", scheduled_id) == 3
    # What the MARK_* statements and the claim write (status, messages, timestamps), and a time set to
    # the same value: no new revision.
    for sql in (
        "update scheduled_posts set scheduled_time = scheduled_time, error_message = 'x', queued_at = now(),"
        " posted_at = now(), attempts = attempts + 1 where id = $1",
        "update content_posts set caption = caption, status = 'scheduled', published_at = now() where id = $1",
    ):
        assert await revision_after(sql, content_id if "content_posts" in sql else scheduled_id) == 3
    # An edit of what is published bumps the content's scheduled posts that are not settled yet.
    for column, value in (("caption", "'new words'"), ("hashtags", "'{other}'"), ("title", "'A title'")):
        assert await revision_after(f"update content_posts set {column} = {value} where id = $1", content_id) == (
            {"caption": 4, "hashtags": 5, "title": 6}[column]
        )
    assert (await post_row(owner, scheduled_id))["status"] == "scheduled"
    assert (await post_row(owner, posted_id))["revision"] == 1
    # A scheduled post is not the job's to start: only the post_scheduler's claim ('queued') is.
    async with db.creator_tx(creator.user_id) as conn:
        post, attempt = await publishing.start_unfenced(conn, creator.user_id, scheduled_id, 6, 3600)
        assert post is not None and post.revision == 6
        assert attempt is None
    assert (await post_row(owner, scheduled_id))["status"] == "scheduled"


async def test_changes_to_a_post_being_published_are_refused(
    db: Database, owner: asyncpg.Connection, sandbox: Sandbox, arq_redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    settings = settings_for(database_url, redis_url)
    creator = await make_connected_creator(db, owner, sandbox)
    scheduled_id = await schedule_post(db, creator)
    await scheduler_tick(settings, db, arq_redis, database_url)
    content_id = (await post_row(owner, scheduled_id))["content_post_id"]
    async with db.creator_tx(creator.user_id) as conn:  # what publish_post does first
        post, attempt = await publishing.start_unfenced(conn, creator.user_id, scheduled_id, 1, 3600)
        assert post is not None and attempt is not None
    edits = [
        ("update scheduled_posts set scheduled_time = now() + interval '1 day' where id = $1", scheduled_id,
         f"scheduled post {scheduled_id} is being published"),
        ("update scheduled_posts set platform_connection_id = platform_connection_id where id = $1", scheduled_id,
         None),  # unchanged value: allowed
        ("update content_posts set caption = 'changed' where id = $1", content_id,
         f"content post {content_id} is being published (scheduled post {scheduled_id})"),
        ("update content_posts set hashtags = '{changed}' where id = $1", content_id, "is being published"),
    ]  # fmt: skip
    for sql, row_id, refusal in edits:
        if refusal is None:
            async with db.creator_tx(creator.user_id) as conn:
                assert await conn.execute(sql, row_id) == "UPDATE 1"
            continue
        with pytest.raises(asyncpg.ObjectInUseError, match=re.escape(refusal)):
            async with db.creator_tx(creator.user_id) as conn:
                await conn.execute(sql, row_id)
    row = await post_row(owner, scheduled_id)
    assert (row["status"], row["revision"]) == ("publishing", 1)
    assert await owner.fetchval("select caption from content_posts where id = $1", content_id) == "hello fans"
    # Once the publish settled, the post may be rescheduled (a new revision).
    async with db.creator_tx(creator.user_id) as conn:
        await conn.execute(publishing.MARK_FAILED, scheduled_id, "refused", 1)
        await conn.execute(
            "update scheduled_posts set scheduled_time = now() + interval '1 day', status = 'scheduled' where id = $1",
            scheduled_id,
        )
    row = await post_row(owner, scheduled_id)
    assert (row["status"], row["revision"]) == ("scheduled", 2)


async def test_a_queued_post_edited_is_dispatched_again_and_only_the_new_revision_is_published(
    db: Database, owner: asyncpg.Connection, sandbox: Sandbox, arq_redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    settings = settings_for(database_url, redis_url)
    creator = await make_connected_creator(db, owner, sandbox)
    scheduled_id = await schedule_post(db, creator)
    assert (await scheduler_tick(settings, db, arq_redis, database_url)).enqueued == 1
    content_id = (await post_row(owner, scheduled_id))["content_post_id"]
    listener = await asyncpg.connect(database_url)
    notified: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener("geniehelper_scheduled_posts", lambda *args: notified.put_nowait(args[3]))
    try:
        async with db.creator_tx(creator.user_id) as conn:
            await conn.execute("update content_posts set caption = 'better words' where id = $1", content_id)
        row = await post_row(owner, scheduled_id)
        assert (row["status"], row["revision"]) == ("scheduled", 2)  # back to the post_scheduler
        payload = await asyncio.wait_for(notified.get(), timeout=10)  # which it is woken for
        assert float(payload) == pytest.approx(row["scheduled_time"].timestamp(), abs=1e-3)
    finally:
        await listener.close()
    second = await scheduler_tick(settings, db, arq_redis, database_url)
    assert (second.found, second.enqueued) == (1, 1)
    await run_worker(settings)
    posts = await sandbox.posts(creator.account_id)
    assert [(p["text"], p["idempotency_key"]) for p in posts] == [
        ("better words #launch", f"gh-{scheduled_id}-sandbox-r2")  # post, platform, revision
    ]
    assert (await post_row(owner, scheduled_id))["status"] == "posted"
    assert [(j["status"], j["outcome"]) for j in await job_records(owner, scheduled_id)] == [
        ("completed", "superseded"), ("completed", "posted")
    ]


# --- lateness when the job runs ---------------------------------------------------------------------


async def test_a_post_late_when_its_job_runs_is_marked_missed_not_published(
    db: Database, owner: asyncpg.Connection, sandbox: Sandbox, arq_redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    settings = settings_for(database_url, redis_url, post_max_lateness_s=2)
    creator = await make_connected_creator(db, owner, sandbox)
    scheduled_id = await schedule_post(db, creator, due_in_s=-0.1)
    claimed = await scheduler_tick(settings, db, arq_redis, database_url)
    assert (claimed.enqueued, claimed.details["missed"]) == (1, 0)  # on time when dispatched
    await wait_until_overdue(owner, scheduled_id, 2)  # the job waits (an outage) past the maximum lateness
    await run_worker(settings)
    row = await post_row(owner, scheduled_id)
    assert row["status"] == "missed"
    assert re.fullmatch(
        r"not published: due .+, \d+ s late when its job ran, beyond the maximum lateness of 2 s;"
        r" reschedule it to publish",
        row["error_message"],
    ), row["error_message"]
    assert await sandbox.posts(creator.account_id) == []
    assert await owner.fetchval("select count(*) from publish_attempts where scheduled_post_id = $1", scheduled_id) == 0
    assert [(j["status"], j["outcome"]) for j in await job_records(owner, scheduled_id)] == [("completed", "missed")]


# --- re-dispatch keyed on the job record ------------------------------------------------------------


@pytest.mark.parametrize(
    ("late", "landed", "outcome"),
    [(False, True, "posted"), (False, False, "posted"), (True, True, "posted"), (True, False, "missed")],
    ids=["landed", "not-landed", "late-landed", "late-not-landed"],
)
async def test_a_post_stuck_publishing_without_a_job_is_claimed_again_and_settled_once(
    db: Database, owner: asyncpg.Connection, sandbox: Sandbox, arq_redis: ArqRedis, database_url: str, redis_url: str,
    late: bool, landed: bool, outcome: str,
) -> None:
    settings = settings_for(database_url, redis_url, post_max_lateness_s=2 if late else 3600)
    creator = await make_connected_creator(db, owner, sandbox)
    scheduled_id = await schedule_post(db, creator, due_in_s=-0.1)
    assert (await scheduler_tick(settings, db, arq_redis, database_url)).enqueued == 1
    [first_job] = await job_records(owner, scheduled_id)
    # An attempt got as far as the platform call: the attempt row is written, the post is publishing,
    # and (landed) the platform stored the post under the attempt's idempotency key.
    async with db.creator_tx(creator.user_id) as conn:
        post, attempt = await publishing.start_unfenced(conn, creator.user_id, scheduled_id, 1, 3600)
        assert post is not None and attempt is not None
        connection = await connections.get(conn, creator.connection_id)
    assert connection is not None
    if landed:
        client = HttpPlatformClient(sandbox.url, connections.decrypt_token(cipher(), connection), sandbox.http)
        await client.publish_post(PostToPublish(text="hello fans #launch"), idempotency_key=attempt.idempotency_key)
    # Long past the re-claim grace, but its job record is active: not claimed.
    await owner.execute(
        "update scheduled_posts set queued_at = queued_at - interval '1 hour',"
        " publishing_started_at = publishing_started_at - interval '1 hour' where id = $1",
        scheduled_id,
    )
    assert (await scheduler_tick(settings, db, arq_redis, database_url)).found == 0
    # The job's record ends without the post being settled (e.g. its failure hook could not run).
    await owner.execute(
        "update media_jobs set status = 'failed', error = 'lost', finished_at = now() where id = $1", first_job["id"]
    )
    if late:
        await wait_until_overdue(owner, scheduled_id, 2)
    again = await scheduler_tick(settings, db, arq_redis, database_url)
    assert (again.found, again.enqueued, again.details["missed"]) == (1, 1, 0)  # never marked missed unverified
    assert (await post_row(owner, scheduled_id))["status"] == "queued"
    await run_worker(settings)
    posts = await sandbox.posts(creator.account_id)
    row = await post_row(owner, scheduled_id)
    assert row["status"] == outcome
    if outcome == "posted":
        assert len(posts) == 1 and row["external_post_id"] == posts[0]["external_post_id"]
        assert posts[0]["idempotency_key"] == attempt.idempotency_key
        stored = await owner.fetchrow("select * from publish_attempts where id = $1", attempt.id)
        assert (stored["attempts"], stored["external_post_id"]) == (2, row["external_post_id"])
    else:
        assert posts == []
        assert "late when its job ran" in row["error_message"]
        assert "the earlier attempt was checked: the platform has no post with its idempotency key" in row[
            "error_message"
        ]
    jobs = await job_records(owner, scheduled_id)
    assert [(j["status"], j["outcome"]) for j in jobs] == [("failed", None), ("completed", outcome)]


async def test_a_queued_post_whose_job_waits_for_a_retry_is_not_claimed_again(
    db: Database, owner: asyncpg.Connection, sandbox: Sandbox, arq_redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    settings = settings_for(database_url, redis_url)
    post = await dispatch_post_meeting_fault(db, owner, sandbox, arq_redis, settings, kind="rate_limit",
                                             retry_after_s=5)  # fmt: skip
    worker = asyncio.create_task(run_worker(settings))
    try:
        # The first attempt was rate limited: the record waits for its retry, the post shows why.
        await wait_for_row(
            owner, "select 1 from media_jobs where id = $1 and status = 'queued' and attempts = 1", post.job_id
        )
        # Its retry comes later than POST_REQUEUE_AFTER_S after the claim (as backoff up to 600 s does).
        await owner.execute(
            "update scheduled_posts set queued_at = queued_at - interval '1 hour',"
            " publishing_started_at = publishing_started_at - interval '1 hour' where id = $1",
            post.scheduled_id,
        )
        result = await scheduler_tick(settings, db, arq_redis, settings.database_url or "")
        row = await post_row(owner, post.scheduled_id)
        assert (result.found, row["status"]) == (0, "queued")
        assert row["error_message"].startswith("rate limited by the platform")
        assert len(await job_records(owner, post.scheduled_id)) == 1
    finally:
        await worker
    assert len(await sandbox.posts(post.creator.account_id)) == 1
    assert (await post_row(owner, post.scheduled_id))["status"] == "posted"
    assert [(j["status"], j["attempts"]) for j in await job_records(owner, post.scheduled_id)] == [("completed", 2)]


async def test_a_published_posts_attached_assets_are_recorded_as_used_by_it_in_order(
    db: Database, owner: asyncpg.Connection, sandbox: Sandbox, arq_redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    settings = settings_for(database_url, redis_url)
    creator = await make_connected_creator(db, owner, sandbox)
    scheduled_id = await schedule_post(db, creator)
    assets = [
        row["id"] for row in await owner.fetch(
            "insert into media_assets (user_id, kind, storage_key) select $1, 'image', 'k/' || g"
            " from generate_series(1, 2) g returning id", creator.user_id)
    ]  # fmt: skip
    not_an_asset = uuid.uuid4()  # media_asset_ids has no FK: an id that is not an asset is skipped
    content_id = await owner.fetchval(
        "update content_posts cp set media_asset_ids = $2 from scheduled_posts sp"
        " where sp.id = $1 and cp.id = sp.content_post_id returning cp.id",
        scheduled_id, [assets[1], not_an_asset, assets[0]],
    )  # fmt: skip
    assert await owner.fetchval("select count(*) from media_asset_usages where content_post_id = $1", content_id) == 0
    await scheduler_tick(settings, db, arq_redis, database_url)
    await run_worker(settings)
    assert (await post_row(owner, scheduled_id))["status"] == "posted"
    usages = await owner.fetch(
        "select user_id, media_asset_id, position, campaign_id, media_collection_id, fan_profile_id"
        " from media_asset_usages where content_post_id = $1 order by position", content_id,
    )  # fmt: skip
    assert [(u["media_asset_id"], u["position"]) for u in usages] == [(assets[1], 0), (assets[0], 2)]
    assert all(u["user_id"] == creator.user_id and u["fan_profile_id"] is None for u in usages)
