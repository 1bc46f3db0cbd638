"""Job definitions: one module per job, queues as configuration, uniqueness while active and
requeue, per-key concurrency, system-scope jobs. Real PostgreSQL, real valkey, real arq workers."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from arq.connections import ArqRedis
from pydantic import Field

from geniehelper.db import Database
from geniehelper.runtime.claiming import create_worker
from geniehelper.runtime.context import JobContext
from geniehelper.runtime.definition import Concurrency, JobDefinition, JobPayload, Subject, queue_key
from geniehelper.runtime.delivery import dispatch_fair
from geniehelper.runtime.queue import EnqueuedJob, JobQueue, JobRequest
from geniehelper.runtime.registry import JobRegistry, discover
from geniehelper.runtime.resources import ResourceKey
from geniehelper.runtime.worker import build_worker_settings
from geniehelper.settings import Settings
from tests import jobs_for_tests
from tests.conftest import make_creator
from tests.helpers import BIN, drain_queue, spawn, stop_worker


def settings_for(database_url: str, redis_url: str, **extra: Any) -> Settings:
    return Settings(database_url=database_url, redis_url=redis_url, health_interval_s=1,
                    job_heartbeat_interval_s=0.2, **extra)  # fmt: skip


def test_a_job_added_as_one_module_is_discovered_with_everything_it_declares(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "more_jobs"
    package.mkdir()
    (package / "__init__.py").write_text('"""Jobs of a test."""\n')
    (package / "greet_fan.py").write_text(textwrap.dedent('''
        from uuid import UUID

        from geniehelper.runtime.definition import JobDefinition, JobPayload, Policy, Subject


        class GreetFan(JobPayload):
            fan_id: UUID
            text: str


        async def greet_fan(ctx, payload: GreetFan) -> dict[str, str]:
            return {"sent": payload.text}


        GREET_FAN = JobDefinition(
            "greet_fan", GreetFan, greet_fan, queue="bulk", policy=Policy(max_attempts=2),
            key=lambda p: f"greet_fan:{p.fan_id}", subject=lambda p: Subject("fan", p.fan_id),
        )
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    shipped_registry = discover(["jobs"])
    shipped = shipped_registry.names()
    assert "publish_post" in shipped
    registry = discover(["more_jobs", "jobs"])
    greet = registry["greet_fan"]
    assert (greet.queue, greet.policy.max_attempts) == ("bulk", 2)
    assert registry.names() == sorted(["greet_fan", *shipped])  # the one module added exactly its one job
    shipped_bulk = [j.name for j in shipped_registry.for_queue("bulk")]
    assert sorted(j.name for j in registry.for_queue("bulk")) == sorted(["greet_fan", *shipped_bulk])
    sys.modules.pop("more_jobs.greet_fan", None)
    sys.modules.pop("more_jobs", None)


async def test_a_bulk_job_runs_on_the_bulk_worker_with_its_configured_concurrency(
    db: Database, owner: asyncpg.Connection, arq_redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    bulk_echo = JobDefinition("t_bulk_echo", jobs_for_tests.EchoPayload, jobs_for_tests.echo, queue="bulk")
    registry = JobRegistry([*jobs_for_tests.CONTRACTS, bulk_echo])
    settings = settings_for(database_url, redis_url, queues={"bulk": {"concurrency": 3}})
    cls = build_worker_settings("bulk", registry, settings=settings, database_url=database_url, redis_url=redis_url)
    assert (cls.max_jobs, cls.queue_name, cls.role) == (3, queue_key("bulk"), "bulk_worker")  # type: ignore[attr-defined]
    assert settings.queue("media").concurrency == 4  # the other defaults stay
    with pytest.raises(LookupError, match="configured queues: bulk, default, media"):
        settings.queue("nope")
    queue = JobQueue(db, arq_redis, registry)
    creator = await make_creator(owner)
    job = await queue.enqueue("t_bulk_echo", {"text": "b"}, user_id=creator)
    await drain_queue(settings, registry, "default")  # the default worker never takes it
    assert await owner.fetchval("select status from media_jobs where id = $1", job.id) == "queued"
    await drain_queue(settings, registry, "bulk")
    assert await owner.fetchval("select status from media_jobs where id = $1", job.id) == "completed"


async def test_a_key_is_unique_while_active_and_a_finished_job_can_be_requeued(
    db: Database, owner: asyncpg.Connection, arq_redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    queue = JobQueue(db, arq_redis, jobs_for_tests.REGISTRY)
    creator = await make_creator(owner)
    first = await queue.enqueue("t_count", {"counter": "rq"}, user_id=creator, key="rq-key")
    again = await queue.enqueue("t_count", {"counter": "rq"}, user_id=creator, key="rq-key")
    assert again.id == first.id and again.duplicate
    await drain_queue(settings_for(database_url, redis_url), jobs_for_tests.REGISTRY)
    rerun = await queue.requeue(first.id, user_id=creator)
    assert rerun.id != first.id and not rerun.duplicate
    assert (await queue.requeue(first.id, user_id=creator)).id == rerun.id  # the active one, not a third
    with pytest.raises(LookupError, match="no finished job record"):
        await queue.requeue(rerun.id, user_id=creator)  # still queued: nothing to requeue
    await drain_queue(settings_for(database_url, redis_url), jobs_for_tests.REGISTRY)
    rows = await owner.fetch("select status from media_jobs where job_key = 'rq-key' order by created_at")
    assert [r["status"] for r in rows] == ["completed", "completed"]
    assert int(await arq_redis.get("test:rq:completed")) == 2


class GroupPayload(JobPayload):
    group: str = Field(max_length=20)
    n: int


async def run_in_group(ctx: JobContext, payload: GroupPayload) -> None:
    """Counts how many jobs of its group run at once (observed in Redis), for a moment."""
    redis = ctx.resource(jobs_for_tests.TEST_REDIS)
    running = await redis.incr(f"test:conc:{payload.group}:running")
    await redis.rpush(f"test:conc:{payload.group}:seen", running)
    await asyncio.sleep(0.3)
    await redis.decr(f"test:conc:{payload.group}:running")


GROUPED = JobDefinition(
    "t_grouped", GroupPayload, run_in_group, concurrency=Concurrency(key=lambda p: f"group:{p.group}", limit=2),
    resources=(jobs_for_tests.TEST_REDIS,),
    subject=lambda p: Subject("test_group", uuid.uuid5(uuid.NAMESPACE_URL, p.group)),
)


async def test_per_key_concurrency_never_runs_more_than_the_limit_at_once(
    db: Database, owner: asyncpg.Connection, arq_redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    registry = JobRegistry([GROUPED])
    queue = JobQueue(db, arq_redis, registry)
    creator = await make_creator(owner)
    for n in range(8):
        await queue.enqueue("t_grouped", {"group": "a", "n": n}, user_id=creator)
    for n in range(2):
        await queue.enqueue("t_grouped", {"group": "b", "n": n}, user_id=creator)
    await drain_queue(settings_for(database_url, redis_url), registry)  # 10 jobs at once allowed by the worker
    seen_a = [int(v) for v in await arq_redis.lrange("test:conc:a:seen", 0, -1)]
    seen_b = [int(v) for v in await arq_redis.lrange("test:conc:b:seen", 0, -1)]
    assert len(seen_a) == 8 and max(seen_a) == 2, seen_a  # never 3; and 2 did run together
    assert len(seen_b) == 2
    rows = await owner.fetch("select status, concurrency_key, subject_type from media_jobs where user_id = $1", creator)
    assert {(r["status"], r["subject_type"]) for r in rows} == {("completed", "test_group")}
    assert {r["concurrency_key"] for r in rows} == {"group:a", "group:b"}


class RollupPayload(JobPayload):
    day: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}$")


async def rollup(ctx: JobContext, payload: RollupPayload) -> dict[str, Any]:
    try:
        async with ctx.creator_tx():
            pass
    except TypeError as exc:
        refused = str(exc)
    async with ctx.system_tx() as conn:
        creators = await conn.fetchval("select count(*) from creators")
    return {"day": payload.day, "creators_seen": creators, "creator_tx": refused}


ROLLUP = JobDefinition("t_rollup", RollupPayload, rollup, scope="system", key=lambda p: f"rollup:{p.day}")


async def test_a_system_job_has_no_creator_is_invisible_to_creators_and_runs_as_the_system_role(
    db: Database, owner: asyncpg.Connection, arq_redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    registry = JobRegistry([ROLLUP, *jobs_for_tests.CONTRACTS])
    queue = JobQueue(db, arq_redis, registry)
    creator = await make_creator(owner)
    job = await queue.enqueue("t_rollup", {"day": "2026-12-01"}, user_id=None)
    assert job.user_id is None
    assert (await queue.enqueue("t_rollup", {"day": "2026-12-01"})).id == job.id  # its key collapses duplicates
    with pytest.raises(ValueError, match="system job"):
        await queue.enqueue("t_rollup", {"day": "2026-12-02"}, user_id=creator)
    with pytest.raises(ValueError, match="needs the creator"):
        await queue.enqueue("t_echo", {"text": "x"})
    async with db.creator_tx(creator) as conn:  # a creator's view never shows it
        assert await conn.fetchval("select count(*) from media_jobs where id = $1", job.id) == 0
    async with db.system_tx() as conn:  # and the system role may not file a creator's job
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(
                "insert into media_jobs (user_id, job_name, queue, job_key, payload)"
                " values ($1, 't', 'default', 'k', '{}')", creator,
            )
    await drain_queue(settings_for(database_url, redis_url), registry)
    row = await owner.fetchrow("select user_id, status, result from media_jobs where id = $1", job.id)
    assert row["user_id"] is None and row["status"] == "completed"
    assert row["result"]["creators_seen"] >= 1
    assert "system job" in row["result"]["creator_tx"]


BULK_ECHO = JobDefinition("t_fair_echo", jobs_for_tests.EchoPayload, jobs_for_tests.echo, queue="bulk")


async def test_a_fair_queue_serves_creators_round_robin_behind_one_creators_backlog(
    db: Database, owner: asyncpg.Connection, arq_redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    registry = JobRegistry([BULK_ECHO])
    settings = settings_for(database_url, redis_url, queues={"bulk": {"concurrency": 5, "fair": True, "window": 10}})
    queue = JobQueue(db, arq_redis, registry, fair_queues=settings.fair_queues)
    noisy, quiet = await make_creator(owner), await make_creator(owner)
    async with db.creator_tx(noisy) as conn:
        backlog = await queue.record_many(
            conn, "t_fair_echo", [JobRequest({"text": f"a{i}"}) for i in range(300)], user_id=noisy
        )
    assert await queue.push_many([j for j in backlog if isinstance(j, EnqueuedJob)]) == 0  # left to the dispatcher
    quiet_jobs = [await queue.enqueue("t_fair_echo", {"text": f"b{i}"}, user_id=quiet) for i in range(5)]
    assert await arq_redis.zcard(queue_key("bulk")) == 0

    # One top-up: the window holds both creators' oldest jobs, turn by turn.
    assert await dispatch_fair(db, arq_redis, "bulk", window=10, ttl_s=3600) == 10
    pushed = await owner.fetch(
        "select user_id from media_jobs where enqueued_at is not null and user_id = any($1::uuid[])", [noisy, quiet]
    )
    assert sorted(str(r["user_id"]) for r in pushed) == sorted([str(noisy)] * 5 + [str(quiet)] * 5)
    assert await dispatch_fair(db, arq_redis, "bulk", window=10, ttl_s=3600) == 0  # the window is full

    # End to end: a worker drains the queue while the dispatcher keeps topping it up.
    worker = create_worker(
        build_worker_settings("bulk", registry, settings=settings, database_url=database_url, redis_url=redis_url),
        handle_signals=False,
    )
    running = asyncio.create_task(worker.async_run())
    try:
        deadline = time.monotonic() + 60
        pending = "select count(*) from media_jobs where user_id = any($1::uuid[]) and status <> 'completed'"
        while await owner.fetchval(pending, [noisy, quiet]):
            assert time.monotonic() < deadline, "the fair queue did not drain"
            await dispatch_fair(db, arq_redis, "bulk", window=10, ttl_s=3600)
            await asyncio.sleep(0.02)
    finally:
        await stop_worker(worker, running)
    order = await owner.fetch(
        "select user_id from media_jobs where user_id = any($1::uuid[]) order by finished_at, id", [noisy, quiet]
    )
    quiet_done_at = max(i for i, r in enumerate(order) if r["user_id"] == quiet)
    assert quiet_done_at < 20, f"the quiet creator's last job finished {quiet_done_at + 1}th of {len(order)}"
    assert len(order) == 305 and {j.id for j in quiet_jobs} <= {
        r["id"] for r in await owner.fetch("select id from media_jobs where status = 'completed'")
    }


OPENED: list[str] = []


async def _open_named(settings: Settings) -> str:
    OPENED.append("media_tool")
    return "media tool"


async def _open_broken(settings: Settings) -> str:
    raise RuntimeError("MEDIA_BROKEN_URL is not set")


MEDIA_TOOL = ResourceKey("media_tool", _open_named)
BROKEN_TOOL = ResourceKey("broken_tool", _open_broken)


class ToolPayload(JobPayload):
    use: str


async def use_tool(ctx: JobContext, payload: ToolPayload) -> str:
    return ctx.resource({"media_tool": MEDIA_TOOL, "broken_tool": BROKEN_TOOL}[payload.use])


TOOL_JOB = JobDefinition("t_tool", ToolPayload, use_tool, queue="media", resources=(MEDIA_TOOL, BROKEN_TOOL))
UNDECLARED_JOB = JobDefinition("t_undeclared", ToolPayload, use_tool, queue="media")
DEFAULT_TOOL_JOB = JobDefinition("t_default_tool", ToolPayload, use_tool, resources=(MEDIA_TOOL,))


async def test_a_worker_opens_the_resources_its_queues_jobs_declare_and_a_job_gets_only_what_it_declared(
    db: Database, arq_redis: ArqRedis, owner: asyncpg.Connection, database_url: str, redis_url: str
) -> None:
    settings = settings_for(database_url, redis_url)
    registry = JobRegistry([TOOL_JOB, UNDECLARED_JOB, DEFAULT_TOOL_JOB])
    jobs = JobQueue(db, arq_redis, registry)
    creator = await make_creator(owner)
    OPENED.clear()
    await drain_queue(settings, registry, "default")  # its only job declares the tool: opened once
    assert OPENED == ["media_tool"]
    used = await jobs.enqueue("t_tool", {"use": "media_tool"}, user_id=creator)
    broken = await jobs.enqueue("t_tool", {"use": "broken_tool"}, user_id=creator)
    undeclared = await jobs.enqueue("t_undeclared", {"use": "media_tool"}, user_id=creator)
    OPENED.clear()
    await drain_queue(settings, registry, "media")  # two jobs declare it: still opened once
    assert OPENED == ["media_tool"]
    rows = {
        r["id"]: r
        for r in await owner.fetch(
            "select id, status, result, error from media_jobs where id = any($1)", [used.id, broken.id, undeclared.id]
        )
    }
    assert (rows[used.id]["status"], rows[used.id]["result"]) == ("completed", "media tool")
    assert rows[broken.id]["status"] == "failed" and "MEDIA_BROKEN_URL is not set" in rows[broken.id]["error"]
    assert rows[undeclared.id]["status"] == "failed"
    assert "did not declare resource 'media_tool'" in rows[undeclared.id]["error"]


def test_geniehelper_worker_runs_any_configured_queue_and_names_the_queues_for_an_unknown_one(
    project_env: dict[str, str], database_url: str, redis_url: str
) -> None:
    env = dict(project_env, DATABASE_URL=database_url, REDIS_URL=redis_url, LOG_FORMAT="json")
    bulk = spawn([str(BIN / "geniehelper"), "worker", "bulk"], env)  # a queue with no branch of its own
    try:
        bulk.wait_for(r'"event": "process.ready".*"queue": "bulk"|"queue": "bulk".*"event": "process.ready"', 60)
    finally:
        bulk.proc.send_signal(signal.SIGTERM)
        assert bulk.proc.wait(30) == 0, bulk.text()
    unknown = subprocess.run([str(BIN / "geniehelper"), "worker", "nope"], env=env, capture_output=True, text=True,
                             timeout=60)  # fmt: skip
    assert unknown.returncode == 2
    assert unknown.stderr.strip().endswith("unknown queue 'nope'; configured queues (QUEUES): bulk, default, media")
