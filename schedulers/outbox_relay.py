"""outbox_relay: every queued job record's current dispatch reaches Redis; stuck ones are re-driven.

Each tick (OUTBOX_RELAY_INTERVAL_S), bounded and idempotent (see geniehelper.runtime.delivery):
1. records whose attempt's lease expired (worker killed, paused, partitioned) get a new dispatch;
2. queued records whose dispatch Redis no longer holds (restart, flush, expiry) get a new dispatch;
3. records not yet in Redis are pushed: those a producer committed but never pushed (after a grace
   period, so it does not race the producer's own push), failed pushes, and the re-driven.
"""

from __future__ import annotations

from typing import ClassVar

from geniehelper.runtime.delivery import LostDispatchFinder, redrive_expired_leases, relay_unpushed
from geniehelper.settings import Settings
from schedulers.base import Scheduler, SchedulerContext, TickResult


class OutboxRelay(Scheduler):
    name: ClassVar[str] = "outbox_relay"

    def __init__(self) -> None:
        self._lost = LostDispatchFinder()

    def interval_s(self, settings: Settings) -> float:
        return settings.outbox_relay.interval_s

    async def tick(self, ctx: SchedulerContext) -> TickResult:
        settings = ctx.settings
        expired = await redrive_expired_leases(ctx.db)
        self._lost.grace_s = settings.outbox_relay.grace_s
        lost = await self._lost.redrive_lost(ctx.db, ctx.redis)
        pushed, failed = await relay_unpushed(
            ctx.db, ctx.redis, grace_s=settings.outbox_relay.grace_s, ttl_s=settings.job_dispatch_ttl_s,
            queues=settings.queues.keys(), fair_queues=settings.fair_queues,
        )  # fmt: skip
        return TickResult(
            found=pushed + failed, enqueued=pushed, skipped=failed,
            details={"lease_expired": expired, "dispatch_lost": lost, "push_failed": failed},
        )  # fmt: skip
