"""outbox_relay: pushes job records that were committed but never reached Redis.

A service that records a job inside its own transaction pushes it after commit; if it dies in
between, the record waits in `media_jobs` with `enqueued_at` NULL. This scheduler pushes those
(after a grace period, so it does not race the producer's own push; arq drops duplicates anyway).
"""

from __future__ import annotations

from typing import ClassVar

from geniehelper.runtime.queue import relay_unpushed
from geniehelper.settings import Settings
from schedulers.base import Scheduler, SchedulerContext, TickResult


class OutboxRelay(Scheduler):
    name: ClassVar[str] = "outbox_relay"

    def interval_s(self, settings: Settings) -> float:
        return settings.outbox_relay_interval_s

    async def tick(self, ctx: SchedulerContext) -> TickResult:
        pushed = await relay_unpushed(ctx.db, ctx.redis, grace_s=ctx.settings.outbox_relay_grace_s)
        return TickResult(found=pushed, enqueued=pushed)
