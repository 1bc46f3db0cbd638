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


def idempotency_key(scheduled_post_id: UUID, platform: str, revision: int) -> str:
    """Derived from what is published, so every retry and every worker sends the same key."""
    return f"gh-{scheduled_post_id}-{platform}-r{revision}"


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

LOAD_FOR_PUBLISH = """
select sp.id, sp.user_id, sp.content_post_id, sp.platform_connection_id, sp.platform, sp.scheduled_time,
       sp.status, sp.revision, sp.external_post_id, cp.caption, cp.hashtags, cp.title,
       extract(epoch from now() - sp.scheduled_time)::float8 as lateness_s,
       case when pc.id is not null then to_jsonb(pc) end as connection
  from scheduled_posts sp
  join content_posts cp on cp.user_id = sp.user_id and cp.id = sp.content_post_id
  left join platform_connections pc on pc.user_id = sp.user_id and pc.id = sp.platform_connection_id
 where sp.id = $1
   for update of sp
"""

FIND_ATTEMPT = """
select id, idempotency_key, attempts, external_post_id, false as created from publish_attempts
 where user_id = $1 and scheduled_post_id = $2 and platform = $3 and revision = $4
"""

# The post set `publishing` and its attempt row written (or counted again), in one statement. Only
# a claimed post starts: a 'scheduled' one has not been dispatched by the post_scheduler (not due
# yet, or its lateness not checked) and is not published by a job that finds it so; then no row.
# $1 creator, $2 scheduled post, $3 platform, $4 revision, $5 idempotency key.
START_ATTEMPT = """
with started as (
    update scheduled_posts
       set status = 'publishing', publishing_started_at = now(), attempts = attempts + 1, error_message = null
     where id = $2 and revision = $4 and status in ('queued', 'publishing')
    returning id
)
insert into publish_attempts (user_id, scheduled_post_id, platform, revision, idempotency_key)
select $1, started.id, $3, $4, $5 from started
on conflict (user_id, scheduled_post_id, platform, revision) do update
    set attempts = publish_attempts.attempts + 1
returning id, idempotency_key, attempts, external_post_id, (xmax = 0) as created
"""

# A published post, in one statement: its attempt confirmed ($1 NULL: an earlier attempt's id was
# already confirmed), the scheduled post `posted` (its revision only), the content piece `published`.
# $2 external id, $3 external url, $4 scheduled post, $5 posted at, $6 revision, $7 content post,
# $8 when the platform says it was created (NULL: unknown). The content post's attachments
# (media_asset_ids, in order; ids that are not the creator's assets skipped, as the array has no FK)
# are recorded as used by it in media_asset_usages (a second platform's post changes nothing).
RECORD_POSTED = """
with confirmed as (
    update publish_attempts set external_post_id = $2, external_post_url = $3, confirmed_at = now()
     where id = $1
), posted as (
    update scheduled_posts
       set status = 'posted', external_post_id = $2, external_post_url = $3, posted_at = $5, error_message = null
     where id = $4 and revision = $6
), used as (
    insert into media_asset_usages (user_id, media_asset_id, content_post_id, position)
    select cp.user_id, attached.id, cp.id, min(attached.ord) - 1
      from content_posts cp, unnest(cp.media_asset_ids) with ordinality as attached (id, ord)
     where cp.id = $7
       and exists (select from media_assets a where a.user_id = cp.user_id and a.id = attached.id)
     group by cp.user_id, attached.id, cp.id
    on conflict (user_id, media_asset_id, content_post_id, campaign_id, media_collection_id, fan_profile_id)
       do update set position = excluded.position
)
update content_posts set status = 'published', published_at = coalesce(published_at, $8)
 where id = $7 and status <> 'archived'
"""

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


async def load_for_publish(conn: Any, scheduled_post_id: UUID) -> PostToSend | None:
    row = await conn.fetchrow(LOAD_FOR_PUBLISH, scheduled_post_id)
    return PostToSend(**dict(row)) if row else None


async def find_attempt(conn: Any, post: PostToSend) -> PublishAttempt | None:
    """The attempt row of this post's revision, if an earlier run wrote one (nothing is written)."""
    row = await conn.fetchrow(FIND_ATTEMPT, post.user_id, post.id, post.platform, post.revision)
    return PublishAttempt(**dict(row)) if row else None


async def start_attempt(conn: Any, post: PostToSend) -> PublishAttempt | None:
    """Mark the post publishing and record this attempt; None when the post is not claimed for this
    revision (START_ATTEMPT)."""
    row = await conn.fetchrow(
        START_ATTEMPT, post.user_id, post.id, post.platform, post.revision,
        idempotency_key(post.id, post.platform, post.revision),
    )  # fmt: skip
    return PublishAttempt(**dict(row)) if row else None
