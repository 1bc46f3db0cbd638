"""job_retention: prunes finished job records older than JOB_RETENTION_S, in batches.

Runs every JOB_RETENTION_INTERVAL_S as the system role, which may delete only finished records
(a restrictive policy in migration 0010). Each tick deletes at most ten batches of 1,000, oldest
first, one transaction per batch, so a large backlog is worked off over several ticks without long
locks. Active records are never touched.
"""

from __future__ import annotations

from typing import ClassVar

from geniehelper.runtime.delivery import prune_finished
from geniehelper.settings import Settings
from schedulers.base import Scheduler, SchedulerContext, TickResult


class JobRetention(Scheduler):
    name: ClassVar[str] = "job_retention"

    def interval_s(self, settings: Settings) -> float:
        return settings.job_retention.interval_s

    async def tick(self, ctx: SchedulerContext) -> TickResult:
        pruned = await prune_finished(ctx.db, older_than_s=ctx.settings.job_retention.older_than_s)
        return TickResult(found=pruned, details={"pruned": pruned})
