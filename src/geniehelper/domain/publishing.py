"""Publishing: the publish queue (`scheduled_posts`) and the publish attempts that make it exactly-once."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict

from geniehelper.domain.platform import PlatformConnection


class PostToSend(BaseModel):
    """A scheduled post joined with the content it publishes."""

    model_config = ConfigDict(frozen=True)

    id: UUID
    user_id: UUID
    content_post_id: UUID
    platform_connection_id: UUID
    platform: str
    scheduled_time: datetime
    status: str
    revision: int
    external_post_id: str | None
    caption: str
    hashtags: list[str]
    title: str | None
    # Its platform connection, read in the same statement (None: the connection row is gone).
    connection: PlatformConnection | None
    lateness_s: float  # how long past scheduled_time it is now (database clock)


class PublishAttempt(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: UUID
    idempotency_key: str
    attempts: int
    external_post_id: str | None
    created: bool


# --- post_scheduler (system role): claim due posts across creators ---------------------------------

# One statement claims two kinds of posts (FOR UPDATE SKIP LOCKED, up to $1 of each):
# * due: 'scheduled' and scheduled_time passed: → 'queued', or → 'missed' with the reason when
#   overdue by more than $2 seconds;
# * stranded: 'queued' or 'publishing' with NO active publish_post job record (none of its
#   media_jobs rows queued or processing) and neither claimed nor started publishing in the last
#   $3 seconds (the grace covers a post just claimed whose job is still being recorded, and a job
#   whose record was settled a moment before its post): → 'queued' again. A post whose job is waiting
#   for a retry has an active record and is left alone. The re-dispatched job publishes the current
#   revision; if an earlier attempt may have reached the platform it verifies by idempotency key
#   first, and it checks the lateness itself (a stranded post is never marked missed here).
# The claimed rows are then updated by primary key (`id = any(array(...))`: a batch is small next to
# the table, whatever the planner estimates for the CTEs). Parameters: $1 batch, $2 maximum
# lateness (s), $3 re-claim grace (s); the post_scheduler reads the RETURNING columns.
CLAIM_DUE = """
with due as (
    select id from scheduled_posts
     where status = 'scheduled' and scheduled_time <= now()
     order by scheduled_time
     limit $1
     for update skip locked
), stranded as (
    select sp.id from scheduled_posts sp
     where sp.status in ('queued', 'publishing')
       and sp.queued_at < now() - make_interval(secs => $3)
       and (sp.publishing_started_at is null or sp.publishing_started_at < now() - make_interval(secs => $3))
       and not exists (select from media_jobs j
                        where j.subject_type = 'scheduled_post' and j.subject_id = sp.id and j.user_id = sp.user_id
                          and j.status in ('queued', 'processing'))
     order by sp.queued_at
     limit $1
     for update of sp skip locked
)
update scheduled_posts sp
   set status = case when sp.status = 'scheduled' and sp.scheduled_time < now() - make_interval(secs => $2)
                     then 'missed' else 'queued' end,
       error_message = case when sp.status = 'scheduled' and sp.scheduled_time < now() - make_interval(secs => $2)
                            then format('not published: due %s, %s s late, beyond the maximum lateness of %s s;'
                                        ' reschedule it to publish', sp.scheduled_time,
                                        round(extract(epoch from now() - sp.scheduled_time)), $2)
                            else sp.error_message end,
       queued_at = now()
 where sp.id = any (array(select id from due union all select id from stranded))
returning sp.id, sp.user_id, sp.status, sp.revision, sp.scheduled_time, sp.platform,
          extract(epoch from now() - sp.scheduled_time)::float8 as lateness_s
"""

# --- publish_post (creator role) ----------------------------------------------------------------

# The job's two steps, each one self-fencing statement (migration 0037 says what they do). Both take
# $1 creator, $2 the job record (NULL: unfenced), $3 the attempt, and return whether it owns the job.
# START: $4 scheduled post, $5 revision, $6 maximum lateness (s); the post and the attempt started.
START = "select owns, post, attempt from publish_post_start($1, $2, $3, $4, $5, $6)"
# RECORD_POSTED: $4 attempt id (NULL: an earlier attempt's was confirmed), $5 external id, $6 external
# url, $7 scheduled post, $8 posted at, $9 revision, $10 content post, $11 created at by the platform.
RECORD_POSTED = "select owns from publish_post_record_posted($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"

# Overdue when its job runs (the job waited out an outage, or retries took it past the limit).
# $1 id, $2 revision, $3 maximum lateness (s), $4 a note appended to the reason ('' for none).
MARK_MISSED = """
update scheduled_posts
   set status = 'missed',
       error_message = format('not published: due %s, %s s late when its job ran, beyond the maximum lateness'
                              ' of %s s%s; reschedule it to publish', scheduled_time,
                              round(extract(epoch from now() - scheduled_time)), $3::float8, $4::text)
 where id = $1 and revision = $2 and status in ('queued', 'publishing')
returning error_message, extract(epoch from now() - scheduled_time)::float8 as lateness_s
"""

MARK_FAILED = """
update scheduled_posts set status = 'failed', error_message = $2 where id = $1 and revision = $3
"""

# Only a post still in flight: one the job already settled (failed with its reason) keeps its status.
MARK_GIVEN_UP = """
update scheduled_posts set status = 'failed', error_message = $2
 where id = $1 and revision = $3 and status in ('queued', 'publishing')
"""

MARK_RETRYING = """
update scheduled_posts set status = 'queued', error_message = $2 where id = $1 and revision = $3
   and status = 'publishing'
"""


def started(row: Any) -> tuple[PostToSend | None, PublishAttempt | None]:
    """START's row: the post (None: it does not exist) and the attempt it started (None: none)."""
    post = PostToSend(**row["post"]) if row["post"] is not None else None
    return post, PublishAttempt(**row["attempt"]) if row["attempt"] is not None else None


async def start_unfenced(
    conn: Any, user_id: UUID, scheduled_post_id: UUID, revision: int, max_lateness_s: float
) -> tuple[PostToSend | None, PublishAttempt | None]:
    """START outside a job (no lease to check): what publish_post's first step does."""
    return started(await conn.fetchrow(START, user_id, None, 0, scheduled_post_id, revision, max_lateness_s))
