"""What a job sees: its typed context and the resources its worker built."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from uuid import UUID

from arq.connections import ArqRedis

from geniehelper.db import Database
from geniehelper.runtime import store
from geniehelper.runtime.definition import AnyJob
from geniehelper.runtime.metrics import WorkerMetrics
from geniehelper.runtime.queue import JobQueue
from geniehelper.runtime.record_writer import RecordWriter
from geniehelper.runtime.registry import JobRegistry
from geniehelper.runtime.resources import OpenResources, ResourceKey
from geniehelper.settings import Settings


@dataclass
class Resources:
    """What a worker process builds at start-up and every job shares (no module-level state)."""

    settings: Settings
    db: Database
    redis: ArqRedis
    registry: JobRegistry
    queue: JobQueue
    records: RecordWriter
    opened: OpenResources  # what the queue's jobs declared (runtime.resources)
    metrics: WorkerMetrics


T = TypeVar("T")


class LeaseLost(Exception):
    """This attempt no longer owns its job record (its lease expired and the job was re-driven)."""


@dataclass
class JobContext:
    """A job's typed view of its run: its own creator's transaction (or, for a system job, the
    system's), its settings, the resources it declared, progress and its lease. Nothing reaching
    another creator: the worker's pools stay with the runtime (`_runtime`, never used by job code)."""

    _runtime: Resources
    job: AnyJob
    record_id: UUID
    user_id: UUID | None  # None: a system job
    attempt: int
    max_attempts: int
    # Fenced while the attempt runs: each transaction first checks that the attempt still owns the
    # record. The failure hook runs unfenced, after the runtime recorded the job failed.
    fenced: bool = True

    @asynccontextmanager
    async def creator_tx(self) -> AsyncIterator[Any]:
        """A transaction acting for this job's creator (RLS-scoped).

        Raises LeaseLost, before anything is written, when another attempt has taken the job over:
        a worker that was paused past its lease does no more writes once it resumes. One
        transaction, no nested `conn.transaction()` (Database.app_tx).
        """
        if self.user_id is None:
            raise TypeError(f"{self.job.name} is a system job: it has no creator (use system_tx)")
        if not self.fenced:
            async with self._runtime.db.creator_tx(self.user_id) as conn:
                yield conn
            return
        async with self._runtime.db.app_tx() as conn:
            if not await conn.fetchval(store.BEGIN_JOB_TX, self.user_id, self.record_id, self.attempt):
                raise LeaseLost(f"attempt {self.attempt} no longer owns job {self.record_id}")
            yield conn

    async def fenced_fetchrow(self, sql: str, *args: Any) -> Any:
        """One statement that fences itself, in one round trip (creator_tx takes three more): `sql`
        calls a function of ($1 creator, $2 job record or NULL when unfenced, $3 attempt, *args) that
        acts for the creator and checks the lease first, as begin_job_tx, and returns one row with
        an `owns` column (migration 0037). Raises LeaseLost when the attempt no longer owns the job."""
        if self.user_id is None:
            raise TypeError(f"{self.job.name} is a system job: it has no creator")
        async with self._runtime.db.app_statement() as conn:
            row = await conn.fetchrow(sql, self.user_id, self.record_id if self.fenced else None, self.attempt, *args)
        if row is None or not row["owns"]:
            raise LeaseLost(f"attempt {self.attempt} no longer owns job {self.record_id}")
        return row

    @asynccontextmanager
    async def system_tx(self) -> AsyncIterator[Any]:
        """A system job's transaction (the system role's grants only), fenced like creator_tx."""
        if self.user_id is not None:
            raise TypeError(f"{self.job.name} is a creator job: it acts only for its creator (use creator_tx)")
        async with self._runtime.db.system_tx() as conn:
            if self.fenced and not await conn.fetchval(store.BEGIN_SYSTEM_JOB_TX, self.record_id, self.attempt):
                raise LeaseLost(f"attempt {self.attempt} no longer owns job {self.record_id}")
            yield conn

    def tx(self) -> Any:
        """The job's own transaction: its creator's, or the system's for a system job."""
        return self.creator_tx() if self.user_id is not None else self.system_tx()

    async def ensure_lease(self) -> None:
        """Raise LeaseLost if this attempt no longer owns the job: call it before an outside effect."""
        if self.fenced and not await self._runtime.records.holds(self.record_id, self.user_id, self.attempt):
            raise LeaseLost(f"attempt {self.attempt} no longer owns job {self.record_id}")

    @property
    def settings(self) -> Settings:
        return self._runtime.settings

    def resource(self, key: ResourceKey[T]) -> T:
        """A resource this job declared (`JobDefinition.resources`), as its worker opened it."""
        if key not in self.job.resources:
            raise TypeError(f"{self.job.name} did not declare resource {key.name!r} (JobDefinition.resources)")
        return self._runtime.opened.get(key)

    @property
    def is_last_attempt(self) -> bool:
        return self.attempt >= self.max_attempts

    async def progress(self, percent: int) -> None:
        async with self._runtime.db.scoped_tx(self.user_id) as conn:
            await conn.execute(store.PROGRESS, self.record_id, self.attempt, max(0, min(100, percent)))
