"""job_monitor with real processes: a SIGKILLed worker's job re-run within lease + interval, and
every job run exactly once after Redis loses everything (FLUSHALL) mid-burst.

Two `geniehelper worker default` and one `geniehelper scheduler outbox_relay job_monitor` on the
module's database, with short leases and intervals; the jobs record each run in PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest
from arq.connections import ArqRedis

from geniehelper.db import Database
from geniehelper.runtime.queue import JobQueue
from geniehelper.runtime.registry import discover
from tests.conftest import make_creator
from tests.helpers import BIN, ProcessOutput, spawn

ROOT = Path(__file__).resolve().parent.parent
LEASE_S = 3.0
MONITOR_INTERVAL_S = 1.0
REGISTRY = discover(["tests.process_jobs"])


async def until(check: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> float:
    """Wait for `check`; returns how long it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if await check():
            return time.monotonic() - started
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


@pytest.fixture
async def runs_table(owner: asyncpg.Connection) -> AsyncIterator[None]:
    await owner.execute("""
        create table if not exists test_runs (job_id uuid not null, tag text not null, attempt int not null,
                                              at timestamptz not null default now());
        truncate test_runs;
        grant select, insert on test_runs to geniehelper_app;
    """)
    yield


@pytest.fixture
async def processes(
    project_env: dict[str, str], database_url: str, redis_url: str, runs_table: None
) -> AsyncIterator[list[ProcessOutput]]:
    env = dict(
        project_env, DATABASE_URL=database_url, REDIS_URL=redis_url, PYTHONPATH=str(ROOT), LOG_FORMAT="json",
        JOB_PACKAGES=json.dumps(["tests.process_jobs"]), QUEUES=json.dumps({"default": {"concurrency": 25}}),
        JOB_LEASE_S=str(LEASE_S), JOB_HEARTBEAT_INTERVAL_S="0.5", JOB_MONITOR_INTERVAL_S=str(MONITOR_INTERVAL_S),
        OUTBOX_RELAY_INTERVAL_S="0.5", OUTBOX_RELAY_GRACE_S="1", SCHEDULER_JITTER_S="0", HEALTH_INTERVAL_S="1",
        WORKER_SHUTDOWN_GRACE_S="1", ALERT_EXPECTED_ROLES="[]",
    )  # fmt: skip
    started = [
        spawn([str(BIN / "geniehelper"), "worker", "default"], env),
        spawn([str(BIN / "geniehelper"), "worker", "default"], env),
        spawn([str(BIN / "geniehelper"), "scheduler", "outbox_relay", "job_monitor"], env),
    ]
    try:
        for process in started:
            await asyncio.to_thread(process.wait_for, r'"event": "process.ready"', 60)
        yield started
    finally:
        for process in started:
            if process.proc.poll() is None:
                process.proc.send_signal(signal.SIGTERM)
        for process in started:
            try:
                process.proc.wait(20)
            except Exception:
                process.proc.kill()


async def test_a_sigkilled_workers_job_runs_again_within_lease_and_one_interval(
    db: Database, owner: asyncpg.Connection, arq_redis: ArqRedis, processes: list[ProcessOutput]
) -> None:
    queue = JobQueue(db, arq_redis, REGISTRY)
    creator = await make_creator(owner)
    job = await queue.enqueue("t_record_run", {"tag": "killed", "sleep_s": 2.0}, user_id=creator)

    async def started() -> bool:
        return bool(await owner.fetchval("select status = 'processing' from media_jobs where id = $1", job.id))

    await until(started, 30, "the job to start")
    worker_id = await owner.fetchval("select worker_id from media_jobs where id = $1", job.id)
    (victim,) = [p for p in processes[:2] if worker_id == f"{socket.gethostname()}:{p.proc.pid}"]
    os.kill(victim.proc.pid, signal.SIGKILL)
    killed_at = time.monotonic()

    async def started_again() -> bool:
        return bool(await owner.fetchval("select attempts = 2 from media_jobs where id = $1", job.id))

    await until(started_again, 30, "the job to start again on the other worker")
    rerun_after_s = time.monotonic() - killed_at
    # The lease runs out, job_monitor re-drives it on its next tick, outbox_relay pushes it (0.5 s).
    assert rerun_after_s <= LEASE_S + MONITOR_INTERVAL_S + 0.5 + 2.0, rerun_after_s

    async def completed() -> bool:
        return bool(await owner.fetchval("select status = 'completed' from media_jobs where id = $1", job.id))

    await until(completed, 30, "the re-run to complete")
    runs = await owner.fetch("select attempt from test_runs where job_id = $1", job.id)
    assert [r["attempt"] for r in runs] == [2]  # the killed attempt never got to record its run
    history = await owner.fetchval("select history from media_jobs where id = $1", job.id)
    assert [(e["event"], e["worker"]) for e in history] == [("lease_expired", worker_id)]


async def test_after_redis_loses_everything_every_recorded_job_runs_once(
    db: Database, owner: asyncpg.Connection, arq_redis: ArqRedis, processes: list[ProcessOutput]
) -> None:
    queue = JobQueue(db, arq_redis, REGISTRY)
    creator = await make_creator(owner, tier="pro")
    jobs = [await queue.enqueue("t_record_run", {"tag": f"n{i}", "sleep_s": 1.5}, user_id=creator) for i in range(550)]
    ids = [j.id for j in jobs]

    async def fifty_running() -> bool:
        return bool(await owner.fetchval(
            "select count(*) >= 50 from media_jobs where id = any($1) and status = 'processing'", ids
        ))  # fmt: skip

    await until(fifty_running, 60, "50 jobs running at once")
    await arq_redis.flushall()  # a restart without persistence, a failover to an empty replica, ...
    flushed_with = await owner.fetchrow(
        "select count(*) filter (where status = 'queued') as queued,"
        "       count(*) filter (where status = 'processing') as running from media_jobs where id = any($1)", ids,
    )  # fmt: skip
    assert flushed_with is not None and flushed_with["queued"] >= 400 and flushed_with["running"] >= 1

    async def all_completed() -> bool:
        return bool(await owner.fetchval(
            "select count(*) = 550 from media_jobs where id = any($1) and status = 'completed'", ids
        ))  # fmt: skip

    await until(all_completed, 180, "all 550 jobs to complete")
    runs = await owner.fetch("select job_id, count(*) as n from test_runs where job_id = any($1) group by job_id", ids)
    assert len(runs) == 550 and {r["n"] for r in runs} == {1}  # every job ran, none twice
    lost = await owner.fetchval(
        "select count(*) from media_jobs where id = any($1) and history @> '[{\"event\": \"dispatch_lost\"}]'", ids
    )
    assert lost >= flushed_with["queued"]  # found missing from Redis and re-driven by job_monitor
