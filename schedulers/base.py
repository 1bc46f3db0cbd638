"""The one base every scheduler process runs on.

An interval loop (interval from settings, plus jitter so replicas do not align) with PostgreSQL
advisory-lock leader election: any number of copies may run; the one holding the lock acts, the
others wait and take over within one interval after it dies (PostgreSQL drops a dead session's
locks). Ticks must stay idempotent (conditional claims, deterministic job ids), so even a leader
that lost its lock mid-tick cannot cause double work. Each tick logs `scheduler.tick` with found,
enqueued, skipped and took_ms; the health key shows who leads and when it last ticked.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import signal
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import asyncpg
import structlog
from arq.connections import ArqRedis

from geniehelper import health
from geniehelper.contracts import ALL_CONTRACTS
from geniehelper.db import SYSTEM_ROLE, Database
from geniehelper.runtime.definition import JobRegistry
from geniehelper.runtime.queue import JobQueue
from geniehelper.runtime.quotas import load_tier_limits
from geniehelper.runtime.transport import create_arq_redis
from geniehelper.settings import Settings

log = structlog.get_logger("schedulers")


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


class Scheduler(ABC):
    name: ClassVar[str]

    @abstractmethod
    def interval_s(self, settings: Settings) -> float: ...

    @abstractmethod
    async def tick(self, ctx: SchedulerContext) -> TickResult: ...

    async def setup(self, ctx: SchedulerContext) -> None:
        """Runs once when this copy becomes leader."""

    async def teardown(self, ctx: SchedulerContext) -> None:
        """Runs when this copy stops leading."""

    async def wait(self, ctx: SchedulerContext, seconds: float, stop: asyncio.Event) -> None:
        """Sleep until the next tick; a scheduler may wake earlier (e.g. on NOTIFY)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)


class SchedulerRunner:
    def __init__(self, scheduler: Scheduler, settings: Settings, database_url: str, redis_url: str) -> None:
        self.scheduler = scheduler
        self.settings = settings
        self.database_url = database_url
        self.redis_url = redis_url
        self.stop = asyncio.Event()
        self.is_leader = False
        self.ticks = 0
        self.last_tick_at: float | None = None
        self._lock_conn: asyncpg.Connection | None = None

    async def run(self) -> None:
        name = self.scheduler.name
        interval = self.scheduler.interval_s(self.settings)
        redis = await create_arq_redis(self.redis_url)
        db = await Database.open(self.database_url, min_size=1, max_size=4)
        ctx = SchedulerContext(
            self.settings, db, redis, JobQueue(db, redis, JobRegistry(ALL_CONTRACTS), load_tier_limits()),
            self.database_url,
        )  # fmt: skip
        beat = asyncio.create_task(
            health.beat_forever(
                redis, name, self.settings.health_interval_s, self.settings.health_stale_after_s,
                lambda: {"leader": self.is_leader, "ticks": self.ticks, "last_tick_at": self.last_tick_at},
            )
        )  # fmt: skip
        log.info("process.ready", scheduler=name, interval_s=interval)
        try:
            while not self.stop.is_set():
                was_leader = self.is_leader
                if not await self._hold_leadership():
                    # Standby: try again soon, so a dead leader is replaced within one interval.
                    await self.scheduler.wait(ctx, min(interval, 5.0), self.stop)
                    continue
                if not was_leader:
                    await self.scheduler.setup(ctx)
                await self._tick(ctx)
                jitter = random.uniform(0, self.settings.scheduler_jitter_s)
                await self.scheduler.wait(ctx, interval + jitter, self.stop)
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
            if self.is_leader:
                with contextlib.suppress(Exception):
                    await self.scheduler.teardown(ctx)
            await self._release()
            with contextlib.suppress(Exception):
                await redis.delete(health.health_key(name))
            await db.close()
            await redis.aclose()
            log.info("process.stopped", scheduler=name)

    async def _tick(self, ctx: SchedulerContext) -> None:
        started = time.monotonic()
        try:
            result = await self.scheduler.tick(ctx)
        except Exception as exc:  # one bad tick must not stop the scheduler
            log.error("scheduler.tick_failed", scheduler=self.scheduler.name, error=f"{type(exc).__name__}: {exc}")
            return
        self.ticks += 1
        self.last_tick_at = time.time()
        log.info(
            "scheduler.tick", scheduler=self.scheduler.name, found=result.found, enqueued=result.enqueued,
            skipped=result.skipped, took_ms=round((time.monotonic() - started) * 1000), **result.details,
        )  # fmt: skip

    async def _hold_leadership(self) -> bool:
        """True while this copy holds the advisory lock (checked on the lock's own connection)."""
        try:
            if self._lock_conn is None or self._lock_conn.is_closed():
                self._lock_conn = await asyncpg.connect(
                    self.database_url, server_settings={"role": SYSTEM_ROLE, "application_name": self.scheduler.name}
                )
            got = await self._lock_conn.fetchval("select pg_try_advisory_lock($1)", lock_id(self.scheduler.name))
            # pg_try_advisory_lock stacks when we already hold it: keep the count at one.
            if got and self.is_leader:
                await self._lock_conn.execute("select pg_advisory_unlock($1)", lock_id(self.scheduler.name))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            if self.is_leader:
                log.warning("scheduler.leadership_lost", scheduler=self.scheduler.name, error=str(exc))
            self.is_leader = False
            await self._release()
            return False
        if got and not self.is_leader:
            log.info("scheduler.leader", scheduler=self.scheduler.name)
        self.is_leader = bool(got)
        return self.is_leader

    async def _release(self) -> None:
        if self._lock_conn is not None:
            with contextlib.suppress(Exception):
                await self._lock_conn.close(timeout=5)
            self._lock_conn = None
        self.is_leader = False


def run_scheduler(scheduler: Scheduler, settings: Settings, database_url: str, redis_url: str) -> None:
    """Run until SIGINT/SIGTERM, then finish the current tick and release the lock."""

    async def main() -> None:
        runner = SchedulerRunner(scheduler, settings, database_url, redis_url)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, runner.stop.set)
        await runner.run()

    asyncio.run(main())
