"""outbox_relay: every queued job record's current dispatch reaches Redis.

Each tick (OUTBOX_RELAY_INTERVAL_S), bounded and idempotent (see geniehelper.runtime.delivery), it
pushes the records not yet in Redis: those a producer committed but never pushed (after a grace
period, so it does not race the producer's own push), failed pushes, and those job_monitor
re-drove (stalled leases, dispatches Redis lost).
"""

from __future__ import annotations

from typing import ClassVar

from geniehelper.runtime.delivery import relay_unpushed
from geniehelper.settings import Settings
from schedulers.base import Scheduler, SchedulerContext, TickResult


class OutboxRelay(Scheduler):
    name: ClassVar[str] = "outbox_relay"

    def interval_s(self, settings: Settings) -> float:
        return settings.outbox_relay.interval_s

    async def tick(self, ctx: SchedulerContext) -> TickResult:
        settings = ctx.settings
        pushed, failed = await relay_unpushed(
            ctx.db, ctx.redis, grace_s=settings.outbox_relay.grace_s, ttl_s=settings.job_dispatch_ttl_s,
            queues=settings.queues.keys(), fair_queues=settings.fair_queues,
        )  # fmt: skip
        return TickResult(found=pushed + failed, enqueued=pushed, skipped=failed, details={"push_failed": failed})
