"""The scheduler host: several schedulers in one process (`geniehelper scheduler all`).

One Database and one Redis client for all of them, one runner task each. Each runner keeps its
own advisory lock, loop and health key (see `schedulers.base`), and a runner whose loop crashes is
restarted with backoff while the others carry on, so one scheduler never stops another.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Sequence
from typing import Any

import structlog

from geniehelper import health
from geniehelper.settings import Settings
from schedulers.base import CLOSE_TIMEOUT_S, Scheduler, SchedulerRunner, connected

log = structlog.get_logger("schedulers")


class SchedulerHost:
    """Runs schedulers in one process, on shared connections. With `role`, the host also publishes a
    health key of its own (the process's role, e.g. `scheduler` for `scheduler all`)."""

    def __init__(
        self, schedulers: Sequence[Scheduler], settings: Settings, database_url: str, redis_url: str,
        *, role: str | None = None, stop: asyncio.Event | None = None,
    ) -> None:  # fmt: skip
        self.settings = settings
        self.database_url = database_url
        self.redis_url = redis_url
        self.role = role
        self.stop = stop if stop is not None else asyncio.Event()
        self.runners = [SchedulerRunner(s, settings, database_url, redis_url, stop=self.stop) for s in schedulers]

    def health_details(self) -> dict[str, Any]:
        return {
            "schedulers": [r.scheduler.name for r in self.runners],
            "leading": [r.scheduler.name for r in self.runners if r.is_leader],
            "failing": [r.scheduler.name for r in self.runners if r.failures],
        }

    async def run(self) -> None:
        """Run every scheduler until `stop` is set."""
        names = [r.scheduler.name for r in self.runners]
        async with connected(self.settings, self.database_url, self.redis_url, self.stop, schedulers=names,
                             pool_max_size=max(4, 2 * len(names))) as ctx:  # fmt: skip
            if ctx is None:
                return
            beat: asyncio.Task[None] | None = None
            if self.role is not None:
                beat = asyncio.create_task(
                    health.beat_forever(ctx.redis, self.role, self.settings.health_interval_s,
                                        self.settings.health_stale_after_s, self.health_details)
                )  # fmt: skip
            try:
                async with asyncio.TaskGroup() as group:
                    for runner in self.runners:
                        group.create_task(runner.keep_serving(ctx))
            finally:
                if beat is not None:
                    beat.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await beat
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(ctx.redis.delete(health.health_key(self.role or "")), CLOSE_TIMEOUT_S)


def run_schedulers(
    schedulers: Sequence[Scheduler], settings: Settings, database_url: str, redis_url: str, *, role: str | None = None
) -> None:
    """Run until SIGINT/SIGTERM, then finish the current ticks and release the locks (a second signal: at once)."""

    async def main() -> None:
        host = SchedulerHost(schedulers, settings, database_url, redis_url, role=role)
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()

        def on_signal() -> None:
            if host.stop.is_set() and task is not None:
                task.cancel()
            host.stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        try:
            await host.run()
        except asyncio.CancelledError:
            log.warning("process.stopped", forced=True)

    asyncio.run(main())


def run_scheduler(scheduler: Scheduler, settings: Settings, database_url: str, redis_url: str) -> None:
    """One scheduler alone (see run_schedulers)."""
    run_schedulers([scheduler], settings, database_url, redis_url)
