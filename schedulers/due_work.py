"""The base for schedulers that turn due rows into jobs (post_scheduler, scrape_scheduler; next
segment_evaluator, scoring).

A subclass declares the job it enqueues, how to claim due rows (SQL in the system transaction,
which must also mark them claimed so the next claim skips them), and how a claimed row becomes a
creator's job request (or, overriding `requests`, several jobs). The base does the rest, the same
way for all of them: claims batches until
a short one; records each creator's jobs in one creator transaction (the outbox: a job exists
only if its transaction commits), where it also hands the rows the creator's quota refused to the
subclass, so settling them commits or rolls back with the records; then pushes every recorded
job, and counts found / enqueued / skipped (duplicates: the key's job is already active) and
`refused` in `TickResult`.
"""

from __future__ import annotations

from abc import abstractmethod
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, ClassVar, Generic, TypeVar
from uuid import UUID

import asyncpg

from geniehelper.runtime.queue import EnqueuedJob, JobRequest
from geniehelper.runtime.quotas import QuotaExceeded
from geniehelper.settings import Settings
from schedulers.base import Scheduler, SchedulerContext, TickResult

Row = TypeVar("Row")


class DueWorkScheduler(Scheduler, Generic[Row]):
    job_name: ClassVar[str]  # the job every due row becomes

    @abstractmethod
    def batch_size(self, settings: Settings) -> int:
        """Rows claimed per query."""

    @abstractmethod
    async def claim(self, conn: asyncpg.Connection, settings: Settings, limit: int) -> Sequence[Row]:
        """Claim up to `limit` due rows in the system transaction `conn`, so no later claim returns them."""

    @abstractmethod
    def request(self, row: Row, settings: Settings, result: TickResult) -> tuple[UUID, JobRequest] | None:
        """The creator and job for a claimed row; None for a row claimed but not to be enqueued (the
        claim settled it otherwise, e.g. a post marked missed). May count in `result.details`."""

    def requests(self, row: Row, settings: Settings, result: TickResult) -> list[tuple[UUID, str, JobRequest]]:
        """Every job a claimed row becomes, as (creator, job name, request). The default: the one job
        `request()` gives, of `job_name`; a scheduler whose rows become several jobs overrides this."""
        due = self.request(row, settings, result)
        return [] if due is None else [(due[0], self.job_name, due[1])]

    async def refused(self, conn: asyncpg.Connection, row: Row, refusal: QuotaExceeded, result: TickResult) -> None:
        """A row whose job the creator's quota refused, in the creator's transaction that recorded the
        others. The default leaves the row as the claim left it."""

    def initial_details(self) -> dict[str, Any]:
        """This scheduler's own counters in `TickResult.details`, so every tick logs them, zero or not."""
        return {}

    async def tick(self, ctx: SchedulerContext) -> TickResult:
        result = TickResult(details={**self.initial_details(), "refused": 0})
        limit = self.batch_size(ctx.settings)
        while True:
            async with ctx.db.system_tx() as conn:
                claimed = await self.claim(conn, ctx.settings, limit)
            if not claimed:
                return result
            result.found += len(claimed)
            by_creator: dict[UUID, dict[str, list[tuple[Row, JobRequest]]]] = defaultdict(lambda: defaultdict(list))
            for row in claimed:
                for user_id, job_name, request in self.requests(row, ctx.settings, result):
                    by_creator[user_id][job_name].append((row, request))
            jobs: list[EnqueuedJob] = []
            for user_id, due_rows in by_creator.items():
                jobs += await self._record(ctx, user_id, due_rows, result)
            await ctx.queue.push_many(jobs)
            result.enqueued += sum(not j.duplicate for j in jobs)
            result.skipped += sum(j.duplicate for j in jobs)
            if len(claimed) < limit:
                return result

    async def _record(
        self, ctx: SchedulerContext, user_id: UUID, due: dict[str, list[tuple[Row, JobRequest]]], result: TickResult
    ) -> list[EnqueuedJob]:
        """One creator transaction records all of that creator's jobs (one statement per job name)
        and settles the refused rows."""
        jobs = []
        async with ctx.db.creator_tx(user_id) as conn:
            for job_name, due_rows in due.items():
                outcomes = await ctx.queue.record_many(conn, job_name, [r for _, r in due_rows], user_id=user_id)
                for (row, _), outcome in zip(due_rows, outcomes, strict=True):
                    if isinstance(outcome, QuotaExceeded):
                        result.details["refused"] += 1
                        await self.refused(conn, row, outcome, result)
                    else:
                        jobs.append(outcome)
        return jobs
