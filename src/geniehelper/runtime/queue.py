"""The enqueue API for services: `JobQueue.enqueue(job_name, payload, user_id=...)`.

PostgreSQL is the source of truth, Redis the transport. Enqueueing writes the job record
(`media_jobs`) first, keyed on (creator, job key) so a repeated call finds the active record instead
of creating work twice, then pushes its dispatch to arq (arq id `<record id>:<dispatch no>`). A
service that wants the job only if its own transaction commits calls `record()` inside that
transaction and `push()` after commit; if it dies in between, or Redis is down, the outbox relay
(`geniehelper.runtime.delivery`) pushes the record later. Either way a rolled-back job never runs,
and a push failure after commit is never an error for the caller: the record is the job.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import structlog
from arq.connections import ArqRedis

from geniehelper.db import Database
from geniehelper.runtime import quotas, store
from geniehelper.runtime.coalesce import Coalescer
from geniehelper.runtime.definition import AnyJob, InvalidPayload, JobPayload
from geniehelper.runtime.quotas import QuotaExceeded
from geniehelper.runtime.registry import JobRegistry
from geniehelper.runtime.retry import describe
from geniehelper.runtime.transport import Dispatch, push_dispatches_at_once

log = structlog.get_logger("geniehelper.queue")

PUSHABLE = ("queued",)
# Dispatches per Redis round trip (one script call each).
PUSH_CHUNK = 500


@dataclass(frozen=True)
class JobRequest:
    """One job to record with `record_many`. Without a key, the job's definition derives one (or
    none: every request is then a new job)."""

    payload: JobPayload | dict[str, Any] | str
    key: str | None = None
    run_at: datetime | None = None


@dataclass(frozen=True)
class EnqueuedJob:
    id: UUID
    user_id: UUID | None  # None: a system job
    job_name: str
    job_key: str
    queue: str
    status: str
    enqueued_at: datetime | None
    payload_json: str
    run_at: datetime
    dispatch_no: int
    duplicate: bool  # the key has an active record: this call created nothing

    def dispatch(self) -> Dispatch:
        return Dispatch(
            self.id, self.dispatch_no, self.user_id, self.job_name, self.queue, self.payload_json, self.run_at
        )


@dataclass(frozen=True)
class _NewJob:
    """A validated request, ready to record; `outcome` is what the caller gets once it is recorded."""

    user_id: UUID | None
    job_name: str
    queue: str
    payload_json: str
    record: store.NewJobRecord

    def outcome(self, ref: store.RecordRef, *, duplicate: bool) -> EnqueuedJob:
        return EnqueuedJob(
            id=ref.id, user_id=self.user_id, job_name=self.job_name, job_key=self.record.job_key, queue=self.queue,
            status=ref.status, enqueued_at=ref.enqueued_at, payload_json=self.payload_json, run_at=ref.run_at,
            dispatch_no=ref.dispatch_no, duplicate=duplicate,
        )  # fmt: skip


class JobQueue:
    def __init__(
        self,
        db: Database,
        redis: ArqRedis,
        registry: JobRegistry,
        *,
        dispatch_ttl_s: float = 86_400.0,
        fair_queues: Collection[str] = (),
    ) -> None:
        self.db = db
        self.redis = redis
        self.registry = registry
        self.dispatch_ttl_s = dispatch_ttl_s
        # A creator's job on a fair queue is left to the dispatcher (geniehelper.runtime.delivery).
        self.fair_queues = frozenset(fair_queues)
        self._marks: Coalescer[list[Dispatch], None] = Coalescer(self._mark_enqueued)
        # Records of `enqueue()` calls made at the same time share a statement (their failures stay apart).
        self._records: Coalescer[store.OwnedJobRecord, store.RecordRef] = Coalescer(self._record_together)

    async def enqueue(
        self,
        job_name: str,
        payload: JobPayload | dict[str, Any] | str,
        *,
        user_id: UUID | str | None = None,
        key: str | None = None,
        run_at: datetime | None = None,
    ) -> EnqueuedJob:
        """Validate, record and push one job; raises InvalidPayload, UnknownJob or QuotaExceeded.

        `user_id` is the creator of a creator job; a system job (scope "system") has none. Once the
        record is committed this returns it even if Redis is unreachable (logged as
        `job.push_deferred`): the outbox relay delivers it, so the caller never retries into a second job.
        """
        user = UUID(str(user_id)) if user_id is not None else None
        definition = self.registry[job_name]
        if definition.quota_operation is not None or user is None:
            # The quota is charged in the records' transaction; a system job's is the system role's.
            async with self.db.scoped_tx(user) as conn:
                job = await self.record(conn, job_name, payload, user_id=user, key=key, run_at=run_at)
        else:
            (new,) = self._new_records(definition, [JobRequest(payload, key, run_at)], user)
            ref = await self._records.submit(store.OwnedJobRecord(
                user, definition.name, definition.queue, definition.policy.max_attempts, new.record
            ))  # fmt: skip
            job = new.outcome(ref, duplicate=not ref.created)
        await self.push(job)
        return job

    async def record(
        self,
        conn: asyncpg.Connection,
        job_name: str,
        payload: JobPayload | dict[str, Any] | str,
        *,
        user_id: UUID | None,
        key: str | None = None,
        run_at: datetime | None = None,
    ) -> EnqueuedJob:
        """Write the job record in the caller's transaction (its creator's, or the system's for a
        system job); `push()` it after commit."""
        (outcome,) = await self.record_many(conn, job_name, [JobRequest(payload, key, run_at)], user_id=user_id)
        if isinstance(outcome, QuotaExceeded):
            raise outcome
        return outcome

    async def record_many(
        self, conn: asyncpg.Connection, job_name: str, requests: list[JobRequest], *, user_id: UUID | None
    ) -> list[EnqueuedJob | QuotaExceeded]:
        """Record many jobs of one kind for one creator (one statement); results in request order.

        A request over the creator's quota gets a QuotaExceeded instead of a record; the others
        are recorded. Raises InvalidPayload (nothing recorded) if any payload is invalid.
        """
        job = self.registry[job_name]
        new = self._new_records(job, requests, user_id)
        refs = await store.insert_many(
            conn, user_id, job.name, job.queue, job.policy.max_attempts, [n.record for n in new]
        )
        refused: dict[UUID, QuotaExceeded] = {}
        created = list({ref.id: ref for ref in refs if ref.created}.values())  # a key twice in one batch counts once
        if created and user_id is not None and job.quota_operation is not None:
            # Same transaction as the records: what the quota does not admit is removed again.
            admitted, refusal = await quotas.charge(conn, user_id, job.quota_operation, [ref.id for ref in created])
            if refusal is not None:
                rejected = created[admitted:]
                await conn.execute(store.DELETE_UNADMITTED, [ref.id for ref in rejected])
                refused = {ref.id: refusal for ref in rejected}
        outcomes: list[EnqueuedJob | QuotaExceeded] = []
        first_seen: set[UUID] = set()
        for ref, n in zip(refs, new, strict=True):
            duplicate = not ref.created or ref.id in first_seen
            first_seen.add(ref.id)
            outcomes.append(refused.get(ref.id) or n.outcome(ref, duplicate=duplicate))
        return outcomes

    def _new_records(self, job: AnyJob, requests: list[JobRequest], user_id: UUID | None) -> list[_NewJob]:
        """Validate the requests and derive each record (key, subject, concurrency key)."""
        if (job.scope == "system") != (user_id is None):
            raise ValueError(
                f"{job.name} is a {job.scope} job: "
                + ("it runs for no creator (user_id must be None)" if user_id else "it needs the creator's user_id")
            )
        try:
            parsed = [job.parse_payload(r.payload) for r in requests]
        except InvalidPayload as exc:
            log.warning("job.enqueue_refused", user_id=str(user_id), **exc.as_dict())
            raise
        new = []
        for request, p in zip(requests, parsed, strict=True):
            payload_json = p.model_dump_json()
            key = request.key or (job.key(p) if job.key else f"{job.name}:{uuid4()}")
            subject = job.subject(p) if job.subject else None
            record = store.NewJobRecord(
                key, json.loads(payload_json), request.run_at, subject.type if subject else None,
                subject.id if subject else None, job.concurrency.key(p) if job.concurrency else None,
            )  # fmt: skip
            new.append(_NewJob(user_id, job.name, job.queue, payload_json, record))
        return new

    async def _record_together(self, batch: list[store.OwnedJobRecord]) -> list[store.RecordRef | ValueError]:
        """Concurrent `enqueue()` calls' records, of any creators, in one statement (group commit)."""
        async with self.db.records_pool.acquire() as conn:
            return await store.insert_for_many(conn, batch)

    async def requeue(self, record_id: UUID, *, user_id: UUID | None) -> EnqueuedJob:
        """Run a finished job again: a new record with its name, key and payload (the old record
        keeps its history). If the key has an active record already, that one is returned."""
        async with self.db.scoped_tx(user_id) as conn:
            old = await conn.fetchrow(store.GET_FINISHED, record_id)
            if old is None:
                raise LookupError(f"job {record_id}: no finished job record with that id")
            job = await self.record(conn, old["job_name"], old["payload"], user_id=user_id, key=old["job_key"])
        await self.push(job)
        log.info("job.requeued", record_id=str(record_id), new_record_id=str(job.id), duplicate=job.duplicate)
        return job

    async def push(self, job: EnqueuedJob) -> bool:
        """Hand a committed record to arq. False when there was nothing to push or the push failed."""
        return await self.push_many([job]) == 1

    async def push_many(self, jobs: list[EnqueuedJob]) -> int:
        """Push committed records to arq, then mark them enqueued (with other callers' in one statement).

        Returns how many are now in Redis. A push that fails is logged `job.push_deferred` and left
        to the outbox relay; it never raises.
        """
        pushable = [
            job for job in jobs
            if job.status in PUSHABLE and job.enqueued_at is None
            and not (job.queue in self.fair_queues and job.user_id is not None)
        ]  # fmt: skip
        dispatches = [job.dispatch() for job in pushable]
        errors = await push_dispatches(self.redis, dispatches, self.dispatch_ttl_s)
        delivered = [d for d, error in zip(dispatches, errors, strict=True) if error is None]
        if delivered:
            try:
                await self._marks.submit(delivered)
            except Exception as exc:  # they are in Redis; the relay finds them there and marks them
                log.warning("job.mark_enqueued_failed", jobs=len(delivered), error=describe(exc))
        return len(delivered)

    async def _mark_enqueued(self, batches: list[list[Dispatch]]) -> list[None]:
        """The pushes of concurrent callers, marked in one statement (the system role's: they span creators)."""
        dispatches = [d for batch in batches for d in batch]
        async with self.db.records_pool.acquire() as conn:
            await conn.execute(
                store.MARK_ENQUEUED_MANY, [d.record_id for d in dispatches], [d.dispatch_no for d in dispatches]
            )
        return [None] * len(batches)


async def push_dispatches(redis: ArqRedis, dispatches: list[Dispatch], ttl_s: float) -> list[str | None]:
    """Push dispatches, PUSH_CHUNK per round trip. For each: None when it is now in Redis (pushed, or
    found already there), else why the push failed."""
    errors: list[str | None] = []
    for start in range(0, len(dispatches), PUSH_CHUNK):
        chunk = dispatches[start : start + PUSH_CHUNK]
        try:
            await push_dispatches_at_once(redis, chunk, ttl_s=ttl_s)
        except Exception as exc:
            error = describe(exc)
            first = chunk[0]
            log.warning("job.push_deferred", jobs=len(chunk), record_id=str(first.record_id), job_name=first.job_name,
                        user_id=str(first.user_id), error=error)  # fmt: skip
            errors += [error] * len(chunk)
        else:
            errors += [None] * len(chunk)
    return errors
