"""The runtime's batch writes on stale statistics: ours (migration 0033: joined to media_jobs without
a nested loop) beside the functions as migrations 0015 and 0017 defined them, in the same run.

    python -m bench plans [--sizes 50 2500 10000] [--data-dir DIR]

Set-up: media_jobs analyzed while it holds 100 records (autovacuum off for it), then the largest
size's records inserted: the statistics now say the table is small, as they do for a while on a
young deployment or after a burst. Each row marks N queued records enqueued or finishes N processing
records, in a transaction rolled back afterwards (every row starts from the same table), three times:
the median is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path
from typing import Any

import asyncpg

from bench.common import fmt, fresh_database, make_creator, print_header, print_table, servers, write_results
from geniehelper.db import connect_owner

NAME = "plans"
ROUNDS = 3

# The former definitions (migrations 0015 and 0017), under other names.
FORMER = [
    """
create function bench_sql_mark_enqueued(p_ids uuid[], p_dispatch_nos integer[]) returns void
language sql as $$
update media_jobs j set enqueued_at = now(), dispatch_error = null
  from unnest(p_ids, p_dispatch_nos) as t(id, dispatch_no)
 where j.id = any(p_ids) and j.id = t.id and j.dispatch_no = t.dispatch_no and j.enqueued_at is null
$$""",
    """
create function bench_sql_finish_attempts(
    p_ids uuid[], p_user_ids uuid[], p_attempts integer[], p_statuses text[], p_results jsonb[], p_errors text[],
    p_error_kinds text[], p_delays_s float8[]
) returns table (id uuid, attempts integer)
language sql as $$
update media_jobs j
   set status = t.status,
       result = case when t.status = 'completed' then t.result else j.result end,
       progress = case when t.status = 'completed' then 100 else j.progress end,
       error = t.error, error_kind = t.error_kind,
       run_at = case when t.status = 'queued' then now() + make_interval(secs => t.delay_s) else j.run_at end,
       finished_at = case when t.status = 'queued' then j.finished_at else now() end,
       history = case when t.status = 'completed' then j.history
                      else j.history || job_history_entry(case when t.status = 'queued' then 'retry' else 'failed' end,
                                                          j.attempts, j.worker_id, t.error_kind, t.error) end,
       lease_expires_at = null, updated_at = now()
  from unnest(p_ids, p_user_ids, p_attempts, p_statuses, p_results, p_errors, p_error_kinds, p_delays_s)
       as t(id, user_id, attempt, status, result, error, error_kind, delay_s)
 where j.id = any(p_ids) and j.id = t.id and j.user_id is not distinct from t.user_id and j.attempts = t.attempt
   and j.status = 'processing' and t.status in ('completed', 'failed', 'queued')
returning j.id, j.attempts
$$""",
]

FILL = """
insert into media_jobs (user_id, job_name, queue, job_key, payload, status, attempts, started_at, worker_id,
                        lease_expires_at)
select $1, 'bench_job', 'default', $2 || n::text, '{}', $3, $4, now(), 'bench:1', now() + interval '1 hour'
  from generate_series(1, $5::int) n
returning id
"""


async def _timed(conn: asyncpg.Connection, sql: str, *args: Any) -> float:
    seconds = []
    for _ in range(ROUNDS):
        tx = conn.transaction()
        await tx.start()
        started = time.perf_counter()
        await conn.execute(sql, *args)
        seconds.append(time.perf_counter() - started)
        await tx.rollback()
    return statistics.median(seconds)


async def run(args: argparse.Namespace) -> int:
    sizes = sorted(args.sizes)
    largest = sizes[-1]
    with servers(args.data_dir) as srv:
        print_header("batch writes on stale statistics: ours vs the former functions", srv, {
            "sizes": ", ".join(f"{n:,}" for n in sizes), "rounds": f"{ROUNDS} per cell (median), each rolled back",
        })  # fmt: skip
        async with fresh_database(srv, NAME) as (_url, owner_url):
            owner = await connect_owner(owner_url)
            try:
                for sql in FORMER:
                    await owner.execute(sql)
                await owner.execute("alter table media_jobs set (autovacuum_enabled = false)")
                user_id = await make_creator(owner, tier="pro")
                await owner.fetch(FILL, user_id, "early-", "completed", 1, 100)
                await owner.execute("analyze media_jobs")
                queued = [r["id"] for r in await owner.fetch(FILL, user_id, "queued-", "queued", 0, largest)]
                processing = [r["id"] for r in await owner.fetch(FILL, user_id, "busy-", "processing", 1, largest)]
                rows: list[list[str]] = []
                figures: dict[str, Any] = {}
                for n in sizes:
                    ids, busy = queued[:n], processing[:n]
                    mark = (ids, [1] * n)
                    finish = (busy, [user_id] * n, [1] * n, ["completed"] * n, [{}] * n, [None] * n, [None] * n,
                              [0.0] * n)  # fmt: skip
                    cells = {
                        "mark_ours": await _timed(owner, "select runtime_mark_enqueued($1, $2)", *mark),
                        "mark_former": await _timed(owner, "select bench_sql_mark_enqueued($1, $2)", *mark),
                        "finish_ours": await _timed(
                            owner, "select count(*) from runtime_finish_attempts($1, $2, $3, $4, $5, $6, $7, $8)",
                            *finish,
                        ),
                        "finish_former": await _timed(
                            owner, "select count(*) from bench_sql_finish_attempts($1, $2, $3, $4, $5, $6, $7, $8)",
                            *finish,
                        ),
                    }
                    figures[str(n)] = cells
                    for what in ("mark", "finish"):
                        ours, former = cells[f"{what}_ours"], cells[f"{what}_former"]
                        rows.append([f"{what} {n:,} records", fmt(ours * 1000), fmt(former * 1000),
                                     f"{former / ours:.1f}x"])  # fmt: skip
            finally:
                await owner.close()
    print()
    print_table(["statement", "ours ms", "former ms", "former / ours"], rows)
    print(f"figures: {write_results(NAME, {'sizes': sizes, 'seconds': figures})}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench plans", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 2500, 10000], help="records per batch")
    parser.add_argument("--data-dir", type=Path, default=None, help="embedded stack folder (default .data/bench)")
    return asyncio.run(run(parser.parse_args(argv)))
