"""segment_evaluator: enqueues an evaluate_segment job for every segment that is due.

Every SEGMENT_EVALUATOR_INTERVAL_S (30 s) it claims the active segments that are due
(`geniehelper.segments.evaluation.CLAIM_DUE`: rules changed since their last evaluation, never
evaluated, evaluated more than SEGMENT_STALE_AFTER_S ago, or with domain events of their creator that
the last evaluation may not have seen: docs/segments.md) and enqueues one evaluate_segment job
per segment on the bulk queue, keyed on the segment, so a segment claimed again while its job waits
adds nothing (the due-work base: `schedulers.due_work`). A segment whose rules change is evaluated at
once: the change makes it due and claimable, and the trigger that records it notifies this
scheduler, which wakes instead of waiting for the poll. A claim not followed by an evaluation (a
lost job, refused rules) is claimed again after SEGMENT_REQUEUE_AFTER_S.
"""

from __future__ import annotations

import asyncio
from typing import ClassVar
from uuid import UUID

import asyncpg

from geniehelper.runtime.queue import JobRequest
from geniehelper.segments.evaluation import CLAIM_DUE
from geniehelper.settings import Settings
from schedulers.base import SchedulerContext, TickResult
from schedulers.due_work import DueWorkScheduler
from schedulers.wakeups import NotifyWakeup

CHANNEL = "geniehelper_fan_segments"  # notified by the fan_segments trigger (migration 0021)


class SegmentEvaluator(DueWorkScheduler[asyncpg.Record]):
    name: ClassVar[str] = "segment_evaluator"
    job_name: ClassVar[str] = "evaluate_segment"

    def __init__(self) -> None:
        self._wakeup = NotifyWakeup(self.name, CHANNEL)

    def interval_s(self, settings: Settings) -> float:
        return settings.segment_evaluator.interval_s

    def batch_size(self, settings: Settings) -> int:
        return settings.segment_evaluator.batch

    async def claim(self, conn: asyncpg.Connection, settings: Settings, limit: int) -> list[asyncpg.Record]:
        group = settings.segment_evaluator
        return await conn.fetch(CLAIM_DUE, limit, group.stale_after_s, group.requeue_after_s)

    def request(self, row: asyncpg.Record, settings: Settings, result: TickResult) -> tuple[UUID, JobRequest] | None:
        # evaluate_segment's definition (jobs/evaluate_segment.py) derives the key and subject from the payload.
        return row["user_id"], JobRequest({"segment_id": str(row["id"])})

    async def setup(self, ctx: SchedulerContext) -> None:
        await self._wakeup.ensure(ctx)

    async def teardown(self, ctx: SchedulerContext) -> None:
        await self._wakeup.close()

    async def wait(self, ctx: SchedulerContext, seconds: float, stop: asyncio.Event) -> None:
        await self._wakeup.ensure(ctx)
        try:
            await self._wakeup.wait(stop, seconds)
        finally:
            # Consumed by the tick that follows; a change notified during that tick wakes the next wait.
            self._wakeup.event.clear()
