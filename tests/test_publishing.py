"""Publishing end to end against the sandbox platform over real HTTP: post_scheduler → publish_post."""

from __future__ import annotations

import asyncio
import base64
import os
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

from geniehelper.contracts import ALL_CONTRACTS
from geniehelper.crypto import CredentialCipher
from geniehelper.db import Database
from geniehelper.domain import platform as connections
from geniehelper.platforms.sandbox import NewAccount, SandboxPlatform, run_sandbox
from geniehelper.runtime.definition import JobRegistry
from geniehelper.runtime.queue import JobQueue
from geniehelper.runtime.quotas import load_tier_limits
from geniehelper.settings import Settings
from jobs import IMPLEMENTATIONS
from schedulers.base import SchedulerContext, SchedulerRunner
from schedulers.post_scheduler import PostScheduler
from tests.conftest import make_creator
from tests.helpers import BIN, drain_queue, spawn

KEY_B64 = base64.b64encode(os.urandom(32)).decode()


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
        yield Sandbox(url, platform, http)


def settings_for(database_url: str, redis_url: str, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url, "redis_url": redis_url, "credentials_enc_key_b64": KEY_B64,
        "health_interval_s": 1, "scheduler_jitter_s": 0, "platform_timeout_s": 5, **extra,
    }  # fmt: skip
    return Settings(**values)


def cipher() -> CredentialCipher:
    return CredentialCipher.from_settings_values(KEY_B64, "k1", None)


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
            api_base_url=sandbox.url,
        )  # fmt: skip
    return Creator(user_id, account_id, connection_id)


async def schedule_post(
    db: Database, creator: Creator, *, due_in_s: float = -1.0, caption: str = "hello fans"
) -> uuid.UUID:
    async with db.creator_tx(creator.user_id) as conn:
        post_id = await conn.fetchval(
            "insert into content_posts (user_id, caption, hashtags, platform_targets, status)"
            " values ($1, $2, '{launch}', '{sandbox}', 'scheduled') returning id",
            creator.user_id, caption,
        )  # fmt: skip
        scheduled_id: uuid.UUID = await conn.fetchval(
            "insert into scheduled_posts (user_id, content_post_id, platform_connection_id, platform, scheduled_time)"
            " values ($1, $2, $3, 'sandbox', $4) returning id",
            creator.user_id, post_id, creator.connection_id, datetime.now(UTC) + timedelta(seconds=due_in_s),
        )  # fmt: skip
    return scheduled_id


async def scheduler_tick(settings: Settings, db: Database, redis: ArqRedis, database_url: str) -> Any:
    ctx = SchedulerContext(
        settings, db, redis, JobQueue(db, redis, JobRegistry(ALL_CONTRACTS), load_tier_limits()), database_url,
    )  # fmt: skip
    return await PostScheduler().tick(ctx)


async def run_worker(settings: Settings) -> None:
    await drain_queue(settings, ALL_CONTRACTS, IMPLEMENTATIONS)


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
    job_id = await owner.fetchval("select id from media_jobs where scheduled_post_id = $1", scheduled_id)
    return FaultyPost(creator, scheduled_id, job_id)


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
    assert (await post_row(owner, later_id))["status"] == "scheduled"
    job = await owner.fetchrow("select * from media_jobs where scheduled_post_id = $1", scheduled_id)
    assert job["status"] == "completed" and job["job_name"] == "publish_post"


async def test_two_schedulers_and_two_workers_still_publish_each_post_once(
    db: Database, owner: asyncpg.Connection, sandbox: Sandbox, database_url: str, redis_url: str
) -> None:
    settings = settings_for(database_url, redis_url, post_scheduler_interval_s=0.2)
    creators = [await make_connected_creator(db, owner, sandbox) for _ in range(4)]
    scheduled = [await schedule_post(db, c, caption=f"post {i}") for c in creators for i in range(10)]
    runners = [SchedulerRunner(PostScheduler(), settings, database_url, redis_url) for _ in range(2)]
    tasks = [asyncio.create_task(r.run()) for r in runners]
    await asyncio.sleep(1.5)
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
    job = await owner.fetchrow("select * from media_jobs where scheduled_post_id = $1", scheduled_id)
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
    job = await owner.fetchrow("select * from media_jobs where scheduled_post_id = $1", scheduled_id)
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
    worker = spawn_worker_process(project_env, database_url, PLATFORM_TIMEOUT_S="60")
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
    # arq hands a dead worker's job to another once its in-progress marker expires (job timeout +
    # 10 s); expire it now instead of waiting.
    assert await arq_redis.delete(in_progress_key_prefix + str(post.job_id)) == 1
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
        await asyncio.sleep(1.0)  # the first (empty) tick has run; the next poll is a minute away
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

    from geniehelper.contracts import PUBLISH_POST

    settings = settings_for(database_url, redis_url, platform_timeout_s=30)
    post = await dispatch_post_meeting_fault(db, owner, sandbox, arq_redis, settings, kind="slow", delay_s=10)
    scheduled_id = post.scheduled_id
    # This job may have one attempt of half a second (attempts are fixed on the record at enqueue).
    await owner.execute("update media_jobs set max_attempts = 1 where scheduled_post_id = $1", scheduled_id)
    impatient = [dataclasses.replace(PUBLISH_POST, timeout_s=0.5)]
    await drain_queue(settings, impatient, IMPLEMENTATIONS)
    row = await post_row(owner, scheduled_id)
    assert row["status"] == "failed"
    assert row["error_message"] == "not published: retries exhausted after 1 attempt; last error: timed out after 0.5s"
    job = await owner.fetchrow("select status, error_kind from media_jobs where scheduled_post_id = $1", scheduled_id)
    assert (job["status"], job["error_kind"]) == ("failed", "timeout")
