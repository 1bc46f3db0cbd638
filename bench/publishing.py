"""Publishing end to end: scheduled posts → post_scheduler → publish_post → sandbox platform over HTTP.

Creators (tier 'pro': posts_published unlimited), each with a connected sandbox account, get posts
all due within a short window. One post_scheduler (`SchedulerRunner`, NOTIFY wake-up active, the
deployed 60 s poll as safety net) and in-process workers built with `build_worker_settings` run
until every post is `posted` (or the time bound passes). Then, from PostgreSQL: dispatch latency
(queued_at - scheduled_time), publish latency (publish_attempts.confirmed_at - scheduled_time) and
throughput (first dispatch to last confirm); from the sandbox: exactly-once (as many posts as
scheduled posts, each with its own expected idempotency key, none twice).

The main run uses the deployed worker poll delay (WORKER_POLL_DELAY_S, 0.05 s). An optional smaller
run (--deployed-posts N) uses arq's own default of 0.5 s: a poll reads at most queue_read_limit
ids and the worker then sleeps out the delay, so that run shows the ceiling such a worker has.
Another run the scheduler alone (no workers) at the main run's offered rate, to tell dispatch cost
from sharing the event loop with workers; its jobs are taken back out of Redis afterwards.

Beside them, in the same run and on the same sandbox: the same number of posts published directly
with `HttpPlatformClient.publish_post`, no job system — one caller, then as many callers as the
workers run jobs — to show the platform ceiling and what the job system costs. The dispatch latency
of the original design's plain 60 s poll is printed as a theoretical expectation, not measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import httpx
from arq.constants import job_key_prefix
from arq.worker import Worker

from bench.common import (
    LogTally,
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
    rate,
    servers,
    write_results,
)
from geniehelper.db import Database, connect_owner
from geniehelper.domain import platform as connections
from geniehelper.platforms import HttpPlatformClient, PostToPublish
from geniehelper.platforms.sandbox import NewAccount, SandboxPlatform, run_sandbox
from geniehelper.platforms.transport import pooled_http_client
from geniehelper.runtime.claiming import create_worker
from geniehelper.runtime.definition import queue_key
from geniehelper.runtime.registry import JobRegistry
from geniehelper.runtime.transport import create_arq_redis
from geniehelper.runtime.worker import build_worker_settings
from geniehelper.settings import Settings
from jobs.publish_post import PUBLISH_POST
from schedulers.base import SchedulerRunner
from schedulers.post_scheduler import PostScheduler

NAME = "publishing"
DEPLOYED_POLL_S = Settings().worker_poll_delay_s
ARQ_DEFAULT_POLL_S = 0.5
ORIGINAL_POLL_S = 60.0
# Nearest-rank percentiles of a delay uniform over [0, poll): what a plain poll gives, by arithmetic.
THEORETICAL_POLL = {"p50": ORIGINAL_POLL_S * 0.50, "p99": ORIGINAL_POLL_S * 0.99, "max": ORIGINAL_POLL_S}


@dataclass(frozen=True)
class Account:
    user_id: UUID
    account_id: str
    connection_id: UUID


@dataclass(frozen=True)
class RunSpec:
    label: str
    posts: int
    creators: int
    spread_s: float
    lead_s: float
    workers: int
    poll_delay_s: float
    bound_s: float


@dataclass
class Env:
    settings: Settings
    database_url: str
    redis_url: str
    owner: asyncpg.Connection
    db: Database
    platform: SandboxPlatform
    url: str
    http: httpx.AsyncClient


async def connected_creators(env: Env, n: int, prefix: str) -> list[Account]:
    cipher = env.settings.credential_cipher()
    accounts = []
    for i in range(n):
        user_id = await make_creator(env.owner, tier="pro")
        account_id, token = env.platform.create_account(NewAccount(username=f"{prefix}{i}"))
        async with env.db.creator_tx(user_id) as conn:
            connection_id = await connections.connect_account(
                conn, cipher, user_id=user_id, platform="sandbox", external_account_id=account_id, token=token,
            )  # fmt: skip
        accounts.append(Account(user_id, account_id, connection_id))
    return accounts


async def schedule_posts(
    db: Database, accounts: list[Account], n_posts: int, first_due: datetime, spread_s: float
) -> None:
    """Post i goes to creator i mod len(accounts), due at first_due + spread_s * i / n_posts."""
    by_creator: dict[int, list[int]] = {}
    for i in range(n_posts):
        by_creator.setdefault(i % len(accounts), []).append(i)
    for c, indexes in by_creator.items():
        account = accounts[c]
        async with db.creator_tx(account.user_id) as conn:
            post_ids = await conn.fetch(
                "insert into content_posts (user_id, caption, hashtags, platform_targets, status)"
                " select $1, 'bench post ' || i, '{bench}', '{sandbox}', 'scheduled' from unnest($2::int[]) as i"
                " returning id",
                account.user_id, indexes,
            )  # fmt: skip
            await conn.execute(
                "insert into scheduled_posts (user_id, content_post_id, platform_connection_id, platform,"
                " scheduled_time) select $1, p, $2, 'sandbox', t from unnest($3::uuid[], $4::timestamptz[]) as x(p, t)",
                account.user_id, account.connection_id, [r["id"] for r in post_ids],
                [first_due + timedelta(seconds=spread_s * i / n_posts) for i in indexes],
            )  # fmt: skip


async def wait_until(condition: Callable[[], Awaitable[bool]], timeout_s: float, interval_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await condition():
            return True
        await asyncio.sleep(interval_s)
    return await condition()


async def admin_posts(env: Env, account_id: str) -> list[dict[str, Any]]:
    response = await env.http.get(f"{env.url}/admin/accounts/{account_id}/posts")
    response.raise_for_status()
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def job_system_run(env: Env, spec: RunSpec, problems: list[str]) -> dict[str, Any]:
    """Schedule spec.posts posts on fresh creators, run scheduler + workers until all settle, measure."""
    accounts = await connected_creators(env, spec.creators, prefix=f"{spec.label}_")
    runner = SchedulerRunner(PostScheduler(), env.settings, env.database_url, env.redis_url)
    scheduler_task = asyncio.create_task(runner.run())
    cls = build_worker_settings(
        "default", JobRegistry([PUBLISH_POST]), role="bench_worker", settings=env.settings,
        database_url=env.database_url, redis_url=env.redis_url,
    )  # fmt: skip
    workers: list[Worker] = [
        create_worker(cls, burst=False, handle_signals=False, poll_delay=spec.poll_delay_s) for _ in range(spec.workers)
    ]
    worker_tasks = [asyncio.create_task(w.main()) for w in workers]
    users = [a.user_id for a in accounts]
    dispatch_only = spec.workers == 0
    try:

        async def ready() -> bool:
            return runner.ticks >= 1 and all("resources" in w.ctx for w in workers)

        if not await wait_until(ready, 30):
            raise SystemExit("bench: scheduler or workers did not start within 30 s")
        # The scheduler has ticked and now sleeps for its 60 s poll: the posts' NOTIFY must wake it.
        first_due = datetime.now(UTC) + timedelta(seconds=spec.lead_s)
        with Stopwatch() as inserting:
            await schedule_posts(env.db, accounts, spec.posts, first_due, spec.spread_s)
        if datetime.now(UTC) > first_due:
            problems.append(f"{spec.label}: inserting took {inserting.seconds:.1f} s, past the first due time")

        # With no workers (dispatch only) a post is done once the scheduler has queued it.
        done = ["queued", "posted", "failed", "missed"] if dispatch_only else ["posted", "failed", "missed"]

        async def settled() -> bool:
            n = await env.owner.fetchval(
                "select count(*) from scheduled_posts where user_id = any($1::uuid[]) and status = any($2::text[])",
                users, done,
            )  # fmt: skip
            return bool(n >= spec.posts)

        bound = (first_due - datetime.now(UTC)).total_seconds() + spec.spread_s + spec.bound_s
        if not await wait_until(settled, bound, interval_s=0.25):
            problems.append(f"{spec.label}: not all posts settled within {spec.bound_s:g} s of the last due time")
    finally:
        runner.stop.set()
        await scheduler_task
        for worker, task in zip(workers, worker_tasks, strict=True):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await worker.close()

    stats = await publishing_stats(env.owner, users)
    expected_keys = set(stats.pop("expected_keys"))
    if dispatch_only:
        await drop_queued_jobs(env, users)
        if stats["statuses"].get("queued", 0) != spec.posts:
            problems.append(f"{spec.label}: statuses {stats['statuses']} (expected {spec.posts} queued)")
        return {"spec": asdict(spec), "insert_s": inserting.seconds, **stats}
    platform_keys: list[str] = []
    for account in accounts:
        platform_keys += [p["idempotency_key"] for p in await admin_posts(env, account.account_id)]
    duplicates = sum(n - 1 for n in Counter(platform_keys).values() if n > 1)
    exactly_once = {
        "posts_on_platform": len(platform_keys), "distinct_keys": len(set(platform_keys)),
        "duplicate_posts": duplicates, "unexpected_keys": len(set(platform_keys) - expected_keys),
        "missing_on_platform": len(expected_keys - set(platform_keys)),
    }  # fmt: skip
    if stats["statuses"].get("posted", 0) != spec.posts:
        problems.append(f"{spec.label}: statuses {stats['statuses']} (expected {spec.posts} posted)")
    if len(platform_keys) != spec.posts or duplicates or exactly_once["unexpected_keys"]:
        problems.append(f"{spec.label}: exactly-once broken: {exactly_once}")
    return {"spec": asdict(spec), "insert_s": inserting.seconds, **stats, "exactly_once": exactly_once}


async def drop_queued_jobs(env: Env, users: list[UUID]) -> None:
    """Take the dispatch-only run's jobs back out of Redis: no worker is meant to run them."""
    ids = [
        str(r["id"]) for r in await env.owner.fetch("select id from media_jobs where user_id = any($1::uuid[])", users)
    ]
    redis = await create_arq_redis(env.redis_url)
    try:
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]
            await redis.zrem(queue_key("default"), *chunk)
            await redis.delete(*(job_key_prefix + job_id for job_id in chunk))
    finally:
        await redis.aclose()


async def publishing_stats(owner: asyncpg.Connection, users: list[UUID]) -> dict[str, Any]:
    rows = await owner.fetch(
        """
        select sp.status,
               extract(epoch from sp.queued_at - sp.scheduled_time)::float8 as dispatch_s,
               extract(epoch from pa.confirmed_at - sp.scheduled_time)::float8 as publish_s,
               'gh-' || sp.id || '-' || sp.platform || '-r' || sp.revision as expected_key
          from scheduled_posts sp
          left join publish_attempts pa on pa.user_id = sp.user_id and pa.scheduled_post_id = sp.id
         where sp.user_id = any($1::uuid[])
        """,
        users,
    )
    jobs = await owner.fetch(
        """
        select extract(epoch from started_at - run_at)::float8 as wait_s,
               extract(epoch from finished_at - started_at)::float8 as run_s, attempts
          from media_jobs where user_id = any($1::uuid[])
        """,
        users,
    )
    window = await owner.fetchrow(
        """
        select extract(epoch from (select max(confirmed_at) from publish_attempts where user_id = any($1::uuid[]))
                                - (select min(queued_at) from scheduled_posts where user_id = any($1::uuid[])))::float8
                   as seconds,
               (select count(*) from publish_attempts where user_id = any($1::uuid[]) and confirmed_at is not null)::int
                   as confirmed,
               (select count(*) from publish_attempts where user_id = any($1::uuid[]) and attempts > 1)::int
                   as attempts_retried
        """,
        users,
    )
    assert window is not None
    return {
        "statuses": dict(Counter(r["status"] for r in rows)),
        "dispatch_latency_s": percentiles([r["dispatch_s"] for r in rows if r["dispatch_s"] is not None]),
        "publish_latency_s": percentiles([r["publish_s"] for r in rows if r["publish_s"] is not None]),
        "job_queue_wait_s": percentiles([r["wait_s"] for r in jobs if r["wait_s"] is not None]),
        "job_run_s": percentiles([r["run_s"] for r in jobs if r["run_s"] is not None]),
        "jobs_run_more_than_once": sum(1 for r in jobs if r["attempts"] > 1),
        "publish_attempts_retried": window["attempts_retried"],
        "confirmed": window["confirmed"],
        "first_dispatch_to_last_confirm_s": window["seconds"],
        "posts_per_s": rate(window["confirmed"], window["seconds"] or 0.0),
        "expected_keys": [r["expected_key"] for r in rows],
    }


async def direct_publish(env: Env, n_accounts: int, n_posts: int, callers: int, problems: list[str]) -> dict[str, Any]:
    """The no-job-system baseline: publish_post straight to the sandbox from `callers` loops."""
    label = f"direct{callers}"
    accounts = [env.platform.create_account(NewAccount(username=f"{label}_{i}")) for i in range(n_accounts)]
    clients = [
        HttpPlatformClient(env.url, token, env.http, timeout_s=env.settings.platform_timeout_s) for _, token in accounts
    ]
    latencies: list[float] = []

    async def caller(start: int) -> None:
        for i in range(start, n_posts, callers):
            began = time.perf_counter()
            await clients[i % n_accounts].publish_post(
                PostToPublish(text=f"{label} post {i} #bench"), idempotency_key=f"{label}-{i}"
            )
            latencies.append(time.perf_counter() - began)

    with Stopwatch() as sw:
        await asyncio.gather(*(caller(c) for c in range(callers)))
    keys: list[str] = []
    for account_id, _ in accounts:
        keys += [p["idempotency_key"] for p in await admin_posts(env, account_id)]
    if len(keys) != n_posts or len(set(keys)) != n_posts:
        problems.append(f"{label}: {len(keys)} posts on the platform, {len(set(keys))} distinct keys, for {n_posts}")
    ms = {k: (v * 1000 if isinstance(v, float) else v) for k, v in percentiles(latencies).items()}
    return {
        "callers": callers, "posts": n_posts, "seconds": sw.seconds, "posts_per_s": rate(n_posts, sw.seconds),
        "call_latency_ms": ms, "posts_on_platform": len(keys), "distinct_keys": len(set(keys)),
    }  # fmt: skip


async def run(
    srv: Servers, main_spec: RunSpec, deployed_spec: RunSpec | None, dispatch_spec: RunSpec | None, direct: bool
) -> int:
    problems: list[str] = []
    async with fresh_database(srv, NAME) as (database_url, owner_url):
        settings = bench_settings(database_url, srv.redis_url)
        logs = quiet_logs(settings, NAME)
        concurrency = settings.queue("default").concurrency
        print_header(
            "publishing: post_scheduler + publish_post against the sandbox platform",
            srv,
            {
                "load": f"{main_spec.posts:,} posts for {main_spec.creators} creators (tier pro), due evenly over "
                f"{main_spec.spread_s:g} s (offered {main_spec.posts / main_spec.spread_s:,.0f} posts/s)",
                "system": f"1 post_scheduler (NOTIFY wake-up, {settings.post_scheduler_interval_s:g} s poll, batch "
                f"{settings.post_dispatch_batch}) + {main_spec.workers} arq workers x max_jobs {concurrency}; "
                "scheduler, workers and sandbox share one process and one event loop",
                "baseline": "the same number of posts via HttpPlatformClient.publish_post, no job system, same sandbox",
            },
        )
        redis = await prepare_redis(srv, [queue_key("default")])
        await redis.aclose()
        owner = await connect_owner(owner_url)
        db = await Database.open(database_url, min_size=1, max_size=10)
        try:
            platform = SandboxPlatform()
            async with run_sandbox(platform=platform) as url, pooled_http_client(httpx.Timeout(30.0)) as http:
                settings = settings.model_copy(update={"platform_api_urls": {"sandbox": url}})
                env = Env(settings, database_url, srv.redis_url, owner, db, platform, url, http)
                main_stats = await job_system_run(env, main_spec, problems)
                baselines = []
                if direct:
                    for callers in (1, main_spec.workers * concurrency):
                        baselines.append(
                            await direct_publish(env, main_spec.creators, main_spec.posts, callers, problems)
                        )
                deployed = await job_system_run(env, deployed_spec, problems) if deployed_spec else None
                # Last: its jobs are taken back out of Redis, never run.
                dispatch = await job_system_run(env, dispatch_spec, problems) if dispatch_spec else None
        finally:
            await db.close()
            await owner.close()

    report(main_stats, deployed, dispatch, baselines, problems, concurrency, logs)
    return 1 if problems else 0


def latency_rows(stats: dict[str, Any], *, with_theory: bool) -> list[list[str]]:
    def row(label: str, p: dict[str, Any]) -> list[str]:
        return [label, fmt(p["p50"], 3), fmt(p["p99"], 3), fmt(p["max"], 3), fmt(p["n"])]

    rows = [
        row("dispatch latency (queued_at - scheduled_time)", stats["dispatch_latency_s"]),
        row("publish latency (confirmed_at - scheduled_time)", stats["publish_latency_s"]),
        row("  of which: job queue wait (started_at - run_at)", stats["job_queue_wait_s"]),
        row("  of which: job run time (finished_at - started_at)", stats["job_run_s"]),
    ]
    if with_theory:
        rows.append(
            [
                f"THEORETICAL, not measured: dispatch with a plain {ORIGINAL_POLL_S:g} s poll",
                *(fmt(THEORETICAL_POLL[k], 3) for k in ("p50", "p99", "max")),
                "",
            ]
        )
    return rows


def summary_line(stats: dict[str, Any]) -> str:
    spec, once = stats["spec"], stats["exactly_once"]
    return (
        f"throughput {stats['posts_per_s']:,.1f} posts/s (first dispatch to last confirm, "
        f"{stats['first_dispatch_to_last_confirm_s']:.1f} s; offered {spec['posts'] / spec['spread_s']:,.0f} posts/s); "
        f"jobs run more than once {stats['jobs_run_more_than_once']}, publish attempts retried "
        f"{stats['publish_attempts_retried']}\nexactly-once (sandbox): {once['posts_on_platform']:,} posts for "
        f"{spec['posts']:,} scheduled, {once['distinct_keys']:,} distinct idempotency keys, "
        f"{once['duplicate_posts']} duplicates, {once['missing_on_platform']} missing, "
        f"{once['unexpected_keys']} unexpected"
    )


def report(
    main: dict[str, Any],
    deployed: dict[str, Any] | None,
    dispatch: dict[str, Any] | None,
    baselines: list[dict[str, Any]],
    problems: list[str],
    concurrency: int,
    logs: LogTally,
) -> None:
    spec = main["spec"]
    headers = ["", "p50 s", "p99 s", "max s", "n"]
    print()
    print(f"-- job system, worker poll_delay {spec['poll_delay_s']:g} s: statuses {main['statuses']} --")
    rows = latency_rows(main, with_theory=True)
    if dispatch is not None:
        p, ds = dispatch["dispatch_latency_s"], dispatch["spec"]
        label = f"dispatch latency, scheduler alone (no workers, {ds['posts']:,} posts over {ds['spread_s']:g} s)"
        rows.insert(4, [label, fmt(p["p50"], 3), fmt(p["p99"], 3), fmt(p["max"], 3), fmt(p["n"])])
    print_table(headers, rows)
    print(summary_line(main))
    if baselines:
        print()
        print("-- baseline: direct HttpPlatformClient.publish_post, no job system, same sandbox, same process --")
        rows = [
            [f"direct, {b['callers']} caller{'s' if b['callers'] > 1 else ''}", fmt(b["posts_per_s"], 1),
             fmt(b["call_latency_ms"]["p50"], 2), fmt(b["call_latency_ms"]["p99"], 2),
             f"{b['posts_on_platform']:,} posts, {b['distinct_keys']:,} keys"]
            for b in baselines
        ]  # fmt: skip
        rows.append(
            [
                f"job system ({spec['workers']} x {concurrency} jobs)",
                fmt(main["posts_per_s"], 1),
                "-",
                "-",
                f"{main['exactly_once']['posts_on_platform']:,} posts",
            ]
        )
        print_table(["", "posts/s", "call p50 ms", "call p99 ms", "verified"], rows)
    if deployed is not None:
        d = deployed["spec"]
        print()
        print(
            f"-- arq's own default poll_delay {d['poll_delay_s']:g} s, {d['posts']:,} posts over "
            f"{d['spread_s']:g} s, {d['workers']} workers x max_jobs {concurrency}: statuses {deployed['statuses']} --"
        )
        print_table(headers, latency_rows(deployed, with_theory=False))
        print(summary_line(deployed))
        print(
            f"a poll reads at most queue_read_limit = max(5 x {concurrency}, 100) ids, then the worker sleeps out "
            f"poll_delay: at most {d['workers']} x {max(5 * concurrency, 100)} / {d['poll_delay_s']:g} s = "
            f"{d['workers'] * max(5 * concurrency, 100) / d['poll_delay_s']:,.0f} jobs/s"
        )
    print(logs.line())
    path = write_results(
        NAME,
        {
            "worker_max_jobs": concurrency, "job_system": main, "direct_baselines": baselines,
            "as_deployed_arq_default_poll": deployed,
            "dispatch_only_no_workers": dispatch,
            "theoretical_plain_poll_dispatch_latency_s": {"poll_s": ORIGINAL_POLL_S, **THEORETICAL_POLL,
                                                          "measured": False},
            "problems": problems,
            "logged": logs.summary(),
        },
    )  # fmt: skip
    print(f"figures: {path}")
    for problem in problems:
        print(f"PROBLEM: {problem}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench publishing", description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=10_000, help="scheduled posts (default 10000)")
    parser.add_argument("--creators", type=int, default=100, help="creators, one sandbox account each (default 100)")
    parser.add_argument("--spread", type=float, default=20.0, help="due times spread over this many seconds (20)")
    parser.add_argument("--lead", type=float, default=5.0, help="seconds from inserting to the first due time (5)")
    parser.add_argument("--workers", type=int, default=2, help="in-process workers (default 2)")
    parser.add_argument("--poll-delay", type=float, default=DEPLOYED_POLL_S,
                        help="worker poll_delay, main run (default: WORKER_POLL_DELAY_S)")  # fmt: skip
    parser.add_argument("--bound", type=float, default=90.0, help="give up this long after the last due time (90)")
    parser.add_argument("--deployed-posts", type=int, default=0,
                        help="posts in an extra run at arq's own poll_delay of 0.5 s (0: skip)")  # fmt: skip
    parser.add_argument("--dispatch-only-posts", type=int, default=5000,
                        help="posts in the scheduler-alone run, same rate (default 5000; 0 skips it)")  # fmt: skip
    parser.add_argument("--no-direct", dest="direct", action="store_false", help="skip the direct baselines")
    args = parser.parse_args(argv)
    main_spec = RunSpec(
        "main", args.posts, args.creators, args.spread, args.lead, args.workers, args.poll_delay, args.bound
    )
    offered_rate = args.posts / args.spread
    dispatch_spec = None
    if args.dispatch_only_posts > 0:
        dispatch_spec = RunSpec(
            "dispatch_only", args.dispatch_only_posts, args.creators, args.dispatch_only_posts / offered_rate,
            args.lead, 0, args.poll_delay, args.bound,
        )  # fmt: skip
    deployed_spec = None
    if args.deployed_posts > 0:
        deployed_spec = RunSpec(
            "deployed", args.deployed_posts, min(args.creators, 20), 3.0, 3.0, args.workers, ARQ_DEFAULT_POLL_S,
            args.bound,
        )  # fmt: skip
    with servers() as srv:
        return asyncio.run(run(srv, main_spec, deployed_spec, dispatch_spec, args.direct))


if __name__ == "__main__":
    raise SystemExit(main())
