"""What the scrape and fan sync tests share: the sandbox platform over real HTTP, connected creators,
and a real bulk worker (fed as the dispatcher feeds the fair queue) run until the jobs are done."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import httpx
import pytest
from arq.connections import ArqRedis
from arq.worker import create_worker

from geniehelper.crypto import CredentialCipher
from geniehelper.db import Database
from geniehelper.domain import platform as connections
from geniehelper.platforms import HttpPlatformClient, PostToPublish
from geniehelper.platforms.sandbox import NewAccount, SandboxPlatform, run_sandbox
from geniehelper.runtime.delivery import dispatch_fair
from geniehelper.runtime.queue import EnqueuedJob, JobQueue
from geniehelper.runtime.registry import JobRegistry
from geniehelper.runtime.worker import build_worker_settings
from geniehelper.settings import Settings
from geniehelper.sync.fans import ResourceResult, sync_resource
from jobs.scrape_connection import SCRAPE_CONNECTION
from jobs.sync_fans import SYNC_FANS
from schedulers.base import SchedulerContext, TickResult
from schedulers.scrape_scheduler import ScrapeScheduler
from tests.conftest import make_creator
from tests.helpers import stop_worker

KEY_B64 = base64.b64encode(os.urandom(32)).decode()
JOBS = JobRegistry([SCRAPE_CONNECTION, SYNC_FANS])


class ManualClock:
    """The sandbox's clock, standing still until a test advances it: growth (per hour) is exact."""

    def __init__(self) -> None:
        self.now_s = time.time()

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


@dataclass
class Sandbox:
    url: str
    platform: SandboxPlatform
    clock: ManualClock
    http: httpx.AsyncClient

    async def fault(self, **spec: Any) -> None:
        (await self.http.post(f"{self.url}/admin/faults", json=spec)).raise_for_status()

    async def clear_faults(self) -> None:
        (await self.http.delete(f"{self.url}/admin/faults")).raise_for_status()

    def requests(self) -> dict[str, int]:
        return self.platform.request_counts()


@pytest.fixture(scope="module")
async def sandbox() -> AsyncIterator[Sandbox]:
    clock = ManualClock()
    platform = SandboxPlatform(clock=clock)
    async with run_sandbox(platform=platform) as url, httpx.AsyncClient() as http:
        with pytest.MonkeyPatch.context() as env:  # the platform registry, for Settings and spawned processes
            env.setenv("PLATFORM_API_URLS", json.dumps({"sandbox": url}))
            yield Sandbox(url, platform, clock, http)


def settings_for(database_url: str, redis_url: str, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url, "redis_url": redis_url, "credentials_enc_key_b64": KEY_B64,
        "health_interval_s": 1, "scheduler_jitter_s": 0, "platform_timeout_s": 5, **extra,
    }  # fmt: skip
    return Settings(**values)


def cipher() -> CredentialCipher:
    return CredentialCipher.from_settings_values(KEY_B64, "k1", None)


@dataclass
class Connected:
    user_id: uuid.UUID
    account_id: str
    connection_id: uuid.UUID
    token: str


async def connect(
    db: Database, owner: asyncpg.Connection, sandbox: Sandbox, *, tier: str = "pro",
    user_id: uuid.UUID | None = None, **account: Any,
) -> Connected:  # fmt: skip
    """A creator (new unless `user_id`) with a sandbox account (NewAccount fields) connected."""
    user_id = user_id or await make_creator(owner, tier=tier)
    account_id, token = sandbox.platform.create_account(NewAccount(**account))
    async with db.creator_tx(user_id) as conn:
        connection_id = await connections.connect_account(
            conn, cipher(), user_id=user_id, platform="sandbox", external_account_id=account_id, token=token,
        )  # fmt: skip
    return Connected(user_id, account_id, connection_id, token)


async def sync_directly(
    db: Database, sandbox: Sandbox, c: Connected, resource: str, *, page_size: int
) -> ResourceResult:
    """One resource of the connection synced in this process (no worker), as the sync job runs it."""
    async with db.creator_tx(c.user_id) as conn:
        connection = await connections.get(conn, c.connection_id)
    assert connection is not None
    client = HttpPlatformClient(sandbox.url, c.token, sandbox.http, timeout_s=10)
    return await sync_resource(lambda: db.creator_tx(c.user_id), client, connection, resource, page_size=page_size)


async def publish(db: Database, sandbox: Sandbox, c: Connected, text: str) -> uuid.UUID:
    """A post published on the sandbox and recorded posted (what publish_post leaves); its scheduled post id."""
    client = HttpPlatformClient(sandbox.url, c.token, sandbox.http)
    post = await client.publish_post(PostToPublish(text=text), idempotency_key=f"test:{uuid.uuid4()}")
    async with db.creator_tx(c.user_id) as conn:
        content_id = await conn.fetchval(
            "insert into content_posts (user_id, caption, status, published_at) values ($1, $2, 'published', $3)"
            " returning id",
            c.user_id, text, post.created_at,
        )  # fmt: skip
        scheduled_id: uuid.UUID = await conn.fetchval(
            "insert into scheduled_posts (user_id, content_post_id, platform_connection_id, platform, scheduled_time,"
            " status, posted_at, external_post_id) values ($1, $2, $3, 'sandbox', $4, 'posted', $4, $5) returning id",
            c.user_id, content_id, c.connection_id, post.created_at, post.external_post_id,
        )  # fmt: skip
    return scheduled_id


def job_queue(db: Database, redis: ArqRedis, settings: Settings) -> JobQueue:
    return JobQueue(db, redis, JOBS, fair_queues=settings.fair_queues)


async def enqueue_scrape(
    db: Database, redis: ArqRedis, settings: Settings, c: Connected, cycle_at: datetime, *, health_only: bool = False
) -> EnqueuedJob:
    payload = {"platform_connection_id": str(c.connection_id), "cycle_at": cycle_at.isoformat(),
               "health_only": health_only}  # fmt: skip
    return await job_queue(db, redis, settings).enqueue("scrape_connection", payload, user_id=c.user_id)


async def park_connections(owner: asyncpg.Connection) -> None:
    """Earlier tests' connections of this module's database are not due for a year (ticks see this test's)."""
    await owner.execute("update platform_connections set next_scrape_at = now() + interval '1 year'")


async def scheduler_tick(settings: Settings, db: Database, redis: ArqRedis) -> TickResult:
    """One scrape_scheduler tick, as its leader runs it."""
    assert settings.database_url
    ctx = SchedulerContext(settings, db, redis, job_queue(db, redis, settings), settings.database_url)
    return await ScrapeScheduler().tick(ctx)


async def enqueue_sync(db: Database, redis: ArqRedis, settings: Settings, c: Connected) -> EnqueuedJob:
    return await job_queue(db, redis, settings).enqueue(
        "sync_fans", {"platform_connection_id": str(c.connection_id)}, user_id=c.user_id
    )


async def run_bulk(settings: Settings, db: Database, redis: ArqRedis, owner: asyncpg.Connection,
                   timeout_s: float = 120.0) -> None:  # fmt: skip
    """Run a real bulk worker, topped up as the dispatcher does, until no bulk job is queued or running
    (the job records say so: a burst worker would wait on a killed worker's stale dispatch)."""
    assert settings.database_url and settings.redis_url
    worker = create_worker(
        build_worker_settings("bulk", JOBS, role="test_bulk", settings=settings, database_url=settings.database_url,
                              redis_url=settings.redis_url),
        handle_signals=False,
    )  # fmt: skip
    running = asyncio.create_task(worker.async_run())
    deadline = time.monotonic() + timeout_s
    active = "select count(*) from media_jobs where queue = 'bulk' and status in ('queued', 'processing')"
    try:
        while await owner.fetchval(active):
            assert time.monotonic() < deadline, "bulk jobs did not finish"
            assert not running.done(), "the worker stopped"
            await dispatch_fair(db, redis, "bulk", window=50, ttl_s=3600)
            await asyncio.sleep(0.05)
    finally:
        await stop_worker(worker, running)


async def counts(owner: asyncpg.Connection, user_id: uuid.UUID) -> dict[str, int]:
    """Rows per synced table for one creator."""
    tables = (
        "fan_profiles", "fan_platform_accounts", "fan_subscriptions", "fan_subscription_events", "fan_transactions",
        "fan_messages",
    )  # fmt: skip
    found = {}
    for table in tables:  # names from the tuple above, never from input
        found[table] = await owner.fetchval(f"select count(*) from {table} where user_id = $1", user_id)
    return found


async def wait_for(owner: asyncpg.Connection, sql: str, *args: Any, timeout_s: float = 60.0) -> Any:
    """Poll `sql` until its first value is truthy (the state we wait for); fail after the deadline."""
    deadline = time.monotonic() + timeout_s
    while not (value := await owner.fetchval(sql, *args)):
        assert time.monotonic() < deadline, f"timed out waiting for: {sql}"
        await asyncio.sleep(0.05)
    return value
