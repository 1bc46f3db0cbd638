"""The one base every scheduler runs on: the `Scheduler` contract and the loop that runs one.

An interval loop (interval from settings, plus jitter so replicas do not align) with PostgreSQL
advisory-lock leader election: any number of copies may run; the one holding the lock acts, the
others wait and take over within one interval after it dies (PostgreSQL drops a dead session's
locks). Ticks must stay idempotent (conditional claims, deterministic job ids), so even a leader
that lost its lock mid-tick cannot cause double work. Each tick logs `scheduler.tick` with found,
enqueued, skipped and took_ms; the health key shows who leads, when it last ticked, and whether
the last round failed (`failing`, `last_error`).

Nothing an outage raises ends a scheduler. Connecting at start, taking the lock, setup, tick,
wait and teardown each log their own failure (`scheduler.connect_failed`, `scheduler.lock_failed`,
`scheduler.setup_failed`, `scheduler.tick_failed`, `scheduler.wait_failed`, ...), then the loop
backs off (0.5 s doubling to 10 s; reset by a clean round) and carries on; a loop that still
crashes is logged (`scheduler.crashed`) and restarted with backoff. `SchedulerRunner.run()` runs
one scheduler on connections of its own; `schedulers.host` runs several in one process on shared
connections. Schedulers that turn due rows into jobs build on `schedulers.due_work`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import asyncpg
import redis.exceptions
import structlog
from arq.connections import ArqRedis

from geniehelper import health
from geniehelper.db import SYSTEM_ROLE, Database, LoginLacksRole, PrivilegedLogin
from geniehelper.runtime.queue import JobQueue
from geniehelper.runtime.registry import discover
from geniehelper.runtime.retry import describe
from geniehelper.runtime.transport import create_arq_redis
from geniehelper.settings import Settings, mask_url

log = structlog.get_logger("schedulers")
T = TypeVar("T")

RETRY_FIRST_S = 0.5
RETRY_MAX_S = 10.0
STANDBY_POLL_S = 5.0  # a standby retries the lock at least this often
CONNECT_TIMEOUT_S = 10.0
LOCK_QUERY_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 5.0

# Errors that mean "a server is unreachable or restarting", logged without a traceback.
OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # includes ConnectionRefusedError and TimeoutError
    asyncpg.InterfaceError,  # includes ConnectionDoesNotExistError
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, "the database system is starting up"
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)


@dataclass
class TickResult:
    found: int = 0
    enqueued: int = 0
    skipped: int = 0
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class SchedulerContext:
    settings: Settings
    db: Database
    redis: ArqRedis
    queue: JobQueue
    database_url: str


def lock_id(name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"geniehelper.scheduler.{name}".encode()).digest()[:8], "big", signed=True)


class Backoff:
    """Delays between retries after failures: RETRY_FIRST_S, doubling up to RETRY_MAX_S."""

    def __init__(self, first_s: float = RETRY_FIRST_S, max_s: float = RETRY_MAX_S) -> None:
        self.first_s = first_s
        self.max_s = max_s
        self._next = first_s

    def next(self) -> float:
        delay = self._next
        self._next = min(self.max_s, delay * 2)
        return delay

    def reset(self) -> None:
        self._next = self.first_s


async def sleep_unless_stopped(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to `seconds`; returns early (True) once `stop` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


async def _unless_stopped(aw: Awaitable[T], stop: asyncio.Event) -> T | None:
    """Await `aw`, but give up (cancel it, return None) as soon as `stop` is set."""
    task = asyncio.ensure_future(aw)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    return None if task.cancelled() else task.result()


class Scheduler(ABC):
    name: ClassVar[str]

    @abstractmethod
    def interval_s(self, settings: Settings) -> float: ...

    @abstractmethod
    async def tick(self, ctx: SchedulerContext) -> TickResult: ...

    async def setup(self, ctx: SchedulerContext) -> None:
        """Runs when this copy becomes leader (again after a teardown)."""

    async def teardown(self, ctx: SchedulerContext) -> None:
        """Runs when this copy stops leading; may run after a failed setup."""

    async def wait(self, ctx: SchedulerContext, seconds: float, stop: asyncio.Event) -> None:
        """Sleep until the next tick; a scheduler may wake earlier (e.g. on NOTIFY)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)


async def open_context(
    settings: Settings, database_url: str, redis_url: str, stop: asyncio.Event, *, pool_max_size: int = 4
) -> SchedulerContext | None:
    """Connect to Redis and PostgreSQL, retrying with backoff until both answer; None if stopped first."""
    backoff = Backoff()
    redis_client: ArqRedis | None = None
    db: Database | None = None
    try:
        while not stop.is_set():
            server, url = ("redis", redis_url) if redis_client is None else ("postgresql", database_url)
            try:
                if redis_client is None:
                    redis_client = await _unless_stopped(create_arq_redis(redis_url), stop)
                if redis_client is not None and db is None:
                    db = await _unless_stopped(Database.open(database_url, min_size=1, max_size=pool_max_size), stop)
            except (PrivilegedLogin, LoginLacksRole):  # a configuration error waiting will not fix
                raise
            except Exception as exc:
                delay = backoff.next()
                log.warning("scheduler.connect_failed", server=server, url=mask_url(url), error=describe(exc),
                            retry_in_s=delay)  # fmt: skip
                await sleep_unless_stopped(stop, delay)
                continue
            if redis_client is not None and db is not None:
                queue = JobQueue(
                    db, redis_client, discover(settings.job_packages),
                    dispatch_ttl_s=settings.job_dispatch_ttl_s, fair_queues=settings.fair_queues,
                )
                return SchedulerContext(settings, db, redis_client, queue, database_url)
    except BaseException:
        await _close(db, redis_client)
        raise
    await _close(db, redis_client)
    return None


async def close_context(ctx: SchedulerContext) -> None:
    await _close(ctx.db, ctx.redis)


@contextlib.asynccontextmanager
async def connected(
    settings: Settings, database_url: str, redis_url: str, stop: asyncio.Event,
    *, schedulers: list[str], pool_max_size: int = 4,
) -> AsyncIterator[SchedulerContext | None]:  # fmt: skip
    """A scheduler process's connections, from `process.ready` to `process.stopped`; None if
    `stop` was set before both servers answered."""
    ctx = await open_context(settings, database_url, redis_url, stop, pool_max_size=pool_max_size)
    if ctx is None:
        log.info("process.stopped", schedulers=schedulers, before="connecting")
        yield None
        return
    log.info("process.ready", schedulers=schedulers)
    try:
        yield ctx
    finally:
        await close_context(ctx)
        log.info("process.stopped", schedulers=schedulers)


async def _close(db: Database | None, redis_client: ArqRedis | None) -> None:
    if db is not None:
        try:
            await asyncio.wait_for(db.close(), CLOSE_TIMEOUT_S)
        except Exception:  # server gone: do not wait for a goodbye
            for pool in (db.app_pool, db.records_pool, db.system_pool):
                if pool is not None:
                    pool.terminate()
    if redis_client is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(redis_client.aclose(), CLOSE_TIMEOUT_S)


class SchedulerRunner:
    """One scheduler's loop: leader election, setup, tick, wait, each failure logged and backed off."""

    def __init__(
        self, scheduler: Scheduler, settings: Settings, database_url: str, redis_url: str,
        *, stop: asyncio.Event | None = None,
    ) -> None:  # fmt: skip
        self.scheduler = scheduler
        self.settings = settings
        self.database_url = database_url
        self.redis_url = redis_url
        self.stop = stop if stop is not None else asyncio.Event()
        self.is_leader = False
        self.ticks = 0
        self.last_tick_at: float | None = None
        self.failures = 0  # consecutive failed rounds; 0 once a round succeeds
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self._lock_conn: asyncpg.Connection | None = None
        self._set_up = False
        self._backoff = Backoff()
        self._retry_in = RETRY_FIRST_S

    def health_details(self) -> dict[str, Any]:
        return {
            "leader": self.is_leader, "ticks": self.ticks, "last_tick_at": self.last_tick_at,
            "interval_s": self.scheduler.interval_s(self.settings),
            "failing": self.failures > 0, "failures": self.failures,
            "last_error": self.last_error, "last_error_at": self.last_error_at,
        }  # fmt: skip

    async def run(self) -> None:
        """Run alone, on connections of its own, until `stop` is set (a host shares them among runners)."""
        async with connected(self.settings, self.database_url, self.redis_url, self.stop,
                             schedulers=[self.scheduler.name]) as ctx:  # fmt: skip
            if ctx is not None:
                await self.keep_serving(ctx)

    async def keep_serving(self, ctx: SchedulerContext) -> None:
        """`serve` until `stop` is set, restarting it with backoff when it crashes."""
        backoff = Backoff()
        while not self.stop.is_set():
            try:
                await self.serve(ctx)
            except Exception as exc:  # a bug outside the guarded steps: restart this loop, leave others be
                delay = backoff.next()
                self.failures += 1
                self.last_error, self.last_error_at = f"crashed: {describe(exc)}", time.time()
                log.error("scheduler.crashed", scheduler=self.scheduler.name, error=describe(exc),
                          restart_in_s=delay, exc_info=True)  # fmt: skip
                await sleep_unless_stopped(self.stop, delay)

    async def serve(self, ctx: SchedulerContext) -> None:
        """The loop on the given (possibly shared) connections, until `stop` is set."""
        name = self.scheduler.name
        interval = self.scheduler.interval_s(self.settings)
        beat = asyncio.create_task(
            health.beat_forever(ctx.redis, name, self.settings.health_interval_s, self.settings.health_stale_after_s,
                                self.health_details)
        )  # fmt: skip
        log.info("scheduler.started", scheduler=name, interval_s=interval)
        try:
            while not self.stop.is_set():
                try:
                    ok = await self._round(ctx, interval)
                except Exception as exc:  # whatever the round missed: still never end the loop
                    ok = self._failed("scheduler.loop_failed", exc)
                if ok:
                    self._succeeded()
                else:
                    await sleep_unless_stopped(self.stop, self._retry_in)
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
            if self._set_up:
                await self._teardown(ctx)
            await self._release()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ctx.redis.delete(health.health_key(name)), CLOSE_TIMEOUT_S)

    async def _round(self, ctx: SchedulerContext, interval: float) -> bool:
        """One round: hold the lock, then (as leader) tick and wait. False when a step failed."""
        try:
            leading = await self._hold_leadership()
        except Exception as exc:
            if self._set_up:
                await self._teardown(ctx)
            return self._failed("scheduler.lock_failed", exc)
        if not leading:
            if self._set_up:
                await self._teardown(ctx)
            # Standby: the plain base wait (no PostgreSQL query), so a dead leader is replaced within one interval.
            await Scheduler.wait(self.scheduler, ctx, min(interval, STANDBY_POLL_S), self.stop)
            return True
        if not self._set_up:
            try:
                await self.scheduler.setup(ctx)
            except Exception as exc:
                await self._teardown(ctx)
                await self._release()  # let another copy lead while this one cannot
                return self._failed("scheduler.setup_failed", exc)
            self._set_up = True
        started = time.monotonic()
        try:
            result = await self.scheduler.tick(ctx)
        except Exception as exc:  # one bad tick must not stop the scheduler
            return self._failed("scheduler.tick_failed", exc)
        self.ticks += 1
        self.last_tick_at = time.time()
        log.info(
            "scheduler.tick", scheduler=self.scheduler.name, found=result.found, enqueued=result.enqueued,
            skipped=result.skipped, took_ms=round((time.monotonic() - started) * 1000), **result.details,
        )  # fmt: skip
        try:
            # Up to a tenth of the interval: enough to keep replicas apart, never enough to slow a
            # fast loop (the dispatcher's 0.1 s) down to the jitter's pace.
            jitter = random.uniform(0, min(self.settings.scheduler_jitter_s, interval / 10))
            await self.scheduler.wait(ctx, interval + jitter, self.stop)
        except Exception as exc:
            return self._failed("scheduler.wait_failed", exc)
        return True

    def _failed(self, event: str, exc: Exception) -> bool:
        self.failures += 1
        self.last_error = f"{event.removeprefix('scheduler.')}: {describe(exc)}"
        self.last_error_at = time.time()
        self._retry_in = self._backoff.next()
        outage = isinstance(exc, OUTAGE_ERRORS)
        (log.warning if outage else log.error)(
            event, scheduler=self.scheduler.name, error=describe(exc), failures=self.failures,
            retry_in_s=self._retry_in, exc_info=not outage,
        )  # fmt: skip
        return False

    def _succeeded(self) -> None:
        if self.failures:
            log.info("scheduler.recovered", scheduler=self.scheduler.name, after_failures=self.failures)
            self.failures = 0
        self._backoff.reset()

    async def _teardown(self, ctx: SchedulerContext) -> None:
        self._set_up = False
        try:
            await self.scheduler.teardown(ctx)
        except Exception as exc:
            log.warning("scheduler.teardown_failed", scheduler=self.scheduler.name, error=describe(exc))

    async def _hold_leadership(self) -> bool:
        """True while this copy holds the advisory lock (checked on the lock's own connection).

        Raises when PostgreSQL cannot be asked; the lock is then released (its session closed).
        """
        lock = lock_id(self.scheduler.name)
        try:
            if self._lock_conn is None or self._lock_conn.is_closed():
                self._lock_conn = await asyncpg.connect(
                    self.database_url, timeout=CONNECT_TIMEOUT_S,
                    server_settings={"role": SYSTEM_ROLE, "application_name": self.scheduler.name},
                )  # fmt: skip
            got = await self._lock_conn.fetchval("select pg_try_advisory_lock($1)", lock, timeout=LOCK_QUERY_TIMEOUT_S)
            # pg_try_advisory_lock stacks when we already hold it: keep the count at one.
            if got and self.is_leader:
                await self._lock_conn.execute("select pg_advisory_unlock($1)", lock, timeout=LOCK_QUERY_TIMEOUT_S)
        except Exception as exc:
            if self.is_leader:
                log.warning("scheduler.leadership_lost", scheduler=self.scheduler.name, error=describe(exc))
            await self._release()
            raise
        if got and not self.is_leader:
            log.info("scheduler.leader", scheduler=self.scheduler.name)
        self.is_leader = bool(got)
        return self.is_leader

    async def _release(self) -> None:
        if self._lock_conn is not None:
            conn, self._lock_conn = self._lock_conn, None
            try:
                await conn.close(timeout=CLOSE_TIMEOUT_S)
            except Exception:
                conn.terminate()
        self.is_leader = False
