"""The queries and actions behind `geniehelper jobs ...` (the on-call CLI, the dashboard, the API).

Everything runs as the system role (`db.system_tx()`: it reads every creator's records and may write
only the bookkeeping columns), except a retry, which goes through `JobQueue.requeue` and so records
the new job exactly as an enqueue would (in its creator's transaction). Every retry and cancel is
written to `ops_actions` with the actor and what was asked for (an id or the filter).

All SQL takes its input as `$n` parameters; a filter left out is a NULL parameter.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any
from uuid import UUID

import asyncpg

from geniehelper.ops.alerts import RECORD_ACTION
from geniehelper.runtime.definition import InvalidPayload
from geniehelper.runtime.queue import JobQueue
from geniehelper.runtime.quotas import QuotaExceeded

RETRYABLE = ("failed", "cancelled")
CANCELLABLE = ("queued", "processing")
KEY_RUNS_SHOWN = 20  # `jobs show`: other records of the same key
Row = dict[str, Any]

# Newest first. `$8` (retry): only each key's latest record, so jobs run again since are left out
# (retrying the same filter twice does not run them a third time).
LIST = """
select f.id, f.user_id, f.job_name, f.queue, f.job_key, f.status, f.attempts, f.max_attempts, f.error, f.error_kind,
       f.created_at, f.run_at, f.started_at, f.finished_at, extract(epoch from now() - f.created_at)::float8 as age_s
  from media_jobs f
 where ($1::text[] is null or f.status = any($1::text[]))
   and ($2::text is null or f.job_name = $2)
   and ($3::text is null or f.queue = $3)
   and ($4::uuid is null or f.user_id = $4)
   and ($5::text is null or strpos(lower(f.error), lower($5)) > 0)
   and ($6::float8 is null or f.created_at <= now() - make_interval(secs => $6))
   and ($7::float8 is null or f.created_at > now() - make_interval(secs => $7))
   and (not $8::boolean or not exists (
        select 1 from media_jobs r
         where (r.user_id = f.user_id or (r.user_id is null and f.user_id is null))  -- each side by index
           and r.job_key = f.job_key and r.created_at > f.created_at))
 order by f.created_at desc, f.id desc
 limit $9
"""

GET = """
select *, extract(epoch from now() - created_at)::float8 as age_s from media_jobs where id = $1
"""

# The other records of a job's key (earlier failures, the runs a retry made), oldest first.
KEY_RUNS = """
select id, status, attempts, created_at, finished_at, error
  from media_jobs
 where (user_id = $1 or (user_id is null and $1::uuid is null)) and job_key = $2 and id <> $3
 order by created_at
 limit $4
"""

# Queued and processing records end as cancelled; what else the ids name is left alone. The lock in
# `target` reads each row's latest status, so a job that finished meanwhile is not touched.
CANCEL = """
with target as (
    select id, status from media_jobs
     where id = any($1::uuid[]) and status in ('queued', 'processing')
       for update
)
update media_jobs j
   set status = 'cancelled', finished_at = now(), error = 'cancelled by ' || $2, error_kind = 'cancelled',
       lease_expires_at = null, updated_at = now(),
       history = j.history || job_history_entry('cancelled', j.attempts,
                                                case when target.status = 'processing' then j.worker_id end,
                                                null, null, $2)
  from target
 where j.id = target.id
returning j.id, target.status as was
"""

STATUS_OF = "select id, status from media_jobs where id = any($1::uuid[])"

@dataclass(frozen=True)
class JobFilter:
    """What `jobs list|retry|cancel` select by; None (or empty) leaves a criterion out."""

    statuses: tuple[str, ...] = ()
    job_name: str | None = None
    queue: str | None = None
    creator: UUID | None = None
    error: str | None = None
    older_than_s: float | None = None
    newer_than_s: float | None = None

    def is_empty(self) -> bool:
        return not any(value not in (None, ()) for value in asdict(self).values())

    def as_target(self) -> dict[str, Any]:
        """The filter as recorded in ops_actions (the criteria given only)."""
        given = {k: v for k, v in asdict(self).items() if v not in (None, ())}
        return {k: list(v) if isinstance(v, tuple) else str(v) if isinstance(v, UUID) else v for k, v in given.items()}


async def list_jobs(
    conn: asyncpg.Connection, where: JobFilter, limit: int, *, latest_of_key: bool = False
) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        LIST, list(where.statuses) or None, where.job_name, where.queue, where.creator, where.error,
        where.older_than_s, where.newer_than_s, latest_of_key, limit,
    )  # fmt: skip
    return [dict(r) for r in rows]


async def get_job(conn: asyncpg.Connection, job_id: UUID) -> dict[str, Any] | None:
    """The whole record, with `key_runs`: the other records of its key (a retry's new run among them)."""
    row = await conn.fetchrow(GET, job_id)
    if row is None:
        return None
    job = dict(row)
    runs = await conn.fetch(KEY_RUNS, job["user_id"], job["job_key"], job_id, KEY_RUNS_SHOWN)
    job["key_runs"] = [dict(r) for r in runs]
    return job


async def select_jobs(
    conn: asyncpg.Connection, job_id: UUID | None, where: JobFilter, default_statuses: tuple[str, ...], limit: int,
    *, latest_of_key: bool,
) -> list[Row]:
    """What a retry or cancel is asked for: one job by id (whatever its status), or the filter's
    matches (in `default_statuses` unless the filter names statuses)."""
    if job_id is not None:
        job = await get_job(conn, job_id)
        return [job] if job is not None else []
    where = where if where.statuses else replace(where, statuses=default_statuses)
    return await list_jobs(conn, where, limit, latest_of_key=latest_of_key)


@dataclass
class CancelReport:
    cancelled: list[dict[str, Any]] = field(default_factory=list)  # {"id", "was"}
    skipped: list[dict[str, Any]] = field(default_factory=list)  # {"id", "status"}: finished, or gone


async def cancel_jobs(conn: asyncpg.Connection, ids: list[UUID], actor: str, target: Row) -> CancelReport:
    """Cancel the queued and processing records among `ids` and record the action (in the caller's
    system transaction). A processing job's attempt finds its record no longer processing: its
    outcome does not land and its lease loop stops it."""
    report = CancelReport()
    done = {row["id"]: row["was"] for row in await conn.fetch(CANCEL, ids, actor)}
    report.cancelled = [{"id": i, "was": done[i]} for i in ids if i in done]
    rest = [i for i in ids if i not in done]
    if rest:
        status = {row["id"]: row["status"] for row in await conn.fetch(STATUS_OF, rest)}
        report.skipped = [{"id": i, "status": status.get(i, "gone")} for i in rest]
    await conn.execute(RECORD_ACTION, actor, "jobs.cancel",
                       {**target, "jobs": [str(c["id"]) for c in report.cancelled]}, len(report.cancelled))  # fmt: skip
    return report


@dataclass
class RetryReport:
    retried: list[dict[str, Any]] = field(default_factory=list)  # {"id", "new_id", "duplicate"}
    failed: list[dict[str, Any]] = field(default_factory=list)  # {"id", "error"}: requeue refused


async def retry_jobs(queue: JobQueue, jobs: Iterable[Row], actor: str, target: Row) -> RetryReport:
    """Run each finished job again through `JobQueue.requeue` (a new record, pushed; the old one keeps
    its history), then record the action. A key with an active record already gives that record
    (`duplicate`): nothing new is made."""
    report = RetryReport()
    for job in jobs:
        try:
            new = await queue.requeue(job["id"], user_id=job["user_id"])
        except (InvalidPayload, QuotaExceeded, LookupError, ValueError) as exc:  # LookupError: UnknownJob too
            report.failed.append({"id": job["id"], "error": str(exc)})
            continue
        report.retried.append({"id": job["id"], "new_id": new.id, "duplicate": new.duplicate})
    made = [r for r in report.retried if not r["duplicate"]]
    async with queue.db.system_tx() as conn:
        await conn.execute(RECORD_ACTION, actor, "jobs.retry", {
            **target, "jobs": [str(r["id"]) for r in made], "new_jobs": [str(r["new_id"]) for r in made],
            "failed": len(report.failed),
        }, len(made))  # fmt: skip
    return report


def partition(jobs: Iterable[dict[str, Any]], statuses: Collection[str]) -> tuple[list[Row], list[Row]]:
    """(those in `statuses`, the others)."""
    inside: list[Row] = []
    outside: list[Row] = []
    for job in jobs:
        (inside if job["status"] in statuses else outside).append(job)
    return inside, outside
