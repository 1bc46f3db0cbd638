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

# Many records of one job for one creator in one statement; a key seen before inserts nothing.
INSERT_MANY = """
insert into media_jobs (user_id, job_name, queue, max_attempts, job_key, payload, priority, run_at,
                        scheduled_post_id, media_asset_id)
select $1, $2, $3, $4, t.job_key, t.payload, t.priority, coalesce(t.run_at, now()), t.scheduled_post_id,
       t.media_asset_id
  from unnest($5::text[], $6::jsonb[], $7::int[], $8::timestamptz[], $9::uuid[], $10::uuid[])
       as t(job_key, payload, priority, run_at, scheduled_post_id, media_asset_id)
on conflict (user_id, job_key) where status in ('queued', 'processing') do nothing
returning id, job_key, status, enqueued_at, run_at
"""

FIND_BY_KEYS = """
select id, job_key, job_name, status, enqueued_at, run_at from media_jobs
 where user_id = $1 and job_key = any($2) and status in ('queued', 'processing')
"""

DELETE_UNADMITTED = "delete from media_jobs where id = any($1::uuid[])"

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
on conflict (user_id, job_key) where status in ('queued', 'processing') do update
    set status = 'failed', error = excluded.error, error_kind = excluded.error_kind,
        finished_at = now(), updated_at = now()
"""

# Outbox relay: records committed but never pushed to Redis (producer died between commit and push).
UNPUSHED = """
select id, user_id, job_name, queue, payload, run_at from media_jobs
 where status = 'queued' and enqueued_at is null and created_at < now() - make_interval(secs => $1)
 order by created_at
 limit $2
"""


GET = "select * from media_jobs where id = $1"


@dataclass(frozen=True)
class NewJobRecord:
    job_key: str
    payload: dict[str, Any]
    priority: int = 10
    run_at: datetime | None = None
    scheduled_post_id: UUID | None = None
    media_asset_id: UUID | None = None


@dataclass(frozen=True)
class RecordRef:
    id: UUID
    job_key: str
    status: str
    enqueued_at: datetime | None
    run_at: datetime
    created: bool


async def insert_many(
    conn: asyncpg.Connection, user_id: UUID, job_name: str, queue: str, max_attempts: int, recs: list[NewJobRecord]
) -> list[RecordRef]:
    """Insert the records whose key has no active record; find the active ones. In the order of `recs`."""
    refs: dict[str, RecordRef] = {}
    pending = recs
    # A conflicting record can finish between the insert and the look-up: insert that key again.
    for _ in range(3):
        rows = await conn.fetch(
            INSERT_MANY, user_id, job_name, queue, max_attempts,
            [r.job_key for r in pending], [r.payload for r in pending], [r.priority for r in pending],
            [r.run_at for r in pending], [r.scheduled_post_id for r in pending], [r.media_asset_id for r in pending],
        )  # fmt: skip
        for row in rows:
            refs[row["job_key"]] = RecordRef(
                row["id"], row["job_key"], row["status"], row["enqueued_at"], row["run_at"], True
            )
        seen = [r.job_key for r in pending if r.job_key not in refs]
        if seen:
            for row in await conn.fetch(FIND_BY_KEYS, user_id, seen):
                if row["job_name"] != job_name:
                    raise ValueError(f"job key {row['job_key']!r} is already used by a {row['job_name']} job")
                refs[row["job_key"]] = RecordRef(
                    row["id"], row["job_key"], row["status"], row["enqueued_at"], row["run_at"], False
                )
        pending = [r for r in pending if r.job_key not in refs]
        if not pending:
            return [refs[r.job_key] for r in recs]
    raise RuntimeError(f"job keys {[r.job_key for r in pending]} kept changing while being recorded")


def payload_for_record(raw: str | bytes) -> dict[str, Any]:
    """Store what arrived, even when it is not valid JSON, so ops can see it."""
    try:
        value = json.loads(raw)
    except ValueError:
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        return {"unparsed": text[:4096]}
    return value if isinstance(value, dict) else {"value": value}
