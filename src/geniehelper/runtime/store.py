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
from asyncpg.pool import PoolConnectionProxy

# The bookkeeping a worker does for every creator (starts, leases, outcomes, "pushed" marks) is in
# functions (migration 0015): geniehelper_runtime may call them and touch no table itself. Their batch
# writes join rows with `unnest` and also say `id = any(...)`: that makes the primary key drive the
# statement whatever the planner estimates (stale statistics once made a 2,500-row mark scan the
# table per row: 1.8 s instead of 0.1 s).

# Many records of one job for one creator in one statement (and one round trip outside a transaction):
# inserts those whose key has no active record, returns them and the active records of the others.
RECORD_JOBS = "select * from record_jobs($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"

# The same for the jobs of many creators and kinds (the runtime role's group commit, migration 0033):
# a row per request, each with its creator, job name, queue and attempts.
RECORD_JOBS_OF_MANY = "select * from runtime_record_jobs($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"

DELETE_UNADMITTED = "delete from media_jobs where id = any($1::uuid[])"

# A push of dispatch n landed: the record leaves the outbox (only if n is still its dispatch).
MARK_ENQUEUED_MANY = "select runtime_mark_enqueued($1, $2)"

MARK_DISPATCH_FAILED_MANY = "select runtime_mark_dispatch_failed($1, $2, $3)"

# The lease: a record is started by the delivery of its current dispatch, when queued, or when
# the attempt that held it let its lease expire (its worker died or stopped). Many deliveries per
# statement (see record_writer); a row's creator must be the delivery's. A row with a concurrency
# key starts only while fewer than its limit run under that key (its starts hold LOCK_CONCURRENCY_KEY).
START_ATTEMPTS = "select * from runtime_start_attempts($1, $2, $3, $4, $5, $6, $7)"

# Why deliveries did not start: each record's state as they see it (no row: no such record).
START_REFUSED = "select * from runtime_start_refused($1, $2)"

# Taken before START_ATTEMPTS for a job with a concurrency key: starts of one key run one at a time,
# so the count in START_ATTEMPTS cannot be read by two starts at once.
LOCK_CONCURRENCY_KEY = "select pg_advisory_xact_lock(hashtextextended($1, 0))"

# The leases of every attempt a worker holds, in one statement; what comes back is still held.
HEARTBEATS = "select id from runtime_heartbeats($1, $2, $3, $4) as id"

PROGRESS = """
update media_jobs set progress = $3, heartbeat_at = now(), updated_at = now()
 where id = $1 and attempts = $2 and status = 'processing'
"""

# Which of these attempts still own their records (checked before an outside effect; the checks
# of concurrently running jobs go in one statement).
ATTEMPTS_HOLD = "select id from runtime_attempts_hold($1, $2, $3) as id"

# Opening a job's transaction: acts for the creator; false when the attempt no longer owns the record.
BEGIN_JOB_TX = "select begin_job_tx($1, $2, $3)"
BEGIN_SYSTEM_JOB_TX = "select begin_system_job_tx($1, $2)"

# Outcomes of many attempts, each landing only while its attempt still owns the record:
# 'completed' (with a result), 'failed', or 'queued' again (a retry keeps the dispatch: arq
# delivers the same job again after delay_s). What comes back landed.
FINISH_ATTEMPTS = "select * from runtime_finish_attempts($1, $2, $3, $4, $5, $6, $7, $8)"

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
       error_kind = 'lease_expired', run_at = now(), updated_at = now(),
       history = j.history || job_history_entry('lease_expired', j.attempts, j.worker_id, 'lease_expired',
                                                'stopped heartbeating', 'job_monitor')
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
       error = 'dispatch lost from Redis: re-driven', error_kind = 'dispatch_lost', updated_at = now(),
       history = j.history || job_history_entry('dispatch_lost', j.attempts, null, 'dispatch_lost',
                                                format('dispatch %s not in Redis', j.dispatch_no), 'job_monitor')
  from unnest($1::uuid[], $2::int[]) as t(id, dispatch_no)
 where j.id = any($1::uuid[]) and j.id = t.id and j.dispatch_no = t.dispatch_no and j.status = 'queued'
   and j.enqueued_at is not null
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
    # A conflicting record can commit, or finish, while this statement runs: ask again for that key.
    for _ in range(3):
        rows = await conn.fetch(
            RECORD_JOBS, user_id, job_name, queue, max_attempts,
            [r.job_key for r in pending], [r.payload for r in pending], [r.run_at for r in pending],
            [r.subject_type for r in pending], [r.subject_id for r in pending], [r.concurrency_key for r in pending],
        )  # fmt: skip
        for row in rows:
            if row["job_name"] != job_name:
                raise ValueError(f"job key {row['job_key']!r} is already used by a {row['job_name']} job")
            refs[row["job_key"]] = RecordRef(
                row["id"], row["job_key"], row["status"], row["enqueued_at"], row["run_at"], row["dispatch_no"],
                row["created"],
            )  # fmt: skip
        pending = [r for r in pending if r.job_key not in refs]
        if not pending:
            return [refs[r.job_key] for r in recs]
    raise RuntimeError(f"job keys {[r.job_key for r in pending]} kept changing while being recorded")


@dataclass(frozen=True)
class OwnedJobRecord:
    """A record to write for a creator, in a batch that mixes creators and kinds of job."""

    user_id: UUID
    job_name: str
    queue: str
    max_attempts: int
    record: NewJobRecord


async def insert_for_many(
    conn: asyncpg.Connection | PoolConnectionProxy, recs: list[OwnedJobRecord]
) -> list[RecordRef | ValueError]:
    """`insert_many` for many creators' records in one statement (geniehelper_runtime's connection).

    In the order of `recs`. A key the creator already uses for another kind of job gives a
    ValueError for that request only; a key twice in the batch is one record (created once)."""
    found: dict[tuple[UUID, str], asyncpg.Record] = {}
    pending = recs
    for _ in range(3):
        rows = await conn.fetch(
            RECORD_JOBS_OF_MANY, [r.user_id for r in pending], [r.job_name for r in pending],
            [r.queue for r in pending], [r.max_attempts for r in pending], [r.record.job_key for r in pending],
            [r.record.payload for r in pending], [r.record.run_at for r in pending],
            [r.record.subject_type for r in pending], [r.record.subject_id for r in pending],
            [r.record.concurrency_key for r in pending],
        )  # fmt: skip
        for row in rows:
            found[(row["user_id"], row["job_key"])] = row
        pending = [r for r in pending if (r.user_id, r.record.job_key) not in found]
        if not pending:
            break
    else:
        raise RuntimeError(f"job keys {[r.record.job_key for r in pending]} kept changing while being recorded")
    outcomes: list[RecordRef | ValueError] = []
    seen: set[tuple[UUID, str]] = set()
    for r in recs:
        row = found[(r.user_id, r.record.job_key)]
        if row["job_name"] != r.job_name:
            outcomes.append(ValueError(f"job key {r.record.job_key!r} is already used by a {row['job_name']} job"))
            continue
        first = (r.user_id, r.record.job_key) not in seen
        seen.add((r.user_id, r.record.job_key))
        outcomes.append(RecordRef(
            row["id"], row["job_key"], row["status"], row["enqueued_at"], row["run_at"], row["dispatch_no"],
            row["created"] and first,
        ))  # fmt: skip
    return outcomes


def payload_for_record(raw: str | bytes) -> dict[str, Any]:
    """Store what arrived, even when it is not valid JSON, so ops can see it."""
    try:
        value = json.loads(raw)
    except ValueError:
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        return {"unparsed": text[:4096]}
    return value if isinstance(value, dict) else {"value": value}
