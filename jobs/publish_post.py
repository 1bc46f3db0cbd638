"""publish_post: publish one scheduled post to its platform, exactly once in effect.

Before calling the platform the job records an attempt keyed on (creator, scheduled post,
platform, revision) and sends an idempotency key derived from the same; when it finds an earlier
attempt without a confirmed external id, it asks the platform whether that attempt landed before
publishing again. So a worker killed after the platform accepted, a timeout after the request was
sent, or a duplicate dispatch never creates a second post.

Lateness is checked again when the job runs: a post overdue by more than POST_MAX_LATENESS_S is
marked `missed` instead of published. When an attempt of this revision was already recorded, the
platform is asked first (by idempotency key): a post that landed is recorded `posted`, late or not;
only one that did not land is marked `missed`.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import structlog
from pydantic import Field

from geniehelper.crypto import CredentialError
from geniehelper.domain import platform as connections
from geniehelper.domain import publishing
from geniehelper.platforms import (
    AuthExpired,
    HttpPlatformClient,
    OutcomeUnknown,
    PermanentPlatformError,
    PlatformError,
    PostToPublish,
    PublishedPost,
    RateLimited,
)
from geniehelper.runtime.context import JobContext
from geniehelper.runtime.definition import JobDefinition, JobPayload, Policy, Subject
from geniehelper.runtime.resources import CREDENTIALS, HTTP_CLIENT
from geniehelper.runtime.retry import PermanentJobError, TransientJobError

log = structlog.get_logger("jobs.publish_post")


class PublishPostPayload(JobPayload):
    scheduled_post_id: UUID
    revision: int = Field(ge=1)


async def publish_post(ctx: JobContext, payload: PublishPostPayload) -> dict[str, Any]:
    max_lateness_s = ctx.settings.post_max_lateness_s
    row = await ctx.fenced_fetchrow(publishing.START, payload.scheduled_post_id, payload.revision, max_lateness_s)
    post, attempt = publishing.started(row)
    if post is None:
        raise PermanentJobError(f"scheduled post {payload.scheduled_post_id} does not exist")
    if post.revision != payload.revision:
        return {"outcome": "superseded", "current_revision": post.revision}
    if post.status == "posted":
        return {"outcome": "already_posted", "external_post_id": post.external_post_id}
    if post.status not in ("queued", "publishing"):  # not claimed (scheduled), or settled
        return {"outcome": "not_publishable", "status": post.status}
    late = post.lateness_s > max_lateness_s
    if attempt is None:  # START starts every claimed post of this revision but a late one never sent
        # Nothing of this revision was ever sent: too late to publish, nothing to verify.
        async with ctx.creator_tx() as conn:
            return await _mark_missed(conn, post, max_lateness_s, "")
    connection = post.connection
    if connection is None:
        await _fail(ctx, post, "the post's platform connection is missing")
        raise PermanentJobError("platform connection missing")
    try:
        api_url = ctx.settings.platform_api_url(connection.platform)
    except LookupError as exc:  # checked before the token is decrypted: it goes nowhere unregistered
        await _fail(ctx, post, str(exc))
        raise PermanentJobError(str(exc)) from exc

    try:
        cipher = ctx.resource(CREDENTIALS)
        token = connections.decrypt_token(cipher, connection)
    except CredentialError as exc:
        reason = f"stored credentials cannot be used: {exc}"
        async with ctx.creator_tx() as conn:
            await connections.mark_health(conn, connection.id, "unhealthy", reason)
        await _fail(ctx, post, reason)
        raise PermanentJobError(reason) from exc

    client = HttpPlatformClient(
        api_url, token, ctx.resource(HTTP_CLIENT), timeout_s=ctx.settings.platform_timeout_s
    )
    try:
        published: PublishedPost | None = None
        if attempt.external_post_id is None and not attempt.created:
            # An earlier attempt may have reached the platform: ask before posting again.
            published = await client.find_post_by_idempotency_key(attempt.idempotency_key)
            if published is not None:
                log.info("publish.recovered_earlier_attempt", external_post_id=published.external_post_id)
        if published is None and attempt.external_post_id is None and not late:
            text = " ".join([post.caption, *(f"#{tag.lstrip('#')}" for tag in post.hashtags)]).strip()
            await ctx.ensure_lease()  # a worker paused past its lease must not post (the key covers the rest)
            published = await client.publish_post(
                PostToPublish(text=text or (post.title or "")), idempotency_key=attempt.idempotency_key
            )
    except AuthExpired as exc:
        reason = "the platform rejected the credentials (auth expired): reconnect the account"
        async with ctx.creator_tx() as conn:
            await connections.mark_health(conn, connection.id, "auth_expired", str(exc))
        await _fail(ctx, post, reason)
        raise PermanentJobError(reason) from exc
    except RateLimited as exc:
        await _note_retry(ctx, post, f"rate limited by the platform; retrying in {exc.retry_after_s:g}s")
        raise TransientJobError(str(exc), retry_after_s=exc.retry_after_s) from exc
    except OutcomeUnknown as exc:
        await _note_retry(ctx, post, "the platform did not answer after the post was sent; verifying before retry")
        raise TransientJobError(f"outcome unknown: {exc}") from exc
    except PermanentPlatformError as exc:
        await _fail(ctx, post, f"the platform refused the post: {exc}")
        raise PermanentJobError(str(exc)) from exc
    except PlatformError as exc:
        await _note_retry(ctx, post, f"platform error, retrying: {exc}")
        raise TransientJobError(str(exc)) from exc

    if published is None and attempt.external_post_id is None:
        # Late, and the earlier attempt did not reach the platform: do not publish it now.
        async with ctx.creator_tx() as conn:
            note = "; the earlier attempt was checked: the platform has no post with its idempotency key"
            return await _mark_missed(conn, post, max_lateness_s, note)

    external_id = published.external_post_id if published else attempt.external_post_id
    posted_at = published.created_at if published else None
    await ctx.fenced_fetchrow(
        publishing.RECORD_POSTED, attempt.id if published is not None else None, external_id, None, post.id,
        posted_at or post.scheduled_time, post.revision, post.content_post_id, posted_at,
    )  # fmt: skip
    log.info("publish.posted", scheduled_post_id=str(post.id), external_post_id=external_id, platform=post.platform)
    return {"outcome": "posted", "external_post_id": external_id}


async def _mark_missed(conn: Any, post: publishing.PostToSend, max_lateness_s: float, note: str) -> dict[str, Any]:
    row = await conn.fetchrow(publishing.MARK_MISSED, post.id, post.revision, max_lateness_s, note)
    if row is None:  # settled meanwhile (START's row lock ended with its statement)
        current = await conn.fetchval("select status from scheduled_posts where id = $1", post.id)
        return {"outcome": "not_publishable", "status": current}
    log.warning(
        "publish.missed", scheduled_post_id=str(post.id), lateness_s=round(row["lateness_s"]),
        max_lateness_s=max_lateness_s,
    )  # fmt: skip
    return {
        "outcome": "missed", "lateness_s": round(row["lateness_s"]), "max_lateness_s": max_lateness_s,
        "reason": row["error_message"],
    }  # fmt: skip


async def _fail(ctx: JobContext, post: publishing.PostToSend, reason: str) -> None:
    async with ctx.creator_tx() as conn:
        await conn.execute(publishing.MARK_FAILED, post.id, reason, post.revision)


async def _note_retry(ctx: JobContext, post: publishing.PostToSend, reason: str) -> None:
    """A transient failure: the post waits in 'queued' for the retry, saying why."""
    async with ctx.creator_tx() as conn:
        await conn.execute(publishing.MARK_RETRYING, post.id, reason, post.revision)


async def publish_post_failed(ctx: JobContext, payload: PublishPostPayload, error: str) -> None:
    """The runtime gave up (last attempt failed or timed out, or workers died on every attempt)."""
    async with ctx.creator_tx() as conn:
        await conn.execute(
            publishing.MARK_GIVEN_UP, payload.scheduled_post_id, f"not published: {error}", payload.revision
        )


PUBLISH_POST = JobDefinition(
    "publish_post",
    PublishPostPayload,
    publish_post,
    queue="default",
    policy=Policy(max_attempts=8, timeout_s=60.0, backoff_base_s=5.0, backoff_max_s=600.0),
    # Counted when the post is dispatched; a post refused here is marked failed with the reason.
    quota_operation="posts_published",
    # One active job per scheduled post and revision: re-dispatching the same revision creates nothing.
    key=lambda p: f"publish_post:{p.scheduled_post_id}:r{p.revision}",
    subject=lambda p: Subject("scheduled_post", p.scheduled_post_id),
    on_failure=publish_post_failed,
    resources=(HTTP_CLIENT, CREDENTIALS),
)
