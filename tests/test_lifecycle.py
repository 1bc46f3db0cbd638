"""The record decides: every way arq can finalise or lose a job ends with the record terminal or
re-driven, and the job's effect happening once. In-process arq workers on the real servers."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest
from arq.connections import ArqRedis
from arq.constants import job_key_prefix, retry_key_prefix
from arq.worker import Worker
from structlog.testing import capture_logs

from geniehelper.db import Database
from geniehelper.embedded import free_port
from geniehelper.runtime import store
from geniehelper.runtime.attempt import UNKNOWN_JOB_MAX_TRIES
from geniehelper.runtime.claiming import create_worker
from geniehelper.runtime.definition import JobDefinition, queue_key
from geniehelper.runtime.delivery import LostDispatchFinder, prune_finished, relay_unpushed
from geniehelper.runtime.outcome import OUTCOME_PREFIX
from geniehelper.runtime.queue import JobQueue
from geniehelper.runtime.registry import JobRegistry
from geniehelper.runtime.transport import arq_job_id
from geniehelper.runtime.worker import build_worker_settings
from geniehelper.settings import Settings
from tests import jobs_for_tests
from tests.conftest import make_creator
from tests.helpers import BIN, base_env, spawn, stop_worker

FUTURE_JOB = JobDefinition(
    "t_future", jobs_for_tests.CountPayload, jobs_for_tests.count, policy=jobs_for_tests.FAST,
    resources=(jobs_for_tests.TEST_REDIS,),
)
ALL_CONTRACTS = [*jobs_for_tests.CONTRACTS, FUTURE_JOB]


@pytest.fixture
def queue(db: Database, arq_redis: ArqRedis) -> JobQueue:
    return JobQueue(db, arq_redis, JobRegistry(ALL_CONTRACTS))


def worker_for(
    database_url: str, redis_url: str, *, contracts: list[JobDefinition[Any]] | None = None,
    tweak: Callable[[type], None] | None = None, **worker_kwargs: Any,
) -> Worker:  # fmt: skip
    settings = Settings(database_url=database_url, redis_url=redis_url, health_interval_s=1,
                        job_heartbeat_interval_s=0.2, job_lease_s=2)  # fmt: skip
    cls = build_worker_settings(
        "default", JobRegistry(contracts or jobs_for_tests.CONTRACTS), role="test_lifecycle",
        settings=settings, database_url=database_url, redis_url=redis_url,
    )  # fmt: skip
    if tweak is not None:
        tweak(cls)
    return create_worker(cls, handle_signals=False, **worker_kwargs)


async def burst(database_url: str, redis_url: str, **kwargs: Any) -> Worker:
    worker = worker_for(database_url, redis_url, burst=True, **kwargs)
    try:
        await worker.main()
    finally:
        await worker.close()
    return worker


@pytest.fixture
async def background_worker(database_url: str, redis_url: str) -> AsyncIterator[Worker]:
    worker = worker_for(database_url, redis_url)
    task = asyncio.create_task(worker.async_run())
    yield worker
    await stop_worker(worker, task)


async def wait_for(check: Callable[[], Any], timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def job_row(owner: asyncpg.Connection, job_id: uuid.UUID) -> asyncpg.Record:
    row = await owner.fetchrow(store.GET, job_id)
    assert row is not None
    return row


async def runs(redis: ArqRedis, counter: str) -> int:
    return int(await redis.get(f"test:{counter}:completed") or 0)


async def test_arq_try_counter_is_no_limit_after_many_infrastructure_deferrals(
    queue: JobQueue, owner: asyncpg.Connection, arq_redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    creator = await make_creator(owner)
    job = await queue.enqueue("t_count", {"counter": "tries"}, user_id=creator)
    # As if PostgreSQL had been down for 500 deliveries (each a deferral: arq counts them as tries).
    await arq_redis.set(retry_key_prefix + arq_job_id(job.id, 1), 500)
    await burst(database_url, redis_url)
    row = await job_row(owner, job.id)
    assert (row["status"], row["attempts"]) == ("completed", 1)
    assert await runs(arq_redis, "tries") == 1


async def test_an_unknown_job_name_is_handed_back_not_finalised_and_runs_once_a_worker_knows_it(
    queue: JobQueue, owner: asyncpg.Connection, arq_redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    creator = await make_creator(owner)
    job = await queue.enqueue("t_future", {"counter": "future"}, user_id=creator)
    # A worker of the previous release (rolling deploy): it does not know t_future.
    with capture_logs() as logs:
        await burst(database_url, redis_url, max_burst_jobs=1)
    assert any(e["event"] == "job.unknown_name_handed_back" and e["job_name"] == "t_future" for e in logs)
    assert await arq_redis.exists(job_key_prefix + arq_job_id(job.id, 1)) == 1  # still queued in Redis
    assert (await job_row(owner, job.id))["status"] == "queued"
    # The handed-back dispatch waits out its delay; the new release's worker then runs it.
    await arq_redis.zadd(queue_key("default"), {arq_job_id(job.id, 1): time.time() * 1000})
    await burst(database_url, redis_url, contracts=ALL_CONTRACTS)
    assert (await job_row(owner, job.id))["status"] == "completed"
    assert await runs(arq_redis, "future") == 1


async def test_a_job_name_no_worker_ever_learns_is_failed_after_its_hand_backs(
    queue: JobQueue, owner: asyncpg.Connection, arq_redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    creator = await make_creator(owner)
    job = await queue.enqueue("t_future", {"counter": "never"}, user_id=creator)
    # As if it had been handed back 29 times already (every 10 s for about five minutes).
    await arq_redis.set(retry_key_prefix + arq_job_id(job.id, 1), UNKNOWN_JOB_MAX_TRIES - 1)
    await burst(database_url, redis_url)
    row = await job_row(owner, job.id)
    assert (row["status"], row["error_kind"]) == ("failed", "unknown_job")
    assert "no worker on this queue knows job 't_future'" in row["error"]


async def test_an_expired_dispatch_is_found_lost_and_re_driven_once(
    queue: JobQueue, db: Database, owner: asyncpg.Connection, arq_redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    creator = await make_creator(owner)
    job = await queue.enqueue("t_count", {"counter": "expired"}, user_id=creator)
    key = job_key_prefix + arq_job_id(job.id, 1)
    await arq_redis.pexpire(key, 1)
    await wait_for(lambda: _gone(arq_redis, key))
    with capture_logs() as logs:
        await burst(database_url, redis_url)  # arq finalises it: "job expired"; our wrapper never runs
    assert not any(e["event"] == "job.started" for e in logs)
    assert (await job_row(owner, job.id))["status"] == "queued"
    assert await LostDispatchFinder(grace_s=0).redrive_lost(db, arq_redis) == 1
    assert await relay_unpushed(db, arq_redis, grace_s=0, ttl_s=3600) == (1, 0)
    await burst(database_url, redis_url)
    row = await job_row(owner, job.id)
    assert (row["status"], row["dispatch_no"], row["attempts"]) == ("completed", 2, 1)
    assert await runs(arq_redis, "expired") == 1


async def _gone(redis: ArqRedis, key: str) -> bool:
    return not await redis.exists(key)


async def test_arq_own_timeout_hands_the_job_back_and_it_is_re_driven(
    queue: JobQueue, db: Database, owner: asyncpg.Connection, arq_redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    creator = await make_creator(owner)
    job = await queue.enqueue("t_count", {"counter": "arq-timeout", "sleep_s": 1.0}, user_id=creator)

    def short_arq_timeout(cls: type) -> None:  # arq's timeout fires long before the job's own (60 s)
        cls.functions = [  # type: ignore[attr-defined]
            dataclasses.replace(f, timeout_s=0.3) if f.name == "t_count" else f
            for f in cls.functions  # type: ignore[attr-defined]
        ]

    await burst(database_url, redis_url, tweak=short_arq_timeout)
    row = await job_row(owner, job.id)
    assert (row["status"], row["error_kind"]) == ("queued", "interrupted")
    assert not await arq_redis.exists(job_key_prefix + arq_job_id(job.id, 1))  # arq finalised its job
    assert await LostDispatchFinder(grace_s=0).redrive_lost(db, arq_redis) == 1
    assert (await relay_unpushed(db, arq_redis, grace_s=0, ttl_s=3600))[0] == 1
    await burst(database_url, redis_url)
    row = await job_row(owner, job.id)
    assert (row["status"], row["attempts"], row["dispatch_no"]) == ("completed", 2, 2)
    assert await runs(arq_redis, "arq-timeout") == 1


async def test_a_postgres_error_at_complete_is_recorded_later_and_the_job_not_run_again(
    queue: JobQueue, owner: asyncpg.Connection, arq_redis: ArqRedis, background_worker: Worker
) -> None:
    await owner.execute("""
        create table if not exists test_fault_complete (job_id uuid primary key);
        grant select on test_fault_complete to public;  -- record writes run as the owner (definer functions)
        create or replace function test_fault_on_complete() returns trigger language plpgsql as $$
        begin
            if new.status = 'completed' and exists (select 1 from test_fault_complete where job_id = new.id) then
                raise exception 'injected fault at COMPLETE';
            end if;
            return new;
        end $$;
        create or replace trigger test_fault_on_complete before update on media_jobs
            for each row execute function test_fault_on_complete();
    """)
    try:
        creator = await make_creator(owner)
        job = await queue.enqueue("t_count", {"counter": "complete-fault", "sleep_s": 0.5}, user_id=creator)
        await owner.execute("insert into test_fault_complete values ($1)", job.id)
        parked = await wait_for(lambda: arq_redis.get(f"{OUTCOME_PREFIX}{job.id}"), timeout_s=30)
        assert json.loads(parked)["kind"] == "complete"
        assert (await job_row(owner, job.id))["status"] == "processing"
        assert await runs(arq_redis, "complete-fault") == 1
        await owner.execute("delete from test_fault_complete")  # PostgreSQL "recovers"
        await wait_for(lambda: _status_is(owner, job.id, "completed"))
        row = await job_row(owner, job.id)
        assert (row["attempts"], row["result"]) == (1, {"runs": 1})
        assert await runs(arq_redis, "complete-fault") == 1  # recorded, not run again
        assert await arq_redis.get(f"{OUTCOME_PREFIX}{job.id}") is None
    finally:
        await owner.execute("drop trigger if exists test_fault_on_complete on media_jobs")


async def _status_is(owner: asyncpg.Connection, job_id: uuid.UUID, status: str) -> bool:
    return bool(await owner.fetchval("select status = $2 from media_jobs where id = $1", job_id, status))


async def test_the_relay_pushes_the_rest_when_one_row_is_old_and_another_cannot_be_pushed(
    queue: JobQueue, db: Database, owner: asyncpg.Connection, arq_redis: ArqRedis
) -> None:
    creator = await make_creator(owner)
    async with db.creator_tx(creator) as conn:
        for i in range(1000):
            await queue.record(conn, "t_echo", {"text": f"n{i}"}, user_id=creator)
    await owner.execute("""
        update media_jobs set run_at = now() - interval '2 days', created_at = now() - interval '2 days'
         where id = (select id from media_jobs where user_id = $1 order by created_at limit 1)
    """, creator)  # fmt: skip
    bad = await owner.fetchval(
        "insert into media_jobs (user_id, job_name, queue, job_key, payload, created_at)"
        " values ($1, 't_echo', 'no_such_queue', 'bad-row', '{}', now() - interval '3 days') returning id",
        creator,
    )
    relayed = await relay_unpushed(db, arq_redis, grace_s=0, ttl_s=3600, queues={"default"}, batch=2000)
    assert relayed == (1000, 1)
    assert await arq_redis.zcard(queue_key("default")) == 1000
    row = await job_row(owner, bad)
    assert row["enqueued_at"] is None and "no_such_queue" in row["dispatch_error"]
    assert await owner.fetchval(
        "select count(*) from media_jobs where user_id = $1 and enqueued_at is not null", creator
    ) == 1000  # fmt: skip
    await owner.execute("delete from media_jobs where id = $1", bad)


async def test_enqueue_with_redis_down_returns_the_record_and_the_job_runs_once_later(
    db: Database, owner: asyncpg.Connection, arq_redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    dead_redis = ArqRedis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1)
    down = JobQueue(db, dead_redis, JobRegistry(ALL_CONTRACTS))
    creator = await make_creator(owner)
    with capture_logs() as logs:
        job = await down.enqueue("t_count", {"counter": "redis-down"}, user_id=creator, key="k-redis-down")
    await dead_redis.aclose()
    assert any(e["event"] == "job.push_deferred" for e in logs)
    assert (await job_row(owner, job.id))["enqueued_at"] is None
    # The caller retries (it did not see an error, but say it does): the same record, no second job.
    up = JobQueue(db, arq_redis, JobRegistry(ALL_CONTRACTS))
    again = await up.enqueue("t_count", {"counter": "redis-down"}, user_id=creator, key="k-redis-down")
    assert again.id == job.id and again.duplicate
    assert (await relay_unpushed(db, arq_redis, grace_s=0, ttl_s=3600))[0] == 0  # already pushed by the retry
    await burst(database_url, redis_url)
    assert (await job_row(owner, job.id))["status"] == "completed"
    assert await runs(arq_redis, "redis-down") == 1


async def test_malformed_envelopes_are_named_and_the_worker_goes_on(
    queue: JobQueue, owner: asyncpg.Connection, arq_redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    creator = await make_creator(owner)
    victim = await queue.enqueue("t_echo", {"text": "x"}, user_id=creator)
    key = job_key_prefix + arq_job_id(victim.id, 1)
    envelope = json.loads(await arq_redis.get(key))
    await arq_redis.set(key, json.dumps({**envelope, "a": 42}))  # args a number
    for job_id, raw in (("bad-name", {"t": 1, "f": ["t_echo"], "a": [], "k": {}, "et": 0}), ("not-json", "{oops")):
        await arq_redis.set(job_key_prefix + job_id, raw if isinstance(raw, str) else json.dumps(raw))
        await arq_redis.zadd(queue_key("default"), {job_id: time.time() * 1000})
    stranger = uuid.uuid4()
    await arq_redis.enqueue_job(
        "t_echo", _job_id="no-creator", _queue_name=queue_key("default"),
        user_id=str(stranger), payload=json.dumps({"text": "hi"}),
    )  # fmt: skip
    good = await queue.enqueue("t_echo", {"text": "still here"}, user_id=creator)
    with capture_logs() as logs:
        await burst(database_url, redis_url)
    reasons = {e["reason"] for e in logs if e["event"] == "job.rejected"}
    assert "envelope.a: must be a list, got int" in reasons
    assert "envelope.f: must be a string, got list" in reasons
    assert any(r.startswith("envelope: not JSON") for r in reasons)
    assert f"user_id: no creator {stranger}" in reasons
    row = await job_row(owner, victim.id)
    assert (row["status"], row["error_kind"], row["error"]) == (
        "failed", "invalid_envelope", "envelope.a: must be a list, got int"
    )  # fmt: skip
    assert (await job_row(owner, good.id))["status"] == "completed"


async def test_retention_prunes_only_old_finished_records_as_the_system_role(
    queue: JobQueue, db: Database, owner: asyncpg.Connection
) -> None:
    creator = await make_creator(owner)
    ids = {}
    for name, status, age_days in (("old_done", "completed", 40), ("old_failed", "failed", 40),
                                   ("new_done", "completed", 1), ("old_queued", "queued", 40)):  # fmt: skip
        ids[name] = await owner.fetchval(
            "insert into media_jobs (user_id, job_name, queue, job_key, payload, status, finished_at)"
            " values ($1, 't_echo', 'default', $2, '{}', $3,"
            "         case when $3 = 'queued' then null else now() - make_interval(days => $4) end) returning id",
            creator, name, status, age_days,
        )  # fmt: skip
    assert await prune_finished(db, older_than_s=30 * 86_400, batch=1) >= 2  # batches of one: several rounds
    left = {r["job_key"] for r in await owner.fetch("select job_key from media_jobs where user_id = $1", creator)}
    assert left == {"new_done", "old_queued"}
    async with db.system_tx() as conn:  # the system role cannot delete an active record, even by id
        assert await conn.execute("delete from media_jobs where id = $1", ids["old_queued"]) == "DELETE 0"


@pytest.mark.parametrize("down", ["redis", "postgres"])
def test_a_worker_started_while_a_server_is_down_waits_for_it_and_stops_on_sigterm(
    down: str, database_url: str, redis_url: str
) -> None:
    dead = f"127.0.0.1:{free_port()}"
    env = base_env(
        DATABASE_URL=f"postgresql://postgres@{dead}/x" if down == "postgres" else database_url,
        REDIS_URL=f"redis://{dead}/0" if down == "redis" else redis_url,
    )
    event = "worker.redis_unavailable" if down == "redis" else "worker.database_unavailable"
    worker = spawn([str(BIN / "geniehelper"), "worker", "default"], env)
    try:
        worker.wait_for(rf'"event": "{event}"', timeout_s=30, count=2)
        assert worker.proc.poll() is None  # still waiting, not exited
        worker.proc.send_signal(signal.SIGTERM)
        assert worker.proc.wait(30) == 0, worker.text()
    finally:
        if worker.proc.poll() is None:
            worker.proc.kill()
