"""SQL for job records (`media_jobs`: the record of every job, all queues).

PostgreSQL is the source of truth for jobs; Redis only carries "dispatch n of record r" (arq job id
`<record id>:<n>`). A delivery starts an attempt only for the record's current dispatch and while
no other attempt holds a fresh lease; every write after that is fenced on the attempt number, so a
worker presumed dead cannot overwrite the record of the attempt that replaced it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

# Many records of one job for one creator in one statement; a key with an active record inserts nothing.
INSERT_MANY = """
insert into media_jobs (user_id, job_name, queue, max_attempts, job_key, payload, run_at, subject_type, subject_id,
                        concurrency_key)
select $1, $2, $3, $4, t.job_key, t.payload, coalesce(t.run_at, now()), t.subject_type, t.subject_id, t.concurrency_key
  from unnest($5::text[], $6::jsonb[], $7::timestamptz[], $8::text[], $9::uuid[], $10::text[])
       as t(job_key, payload, run_at, subject_type, subject_id, concurrency_key)
on conflict (user_id, job_key) where status in ('queued', 'processing') do nothing
returning id, job_key, status, enqueued_at, run_at, dispatch_no
"""

FIND_BY_KEYS = """
select id, job_key, job_name, status, enqueued_at, run_at, dispatch_no from media_jobs
 where user_id is not distinct from $1 and job_key = any($2) and status in ('queued', 'processing')
"""

DELETE_UNADMITTED = "delete from media_jobs where id = any($1::uuid[])"

# A push of dispatch n landed: the record leaves the outbox (only if n is still its dispatch).
MARK_ENQUEUED_MANY = """
update media_jobs j set enqueued_at = now(), dispatch_error = null
  from unnest($1::uuid[], $2::int[]) as t(id, dispatch_no)
 where j.id = t.id and j.dispatch_no = t.dispatch_no and j.enqueued_at is null
"""

MARK_DISPATCH_FAILED_MANY = """
update media_jobs j set dispatch_error = t.error
  from unnest($1::uuid[], $2::int[], $3::text[]) as t(id, dispatch_no, error)
 where j.id = t.id and j.dispatch_no = t.dispatch_no and j.enqueued_at is null
"""

# The lease: a record is started by the delivery of its current dispatch, when queued, or when
# the attempt that held it let its lease expire (its worker died or stopped).
START_ATTEMPT = """
update media_jobs
   set status = 'processing', attempts = attempts + 1, started_at = now(), heartbeat_at = now(),
       lease_expires_at = now() + make_interval(secs => $4), worker_id = $3, updated_at = now()
 where id = $1 and dispatch_no = $2 and run_at <= now() + interval '1 second'
   and (status = 'queued' or (status = 'processing' and lease_expires_at < now()))
   and ($5::text is null
        or (select count(*) from media_jobs c
             where c.concurrency_key = $5 and c.status = 'processing' and c.lease_expires_at > now()
               and c.id <> $1) < $6)
returning attempts, max_attempts
"""

# Taken before START_ATTEMPT for a job with a concurrency key: starts of one key run one at a time,
# so the count in START_ATTEMPT cannot be read by two starts at once.
LOCK_CONCURRENCY_KEY = "select pg_advisory_xact_lock(hashtextextended($1, 0))"

# Why a delivery did not start: the record's state as the delivery sees it.
START_REFUSED = """
select status, dispatch_no, attempts, lease_expires_at > now() as lease_fresh,
       greatest(0, extract(epoch from run_at - now()))::float8 as starts_in_s
  from media_jobs where id = $1
"""

HEARTBEAT = """
update media_jobs set heartbeat_at = now(), lease_expires_at = now() + make_interval(secs => $3)
 where id = $1 and attempts = $2 and status = 'processing'
"""

PROGRESS = """
update media_jobs set progress = $3, heartbeat_at = now(), updated_at = now()
 where id = $1 and attempts = $2 and status = 'processing'
"""

# Opening a job's transaction: acts for the creator; false when the attempt no longer owns the record.
BEGIN_JOB_TX = "select begin_job_tx($1, $2, $3)"
BEGIN_SYSTEM_JOB_TX = "select begin_system_job_tx($1, $2)"

COMPLETE = """
update media_jobs
   set status = 'completed', result = $3, progress = 100, error = null, error_kind = null,
       finished_at = now(), lease_expires_at = null, updated_at = now()
 where id = $1 and attempts = $2 and status = 'processing'
"""

FAIL = """
update media_jobs
   set status = 'failed', error = $3, error_kind = $4, finished_at = now(), lease_expires_at = null,
       updated_at = now()
 where id = $1 and attempts = $2 and status = 'processing'
"""

# A retry keeps the dispatch: arq delivers the same job again after the delay.
SCHEDULE_RETRY = """
update media_jobs
   set status = 'queued', error = $3, error_kind = $4, run_at = now() + make_interval(secs => $5),
       lease_expires_at = null, updated_at = now()
 where id = $1 and attempts = $2 and status = 'processing'
"""

# A record that never became a valid job: failed with the reason (fenced on its dispatch).
REJECT = """
update media_jobs set status = 'failed', error = $3, error_kind = $4, finished_at = now(), updated_at = now()
 where id = $1 and dispatch_no = $2 and status in ('queued', 'processing')
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

# --- delivery (system role): records that must reach Redis -----------------------------------------

# The outbox: records whose current dispatch is not in Redis yet (their producer died between commit
# and push, a push failed, or the record was re-driven). New records wait out a grace period so the
# relay does not race their producer's own push.
UNPUSHED = """
select id, user_id, job_name, queue, payload, run_at, dispatch_no from media_jobs
 where status = 'queued' and enqueued_at is null
   and (created_at < now() - make_interval(secs => $1) or dispatch_no > 1)
   and (user_id is null or queue <> all($3::text[]))
 order by created_at
 limit $2
"""

# A fair queue's next dispatches: the creators with due unpushed jobs (a skip scan over the index,
# one probe per creator, however long one creator's backlog is), then each creator's oldest few,
# taken round-robin: every creator's first job, then every creator's second, ...
NEXT_FAIR = """
with recursive creators(user_id) as (
    (select user_id from media_jobs
      where queue = $1 and status = 'queued' and enqueued_at is null and user_id is not null
      order by user_id limit 1)
    union all
    select (select m.user_id from media_jobs m
             where m.queue = $1 and m.status = 'queued' and m.enqueued_at is null and m.user_id > c.user_id
             order by m.user_id limit 1)
      from creators c where c.user_id is not null
)
select j.id, j.user_id, j.job_name, j.queue, j.payload, j.run_at, j.dispatch_no
  from creators c
  cross join lateral (
      select m.id, m.user_id, m.job_name, m.queue, m.payload, m.run_at, m.dispatch_no,
             row_number() over (order by m.created_at) as turn
        from media_jobs m
       where m.queue = $1 and m.user_id = c.user_id and m.status = 'queued' and m.enqueued_at is null
         and m.run_at <= now()
       order by m.created_at
       limit $2
  ) j
 where c.user_id is not null
 order by j.turn, j.user_id
 limit $2
"""

# Re-drive: a new dispatch for records whose attempt stopped heartbeating (worker killed, paused,
# partitioned). The next delivery starts a new attempt, or fails the job for good if none is left.
REDRIVE_EXPIRED_LEASES = """
with expired as (
    select id from media_jobs
     where status = 'processing' and lease_expires_at < now()
     order by lease_expires_at
     limit $1
       for update skip locked
)
update media_jobs j
   set status = 'queued', dispatch_no = j.dispatch_no + 1, enqueued_at = null, lease_expires_at = null,
       error = format('lease expired: %s stopped heartbeating during attempt %s', j.worker_id, j.attempts),
       error_kind = 'lease_expired', run_at = now(), updated_at = now()
  from expired
 where j.id = expired.id
returning j.id, j.user_id, j.job_name, j.attempts, j.dispatch_no
"""

# Queued records said to be in Redis, in id order from a cursor, for comparing with what Redis holds.
PUSHED_QUEUED_AFTER = """
select id, dispatch_no from media_jobs
 where status = 'queued' and enqueued_at < now() - make_interval(secs => $2) and id > $1
 order by id
 limit $3
"""

# Re-drive records whose dispatch Redis no longer holds (restart without persistence, flush,
# failover, expiry), unless they changed since they were compared.
REDRIVE_LOST = """
update media_jobs j
   set dispatch_no = j.dispatch_no + 1, enqueued_at = null, run_at = greatest(j.run_at, now()),
       error = 'dispatch lost from Redis: re-driven', error_kind = 'dispatch_lost', updated_at = now()
  from unnest($1::uuid[], $2::int[]) as t(id, dispatch_no)
 where j.id = t.id and j.dispatch_no = t.dispatch_no and j.status = 'queued' and j.enqueued_at is not null
returning j.id, j.user_id, j.job_name
"""

PRUNE_FINISHED = """
with doomed as (
    select id from media_jobs
     where status in ('completed', 'failed', 'cancelled') and finished_at < now() - make_interval(secs => $1)
     order by finished_at
     limit $2
)
delete from media_jobs j using doomed where j.id = doomed.id
"""


GET = "select * from media_jobs where id = $1"
GET_FINISHED = "select * from media_jobs where id = $1 and status in ('completed', 'failed', 'cancelled')"


@dataclass(frozen=True)
class NewJobRecord:
    job_key: str
    payload: dict[str, Any]
    run_at: datetime | None = None
    subject_type: str | None = None
    subject_id: UUID | None = None
    concurrency_key: str | None = None


@dataclass(frozen=True)
class RecordRef:
    id: UUID
    job_key: str
    status: str
    enqueued_at: datetime | None
    run_at: datetime
    dispatch_no: int
    created: bool


async def insert_many(
    conn: asyncpg.Connection, user_id: UUID | None, job_name: str, queue: str, max_attempts: int,
    recs: list[NewJobRecord],
) -> list[RecordRef]:
    """Insert the records whose key has no active record; find the active ones. In the order of `recs`."""
    refs: dict[str, RecordRef] = {}
    pending = recs
    # A conflicting record can finish between the insert and the look-up: insert that key again.
    for _ in range(3):
        rows = await conn.fetch(
            INSERT_MANY, user_id, job_name, queue, max_attempts,
            [r.job_key for r in pending], [r.payload for r in pending], [r.run_at for r in pending],
            [r.subject_type for r in pending], [r.subject_id for r in pending], [r.concurrency_key for r in pending],
        )  # fmt: skip
        for row in rows:
            refs[row["job_key"]] = RecordRef(
                row["id"], row["job_key"], row["status"], row["enqueued_at"], row["run_at"], row["dispatch_no"], True
            )
        seen = [r.job_key for r in pending if r.job_key not in refs]
        if seen:
            for row in await conn.fetch(FIND_BY_KEYS, user_id, seen):
                if row["job_name"] != job_name:
                    raise ValueError(f"job key {row['job_key']!r} is already used by a {row['job_name']} job")
                refs[row["job_key"]] = RecordRef(
                    row["id"],
                    row["job_key"],
                    row["status"],
                    row["enqueued_at"],
                    row["run_at"],
                    row["dispatch_no"],
                    False,
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
