"""job_monitor's tick cost: an empty database (the baseline, same run) against 1,000,000 finished and
10,000 active job records.

    python -m bench monitor [--finished N] [--active N] [--ticks N] [--data-dir DIR]

The large database: 99 % of the finished records completed over the last 30 days, 1 % failed in the
last day (the dead-jobs rule reads those); half the active ones processing with fresh leases, half
queued and due later. A tick is everything job_monitor does: re-drive expired leases, compare a
batch of pushed records with Redis, evaluate every alert rule, reconcile the incidents, deliver
notifications (no webhook here). Printed: ms per tick, p50 / p99 / max.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

from bench.common import (
    fmt,
    fresh_database,
    make_creator,
    percentiles,
    prepare_redis,
    print_header,
    print_table,
    servers,
    write_results,
)  # fmt: skip
from geniehelper.db import Database, connect_owner
from geniehelper.runtime.queue import JobQueue
from geniehelper.runtime.registry import JobRegistry
from geniehelper.runtime.transport import create_arq_redis
from geniehelper.settings import Settings
from schedulers.base import SchedulerContext
from schedulers.job_monitor import JobMonitor

NAME = "monitor"

FILL = """
insert into media_jobs (user_id, job_name, queue, job_key, payload, status, attempts, error, created_at, started_at,
                        finished_at, run_at, enqueued_at, lease_expires_at, worker_id, updated_at)
select $1, 'bench_job', 'default', 'k-' || n::text, '{}', s.status, 1, s.error, s.at, s.at, s.finished_at, s.at,
       s.at, s.lease, s.worker, s.at
  from generate_series(1, $2::int + $3::int) n
  cross join lateral (
      select case when n <= $2 * 0.99 then 'completed'
                  when n <= $2 then 'failed'
                  when n <= $2 + $3 / 2 then 'processing'
                  else 'queued' end as status,
             case when n > $2 * 0.99 and n <= $2 then 'PermanentJobError: bench' end as error,
             case when n <= $2 * 0.99 then now() - (n % 2592000) * interval '1 second'
                  when n <= $2 then now() - (n % 86000) * interval '1 second'
                  else now() end as at,
             case when n <= $2 then now() - (n % 86000) * interval '1 second' end as finished_at,
             case when n > $2 and n <= $2 + $3 / 2 then now() + interval '1 hour' end as lease,
             case when n > $2 and n <= $2 + $3 / 2 then 'bench:1' end as worker
  ) s
"""

# Queued ones are due later and not pushed (the lost-dispatch compare has nothing to re-drive).
DUE_LATER = """
update media_jobs set run_at = now() + interval '1 day', enqueued_at = null where status = 'queued'
"""


async def tick_times(settings: Settings, db: Database, redis: Any, database_url: str, ticks: int) -> list[float]:
    monitor = JobMonitor()
    ctx = SchedulerContext(settings, db, redis, JobQueue(db, redis, JobRegistry([])), database_url)
    await monitor.setup(ctx)
    try:
        await monitor.tick(ctx)  # warm: connections, plans
        times = []
        for _ in range(ticks):
            started = time.perf_counter()
            await monitor.tick(ctx)
            times.append((time.perf_counter() - started) * 1000)
        return times
    finally:
        await monitor.teardown(ctx)


async def measure(database_url: str, owner_url: str, redis_url: str, finished: int, active: int, ticks: int
                  ) -> tuple[list[float], float]:  # fmt: skip
    owner = await connect_owner(owner_url)
    fill_s = 0.0
    try:
        if finished or active:
            creator = await make_creator(owner, tier="pro")
            started = time.perf_counter()
            await owner.execute(FILL, creator, finished, active)
            await owner.execute(DUE_LATER)
            await owner.execute("vacuum analyze media_jobs")
            fill_s = time.perf_counter() - started
    finally:
        await owner.close()
    settings = Settings(database_url=database_url, redis_url=redis_url, alert_expected_roles=[], log_level="WARNING")
    db = await Database.open(database_url, min_size=1, max_size=4)
    redis = await create_arq_redis(redis_url)
    try:
        return await tick_times(settings, db, redis, database_url, ticks), fill_s
    finally:
        await redis.aclose()
        await db.close()


async def run(args: argparse.Namespace) -> int:
    with servers(args.data_dir) as srv:
        print_header("job_monitor tick cost", srv, {
            "large database": f"{args.finished:,} finished + {args.active:,} active job records", "ticks": args.ticks,
        })  # fmt: skip
        redis = await prepare_redis(srv, [])
        await redis.aclose()
        results: dict[str, Any] = {}
        rows = []
        for label, finished, active in (("empty database (baseline)", 0, 0),
                                        ("large database", args.finished, args.active)):  # fmt: skip
            async with fresh_database(srv, NAME) as (database_url, owner_url):
                times, fill_s = await measure(database_url, owner_url, srv.redis_url, finished, active, args.ticks)
            p = percentiles(times)
            results[label] = {**p, "fill_s": round(fill_s, 1)}
            rows.append([label, fmt(p["p50"]), fmt(p["p99"]), fmt(p["max"]), fmt(fill_s)])
        print_table(["tick", "p50 ms", "p99 ms", "max ms", "fill s"], rows)
        path = write_results(NAME, {"ticks": args.ticks, "finished": args.finished, "active": args.active, **results})
        print(f"results: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench monitor", description=__doc__.splitlines()[0])
    parser.add_argument("--finished", type=int, default=1_000_000)
    parser.add_argument("--active", type=int, default=10_000)
    parser.add_argument("--ticks", type=int, default=20)
    parser.add_argument("--data-dir", type=Path, default=None)
    return asyncio.run(run(parser.parse_args(argv)))
