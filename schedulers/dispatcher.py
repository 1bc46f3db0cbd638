"""dispatcher: feeds each fair queue (QUEUES: `"fair": true`, e.g. `bulk`) from the job records.

A creator's job on a fair queue is recorded but not pushed by its producer. Every
DISPATCHER_INTERVAL_S this scheduler tops each fair queue up to its `window` of dispatches in
Redis, taking the creators with due jobs round-robin (every creator's oldest, then every creator's
second oldest, ...). A creator's backlog of 50,000 jobs therefore waits in PostgreSQL, and another
creator's new job is at most one window behind, not 50,000 jobs behind. Why records and a window
rather than one Redis queue per creator: arq polls one sorted set per worker, and the records are
already the queue of truth (keys, leases, re-drive); the window bounds what a lost Redis would
have to re-drive. See docs/jobs.md.
"""

from __future__ import annotations

from typing import ClassVar

from geniehelper.runtime.delivery import dispatch_fair
from geniehelper.settings import Settings
from schedulers.base import Scheduler, SchedulerContext, TickResult


class Dispatcher(Scheduler):
    name: ClassVar[str] = "dispatcher"

    def interval_s(self, settings: Settings) -> float:
        return settings.dispatcher.interval_s

    async def tick(self, ctx: SchedulerContext) -> TickResult:
        settings = ctx.settings
        pushed = {}
        for name in sorted(settings.fair_queues):
            pushed[name] = await dispatch_fair(
                ctx.db, ctx.redis, name, window=settings.queue(name).window, ttl_s=settings.job_dispatch_ttl_s
            )
        return TickResult(found=sum(pushed.values()), enqueued=sum(pushed.values()), details={"pushed": pushed})
