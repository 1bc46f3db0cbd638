"""Noisy neighbour: one creator's bulk backlog against another creator's few jobs and due posts.

Creator A has 50,000 bulk jobs (10 ms each) waiting; then creator B enqueues 100 bulk jobs and has 20
posts due a few seconds later. Ours: `bulk` is a fair queue, so A's jobs are recorded (`record_many`,
one creator transaction per batch) and the dispatcher (scheduler host, beside post_scheduler) feeds
Redis round-robin across creators within the queue's window; a bulk and a default-queue worker
(publish_post to the sandbox over HTTP) built with `build_worker_settings` run in-process. Baseline,
same run, same Redis: plain FIFO arq, one queue, one `arq.worker.Worker` with ours' total concurrency;
A's `async def job(ctx)` first, then B's 100 and 20 post jobs with `_defer_until` their due time
(publishing to the same sandbox). Both sides: A's backlog is in place before the workers start.

Figures: B's job wait (ours: media_jobs.started_at - created_at; arq: start - enqueue_time), B's post
lateness (ours: publish_attempts.confirmed_at - scheduled_time; arq: after the sandbox answered, minus
the due time), and A's jobs finished from B's arrival to B's last finish. Measuring stops once B is
done, or at the bound (then "not done" with a lower bound); A's backlog need not drain. Exits
non-zero if any of B's jobs or posts is lost or failed (or one of A's failed).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from arq import func
from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import job_key_prefix
from arq.worker import Worker
from pydantic import Field

from bench.common import (
    BENCH_DATA_DIR,
    ROOT,
    Servers,
    Stopwatch,
    bench_settings,
    fmt,
    fresh_database,
    make_creator,
    percentiles,
    prepare_redis,
    print_header,
    print_table,
    quiet_logs,
    servers,
    write_results,
)
from bench.publishing import Env, admin_posts, connected_creators, schedule_posts, wait_until
from bench.runtime_throughput import in_parallel
from geniehelper.db import Database, connect_owner
from geniehelper.platforms import HttpPlatformClient, PostToPublish
from geniehelper.platforms.sandbox import NewAccount, SandboxPlatform, run_sandbox
from geniehelper.runtime.claiming import create_worker
from geniehelper.runtime.context import JobContext
from geniehelper.runtime.definition import JobDefinition, JobPayload, Policy, queue_key
from geniehelper.runtime.queue import JobQueue, JobRequest
from geniehelper.runtime.registry import JobRegistry
from geniehelper.runtime.worker import build_worker_settings
from jobs.publish_post import PUBLISH_POST
from schedulers.dispatcher import Dispatcher
from schedulers.host import SchedulerHost
from schedulers.post_scheduler import PostScheduler

NAME = "fairness"
FIFO_QUEUE = "bench:fifo:queue"
JOB_S = 0.01
A_BATCH = 1000  # A's records per creator transaction
FIFO_PRODUCERS = 32  # concurrent enqueue_job calls for A's backlog on the baseline
TARGETS = {"wait": 2.0, "lateness": 1.0}  # p99 seconds, from the issue


class BulkPayload(JobPayload):
    n: int = Field(ge=0)


async def bulk_job(ctx: JobContext, payload: BulkPayload) -> None:
    await asyncio.sleep(JOB_S)


BULK = JobDefinition("bench_bulk", BulkPayload, bulk_job, queue="bulk", policy=Policy(max_attempts=3))


@dataclass(frozen=True)
class Spec:
    a_jobs: int
    b_jobs: int
    b_posts: int
    lead_s: float
    bound_s: float


@dataclass
class Side:
    """One row of the table: B's figures while A's backlog drains."""

    label: str
    b_waits: list[float]
    b_lateness: list[float]
    b_jobs_pending: int  # not started when measuring stopped
    b_posts_pending: int  # not published when measuring stopped
    measured_s: float  # B's arrival to B's last finish, or to the bound
    b_done: bool
    a_left_at_arrival: int  # A's jobs not finished when B arrived
    a_done_meanwhile: int
    a_enqueue_s: float
    extra: dict[str, Any] = field(default_factory=dict)

    def figures(self, lead_s: float) -> dict[str, dict[str, Any]]:
        # Still pending: known only to have waited at least until measuring stopped.
        return {
            "wait": bounded(self.b_waits, self.b_jobs_pending, self.measured_s),
            "lateness": bounded(self.b_lateness, self.b_posts_pending, self.measured_s - lead_s),
        }


def bounded(values: list[float], pending: int, lower: float) -> dict[str, Any]:
    p = percentiles([*values, *([lower] * pending)])
    return {**p, "done": len(values), "pending": pending, "lower_bound_s": lower if pending else None}


def cell(p: dict[str, Any], key: str) -> str:
    if p["pending"] and p[key] >= p["lower_bound_s"]:
        return f">= {p[key]:,.1f} (not done)"
    return fmt(p[key], 3)


def verdict(p: dict[str, Any], target: float) -> str:
    if p["p99"] is None:
        return "-"
    if p["pending"] and p["p99"] >= p["lower_bound_s"]:
        return f">= {p['p99']:,.1f} s (not done) vs target <= {target:g} s: MISSED"
    return f"{p['p99']:,.3f} s vs target <= {target:g} s: " + ("met" if p["p99"] <= target else "MISSED")


async def stop_worker(worker: Worker, task: asyncio.Task[None], timeout_s: float = 30.0) -> None:
    """Take no more jobs, let the started ones end (as tests/helpers.py does), then stop."""
    worker.allow_pick_jobs = False
    deadline = time.monotonic() + timeout_s
    while any(not t.done() for t in worker.tasks.values()) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await worker.close()


async def clear_queue(redis: ArqRedis, key: str) -> None:
    """Remove what is left in an arq queue (empty at start: everything in it is this run's)."""
    ids = [i.decode() if isinstance(i, bytes) else str(i) for i in await redis.zrange(key, 0, -1)]
    for start in range(0, len(ids), 1000):
        await redis.delete(*(job_key_prefix + i for i in ids[start : start + 1000]))
    await redis.delete(key)


# --- ours -----------------------------------------------------------------------------------------


async def ours(env: Env, redis: ArqRedis, spec: Spec, problems: list[str]) -> Side:
    settings, owner = env.settings, env.owner
    registry = JobRegistry([BULK, PUBLISH_POST])
    queue = JobQueue(env.db, redis, registry, fair_queues=settings.fair_queues)
    a = await make_creator(owner, tier="pro")
    (b,) = await connected_creators(env, 1, prefix="ours_b")
    with Stopwatch() as enqueue:
        for start in range(0, spec.a_jobs, A_BATCH):
            batch = [JobRequest(BulkPayload(n=i)) for i in range(start, min(start + A_BATCH, spec.a_jobs))]
            async with env.db.creator_tx(a) as conn:
                await queue.record_many(conn, BULK.name, batch, user_id=a)
    host = SchedulerHost([Dispatcher(), PostScheduler()], settings, env.database_url, env.redis_url)
    host_task = asyncio.create_task(host.run())
    workers = [
        create_worker(build_worker_settings(
            name, registry, role=f"bench_{name}_worker", settings=settings, database_url=env.database_url,
            redis_url=env.redis_url,
        ), handle_signals=False)
        for name in ("bulk", "default")
    ]  # fmt: skip
    tasks = [asyncio.create_task(w.main()) for w in workers]
    try:

        async def ready() -> bool:
            return all(r.ticks >= 1 for r in host.runners) and all("resources" in w.ctx for w in workers)

        if not await wait_until(ready, 30):
            raise SystemExit("bench: schedulers or workers did not start within 30 s")
        ticks_before, ticks_from = host.runners[0].ticks, time.monotonic()
        async with env.db.creator_tx(b.user_id) as conn:  # B's created_at is this transaction's now()
            arrived: datetime = await conn.fetchval("select now()")
            requests = [JobRequest(BulkPayload(n=i)) for i in range(spec.b_jobs)]
            await queue.record_many(conn, BULK.name, requests, user_id=b.user_id)
        await schedule_posts(env.db, [b], spec.b_posts, arrived + timedelta(seconds=spec.lead_s), 0.0)

        async def b_settled() -> bool:
            n = await owner.fetchval(
                "select (select count(*) from media_jobs where user_id = $1 and queue = 'bulk' and status in"
                " ('completed', 'failed', 'cancelled')) + (select count(*) from scheduled_posts where user_id = $1"
                " and status in ('posted', 'failed', 'missed'))",
                b.user_id,
            )
            return bool(n >= spec.b_jobs + spec.b_posts)

        b_done = await wait_until(b_settled, spec.lead_s + spec.bound_s, interval_s=0.1)
        stopped: datetime = await owner.fetchval("select now()")
        ticks, ticks_s = host.runners[0].ticks - ticks_before, time.monotonic() - ticks_from
    finally:
        host.stop.set()
        for worker, task in zip(workers, tasks, strict=True):
            await stop_worker(worker, task)
        await host_task
        for name in ("bulk", "default"):
            await clear_queue(redis, queue_key(name))

    jobs = await owner.fetch(
        "select status, attempts, extract(epoch from started_at - created_at)::float8 as wait_s"
        " from media_jobs where user_id = $1 and queue = 'bulk'",
        b.user_id,
    )
    posts = await owner.fetch(
        "select sp.status, extract(epoch from sp.queued_at - sp.scheduled_time)::float8 as dispatch_s,"
        "       extract(epoch from pa.confirmed_at - sp.scheduled_time)::float8 as late_s"
        "  from scheduled_posts sp left join publish_attempts pa"
        "    on pa.user_id = sp.user_id and pa.scheduled_post_id = sp.id and pa.confirmed_at is not null"
        " where sp.user_id = $1",
        b.user_id,
    )
    b_last: datetime | None = await owner.fetchval("select max(finished_at) from media_jobs where user_id = $1",
                                                   b.user_id)  # fmt: skip
    until = b_last if b_done and b_last else stopped
    a_row = await owner.fetchrow(
        "select count(*) filter (where finished_at is null or finished_at > $2)::int as left_at_arrival,"
        "       count(*) filter (where finished_at > $2 and finished_at <= $3)::int as meanwhile,"
        "       count(*) filter (where status = 'completed')::int as completed,"
        "       count(*) filter (where status = 'failed')::int as failed"
        "  from media_jobs where user_id = $1",
        a, arrived, until,
    )  # fmt: skip
    assert a_row is not None
    statuses, post_statuses = Counter(r["status"] for r in jobs), Counter(r["status"] for r in posts)
    keys = [p["idempotency_key"] for p in await admin_posts(env, b.account_id)]
    if statuses["completed"] != spec.b_jobs or len(jobs) != spec.b_jobs:
        problems.append(f"ours: B's {spec.b_jobs} bulk jobs: {len(jobs)} records, statuses {dict(statuses)}")
    if post_statuses["posted"] != spec.b_posts:
        problems.append(f"ours: B's {spec.b_posts} posts: statuses {dict(post_statuses)}")
    if len(keys) != len(set(keys)) or len(keys) != post_statuses["posted"]:
        problems.append(f"ours: the sandbox holds {len(keys)} posts ({len(set(keys))} keys) for B")
    if a_row["failed"]:
        problems.append(f"ours: {a_row['failed']} of A's jobs failed")
    return Side(
        "ours (fair bulk queue)", [r["wait_s"] for r in jobs if r["wait_s"] is not None],
        [r["late_s"] for r in posts if r["late_s"] is not None], sum(1 for r in jobs if r["wait_s"] is None),
        sum(1 for r in posts if r["late_s"] is None), (until - arrived).total_seconds(), b_done,
        a_row["left_at_arrival"], a_row["meanwhile"], enqueue.seconds,
        {"b_job_statuses": dict(statuses), "b_post_statuses": dict(post_statuses), "b_posts_on_sandbox": len(keys),
         "b_jobs_run_more_than_once": sum(1 for r in jobs if r["attempts"] > 1),
         "b_post_dispatch_s": percentiles([r["dispatch_s"] for r in posts if r["dispatch_s"] is not None]),
         "a_completed_at_stop": a_row["completed"], "dispatcher_ticks": ticks, "dispatcher_ticks_s": ticks_s},
    )  # fmt: skip


# --- baseline: plain FIFO arq ---------------------------------------------------------------------


@dataclass
class FifoState:
    b_total: int
    a_started: int = 0
    a_done: int = 0
    b_finished: int = 0
    b_waits: list[float] = field(default_factory=list)
    b_lateness: list[float] = field(default_factory=list)
    a_done_at_b_done: int = 0
    b_done_at: float | None = None

    def b_finished_one(self) -> None:
        self.b_finished += 1
        if self.b_finished == self.b_total:
            self.a_done_at_b_done, self.b_done_at = self.a_done, time.time()


async def fifo_job(ctx: dict[str, Any], creator: str) -> None:
    state: FifoState = ctx["fifo"]
    if creator == "b":
        state.b_waits.append(time.time() - ctx["enqueue_time"].timestamp())
    else:
        state.a_started += 1
    await asyncio.sleep(JOB_S)
    if creator == "b":
        state.b_finished_one()
    else:
        state.a_done += 1


async def fifo_post(ctx: dict[str, Any], n: int, due: float) -> None:
    state: FifoState = ctx["fifo"]
    client: HttpPlatformClient = ctx["client"]
    await client.publish_post(PostToPublish(text=f"fifo post {n} #bench"), idempotency_key=f"fifo-{n}")
    state.b_lateness.append(time.time() - due)
    state.b_finished_one()


async def fifo(env: Env, spec: Spec, max_jobs: int, poll_delay_s: float, problems: list[str]) -> Side:
    account_id, token = env.platform.create_account(NewAccount(username="fifo_b"))
    client = HttpPlatformClient(env.url, token, env.http, timeout_s=env.settings.platform_timeout_s)
    state = FifoState(spec.b_jobs + spec.b_posts)
    redis_settings = RedisSettings.from_dsn(env.redis_url)
    # arq's defaults (pickle serializer, keep_result ...) but for the queue name and the poll delay.
    pool = await create_pool(redis_settings, default_queue_name=FIFO_QUEUE)
    worker = Worker(
        functions=[func(fifo_job, name="job"), func(fifo_post, name="post")], queue_name=FIFO_QUEUE,
        redis_settings=redis_settings, max_jobs=max_jobs, poll_delay=poll_delay_s, handle_signals=False,
        ctx={"fifo": state, "client": client},
    )  # fmt: skip
    task: asyncio.Task[None] | None = None
    try:
        with Stopwatch() as enqueue:
            await in_parallel(spec.a_jobs, FIFO_PRODUCERS, lambda _i: pool.enqueue_job("job", "a"))
        task = asyncio.create_task(worker.main())

        async def running() -> bool:
            return state.a_started > 0

        if not await wait_until(running, 30):
            raise SystemExit("bench: the plain arq worker did not start within 30 s")
        arrived, a_done_at_arrival = time.time(), state.a_done
        for _ in range(spec.b_jobs):
            await pool.enqueue_job("job", "b")
        due = arrived + spec.lead_s
        for n in range(spec.b_posts):
            await pool.enqueue_job("post", n, due, _defer_until=datetime.fromtimestamp(due, UTC))

        async def b_settled() -> bool:
            return state.b_done_at is not None

        b_done = await wait_until(b_settled, spec.lead_s + spec.bound_s, interval_s=0.05)
        stopped, a_done_at_stop = time.time(), state.a_done
    finally:
        if task is not None:
            await stop_worker(worker, task)
        await clear_queue(pool, FIFO_QUEUE)  # what is left was never started
        await pool.aclose()
    keys = [p["idempotency_key"] for p in await admin_posts(env, account_id)]
    if worker.jobs_failed:
        problems.append(f"plain FIFO arq: {worker.jobs_failed} jobs failed")
    if len(keys) != len(set(keys)) or len(keys) != len(state.b_lateness):
        problems.append(f"plain FIFO arq: the sandbox holds {len(keys)} posts ({len(set(keys))} keys) for B")
    until = state.b_done_at if b_done and state.b_done_at else stopped
    return Side(
        "plain FIFO arq", state.b_waits, state.b_lateness, spec.b_jobs - len(state.b_waits),
        spec.b_posts - len(state.b_lateness), until - arrived, b_done, spec.a_jobs - a_done_at_arrival,
        (state.a_done_at_b_done if b_done else a_done_at_stop) - a_done_at_arrival, enqueue.seconds,
        {"worker_jobs_complete": worker.jobs_complete, "worker_jobs_failed": worker.jobs_failed,
         "b_posts_on_sandbox": len(keys), "a_completed_at_stop": a_done_at_stop},
    )  # fmt: skip


# --- run and report -------------------------------------------------------------------------------


async def run(srv: Servers, spec: Spec) -> int:
    problems: list[str] = []
    async with fresh_database(srv, NAME) as (database_url, owner_url):
        settings = bench_settings(database_url, srv.redis_url)
        logs = quiet_logs(settings, NAME)
        bulk, default = settings.queue("bulk"), settings.queue("default")
        total, poll = bulk.concurrency + default.concurrency, settings.worker_poll_delay_s
        print_header(
            "fairness: a noisy neighbour's bulk backlog, our fair bulk queue vs plain FIFO arq",
            srv,
            {
                "load": f"A: {spec.a_jobs:,} bulk jobs ({JOB_S * 1000:g} ms each) waiting before the workers start; "
                f"then B: {spec.b_jobs} bulk jobs + {spec.b_posts} posts all due {spec.lead_s:g} s later",
                "ours": f"bulk fair={bulk.fair}, window {bulk.window}; scheduler host (dispatcher every "
                f"{settings.dispatcher_interval_s:g} s + jitter up to a tenth of that, post_scheduler) + "
                f"bulk worker max_jobs {bulk.concurrency} + "
                f"default worker max_jobs {default.concurrency} (publish_post to the sandbox), poll_delay {poll:g} s; "
                "one process",
                "baseline": f"plain FIFO arq, same Redis: one queue, one arq Worker max_jobs {total} (ours' total), "
                f"poll_delay {poll:g} s (ours; arq's default is 0.5 s), pickle; B's posts are jobs deferred to the "
                "due time (_defer_until) that publish to the same sandbox",
                "stop": f"once B's jobs and posts are all done, or {spec.bound_s:g} s after the due time "
                "(then: not done, >= the time waited so far)",
            },
        )
        if not bulk.fair:
            problems.append("QUEUES makes bulk not fair: ours measures a plain queue")
        redis = await prepare_redis(srv, [queue_key("default"), queue_key("bulk"), FIFO_QUEUE])
        owner = await connect_owner(owner_url)
        db = await Database.open(database_url, min_size=1, max_size=4)
        try:
            platform = SandboxPlatform()
            async with run_sandbox(platform=platform) as url, httpx.AsyncClient(timeout=30) as http:
                # publish_post finds the platform's address in PLATFORM_API_URLS: the sandbox's, now known.
                with_sandbox = bench_settings(database_url, srv.redis_url, platform_api_urls={"sandbox": url})
                env = Env(with_sandbox, database_url, srv.redis_url, owner, db, platform, url, http)
                sides = [await ours(env, redis, spec, problems), await fifo(env, spec, total, poll, problems)]
        finally:
            await db.close()
            await owner.close()
            await redis.aclose()
    report(spec, sides, problems, logs.line(), {"concurrency_total": total, "logged": logs.summary()})
    return 1 if problems else 0


def report(spec: Spec, sides: list[Side], problems: list[str], log_line: str, extra: dict[str, Any]) -> None:
    print()
    print(f"-- B's figures (seconds) while A's backlog of {spec.a_jobs:,} jobs drains --")
    rows = []
    for s in sides:
        f = s.figures(spec.lead_s)
        rows.append([
            s.label, cell(f["wait"], "p50"), cell(f["wait"], "p99"), cell(f["lateness"], "p50"),
            cell(f["lateness"], "p99"), fmt(s.measured_s, 1) + ("" if s.b_done else " (not done)"),
            fmt(s.a_done_meanwhile), fmt(s.a_left_at_arrival), fmt(s.a_enqueue_s, 1),
        ])  # fmt: skip
    print_table(["", "B wait p50", "B wait p99", "B post late p50", "B post late p99", "B done after",
                 "A done meanwhile", "A left when B came", "A enqueue s"], rows)  # fmt: skip
    print(
        "wait = start - enqueue (ours: media_jobs.started_at - created_at); post lateness = published - due (ours: "
        "publish_attempts.confirmed_at - scheduled_time); A done meanwhile: from B's arrival to B's last finish"
    )
    x = sides[0].extra
    ticks, ticks_s, dispatch = x["dispatcher_ticks"], x["dispatcher_ticks_s"], x["b_post_dispatch_s"]
    print(f"ours: dispatcher ticked {ticks} times in {ticks_s:.1f} s (one every {ticks_s / max(ticks, 1):.2f} s); "
          f"B's posts dispatched (queued_at - scheduled_time) p50 {fmt(dispatch['p50'], 3)} s, p99 "
          f"{fmt(dispatch['p99'], 3)} s; {x['a_completed_at_stop']:,} of A's {spec.a_jobs:,} jobs completed "
          "when measuring stopped")  # fmt: skip
    for s in sides:
        f = s.figures(spec.lead_s)
        print(f"verdict, {s.label}: B bulk wait p99 {verdict(f['wait'], TARGETS['wait'])}; "
              f"B post lateness p99 {verdict(f['lateness'], TARGETS['lateness'])}")  # fmt: skip
    print(log_line)
    rows_out = {
        s.label: {**{k: v for k, v in asdict(s).items() if k not in ("b_waits", "b_lateness", "extra")},
                  **{f"b_{k}_s": v for k, v in s.figures(spec.lead_s).items()}, **s.extra}
        for s in sides
    }  # fmt: skip
    figures = {"spec": asdict(spec), "job_s": JOB_S, "targets_p99_s": TARGETS, **extra, "rows": rows_out,
               "problems": problems}  # fmt: skip
    print(f"figures: {write_results(NAME, figures)}")
    for problem in problems:
        print(f"LOST OR FAILED: {problem}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench fairness", description=__doc__.splitlines()[0])
    parser.add_argument("--a-jobs", type=int, default=50_000, help="creator A's backlog (default 50000)")
    parser.add_argument("--b-jobs", type=int, default=100, help="creator B's bulk jobs (default 100)")
    parser.add_argument("--b-posts", type=int, default=20, help="creator B's posts, all due at once (default 20)")
    parser.add_argument("--lead", type=float, default=3.0, help="seconds from B's jobs to its posts' due time (3)")
    parser.add_argument("--bound", type=float, default=180.0,
                        help="stop this long after the due time even if B is not done (180)")  # fmt: skip
    parser.add_argument("--data-dir", type=Path, default=None,
                        help=f"embedded stack folder (default {BENCH_DATA_DIR.relative_to(ROOT)}, shared by every "
                        "benchmark: give another one to run beside another benchmark)")  # fmt: skip
    args = parser.parse_args(argv)
    spec = Spec(args.a_jobs, args.b_jobs, args.b_posts, args.lead, args.bound)
    with servers(args.data_dir) as srv:
        return asyncio.run(run(srv, spec))


if __name__ == "__main__":
    raise SystemExit(main())
