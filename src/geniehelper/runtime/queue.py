"""The enqueue API for services: `JobQueue.enqueue(job_name, payload, user_id=...)`.

PostgreSQL is the source of truth, Redis the transport. Enqueueing writes the job record
(`media_jobs`) first, keyed on (creator, job key) so a repeated call finds the same record instead
of creating work twice, then pushes the job to arq with the record id as the arq job id (arq drops
a second push of an id it still holds). A service that wants the job only if its own transaction
commits calls `record()` inside that transaction and `push()` after commit; if it dies in between,
the outbox relay (`relay_unpushed`) pushes the record later. Either way a rolled-back job never runs.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import structlog
from arq.connections import ArqRedis

from geniehelper.db import Database
from geniehelper.runtime import store
from geniehelper.runtime.definition import QUEUE_NAMES, InvalidPayload, JobPayload, JobRegistry
from geniehelper.runtime.quotas import QuotaExceeded, TierLimits, consume_up_to

log = structlog.get_logger("geniehelper.queue")

PUSHABLE = ("queued",)
# arq's enqueue is a WATCH/MULTI transaction per job: run a few at once over the connection pool.
PUSH_CONCURRENCY = 32


@dataclass(frozen=True)
class JobRequest:
    """One job to record with `record_many`."""

    payload: JobPayload | dict[str, Any] | str
    key: str | None = None
    run_at: datetime | None = None
    priority: int = 10
    scheduled_post_id: UUID | None = None
    media_asset_id: UUID | None = None


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
        request = JobRequest(payload, key, run_at, priority, scheduled_post_id, media_asset_id)
        (outcome,) = await self.record_many(conn, job_name, [request], user_id=user_id)
        if isinstance(outcome, QuotaExceeded):
            raise outcome
        return outcome

    async def record_many(
        self, conn: asyncpg.Connection, job_name: str, requests: list[JobRequest], *, user_id: UUID
    ) -> list[EnqueuedJob | QuotaExceeded]:
        """Record many jobs of one kind for one creator (one statement); results in request order.

        A request over the creator's quota gets a QuotaExceeded instead of a record; the others
        are recorded. Raises InvalidPayload (nothing recorded) if any payload is invalid.
        """
        spec = self.registry[job_name]
        try:
            payloads = [spec.parse_payload(r.payload).model_dump_json() for r in requests]
        except InvalidPayload as exc:
            log.warning("job.enqueue_refused", user_id=str(user_id), **exc.as_dict())
            raise
        keys = [r.key or f"{spec.name}:{uuid4()}" for r in requests]
        records = [
            store.NewJobRecord(
                key, json.loads(payload), r.priority, r.run_at, r.scheduled_post_id, r.media_asset_id
            )
            for key, payload, r in zip(keys, payloads, requests, strict=True)
        ]
        refs = await store.insert_many(conn, user_id, spec.name, spec.queue, spec.max_attempts, records)
        refused: dict[UUID, QuotaExceeded] = {}
        created = list({ref.id: ref for ref in refs if ref.created}.values())  # a key twice in one batch counts once
        if created and spec.quota_operation is not None:
            # Same transaction as the records: what the quota does not admit is removed again.
            admitted, refusal = await consume_up_to(conn, self.limits, user_id, spec.quota_operation, len(created))
            if refusal is not None:
                rejected = created[admitted:]
                await conn.execute(store.DELETE_UNADMITTED, [ref.id for ref in rejected])
                refused = {ref.id: refusal for ref in rejected}
        outcomes: list[EnqueuedJob | QuotaExceeded] = []
        first_seen: set[UUID] = set()
        for ref, key, payload in zip(refs, keys, payloads, strict=True):
            duplicate = not ref.created or ref.id in first_seen
            first_seen.add(ref.id)
            outcomes.append(refused.get(ref.id) or EnqueuedJob(
                id=ref.id, user_id=user_id, job_name=spec.name, job_key=key, queue=spec.queue, status=ref.status,
                payload_json=payload, run_at=ref.run_at, duplicate=duplicate,
            ))  # fmt: skip
        return outcomes

    async def push(self, job: EnqueuedJob) -> bool:
        """Hand a committed record to arq. Returns False when there was nothing to push."""
        return await self.push_many([job]) == 1

    async def push_many(self, jobs: list[EnqueuedJob]) -> int:
        """Push committed records to arq, then mark them enqueued (one transaction per creator)."""
        pushable = [job for job in jobs if job.status in PUSHABLE]
        by_creator: dict[UUID, list[UUID]] = defaultdict(list)
        for start in range(0, len(pushable), PUSH_CONCURRENCY):
            chunk = pushable[start : start + PUSH_CONCURRENCY]
            await asyncio.gather(*[
                push_to_arq(self.redis, job.id, job.user_id, job.job_name, job.queue, job.payload_json, job.run_at)
                for job in chunk
            ])  # fmt: skip
        for job in pushable:
            by_creator[job.user_id].append(job.id)
        for user_id, ids in by_creator.items():
            async with self.db.creator_tx(user_id) as conn:
                await conn.execute(store.MARK_ENQUEUED_MANY, ids)
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
        rows = await conn.fetch(store.UNPUSHED, grace_s, batch)
        for row in rows:
            await push_to_arq(
                redis, row["id"], row["user_id"], row["job_name"], row["queue"],
                json.dumps(row["payload"]), row["run_at"],
            )  # fmt: skip
        if rows:
            await conn.execute(store.MARK_ENQUEUED_MANY, [r["id"] for r in rows])
    return len(rows)
