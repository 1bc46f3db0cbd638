"""SQL for job records (`media_jobs`: the record of every job, all queues).

PostgreSQL is the source of truth for jobs; Redis is only the transport. Every write after a job
starts is fenced on the attempt number, so a worker presumed dead cannot overwrite the record of
the attempt that replaced it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

INSERT = """
insert into media_jobs (user_id, job_name, queue, job_key, payload, priority, max_attempts, run_at,
                        scheduled_post_id, media_asset_id)
values ($1, $2, $3, $4, $5, $6, $7, coalesce($8, now()), $9, $10)
on conflict (user_id, job_key) do nothing
returning id, status, enqueued_at, run_at
"""

FIND_BY_KEY = """
select id, job_name, status, enqueued_at, run_at from media_jobs where user_id = $1 and job_key = $2
"""

MARK_ENQUEUED = "update media_jobs set enqueued_at = now() where id = $1 and enqueued_at is null"
MARK_ENQUEUED_MANY = "update media_jobs set enqueued_at = now() where id = any($1::uuid[]) and enqueued_at is null"

START_ATTEMPT = """
update media_jobs
   set status = 'processing', attempts = attempts + 1, started_at = now(), heartbeat_at = now(),
       worker_id = $2, updated_at = now()
 where id = $1 and status in ('queued', 'processing')
returning attempts, max_attempts, status
"""

HEARTBEAT = """
update media_jobs set heartbeat_at = now()
 where id = $1 and attempts = $2 and status = 'processing'
"""

PROGRESS = """
update media_jobs set progress = $3, heartbeat_at = now(), updated_at = now()
 where id = $1 and attempts = $2 and status = 'processing'
"""

COMPLETE = """
update media_jobs
   set status = 'completed', result = $3, progress = 100, error = null, error_kind = null,
       finished_at = now(), updated_at = now()
 where id = $1 and attempts = $2 and status = 'processing'
"""

FAIL = """
update media_jobs
   set status = 'failed', error = $3, error_kind = $4, finished_at = now(), updated_at = now()
 where id = $1 and attempts = $2 and status = 'processing'
"""

SCHEDULE_RETRY = """
update media_jobs
   set status = 'queued', error = $3, error_kind = $4, run_at = now() + make_interval(secs => $5),
       updated_at = now()
 where id = $1 and attempts = $2 and status = 'processing'
"""

# A payload that never became a valid job (e.g. from a foreign client): recorded failed at once.
RECORD_REJECTED = """
insert into media_jobs (user_id, job_name, queue, job_key, payload, status, error, error_kind,
                        enqueued_at, finished_at)
values ($1, $2, $3, $4, $5, 'failed', $6, 'invalid_payload', now(), now())
on conflict (user_id, job_key) do update
    set status = 'failed', error = excluded.error, error_kind = excluded.error_kind,
        finished_at = now(), updated_at = now()
  where media_jobs.status in ('queued', 'processing')
"""

# Outbox relay: records committed but never pushed to Redis (producer died between commit and push).
UNPUSHED = """
select id, user_id, job_name, queue, payload, run_at from media_jobs
 where status = 'queued' and enqueued_at is null and created_at < now() - make_interval(secs => $1)
 order by created_at
 limit $2
"""

SYSTEM_MARK_ENQUEUED = MARK_ENQUEUED_MANY

GET = "select * from media_jobs where id = $1"


@dataclass(frozen=True)
class NewJobRecord:
    user_id: UUID
    job_name: str
    queue: str
    job_key: str
    payload: dict[str, Any]
    priority: int
    max_attempts: int
    run_at: datetime | None
    scheduled_post_id: UUID | None = None
    media_asset_id: UUID | None = None


@dataclass(frozen=True)
class RecordRef:
    id: UUID
    status: str
    enqueued_at: datetime | None
    run_at: datetime
    created: bool


async def insert_or_find(conn: asyncpg.Connection, rec: NewJobRecord) -> RecordRef:
    row = await conn.fetchrow(
        INSERT, rec.user_id, rec.job_name, rec.queue, rec.job_key, rec.payload, rec.priority,
        rec.max_attempts, rec.run_at, rec.scheduled_post_id, rec.media_asset_id,
    )  # fmt: skip
    if row is not None:
        return RecordRef(row["id"], row["status"], row["enqueued_at"], row["run_at"], created=True)
    row = await conn.fetchrow(FIND_BY_KEY, rec.user_id, rec.job_key)
    if row is None:  # pragma: no cover - the conflicting row was deleted in between
        raise LookupError(f"job {rec.job_key} vanished during enqueue")
    if row["job_name"] != rec.job_name:
        raise ValueError(f"job key {rec.job_key!r} is already used by a {row['job_name']} job")
    return RecordRef(row["id"], row["status"], row["enqueued_at"], row["run_at"], created=False)


def payload_for_record(raw: str | bytes) -> dict[str, Any]:
    """Store what arrived, even when it is not valid JSON, so ops can see it."""
    try:
        value = json.loads(raw)
    except ValueError:
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        return {"unparsed": text[:4096]}
    return value if isinstance(value, dict) else {"value": value}
