"""scrape_connection: one scrape cycle of one platform connection (bulk queue).

Checks the token, then appends the account's stats snapshot and one snapshot per published post and
updates the connection's current counts (`geniehelper.sync.scrape`); with `health_only` (a connection
whose auth expired, on its slower cadence) it only checks. Every run writes one health-check row,
failures included. All snapshots of a cycle carry its `cycle_at`, so a retried run adds none twice.

Errors: expired auth is recorded (connection `auth_expired`) and the run ends there, completed: the
scheduler only health-checks the connection until it is reconnected. A rate limit or an unavailable
platform is retried (`Retry-After` honoured); a refused request, an unregistered platform or unreadable
credentials fail the job. One job at a time per connection (with sync_fans: the same concurrency key).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import structlog

from geniehelper.crypto import CredentialError
from geniehelper.domain import platform as connections
from geniehelper.platforms import AuthExpired
from geniehelper.runtime.context import JobContext
from geniehelper.runtime.definition import Concurrency, JobDefinition, JobPayload, Policy, Subject
from geniehelper.runtime.resources import CREDENTIALS, HTTP_CLIENT
from geniehelper.runtime.retry import PermanentJobError
from geniehelper.sync import scrape
from geniehelper.sync.connect import platform_client

log = structlog.get_logger("jobs.scrape_connection")


class ScrapeConnectionPayload(JobPayload):
    platform_connection_id: UUID
    cycle_at: datetime  # the scrape cycle: every snapshot of this run is captured at it
    health_only: bool = False


async def scrape_connection(ctx: JobContext, payload: ScrapeConnectionPayload) -> dict[str, Any]:
    async with ctx.creator_tx() as conn:
        connection = await connections.get(conn, payload.platform_connection_id)
    if connection is None:
        return {"outcome": "connection_missing"}
    if connection.status != "active":
        return {"outcome": "not_active", "status": connection.status}
    try:
        client = platform_client(ctx.settings, ctx.resource(CREDENTIALS), ctx.resource(HTTP_CLIENT), connection)
    except LookupError as exc:
        await scrape.record_failure(ctx.creator_tx, connection, "not_registered", str(exc))
        raise PermanentJobError(str(exc)) from exc
    except CredentialError as exc:
        reason = f"stored credentials cannot be used: {exc}"
        await scrape.record_failure(ctx.creator_tx, connection, "credentials", reason)
        raise PermanentJobError(reason) from exc
    try:
        result = await scrape.scrape(
            ctx.creator_tx, client, connection, cycle_at=payload.cycle_at, health_only=payload.health_only
        )
    except AuthExpired as exc:
        log.warning("scrape.auth_expired", platform_connection_id=str(connection.id), platform=connection.platform)
        return {"outcome": "auth_expired", "health": "auth_expired", "reason": str(exc)}
    # Other platform errors propagate: the runtime retries them by their own `retryable` (a 429 after
    # its Retry-After), the health check row being written already (sync.scrape).
    log.info("scrape.done", platform_connection_id=str(connection.id), **result.as_dict())
    return result.as_dict()


SCRAPE_CONNECTION = JobDefinition(
    "scrape_connection",
    ScrapeConnectionPayload,
    scrape_connection,
    queue="bulk",
    policy=Policy(max_attempts=4, timeout_s=120.0, backoff_base_s=2.0, backoff_max_s=300.0),
    # One active scrape per connection: the scheduler's next cycle finds it and enqueues nothing.
    key=lambda p: f"scrape_connection:{p.platform_connection_id}",
    subject=lambda p: Subject("platform_connection", p.platform_connection_id),
    # Never two jobs on one connection at once (sync_fans shares the key): one token, one rate limit.
    concurrency=Concurrency(lambda p: f"platform_connection:{p.platform_connection_id}", limit=1),
    resources=(HTTP_CLIENT, CREDENTIALS),
)
