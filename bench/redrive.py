"""How long after a worker is SIGKILLed its jobs start again: ours (lease + job_monitor) beside bare
arq (its in-progress key expiring), measured in the same run on the same Redis.

    python -m bench redrive [--jobs 20] [--arq-job-timeout 20] [--data-dir DIR]

Each side: worker A takes N jobs that hang on their first attempt, a second worker B is started,
A is SIGKILLed, and each job's second start is timed from the kill. Ours runs the deployed defaults
(JOB_LEASE_S 20, heartbeats every 5 s, job_monitor every 5 s, outbox_relay every 5 s). arq re-runs a
job once its in-progress key expires, `job_timeout + 10 s` after the start (310 s with arq's default
300 s job timeout); it runs here with `--arq-job-timeout` (default 20, our lease) so the two wait
for the same thing. Printed: p50 / p99 / max seconds from the kill to the second start.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from arq import func
from arq.connections import RedisSettings, create_pool
from arq.worker import Worker

from bench.common import ROOT, fmt, fresh_database, percentiles, print_header, print_table, servers, write_results
from geniehelper.db import Database, connect_owner
from geniehelper.runtime.queue import JobQueue
from geniehelper.runtime.registry import discover
from geniehelper.runtime.transport import create_arq_redis

NAME = "redrive"
BARE_QUEUE = "bench:redrive:bare"
RESTARTS_KEY = "bench:redrive:restarts"  # bare arq: job id -> unix time of its second start


async def bare_hang_first(ctx: dict[str, Any], n: int) -> int:
    if ctx["job_try"] == 1:
        await asyncio.sleep(3_600)
    await ctx["redis"].hsetnx(RESTARTS_KEY, ctx["job_id"], time.time())
    return n


def bare_worker_main(redis_url: str, job_timeout_s: float) -> None:
    """`python -m bench.redrive --bare-worker REDIS_URL TIMEOUT`: one plain arq worker process."""
    worker = Worker(
        functions=[func(bare_hang_first, name="hang")], queue_name=BARE_QUEUE,
        redis_settings=RedisSettings.from_dsn(redis_url), max_jobs=100, job_timeout=job_timeout_s, poll_delay=0.1,
    )  # fmt: skip
    worker.run()


def spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def wait_until(check: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise SystemExit(f"bench redrive: timed out waiting for {what}")


async def ours(database_url: str, owner_url: str, redis_url: str, jobs: int) -> list[float]:
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url, "PYTHONPATH": str(ROOT),
           "JOB_PACKAGES": json.dumps(["bench.kill_jobs"]), "LOG_LEVEL": "WARNING", "ALERT_EXPECTED_ROLES": "[]",
           "QUEUES": json.dumps({"default": {"concurrency": max(10, jobs)}})}  # fmt: skip
    geniehelper = str(Path(sys.executable).parent / "geniehelper")
    scheduler = spawn([geniehelper, "scheduler", "outbox_relay", "job_monitor"], env)
    a = spawn([geniehelper, "worker", "default"], env)
    b: subprocess.Popen[bytes] | None = None
    owner = await connect_owner(owner_url)
    db = await Database.open(database_url, min_size=1, max_size=2)
    redis = await create_arq_redis(redis_url)
    try:
        creator = await owner.fetchval("insert into creators (email, tier) values ('redrive@bench.test', 'pro')"
                                       " returning id")  # fmt: skip
        queue = JobQueue(db, redis, discover(["bench.kill_jobs"]))
        ids = [(await queue.enqueue("bench_hang", {"n": n}, user_id=creator)).id for n in range(jobs)]

        async def all_running() -> bool:
            return bool(await owner.fetchval(
                "select count(*) = $2 from media_jobs where id = any($1) and status = 'processing'", ids, jobs
            ))  # fmt: skip

        await wait_until(all_running, 120, "worker A to start every job")
        b = spawn([geniehelper, "worker", "default"], env)
        await asyncio.sleep(3)  # B up and polling before the kill (its start-up is not what is measured)
        os.kill(a.pid, signal.SIGKILL)
        killed_at = time.time()

        async def all_restarted() -> bool:
            return bool(await owner.fetchval(
                "select count(*) = $2 from media_jobs where id = any($1) and attempts >= 2", ids, jobs
            ))  # fmt: skip

        await wait_until(all_restarted, 180, "every job to start again")
        rows = await owner.fetch("select started_at from media_jobs where id = any($1)", ids)
        return [row["started_at"].timestamp() - killed_at for row in rows]
    finally:
        for process in (a, b, scheduler):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in (a, b, scheduler):
            if process is not None:
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
        await redis.aclose()
        await db.close()
        await owner.close()


async def bare(redis_url: str, jobs: int, job_timeout_s: float) -> list[float]:
    args = [sys.executable, "-m", "bench.redrive", "--bare-worker", redis_url, str(job_timeout_s)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    redis = await create_pool(RedisSettings.from_dsn(redis_url), default_queue_name=BARE_QUEUE)  # arq's own format
    a = spawn(args, env)
    b: subprocess.Popen[bytes] | None = None
    try:
        await redis.delete(RESTARTS_KEY)
        for n in range(jobs):
            await redis.enqueue_job("hang", n, _job_id=f"bare-{n}", _queue_name=BARE_QUEUE)

        async def all_running() -> bool:
            return len([k async for k in redis.scan_iter(match="arq:in-progress:bare-*")]) == jobs

        await wait_until(all_running, 120, "arq worker A to start every job")
        b = spawn(args, env)
        await asyncio.sleep(3)
        os.kill(a.pid, signal.SIGKILL)
        killed_at = time.time()

        async def all_restarted() -> bool:
            return int(await redis.hlen(RESTARTS_KEY)) == jobs

        await wait_until(all_restarted, job_timeout_s + 120, "arq to start every job again")
        restarts = await redis.hgetall(RESTARTS_KEY)
        return [float(at) - killed_at for at in restarts.values()]
    finally:
        for process in (a, b):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in (a, b):
            if process is not None:
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
        await redis.aclose()


async def run(args: argparse.Namespace) -> int:
    with servers(args.data_dir) as srv:
        print_header("re-run after SIGKILL", srv, {
            "jobs": f"{args.jobs} hanging on one worker, which is SIGKILLed",
            "ours": "deployed defaults: JOB_LEASE_S 20, heartbeat 5 s, job_monitor 5 s, outbox_relay 5 s",
            "bare arq": f"job_timeout {args.arq_job_timeout:g} s (in-progress key {args.arq_job_timeout + 10:g} s); "
                        "with arq's default 300 s it is 310 s",
        })  # fmt: skip
        if not srv.owned:
            raise SystemExit("bench redrive: needs servers it starts itself (it kills processes and flushes Redis)")
        async with fresh_database(srv, NAME) as (database_url, owner_url):
            redis = await create_arq_redis(srv.redis_url)
            await redis.flushdb()
            await redis.aclose()
            ours_s = await ours(database_url, owner_url, srv.redis_url, args.jobs)
        bare_s = await bare(srv.redis_url, args.jobs, args.arq_job_timeout)
        rows, results = [], {}
        for label, values in (("ours", ours_s), (f"bare arq (job_timeout {args.arq_job_timeout:g} s)", bare_s)):
            p = percentiles(values)
            results[label] = p
            rows.append([label, fmt(p["p50"]), fmt(p["p99"]), fmt(p["max"]), str(p["n"])])
        print_table(["side", "p50 s", "p99 s", "max s", "jobs"], rows)
        print(f"results: {write_results(NAME, {'jobs': args.jobs, **results})}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench redrive", description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--arq-job-timeout", type=float, default=20.0)
    parser.add_argument("--data-dir", type=Path, default=None)
    return asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--bare-worker":
        bare_worker_main(sys.argv[2], float(sys.argv[3]))
    else:
        raise SystemExit(main(sys.argv[1:]))
