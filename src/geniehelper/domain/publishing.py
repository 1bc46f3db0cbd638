"""Publishing: the publish queue (`scheduled_posts`) and the publish attempts that make it exactly-once."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict


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

# Due posts move to 'queued' (or 'missed' when later than the maximum lateness); posts queued long
# ago without an outcome are claimed again (their job key makes the re-dispatch a no-op if it exists).
CLAIM_DUE = """
with due as (
    select id from scheduled_posts
     where (status = 'scheduled' and scheduled_time <= now())
        or (status = 'queued' and queued_at < now() - make_interval(secs => $3))
     order by scheduled_time
     limit $1
     for update skip locked
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
  from due
 where sp.id = due.id
returning sp.id, sp.user_id, sp.status, sp.revision, sp.scheduled_time, sp.platform,
          extract(epoch from now() - sp.scheduled_time)::float8 as lateness_s
"""

NEXT_DUE = "select min(scheduled_time) from scheduled_posts where status = 'scheduled'"

# --- publish_post (creator role) ----------------------------------------------------------------

LOAD_FOR_PUBLISH = """
select sp.id, sp.user_id, sp.content_post_id, sp.platform_connection_id, sp.platform, sp.scheduled_time,
       sp.status, sp.revision, sp.external_post_id, cp.caption, cp.hashtags, cp.title
  from scheduled_posts sp
  join content_posts cp on cp.user_id = sp.user_id and cp.id = sp.content_post_id
 where sp.id = $1
   for update of sp
"""

START_PUBLISHING = """
update scheduled_posts
   set status = 'publishing', publishing_started_at = now(), attempts = attempts + 1, error_message = null
 where id = $1 and revision = $2 and status in ('queued', 'publishing', 'scheduled')
"""

RECORD_ATTEMPT = """
insert into publish_attempts (user_id, scheduled_post_id, platform, revision, idempotency_key)
values ($1, $2, $3, $4, $5)
on conflict (user_id, scheduled_post_id, platform, revision) do update
    set attempts = publish_attempts.attempts + 1
returning id, idempotency_key, attempts, external_post_id, (xmax = 0) as created
"""

CONFIRM_ATTEMPT = """
update publish_attempts set external_post_id = $2, external_post_url = $3, confirmed_at = now()
 where id = $1
"""

MARK_POSTED = """
update scheduled_posts
   set status = 'posted', external_post_id = $2, external_post_url = $3, posted_at = $4, error_message = null
 where id = $1 and revision = $5
"""

MARK_CONTENT_PUBLISHED = """
update content_posts set status = 'published', published_at = coalesce(published_at, $2)
 where id = $1 and status <> 'archived'
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


async def record_attempt(conn: Any, post: PostToSend) -> PublishAttempt:
    row = await conn.fetchrow(
        RECORD_ATTEMPT, post.user_id, post.id, post.platform, post.revision,
        idempotency_key(post.id, post.platform, post.revision),
    )  # fmt: skip
    return PublishAttempt(**dict(row))
