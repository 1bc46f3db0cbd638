"""fan_scorer: enqueues score_fans for every creator whose fans' scores are due.

Every FAN_SCORER_INTERVAL_S (300 s) it claims the creators whose fans were never scored or were
scored more than FAN_SCORES_STALE_AFTER_S (a day) ago (`geniehelper.segments.scoring.CLAIM_DUE`,
stamping `fan_scoring.claimed_at`) and enqueues one score_fans job per creator on the bulk queue
(one active per creator: its key). score_fans records the run and clears the claim; a claim not
followed by a run is claimed again after FAN_SCORER_REQUEUE_AFTER_S. On demand: enqueue score_fans
for the creator (`geniehelper enqueue score_fans --payload '{}' --user ID`).
"""

from __future__ import annotations

from typing import ClassVar
from uuid import UUID

import asyncpg

from geniehelper.runtime.queue import JobRequest
from geniehelper.segments.scoring import CLAIM_DUE
from geniehelper.settings import Settings
from schedulers.base import TickResult
from schedulers.due_work import DueWorkScheduler


class FanScorer(DueWorkScheduler[asyncpg.Record]):
    name: ClassVar[str] = "fan_scorer"
    job_name: ClassVar[str] = "score_fans"

    def interval_s(self, settings: Settings) -> float:
        return settings.fan_scorer.interval_s

    def batch_size(self, settings: Settings) -> int:
        return settings.fan_scorer.batch

    async def claim(self, conn: asyncpg.Connection, settings: Settings, limit: int) -> list[asyncpg.Record]:
        group = settings.fan_scorer
        return await conn.fetch(CLAIM_DUE, limit, group.stale_after_s, group.requeue_after_s)

    def request(self, row: asyncpg.Record, settings: Settings, result: TickResult) -> tuple[UUID, JobRequest] | None:
        return row["user_id"], JobRequest({})
