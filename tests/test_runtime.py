"""The job runtime end to end: enqueue API → Redis → real arq worker → job record in PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from arq.connections import ArqRedis

from geniehelper.db import Database
from geniehelper.runtime import store
from geniehelper.runtime.definition import InvalidPayload, UnknownJob, queue_key
from geniehelper.runtime.delivery import relay_unpushed
from geniehelper.runtime.queue import JobQueue
from geniehelper.runtime.quotas import QuotaExceeded
from geniehelper.runtime.record_writer import Finish, RecordWriter, StartRequest
from geniehelper.runtime.registry import JobRegistry
from geniehelper.runtime.transport import create_arq_redis
from geniehelper.settings import Settings
from tests import jobs_for_tests
from tests.conftest import make_creator
from tests.helpers import drain_queue


@pytest.fixture
def queue(db: Database, arq_redis: ArqRedis) -> JobQueue:
    return JobQueue(db, arq_redis, jobs_for_tests.REGISTRY)


def settings_for(database_url: str, redis_url: str) -> Settings:
    return Settings(database_url=database_url, redis_url=redis_url, health_interval_s=1, job_heartbeat_interval_s=0.2)


async def run_burst(database_url: str, redis_url: str, queue: str = "default") -> None:
    settings = settings_for(database_url, redis_url)
    await drain_queue(settings, jobs_for_tests.REGISTRY, queue)


async def record(owner: asyncpg.Connection, job_id: uuid.UUID) -> dict[str, Any]:
    row = await owner.fetchrow(store.GET, job_id)
    assert row is not None
    return dict(row)


async def test_enqueued_job_runs_and_its_record_completes(
    queue: JobQueue, owner: asyncpg.Connection, database_url: str, redis_url: str
) -> None:
    creator = await make_creator(owner)
    job = await queue.enqueue("t_echo", {"text": "hi", "times": 3}, user_id=creator)
    before = await record(owner, job.id)
    assert before["status"] == "queued" and before["enqueued_at"] is not None and before["queue"] == "default"
    await run_burst(database_url, redis_url)
    after = await record(owner, job.id)
    assert after["status"] == "completed"
    assert after["result"] == {"echo": "hihihi"}
    assert after["attempts"] == 1 and after["progress"] == 100
    assert after["started_at"] <= after["finished_at"]


async def test_invalid_payload_is_refused_at_enqueue_with_field_and_reason(
    queue: JobQueue, owner: asyncpg.Connection
) -> None:
    creator = await make_creator(owner)
    with pytest.raises(InvalidPayload) as refused:
        await queue.enqueue("t_echo", {"text": "x" * 101, "times": "3", "extra": 1}, user_id=creator)
    fields = {e.field: e.reason for e in refused.value.errors}
    assert set(fields) == {"text", "times", "extra"}
    assert "at most 100 characters" in fields["text"]
    assert "Extra inputs are not permitted" in fields["extra"]
    with pytest.raises(InvalidPayload, match="over the 65536-byte limit"):
        await queue.enqueue("t_echo", json.dumps({"text": "a" * 70_000}), user_id=creator)
    with pytest.raises(UnknownJob, match="unknown job 'nope'"):
        await queue.enqueue("nope", {}, user_id=creator)
    assert await owner.fetchval("select count(*) from media_jobs where user_id = $1", creator) == 0


async def test_invalid_payload_from_a_foreign_client_fails_that_job_and_the_worker_goes_on(
    queue: JobQueue, arq_redis: ArqRedis, owner: asyncpg.Connection, database_url: str, redis_url: str
) -> None:
    creator = await make_creator(owner)
    # A foreign client writes straight to Redis, in our JSON wire format, with a bad payload.
    await arq_redis.enqueue_job(
        "t_echo", _job_id="foreign-1", _queue_name=queue_key("default"),
        user_id=str(creator), payload=json.dumps({"text": 42}),
    )  # fmt: skip
    await arq_redis.enqueue_job(
        "t_echo", _job_id="foreign-2", _queue_name=queue_key("default"),
        user_id="not-a-uuid", payload="{}",
    )  # fmt: skip
    good = await queue.enqueue("t_echo", {"text": "still here"}, user_id=creator)
    await run_burst(database_url, redis_url)
    rejected = await owner.fetchrow("select * from media_jobs where job_key = 'arq:foreign-1'")
    assert rejected is not None
    assert rejected["status"] == "failed" and rejected["error_kind"] == "invalid_payload"
    assert "text: Input should be a valid string" in rejected["error"]
    assert (await record(owner, good.id))["status"] == "completed"


async def test_a_foreign_client_with_a_valid_payload_gets_a_record_and_a_run(
    arq_redis: ArqRedis, owner: asyncpg.Connection, database_url: str, redis_url: str
) -> None:
    creator = await make_creator(owner)
    await arq_redis.enqueue_job(
        "t_echo", _job_id="foreign-ok", _queue_name=queue_key("default"),
        user_id=str(creator), payload=json.dumps({"text": "from go"}),
    )  # fmt: skip
    await run_burst(database_url, redis_url)
    row = await owner.fetchrow("select * from media_jobs where job_key = 'arq:foreign-ok'")
    assert row is not None and row["status"] == "completed" and row["result"] == {"echo": "from go"}


async def test_a_foreign_client_pays_the_quota_of_a_quota_bound_job_and_is_refused_past_it(
    arq_redis: ArqRedis, owner: asyncpg.Connection, database_url: str, redis_url: str
) -> None:
    creator = await make_creator(owner, tier="starter")  # posts_published: 5 a month
    for i in range(7):
        await arq_redis.enqueue_job(
            "t_quota", _job_id=f"foreign-quota-{i}", _queue_name=queue_key("default"),
            user_id=str(creator), payload=json.dumps({"text": f"n{i}"}),
        )  # fmt: skip
    await run_burst(database_url, redis_url)
    rows = await owner.fetch("select status, error_kind, error from media_jobs where user_id = $1", creator)
    assert sorted(r["status"] for r in rows) == ["completed"] * 5 + ["failed"] * 2
    refused = [r for r in rows if r["status"] == "failed"]
    assert all(r["error_kind"] == "quota_exceeded" and "posts_published" in r["error"] for r in refused)
    used = await owner.fetchval("select used from user_usage_counts where user_id = $1", creator)
    assert used == 5


async def test_records_inserted_in_plain_sql_pay_the_quota_when_they_start(
    db: Database, arq_redis: ArqRedis, owner: asyncpg.Connection, database_url: str, redis_url: str
) -> None:
    creator = await make_creator(owner, tier="starter")  # posts_published: 5 a month
    async with db.creator_tx(creator) as conn:  # service code writing records itself, past enqueue()
        await conn.execute(
            "insert into media_jobs (user_id, job_name, queue, job_key, payload)"
            " select $1, 't_quota', 'default', 'sql-' || n, jsonb_build_object('text', 'n' || n)"
            "   from generate_series(1, 7) n", creator,
        )  # fmt: skip
    pushed, failed = await relay_unpushed(db, arq_redis, grace_s=0.0, ttl_s=60.0)
    assert pushed >= 7 and failed == 0  # (and any other test's records this module left unpushed)
    await run_burst(database_url, redis_url)
    rows = await owner.fetch("select status, error_kind, quota_charged from media_jobs where user_id = $1", creator)
    assert sorted((r["status"], r["error_kind"], r["quota_charged"]) for r in rows) == (
        [("completed", None, "posts_published")] * 5 + [("failed", "quota_exceeded", None)] * 2
    )
    assert await owner.fetchval("select used from user_usage_counts where user_id = $1", creator) == 5


async def test_transient_failures_retry_then_succeed(
    queue: JobQueue, owner: asyncpg.Connection, arq_redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    creator = await make_creator(owner)
    job = await queue.enqueue("t_count", {"counter": "flaky", "fail_first": 2}, user_id=creator)
    await run_burst(database_url, redis_url)
    row = await record(owner, job.id)
    assert row["status"] == "completed" and row["attempts"] == 3 and row["error"] is None
    assert int(await arq_redis.get("test:flaky:completed")) == 1


async def test_retries_exhausted_marks_the_job_failed_with_its_last_error(
    queue: JobQueue, owner: asyncpg.Connection, database_url: str, redis_url: str
) -> None:
    creator = await make_creator(owner)
    job = await queue.enqueue("t_count", {"counter": "doomed", "fail_first": 5}, user_id=creator)
    await run_burst(database_url, redis_url)
    row = await record(owner, job.id)
    assert row["status"] == "failed" and row["attempts"] == 3
    assert row["error"].startswith(
        "retries exhausted after 3 attempts; last error: TransientJobError: planned failure 3"
    )
    assert row["finished_at"] is not None


async def test_permanent_error_fails_at_once(
    queue: JobQueue, owner: asyncpg.Connection, database_url: str, redis_url: str
) -> None:
    creator = await make_creator(owner)
    job = await queue.enqueue("t_permanent", {"counter": "no"}, user_id=creator)
    await run_burst(database_url, redis_url)
    row = await record(owner, job.id)
    assert row["status"] == "failed" and row["attempts"] == 1 and row["error_kind"] == "permanent"
    assert "will not change on retry" in row["error"]


async def test_job_over_its_timeout_is_stopped_and_recorded(
    queue: JobQueue, owner: asyncpg.Connection, arq_redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    creator = await make_creator(owner)
    job = await queue.enqueue("t_slow", {"counter": "slow", "sleep_s": 30}, user_id=creator)
    started = asyncio.get_running_loop().time()
    await run_burst(database_url, redis_url)
    assert asyncio.get_running_loop().time() - started < 20
    row = await record(owner, job.id)
    assert row["status"] == "failed" and row["error_kind"] == "timeout"
    assert "timed out after 0.5s" in row["error"]
    assert await arq_redis.get("test:slow:completed") is None


async def test_same_key_runs_once_while_active_and_again_after_it_finished(
    queue: JobQueue, owner: asyncpg.Connection, arq_redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    creator = await make_creator(owner)
    jobs = await asyncio.gather(
        *[queue.enqueue("t_count", {"counter": "once"}, user_id=creator, key="once-key") for _ in range(10)]
    )
    assert len({j.id for j in jobs}) == 1
    assert sum(not j.duplicate for j in jobs) == 1
    await run_burst(database_url, redis_url)
    assert int(await arq_redis.get("test:once:completed")) == 1
    # Unique while active: the finished job keeps its record, and the key may run again.
    again = await queue.enqueue("t_count", {"counter": "once"}, user_id=creator, key="once-key")
    assert not again.duplicate and again.id != jobs[0].id
    await run_burst(database_url, redis_url)
    assert int(await arq_redis.get("test:once:completed")) == 2
    assert await owner.fetchval("select count(*) from media_jobs where job_key = 'once-key'") == 2


async def test_quota_admits_exactly_the_limit_under_concurrent_enqueues(
    queue: JobQueue, owner: asyncpg.Connection
) -> None:
    creator = await make_creator(owner, tier="starter")  # posts_published: 5 a month
    results = await asyncio.gather(
        *[queue.enqueue("t_quota", {"text": str(i)}, user_id=creator) for i in range(50)], return_exceptions=True
    )
    admitted = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, QuotaExceeded)]
    assert len(admitted) == 5 and len(refused) == 45
    assert refused[0].reason == "limit_reached" and refused[0].limit == 5 and refused[0].resets_at is not None
    assert refused[0].as_dict()["error"] == "tier_limit_reached"
    assert await owner.fetchval("select count(*) from media_jobs where user_id = $1", creator) == 5
    assert await owner.fetchval("select used from user_usage_counts where user_id = $1", creator) == 5


async def test_operation_not_in_tier_is_refused_as_such(
    db: Database, arq_redis: ArqRedis, owner: asyncpg.Connection
) -> None:
    from geniehelper.runtime.definition import JobDefinition

    clip = JobDefinition(
        "t_clip", jobs_for_tests.EchoPayload, jobs_for_tests.echo, quota_operation="ai_clip_operations"
    )
    clip_queue = JobQueue(db, arq_redis, JobRegistry([clip]))
    creator = await make_creator(owner, tier="starter")
    with pytest.raises(QuotaExceeded) as refused:
        await clip_queue.enqueue("t_clip", {"text": "x"}, user_id=creator)
    assert refused.value.reason == "not_in_tier"
    assert "not included in the starter tier" in str(refused.value)


async def test_outbox_rolled_back_job_never_runs_and_unpushed_job_is_relayed(
    queue: JobQueue, db: Database, owner: asyncpg.Connection, arq_redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    creator = await make_creator(owner)
    with pytest.raises(RuntimeError):
        async with db.creator_tx(creator) as conn:
            await queue.record(conn, "t_count", {"counter": "rolled-back"}, user_id=creator)
            raise RuntimeError("the service's own transaction fails")
    # Committed, but the producer "dies" before push():
    async with db.creator_tx(creator) as conn:
        orphan = await queue.record(conn, "t_count", {"counter": "orphan"}, user_id=creator)
    assert await arq_redis.zcard(queue_key("default")) == 0
    assert await relay_unpushed(db, arq_redis, grace_s=0, ttl_s=3600) == (1, 0)
    assert await relay_unpushed(db, arq_redis, grace_s=0, ttl_s=3600) == (0, 0)
    await run_burst(database_url, redis_url)
    assert (await record(owner, orphan.id))["status"] == "completed"
    assert await arq_redis.get("test:rolled-back:attempts") is None
    assert await owner.fetchval("select count(*) from media_jobs where user_id = $1", creator) == 1


async def test_a_fresh_lease_refuses_a_second_start_and_a_superseded_attempt_is_fenced_off(
    queue: JobQueue, db: Database, owner: asyncpg.Connection
) -> None:
    creator = await make_creator(owner)
    job = await queue.enqueue("t_echo", {"text": "x"}, user_id=creator)
    records = RecordWriter(db.records_pool, "worker", lease_s=30.0, heartbeat_interval_s=5.0)

    async def start(dispatch_no: int, user_id: UUID = creator) -> int | None:
        return (await records.start(StartRequest(job.id, user_id, dispatch_no))).attempt

    assert await start(1, user_id=await make_creator(owner)) is None  # another creator's delivery
    first = await start(1)
    assert await start(1) is None  # lease is fresh
    await owner.execute("update media_jobs set lease_expires_at = now() - interval '1 second' where id = $1", job.id)
    assert await start(2) is None  # not its dispatch
    second = await start(1)  # the first worker presumed dead
    assert (first, second) == (1, 2)
    stale, fresh = await asyncio.gather(
        records.finish(Finish(job.id, creator, 1, "completed", {"from": "a"})),
        records.finish(Finish(job.id, creator, 2, "completed", {"from": "b"})),
    )
    assert (stale, fresh) == (False, True)
    assert (await record(owner, job.id))["result"] == {"from": "b"}


async def test_media_jobs_run_only_on_the_media_worker(
    queue: JobQueue, owner: asyncpg.Connection, database_url: str, redis_url: str
) -> None:
    creator = await make_creator(owner)
    job = await queue.enqueue("t_media_echo", {"text": "m"}, user_id=creator)
    await run_burst(database_url, redis_url, queue="default")
    assert (await record(owner, job.id))["status"] == "queued"
    await run_burst(database_url, redis_url, queue="media")
    row = await record(owner, job.id)
    assert row["status"] == "completed" and row["queue"] == "media"


async def test_an_unsafe_queue_server_configuration_is_reported(arq_redis: ArqRedis, tmp_path: Path) -> None:
    from geniehelper.embedded import EmbeddedValkey
    from geniehelper.runtime.transport import config_warnings

    assert [w for w in await config_warnings(arq_redis) if "maxmemory" in w] == []  # the suite's: safe
    # An unsafe configuration on a server of this test's own: the suite never reconfigures a server.
    unsafe = EmbeddedValkey(tmp_path, durable=False)  # appendonly no
    port, _ = unsafe.start()
    try:
        redis = await create_arq_redis(unsafe.url(port))
        try:
            await redis.config_set("maxmemory-policy", "allkeys-lru")
            warnings = await config_warnings(redis)
        finally:
            await redis.aclose()
    finally:
        unsafe.stop()
    assert any("appendonly" in w for w in warnings)
    assert any("allkeys-lru" in w and "evict" in w for w in warnings)


async def test_record_many_admits_up_to_the_quota_and_counts_a_repeated_key_once(
    queue: JobQueue, db: Database, owner: asyncpg.Connection
) -> None:
    from geniehelper.runtime.queue import EnqueuedJob, JobRequest

    creator = await make_creator(owner, tier="starter")  # posts_published: 5 a month
    requests = [JobRequest({"text": str(i)}, key=f"k{i}") for i in range(4)] + [JobRequest({"text": "0"}, key="k0")]
    async with db.creator_tx(creator) as conn:
        first = await queue.record_many(conn, "t_quota", requests, user_id=creator)
    assert [isinstance(o, EnqueuedJob) and o.duplicate for o in first] == [False, False, False, False, True]
    more = [JobRequest({"text": str(i)}, key=f"k{i}") for i in range(4, 8)]
    async with db.creator_tx(creator) as conn:
        second = await queue.record_many(conn, "t_quota", more, user_id=creator)
    assert isinstance(second[0], EnqueuedJob)
    assert all(isinstance(o, QuotaExceeded) and o.reason == "limit_reached" for o in second[1:])
    assert await owner.fetchval("select count(*) from media_jobs where user_id = $1", creator) == 5
    assert await owner.fetchval("select used from user_usage_counts where user_id = $1", creator) == 5


async def test_shell_enqueue_records_the_job_or_names_the_bad_field(
    owner: asyncpg.Connection, database_url: str, redis_url: str, project_env: dict[str, str]
) -> None:
    import subprocess

    from tests.helpers import BIN

    creator = await make_creator(owner)
    env = dict(project_env, DATABASE_URL=database_url)

    def enqueue(payload: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "geniehelper"), "enqueue", "publish_post", "--user", str(creator), "--payload", payload],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    bad = await asyncio.to_thread(enqueue, '{"scheduled_post_id": "x", "revision": 1}')
    assert bad.returncode == 2 and "refused: invalid payload for publish_post: scheduled_post_id:" in bad.stderr
    good = await asyncio.to_thread(enqueue, json.dumps({"scheduled_post_id": str(uuid.uuid4()), "revision": 1}))
    assert good.returncode == 0, good.stderr
    job_id = uuid.UUID(json.loads(good.stdout)["id"])
    row = await record(owner, job_id)
    assert row["status"] == "queued" and row["enqueued_at"] is not None and row["user_id"] == creator
