"""post_scheduler: dispatches due scheduled posts to publish_post.

Every POST_SCHEDULER_INTERVAL_S (60 s) it claims due posts atomically (`FOR UPDATE SKIP LOCKED`,
status scheduled → queued) and enqueues one publish_post per post with a deterministic job key, so a
re-dispatch creates nothing (the due-work base: `schedulers.due_work`); a post the creator's quota
refuses is marked failed (`tier_limit_reached: ...`) in the transaction that records the others.
Beyond the poll it sleeps only until the next due post and is woken by NOTIFY when a sooner post
is scheduled, so a post is dispatched within about a second of its time; the poll stays as the
safety net. Posts overdue by more than POST_MAX_LATENESS_S are not published blindly: they are
marked `missed` with the reason and reported.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar
from uuid import UUID

import asyncpg
import structlog

from geniehelper.domain import publishing
from geniehelper.runtime.queue import JobRequest
from geniehelper.runtime.quotas import QuotaExceeded
from geniehelper.settings import Settings
from schedulers.base import SchedulerContext, TickResult
from schedulers.due_work import DueWorkScheduler
from schedulers.wakeups import NotifyWakeup

log = structlog.get_logger("schedulers.post_scheduler")
CHANNEL = "geniehelper_scheduled_posts"


class PostScheduler(DueWorkScheduler[asyncpg.Record]):
    name: ClassVar[str] = "post_scheduler"
    job_name: ClassVar[str] = "publish_post"

    def __init__(self) -> None:
        self._planned_wake_at = 0.0  # epoch seconds of the next planned tick
        # A notification's payload is the post's scheduled_time as epoch seconds (the database's clock,
        # like _planned_wake_at): only a post due before the planned wake-up is worth waking for.
        self._wakeup = NotifyWakeup(self.name, CHANNEL, self._sooner_than_planned)

    def interval_s(self, settings: Settings) -> float:
        return settings.post_scheduler.interval_s

    async def setup(self, ctx: SchedulerContext) -> None:
        await self._wakeup.ensure(ctx)

    async def teardown(self, ctx: SchedulerContext) -> None:
        await self._wakeup.close()

    def _sooner_than_planned(self, payload: str) -> bool:
        try:
            return float(payload) < self._planned_wake_at
        except ValueError:
            return False

    async def wait(self, ctx: SchedulerContext, seconds: float, stop: asyncio.Event) -> None:
        # How long until the next due post, computed by PostgreSQL: its clock is the one CLAIM_DUE compares
        # against, so a clock difference between hosts cannot matter. Never less than min_wait_s: a post that
        # is due but that the claim skipped (locked by another transaction: SKIP LOCKED) would otherwise make
        # the next wait 0 and the scheduler spin. A floor of 0.25 s bounds such a spin to 4 cheap ticks a second
        # and delays a post due sooner than that by at most a quarter of a second. Errors propagate: the runner
        # logs them and backs off.
        min_wait_s = 0.25
        next_due_delay = """
            select extract(epoch from now())::float8 as db_now,
                   greatest($1::float8, least($2::float8,
                            coalesce(extract(epoch from min(scheduled_time) - now())::float8, $2::float8))) as sleep_s
              from scheduled_posts
             where status = 'scheduled'
        """
        await self._wakeup.ensure(ctx)
        # Until the query answers, any post scheduled meanwhile must wake the coming sleep.
        self._planned_wake_at = float("inf")
        self._wakeup.event.clear()
        async with ctx.db.system_tx() as conn:
            row = await conn.fetchrow(next_due_delay, min_wait_s, max(seconds, min_wait_s))
        sleep_s: float = row["sleep_s"]
        self._planned_wake_at = row["db_now"] + sleep_s
        await self._wakeup.wait(stop, sleep_s)

    def batch_size(self, settings: Settings) -> int:
        return settings.post_scheduler.batch

    async def claim(self, conn: asyncpg.Connection, settings: Settings, limit: int) -> list[asyncpg.Record]:
        group = settings.post_scheduler
        return await conn.fetch(publishing.CLAIM_DUE, limit, group.max_lateness_s, group.requeue_after_s)

    def initial_details(self) -> dict[str, Any]:
        return {"missed": 0, "latency_ms_max": 0}

    def request(self, row: asyncpg.Record, settings: Settings, result: TickResult) -> tuple[UUID, JobRequest] | None:
        if row["status"] == "missed":  # the claim marked it missed with the reason: report it, publish nothing
            result.details["missed"] += 1
            log.warning(
                "post.missed", user_id=str(row["user_id"]), scheduled_post_id=str(row["id"]),
                lateness_s=round(row["lateness_s"]), max_lateness_s=settings.post_scheduler.max_lateness_s,
            )  # fmt: skip
            return None
        latency_ms = max(0, round(row["lateness_s"] * 1000))
        result.details["latency_ms_max"] = max(result.details["latency_ms_max"], latency_ms)
        # publish_post's definition (jobs/publish_post.py) derives the key and subject from the payload.
        return row["user_id"], JobRequest({"scheduled_post_id": str(row["id"]), "revision": row["revision"]})

    async def refused(
        self, conn: asyncpg.Connection, row: asyncpg.Record, refusal: QuotaExceeded, result: TickResult
    ) -> None:
        await conn.execute(publishing.MARK_FAILED, row["id"], f"tier_limit_reached: {refusal}", row["revision"])
        log.warning("post.quota_refused", scheduled_post_id=str(row["id"]), **refusal.as_dict())
