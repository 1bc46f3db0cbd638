"""sync_fans: the incremental fan sync of one platform connection (bulk queue).

Fans, subscriptions, transactions and messages, page by page, each page merged set-based in the
transaction that advances its cursor (`geniehelper.sync.fans`): a run killed at any point, or retried
after a rate limit, resumes at the first page not committed. Fans are deduplicated on the platform
account (`user_id, platform, platform_fan_id`); a profile is created only for a new person.

Errors: a rate limit or an unavailable platform is retried (`Retry-After` honoured) and resumes from
the cursors; expired auth marks the connection `auth_expired` and ends the run (completed: the
scheduler only health-checks it until it is reconnected); a refused request, an unregistered
platform or unreadable credentials fail the job. One job at a time per connection (with
scrape_connection: the same concurrency key).
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import structlog

from geniehelper.crypto import CredentialError
from geniehelper.domain import platform as connections
from geniehelper.domain.fan_sync import CursorMoved
from geniehelper.platforms import AuthExpired
from geniehelper.runtime.context import JobContext
from geniehelper.runtime.definition import Concurrency, JobDefinition, JobPayload, Policy, Subject
from geniehelper.runtime.resources import CREDENTIALS, HTTP_CLIENT
from geniehelper.runtime.retry import PermanentJobError, TransientJobError
from geniehelper.sync import fans
from geniehelper.sync.connect import platform_client

log = structlog.get_logger("jobs.sync_fans")


class SyncFansPayload(JobPayload):
    platform_connection_id: UUID


async def sync_fans(ctx: JobContext, payload: SyncFansPayload) -> dict[str, Any]:
    async with ctx.creator_tx() as conn:
        connection = await connections.get(conn, payload.platform_connection_id)
    if connection is None:
        return {"outcome": "connection_missing"}
    if connection.status != "active":
        return {"outcome": "not_active", "status": connection.status}
    try:
        client = platform_client(ctx.settings, ctx.resource(CREDENTIALS), ctx.resource(HTTP_CLIENT), connection)
    except (LookupError, CredentialError) as exc:
        raise PermanentJobError(f"cannot reach the platform for this connection: {exc}") from exc
    try:
        result = await fans.sync_connection(
            ctx.creator_tx, client, connection, page_size=ctx.settings.sync_page_size,
            history=ctx.settings.sync_subscription_history,
        )  # fmt: skip
    except AuthExpired as exc:
        async with ctx.creator_tx() as conn:
            await connections.mark_health(conn, connection.id, "auth_expired", str(exc))
        log.warning("sync.auth_expired", platform_connection_id=str(connection.id), platform=connection.platform)
        return {"outcome": "auth_expired", "reason": str(exc)}
    except CursorMoved as exc:  # another run got ahead: start again from where it left the cursors
        raise TransientJobError(str(exc)) from exc
    # Other platform errors propagate: the runtime retries them by their own `retryable` (a 429 after
    # its Retry-After) and fails the rest.
    return {"outcome": "synced", "resources": result.as_dict()}


SYNC_FANS = JobDefinition(
    "sync_fans",
    SyncFansPayload,
    sync_fans,
    queue="bulk",
    # A run that times out or is killed loses at most its current page: the next attempt resumes.
    policy=Policy(max_attempts=10, timeout_s=1_800.0, backoff_base_s=5.0, backoff_max_s=600.0),
    key=lambda p: f"sync_fans:{p.platform_connection_id}",
    subject=lambda p: Subject("platform_connection", p.platform_connection_id),
    concurrency=Concurrency(lambda p: f"platform_connection:{p.platform_connection_id}", limit=1),
    resources=(HTTP_CLIENT, CREDENTIALS),
)
