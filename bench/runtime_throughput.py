"""Runtime throughput: N no-op jobs through our runtime, beside the same N through bare arq.

Ours: a no-op job contract defined here, enqueued with `JobQueue.enqueue` (validate, record in
PostgreSQL, push to arq, mark enqueued), then drained by a real arq worker built with
`build_worker_settings` (attempt started and completion recorded in PostgreSQL around each run).
Bare arq: a plain `async def noop(ctx)` enqueued with `ArqRedis.enqueue_job` (arq's default
pickle serializer) and drained by a plain `arq.worker.Worker`. Same Redis, same producer
concurrency, same worker concurrency (the default queue's), same poll delay, same run. A variant
enqueues our jobs with `record()` in batches (one creator transaction per batch) and `push_many`.

The main rows poll every 0.01 s so that the cost of running jobs is what is measured; a second
table drains both with arq's own default poll delay (0.5 s; our workers poll every
WORKER_POLL_DELAY_S = 0.05 s) to show the cap polling puts on a worker.

Afterwards every job must be `completed` in PostgreSQL with one attempt (ours) or counted complete
by the worker (bare); a run that lost or failed jobs says so and exits non-zero.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID, uuid4

import asyncpg
from arq import func
from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.worker import Worker
from pydantic import Field

from bench.common import (
    Servers,
    Stopwatch,
    bench_settings,
    fmt,
    fresh_database,
    make_creator,
    prepare_redis,
    print_header,
    print_table,
    quiet_logs,
    rate,
    servers,
    write_results,
)
from geniehelper.db import Database, connect_owner
from geniehelper.runtime.claiming import create_worker
from geniehelper.runtime.context import JobContext
from geniehelper.runtime.definition import JobDefinition, JobPayload, Policy, queue_key
from geniehelper.runtime.queue import EnqueuedJob, JobQueue, JobRequest
from geniehelper.runtime.registry import JobRegistry
from geniehelper.runtime.worker import build_worker_settings
from geniehelper.settings import Settings

NAME = "runtime_throughput"
BARE_QUEUE = "bench:bare:queue"
N_CREATORS = 10
FAST_POLL_S = 0.01
ARQ_DEFAULT_POLL_S = 0.5
DEPLOYED_JOBS_MAX = 1000
ONE_BY_ONE = "ours: enqueue() one by one"
BARE = "baseline: bare arq (pickle)"  # the poll-delay-bound rows: enough to see the ceiling, short enough to wait for


class NoopPayload(JobPayload):
    n: int = Field(ge=0)


async def noop_job(ctx: JobContext, payload: NoopPayload) -> None:
    return None


NOOP = JobDefinition("bench_noop", NoopPayload, noop_job, policy=Policy(max_attempts=3))


async def bare_noop(ctx: dict[str, Any]) -> None:
    return None


def ready_key(run_id: str) -> str:  # bench.burst_worker processes count themselves in when started up
    return f"bench:workers:{run_id}:ready"


def go_key(run_id: str) -> str:  # ... and each takes one token from here to start draining
    return f"bench:workers:{run_id}:go"


@dataclass
class Phase:
    label: str
    jobs: int
    enqueue_s: float | None = None
    run_s: float = 0.0
    completed: int = 0
    check: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def enqueue_per_s(self) -> float | None:
        return None if self.enqueue_s is None else rate(self.jobs, self.enqueue_s)

    @property
    def run_per_s(self) -> float:
        return rate(self.jobs, self.run_s)

    def as_dict(self) -> dict[str, Any]:
        return {
            "jobs": self.jobs, "enqueue_s": self.enqueue_s, "enqueue_jobs_per_s": self.enqueue_per_s,
            "run_s": self.run_s, "run_jobs_per_s": self.run_per_s, "completed": self.completed,
            "verified": self.check, **self.extra,
        }  # fmt: skip


def median_of(rounds: list[Phase]) -> Phase:
    """One row from the rounds of a measurement: median enqueue and run times; each round kept."""
    enqueues = [p.enqueue_s for p in rounds if p.enqueue_s is not None]
    first = rounds[0]
    return Phase(
        first.label, first.jobs, statistics.median(enqueues) if enqueues else None,
        statistics.median(p.run_s for p in rounds), min(p.completed for p in rounds),
        rounds[-1].check if len(rounds) == 1 else f"{len(rounds)} rounds, each {rounds[-1].check}",
        {"rounds": [p.as_dict() for p in rounds], "run_jobs_per_s_range": [min(p.run_per_s for p in rounds),
                                                                           max(p.run_per_s for p in rounds)]},
    )  # fmt: skip


def paired_ratio(ours: list[Phase], bare: list[Phase], what: str) -> float:
    """The median over rounds of ours / bare measured in the same round (side by side in time)."""
    def per_s(p: Phase) -> float:
        return (p.enqueue_per_s or 0.0) if what == "enqueue" else p.run_per_s

    return statistics.median(per_s(o) / per_s(b) for o, b in zip(ours, bare, strict=True) if per_s(b))


def spread(phase: Phase) -> str:
    low, high = phase.extra.get("run_jobs_per_s_range", (phase.run_per_s, phase.run_per_s))
    return f"{low:,.0f}-{high:,.0f}"


@dataclass
class Bench:
    srv: Servers
    settings: Settings
    database_url: str
    owner: asyncpg.Connection
    db: Database
    redis: ArqRedis
    queue: JobQueue
    creators: list[UUID]
    producers: int
    problems: list[str] = field(default_factory=list)

    @property
    def concurrency(self) -> int:
        return self.settings.queue("default").concurrency

    def our_worker(self, poll_delay: float) -> Worker:
        cls = build_worker_settings(
            "default", JobRegistry([NOOP]), role="bench_worker", settings=self.settings,
            database_url=self.database_url, redis_url=self.srv.redis_url,
        )  # fmt: skip
        return create_worker(cls, burst=True, handle_signals=False, poll_delay=poll_delay)

    def bare_worker(self, poll_delay: float) -> Worker:
        return Worker(
            functions=[func(bare_noop, name="noop")], queue_name=BARE_QUEUE,
            redis_settings=RedisSettings.from_dsn(self.srv.redis_url), burst=True, max_jobs=self.concurrency,
            handle_signals=False, poll_delay=poll_delay,
        )  # fmt: skip

    async def verify_ours(self, phase: Phase, ids: list[UUID]) -> None:
        rows = await self.owner.fetch(
            "select status, count(*)::int as n, sum(attempts)::int as attempts from media_jobs"
            " where id = any($1::uuid[]) group by status",
            ids,
        )
        statuses = {r["status"]: r["n"] for r in rows}
        attempts = sum(r["attempts"] for r in rows)
        phase.completed = statuses.get("completed", 0)
        phase.check = f"{phase.completed:,}/{phase.jobs:,} completed in PostgreSQL, {attempts:,} attempts"
        phase.extra.update(statuses=statuses, attempts=attempts)
        if phase.completed != phase.jobs or attempts != phase.jobs:
            self.problems.append(f"{phase.label}: statuses {statuses}, {attempts} attempts for {phase.jobs} jobs")

    def verify_bare(self, phase: Phase, worker: Worker) -> None:
        phase.completed = worker.jobs_complete
        phase.check = f"{phase.completed:,}/{phase.jobs:,} completed (worker's count)"
        if worker.jobs_complete != phase.jobs or worker.jobs_failed or worker.jobs_retried:
            self.problems.append(
                f"{phase.label}: {worker.jobs_complete} completed, {worker.jobs_failed} failed, "
                f"{worker.jobs_retried} retried of {phase.jobs}"
            )

    async def ours_one_by_one(self, label: str, n: int, poll_delay: float, *, time_enqueue: bool = True) -> Phase:
        phase = Phase(label, n)
        with Stopwatch() as sw:
            jobs: list[EnqueuedJob] = await in_parallel(
                n, self.producers,
                lambda i: self.queue.enqueue(NOOP.name, NoopPayload(n=i), user_id=self.creators[i % N_CREATORS]),
            )  # fmt: skip
        phase.enqueue_s = sw.seconds if time_enqueue else None
        phase.run_s = await drain(self.our_worker(poll_delay))
        ids = [j.id for j in jobs]
        await self.verify_ours(phase, ids)
        window: float = await self.owner.fetchval(
            "select extract(epoch from max(finished_at) - min(started_at))::float8 from media_jobs"
            " where id = any($1::uuid[])",
            ids,
        )
        phase.extra["run_window_in_postgres_s"] = window
        phase.extra["run_jobs_per_s_in_postgres"] = rate(n, window)
        return phase

    async def ours_batched(self, label: str, n: int, batch: int, poll_delay: float) -> Phase:
        phase = Phase(label, n, extra={"batch_size": batch})

        async def record_batch(b: int) -> list[EnqueuedJob]:
            recorded = await self.record_batch(b, batch, n)
            await self.queue.push_many(recorded)
            return recorded

        n_batches = -(-n // batch)
        with Stopwatch() as sw:
            batches: list[list[EnqueuedJob]] = await in_parallel(
                n_batches, min(self.producers, n_batches), record_batch
            )
        phase.enqueue_s = sw.seconds
        phase.run_s = await drain(self.our_worker(poll_delay))
        await self.verify_ours(phase, [j.id for b in batches for j in b])
        return phase

    async def record_batch(self, b: int, batch: int, n: int) -> list[EnqueuedJob]:
        """Jobs b*batch .. (b+1)*batch-1 for one creator, in one statement of its transaction."""
        user = self.creators[b % N_CREATORS]
        requests = [JobRequest(NoopPayload(n=i)) for i in range(b * batch, min((b + 1) * batch, n))]
        async with self.db.creator_tx(user) as conn:
            outcomes = await self.queue.record_many(conn, NOOP.name, requests, user_id=user)
        return [o for o in outcomes if isinstance(o, EnqueuedJob)]

    async def in_processes(self, side: str, n: int, processes: int) -> Phase:
        """n jobs drained by `processes` burst worker processes started together (timed from the go
        signal, sent once every process has started up, to the last one's exit)."""
        phase = Phase(f"{side}: {processes} worker process{'es' if processes > 1 else ''}", n)
        ids: list[UUID] = []
        if side == "ours":
            batches = await in_parallel(-(-n // 500), self.producers, lambda b: self.record_batch(b, 500, n))
            recorded = [j for b in batches for j in b]
            await self.queue.push_many(recorded)
            ids = [j.id for j in recorded]
        else:
            pool = await create_pool(RedisSettings.from_dsn(self.srv.redis_url), default_queue_name=BARE_QUEUE)
            try:
                await in_parallel(n, self.producers, lambda _i: pool.enqueue_job("noop"))
            finally:
                await pool.aclose()
        run_id = uuid4().hex
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.burst_worker", side, self.database_url, self.srv.redis_url, run_id,
                stdout=asyncio.subprocess.PIPE,
            )
            for _ in range(processes)
        ]
        while int(await self.redis.get(ready_key(run_id)) or 0) < processes:
            await asyncio.sleep(0.05)  # start-up (imports, pools) is not what is measured
        with Stopwatch() as sw:
            await self.redis.rpush(go_key(run_id), *["go"] * processes)  # type: ignore[misc]
            outputs = [await proc.communicate() for proc in procs]
        phase.run_s = sw.seconds
        counts = [json.loads(out.decode().strip().splitlines()[-1]) for out, _ in outputs]
        if side == "ours":
            await self.verify_ours(phase, ids)
        else:
            phase.completed = sum(c["completed"] for c in counts)
            phase.check = f"{phase.completed:,}/{n:,} completed (the workers' counts)"
            if phase.completed != n or any(c["failed"] or c["retried"] for c in counts):
                self.problems.append(f"{phase.label}: worker counts {counts} for {n} jobs")
        return phase

    async def bare(self, label: str, n: int, poll_delay: float, *, time_enqueue: bool = True) -> Phase:
        phase = Phase(label, n)
        # arq's own defaults: pickle serializer, default queue name overridden only to keep apart from ours.
        pool = await create_pool(RedisSettings.from_dsn(self.srv.redis_url), default_queue_name=BARE_QUEUE)
        try:
            with Stopwatch() as sw:
                await in_parallel(n, self.producers, lambda _i: pool.enqueue_job("noop"))
        finally:
            await pool.aclose()
        phase.enqueue_s = sw.seconds if time_enqueue else None
        worker = self.bare_worker(poll_delay)
        phase.run_s = await drain(worker)
        self.verify_bare(phase, worker)
        return phase


async def in_parallel(n: int, producers: int, one: Callable[[int], Awaitable[Any]]) -> list[Any]:
    """Call one(i) for i in range(n) from `producers` concurrent loops; results in index order."""
    results: list[Any] = [None] * n

    async def loop(start: int) -> None:
        for i in range(start, n, producers):
            results[i] = await one(i)

    await asyncio.gather(*(loop(p) for p in range(producers)))
    return results


async def drain(worker: Worker) -> float:
    """Run a burst worker until its queue is empty; seconds from start (startup included) to done."""
    try:
        with Stopwatch() as sw:
            await worker.main()
    finally:
        await worker.close()
    return sw.seconds


async def run(
    srv: Servers, n_jobs: int, producers: int, batch: int, variant: bool, process_counts: list[int], repeat: int
) -> int:
    n_deployed = min(n_jobs, DEPLOYED_JOBS_MAX)
    async with fresh_database(srv, NAME) as (database_url, owner_url):
        settings = bench_settings(database_url, srv.redis_url)
        logs = quiet_logs(settings, NAME)
        print_header(
            "runtime throughput: no-op jobs, our runtime vs bare arq",
            srv,
            {
                "jobs": f"{n_jobs:,} per row; {producers} concurrent producers; one burst worker in-process, "
                f"max_jobs={settings.queue('default').concurrency} (QUEUES default concurrency) on both sides",
                "baseline": "bare arq on the same Redis: plain `async def noop(ctx)`, arq's default pickle "
                "serializer, no PostgreSQL",
            },
        )
        redis = await prepare_redis(srv, [queue_key("default"), BARE_QUEUE])
        owner = await connect_owner(owner_url)
        # All connections opened up front: a service enqueues on a warm pool.
        db = await Database.open(database_url, min_size=max(producers, 2), max_size=max(producers, 2))
        try:
            creators = [await make_creator(owner, tier="pro") for _ in range(N_CREATORS)]
            bench = Bench(
                srv, settings, database_url, owner, db, redis, JobQueue(db, redis, JobRegistry([NOOP])), creators,
                producers,
            )  # fmt: skip
            # Rounds interleave ours and bare, so a slow spell of the machine falls on both sides alike.
            rounds: dict[str, list[Phase]] = {}
            proc_rounds: dict[str, list[Phase]] = {}
            for _ in range(repeat):
                measured = [await bench.ours_one_by_one(ONE_BY_ONE, n_jobs, FAST_POLL_S)]
                if variant:
                    label = f"ours: record_many() x{batch} + push_many"
                    measured.append(await bench.ours_batched(label, n_jobs, batch, FAST_POLL_S))
                measured.append(await bench.bare(BARE, n_jobs, FAST_POLL_S))
                for phase in measured:
                    rounds.setdefault(phase.label, []).append(phase)
                for count in process_counts:
                    for side in ("ours", "bare"):
                        phase = await bench.in_processes(side, n_jobs, count)
                        proc_rounds.setdefault(phase.label, []).append(phase)
            deployed = [
                await bench.ours_one_by_one("ours", n_deployed, ARQ_DEFAULT_POLL_S, time_enqueue=False),
                await bench.bare("baseline: bare arq", n_deployed, ARQ_DEFAULT_POLL_S, time_enqueue=False),
            ]
        finally:
            await db.close()
            await owner.close()
            await redis.aclose()

    main_rows = [median_of(phases) for label, phases in rounds.items() if label != BARE]
    bare = median_of(rounds[BARE])
    by_processes = [median_of(phases) for phases in proc_rounds.values()]
    ratio = {
        "enqueue": paired_ratio(rounds[ONE_BY_ONE], rounds[BARE], "enqueue"),
        "run": paired_ratio(rounds[ONE_BY_ONE], rounds[BARE], "run"),
    }
    if variant:
        batched = next(label for label in rounds if label not in (ONE_BY_ONE, BARE))
        ratio["enqueue_batched"] = paired_ratio(rounds[batched], rounds[BARE], "enqueue")
        ratio["run_batched"] = paired_ratio(rounds[batched], rounds[BARE], "run")
    print()
    print(f"-- poll_delay {FAST_POLL_S} s (the cost of the runtime itself); {repeat} rounds, ours and bare "
          "interleaved: medians, run range over rounds --")  # fmt: skip
    rows = [[p.label, fmt(p.enqueue_per_s, 0), fmt(p.run_per_s, 0), spread(p), p.check] for p in [*main_rows, bare]]
    rows.append(["ratio one by one / bare", f"{ratio['enqueue']:.2f}x", f"{ratio['run']:.2f}x", "", ""])
    if variant:
        rows.append(["ratio batched / bare", f"{ratio['enqueue_batched']:.2f}x", f"{ratio['run_batched']:.2f}x",
                     "", ""])  # fmt: skip
    print_table(["", "enqueue jobs/s", "run jobs/s", "run range", "verified"], rows)
    print("ratio = the median over rounds of ours / bare measured in the same round; run jobs/s = jobs / wall time "
          "of the burst worker, startup included")  # fmt: skip
    print()
    print(f"-- arq's own default poll_delay {ARQ_DEFAULT_POLL_S} s, ours aside ({n_deployed:,} jobs, one round) --")
    print_table(["", "run jobs/s", "verified"], [[p.label, fmt(p.run_per_s, 0), p.check] for p in deployed])
    print(
        "arq reads at most queue_read_limit = max(5 x max_jobs, 100) job ids per poll and sleeps out the rest of "
        f"poll_delay: about {max(5 * bench.concurrency, 100) / ARQ_DEFAULT_POLL_S:,.0f} jobs/s per worker process "
        "whatever the jobs cost"
    )
    if by_processes:  # `--processes` with no counts skips this table
        print()
        print(f"-- worker processes ({n_jobs:,} jobs, poll_delay {FAST_POLL_S} s, timed from a common start; "
              f"{repeat} rounds: medians) --")  # fmt: skip
        rows = []
        for ours_row, bare_row in zip(by_processes[::2], by_processes[1::2], strict=True):
            ours_rounds, bare_rounds = proc_rounds[ours_row.label], proc_rounds[bare_row.label]
            rows.append([ours_row.label, fmt(ours_row.run_per_s, 0), spread(ours_row), ours_row.check])
            rows.append([bare_row.label, fmt(bare_row.run_per_s, 0), spread(bare_row), bare_row.check])
            rows.append(["  ratio ours / bare", f"{paired_ratio(ours_rounds, bare_rounds, 'run'):.2f}x", "", ""])
        print_table(["", "run jobs/s", "run range", "verified"], rows)
    figures: dict[str, Any] = {
        "jobs": n_jobs, "producers": producers, "worker_max_jobs": bench.concurrency,
        "fast_poll_delay_s": FAST_POLL_S,
        "rows": {p.label: p.as_dict() for p in [*main_rows, bare]},
        "ratio_ours_over_bare": ratio,
        "arq_default_poll_delay": {
            "poll_delay_s": ARQ_DEFAULT_POLL_S, "rows": {p.label: p.as_dict() for p in deployed},
        },
        "worker_processes": {p.label: p.as_dict() for p in by_processes},
        "problems": bench.problems,
        "logged": logs.summary(),
    }  # fmt: skip
    print(logs.line())
    path = write_results(NAME, figures)
    print(f"figures: {path}")
    for problem in bench.problems:
        print(f"LOST, FAILED OR RETRIED JOBS: {problem}")
    return 1 if bench.problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench runtime_throughput", description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000, help="jobs per row (default 5000)")
    parser.add_argument("--producers", type=int, default=10, help="concurrent enqueuers, both sides (default 10)")
    parser.add_argument("--batch", type=int, default=500, help="batch size of the record() + push_many variant")
    parser.add_argument("--no-batch-variant", dest="variant", action="store_false", help="skip the batched variant")
    parser.add_argument("--processes", type=int, nargs="*", default=[1, 2, 4],
                        help="worker process counts of the multi-process rows (default 1 2 4; none: skip)")  # fmt: skip
    parser.add_argument("--repeat", type=int, default=3,
                        help="rounds of the main and process rows, ours and bare interleaved (default 3)")  # fmt: skip
    args = parser.parse_args(argv)
    with servers() as srv:
        return asyncio.run(
            run(srv, args.jobs, args.producers, args.batch, args.variant, args.processes, args.repeat)
        )


if __name__ == "__main__":
    raise SystemExit(main())
