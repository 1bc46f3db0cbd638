"""The enqueue API for services: `JobQueue.enqueue(job_name, payload, user_id=...)`.

PostgreSQL is the source of truth, Redis the transport. Enqueueing writes the job record
(`media_jobs`) first, keyed on (creator, job key) so a repeated call finds the same record instead
of creating work twice, then pushes the job to arq with the record id as the arq job id (arq drops
a second push of an id it still holds). A service that wants the job only if its own transaction
commits calls `record()` inside that transaction and `push()` after commit; if it dies in between,
the outbox relay (`relay_unpushed`) pushes the record later. Either way a rolled-back job never runs.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

import asyncpg
from arq.connections import ArqRedis

from geniehelper import jobrecords
from geniehelper.db import Database
from geniehelper.jobspec import QUEUE_NAMES, JobPayload, JobRegistry
from geniehelper.quotas import TierLimits, consume

PUSHABLE = ("queued",)


@dataclass(frozen=True)
class EnqueuedJob:
    id: UUID
    user_id: UUID
    job_name: str
    job_key: str
    queue: str
    status: str
    payload_json: str
    run_at: datetime
    duplicate: bool  # the key was seen before: this call created nothing

    @property
    def arq_job_id(self) -> str:
        return str(self.id)


class JobQueue:
    def __init__(self, db: Database, redis: ArqRedis, registry: JobRegistry, limits: TierLimits) -> None:
        self.db = db
        self.redis = redis
        self.registry = registry
        self.limits = limits

    async def enqueue(
        self,
        job_name: str,
        payload: JobPayload | dict[str, Any] | str,
        *,
        user_id: UUID | str,
        key: str | None = None,
        run_at: datetime | None = None,
        priority: int = 10,
        scheduled_post_id: UUID | None = None,
        media_asset_id: UUID | None = None,
    ) -> EnqueuedJob:
        """Validate, record and push one job; raises InvalidPayload, UnknownJob or QuotaExceeded."""
        user = UUID(str(user_id))
        async with self.db.creator_tx(user) as conn:
            job = await self.record(
                conn, job_name, payload, user_id=user, key=key, run_at=run_at, priority=priority,
                scheduled_post_id=scheduled_post_id, media_asset_id=media_asset_id,
            )  # fmt: skip
        await self.push(job)
        return job

    async def record(
        self,
        conn: asyncpg.Connection,
        job_name: str,
        payload: JobPayload | dict[str, Any] | str,
        *,
        user_id: UUID,
        key: str | None = None,
        run_at: datetime | None = None,
        priority: int = 10,
        scheduled_post_id: UUID | None = None,
        media_asset_id: UUID | None = None,
    ) -> EnqueuedJob:
        """Write the job record in the caller's creator transaction; `push()` it after commit."""
        spec = self.registry[job_name]
        model = spec.parse_payload(payload)
        payload_json = model.model_dump_json()
        ref = await jobrecords.insert_or_find(
            conn,
            jobrecords.NewJobRecord(
                user_id=user_id, job_name=spec.name, queue=spec.queue, job_key=key or f"{spec.name}:{uuid4()}",
                payload=json.loads(payload_json), priority=priority, max_attempts=spec.max_attempts,
                run_at=run_at, scheduled_post_id=scheduled_post_id, media_asset_id=media_asset_id,
            ),
        )  # fmt: skip
        if ref.created and spec.quota_operation is not None:
            # Same transaction as the record: a refusal rolls the record back with it.
            await consume(conn, self.limits, user_id, spec.quota_operation)
        return EnqueuedJob(
            id=ref.id, user_id=user_id, job_name=spec.name, job_key=key or "", queue=spec.queue,
            status=ref.status, payload_json=payload_json, run_at=ref.run_at, duplicate=not ref.created,
        )  # fmt: skip

    async def push(self, job: EnqueuedJob) -> bool:
        """Hand a committed record to arq. Returns False when there was nothing to push."""
        return await self.push_many([job]) == 1

    async def push_many(self, jobs: list[EnqueuedJob]) -> int:
        """Push committed records to arq, then mark them enqueued (one transaction per creator)."""
        pushable = [job for job in jobs if job.status in PUSHABLE]
        by_creator: dict[UUID, list[UUID]] = defaultdict(list)
        for job in pushable:
            await push_to_arq(self.redis, job.id, job.user_id, job.job_name, job.queue, job.payload_json, job.run_at)
            by_creator[job.user_id].append(job.id)
        for user_id, ids in by_creator.items():
            async with self.db.creator_tx(user_id) as conn:
                await conn.execute(jobrecords.MARK_ENQUEUED_MANY, ids)
        return len(pushable)


async def push_to_arq(
    redis: ArqRedis, record_id: UUID, user_id: UUID, job_name: str, queue: str, payload_json: str, run_at: datetime
) -> None:
    """The wire format every producer uses (see docs/jobs.md for foreign clients)."""
    await redis.enqueue_job(
        job_name,
        _job_id=str(record_id),
        _queue_name=QUEUE_NAMES[queue],
        _defer_until=run_at,
        record_id=str(record_id),
        user_id=str(user_id),
        payload=payload_json,
    )


async def relay_unpushed(db: Database, redis: ArqRedis, *, grace_s: float = 5.0, batch: int = 500) -> int:
    """Push records committed but never pushed (their producer died between commit and push)."""
    async with db.system_tx() as conn:
        rows = await conn.fetch(jobrecords.UNPUSHED, grace_s, batch)
        for row in rows:
            await push_to_arq(
                redis, row["id"], row["user_id"], row["job_name"], row["queue"],
                json.dumps(row["payload"]), row["run_at"],
            )  # fmt: skip
        if rows:
            await conn.execute(jobrecords.SYSTEM_MARK_ENQUEUED, [r["id"] for r in rows])
    return len(rows)
