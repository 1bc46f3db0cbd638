"""post_scheduler: dispatches due scheduled posts to publish_post.

Every POST_SCHEDULER_INTERVAL_S (60 s) it claims due posts atomically (`FOR UPDATE SKIP LOCKED`,
status scheduled → queued) and enqueues one publish_post per post with a deterministic job key, so a
re-dispatch creates nothing. Beyond the poll it sleeps only until the next due post and is woken by
NOTIFY when a sooner post is scheduled, so a post is dispatched within about a second of its time;
the poll stays as the safety net. Posts overdue by more than POST_MAX_LATENESS_S are not published
blindly: they are marked `missed` with the reason and reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from datetime import datetime
from typing import Any, ClassVar
from uuid import UUID

import asyncpg
import structlog

from geniehelper.contracts import PUBLISH_POST, PublishPostPayload, publish_post_key
from geniehelper.db import SYSTEM_ROLE
from geniehelper.domain import publishing
from geniehelper.runtime.queue import EnqueuedJob, JobRequest
from geniehelper.runtime.quotas import QuotaExceeded
from geniehelper.settings import Settings
from schedulers.base import Scheduler, SchedulerContext, TickResult

log = structlog.get_logger("schedulers.post_scheduler")
CHANNEL = "geniehelper_scheduled_posts"


class PostScheduler(Scheduler):
    name: ClassVar[str] = "post_scheduler"

    def __init__(self) -> None:
        self._listener: asyncpg.Connection | None = None
        self._wake = asyncio.Event()
        self._planned_wake_at = 0.0  # epoch seconds of the next planned tick

    def interval_s(self, settings: Settings) -> float:
        return settings.post_scheduler_interval_s

    async def setup(self, ctx: SchedulerContext) -> None:
        await self._listen(ctx)

    async def teardown(self, ctx: SchedulerContext) -> None:
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close(timeout=5)
            self._listener = None

    async def _listen(self, ctx: SchedulerContext) -> None:
        try:
            self._listener = await asyncpg.connect(ctx.database_url, server_settings={"role": SYSTEM_ROLE})
            await self._listener.add_listener(CHANNEL, self._on_notify)
        except (OSError, asyncpg.PostgresError) as exc:  # polling still works without it
            log.warning("post_scheduler.listen_failed", error=str(exc))
            self._listener = None

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        with contextlib.suppress(ValueError):
            if float(str(payload)) < self._planned_wake_at:
                self._wake.set()

    async def wait(self, ctx: SchedulerContext, seconds: float, stop: asyncio.Event) -> None:
        if self._listener is None or self._listener.is_closed():
            await self._listen(ctx)
        async with ctx.db.system_tx() as conn:
            next_due: datetime | None = await conn.fetchval(publishing.NEXT_DUE)
        now = time.time()
        sleep_s = seconds if next_due is None else max(0.0, min(seconds, next_due.timestamp() - now))
        self._planned_wake_at = now + sleep_s
        self._wake.clear()
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
        try:
            await asyncio.wait(waiters, timeout=sleep_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def tick(self, ctx: SchedulerContext) -> TickResult:
        settings = ctx.settings
        result = TickResult(details={"missed": 0, "refused": 0, "latency_ms_max": 0})
        while True:
            async with ctx.db.system_tx() as conn:
                claimed = await conn.fetch(
                    publishing.CLAIM_DUE, settings.post_dispatch_batch, settings.post_max_lateness_s,
                    settings.post_requeue_after_s,
                )  # fmt: skip
            if not claimed:
                return result
            result.found += len(claimed)
            by_creator: dict[UUID, list[asyncpg.Record]] = defaultdict(list)
            for row in claimed:
                if row["status"] == "missed":
                    result.details["missed"] += 1
                    log.warning(
                        "post.missed", user_id=str(row["user_id"]), scheduled_post_id=str(row["id"]),
                        lateness_s=round(row["lateness_s"]), max_lateness_s=settings.post_max_lateness_s,
                    )  # fmt: skip
                    continue
                by_creator[row["user_id"]].append(row)
                latency_ms = max(0, round(row["lateness_s"] * 1000))
                result.details["latency_ms_max"] = max(result.details["latency_ms_max"], latency_ms)
            jobs: list[EnqueuedJob] = []
            for user_id, rows in by_creator.items():
                jobs += await self._record_jobs(ctx, user_id, rows, result)
            await ctx.queue.push_many(jobs)
            result.enqueued += sum(not j.duplicate for j in jobs)
            result.skipped += sum(j.duplicate for j in jobs)
            if len(claimed) < settings.post_dispatch_batch:
                return result

    async def _record_jobs(
        self, ctx: SchedulerContext, user_id: UUID, rows: list[asyncpg.Record], result: TickResult
    ) -> list[EnqueuedJob]:
        """One creator transaction records all of that creator's publish jobs (the outbox)."""
        requests = [
            JobRequest(
                PublishPostPayload(scheduled_post_id=row["id"], revision=row["revision"]),
                key=publish_post_key(row["id"], row["revision"]), scheduled_post_id=row["id"],
            )
            for row in rows
        ]  # fmt: skip
        jobs = []
        async with ctx.db.creator_tx(user_id) as conn:
            outcomes = await ctx.queue.record_many(conn, PUBLISH_POST.name, requests, user_id=user_id)
            for row, outcome in zip(rows, outcomes, strict=True):
                if isinstance(outcome, QuotaExceeded):
                    result.details["refused"] += 1
                    reason = f"tier_limit_reached: {outcome}"
                    await conn.execute(publishing.MARK_FAILED, row["id"], reason, row["revision"])
                    log.warning("post.quota_refused", scheduled_post_id=str(row["id"]), **outcome.as_dict())
                else:
                    jobs.append(outcome)
        return jobs
