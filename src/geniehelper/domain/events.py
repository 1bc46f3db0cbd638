"""domain_events: the outbox automation follows (migration 0022, docs/events.md).

Writers add events in the statement that writes the row they come from (the fan sync's merges, in
domain/fan_sync.py; a segment refresh, in segments/evaluation.py). Readers follow an `EventCursor`:
(writing transaction, id), taking only events of transactions older than every transaction still
running, so an event can never appear behind a cursor that has passed it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

EVENT_TYPES = (
    "new_subscriber", "rebill", "cancellation", "win_back", "tip", "purchase", "message_received", "segment_join",
    "segment_leave",
)

# Stable events only: of transactions that ended before the oldest one still running began.
READ_AFTER = """
select id, user_id, event_type, fan_profile_id, fan_platform_account_id, source_key, occurred_at, payload,
       xact_id::text as xact_id
  from domain_events
 where (xact_id, id) > ($1::text::xid8, $2::bigint)
   and xact_id < pg_snapshot_xmin(pg_current_snapshot())
 order by xact_id, id
 limit $3
"""


@dataclass(frozen=True)
class EventCursor:
    """Where a consumer stands: after the event (xact_id, id). `START` is before every event."""

    xact_id: int = 0
    id: int = 0


START = EventCursor()


@dataclass(frozen=True)
class DomainEvent:
    id: int
    user_id: UUID
    event_type: str
    fan_profile_id: UUID | None
    fan_platform_account_id: UUID | None
    source_key: str
    occurred_at: datetime
    payload: dict[str, Any]
    cursor: EventCursor  # a consumer that has handled this event stores this


async def read_events(conn: asyncpg.Connection, after: EventCursor, limit: int) -> list[DomainEvent]:
    """The next stable events after `after`, oldest first (the system role reads every creator's; the
    app role its own creator's)."""
    rows = await conn.fetch(READ_AFTER, str(after.xact_id), after.id, limit)
    return [
        DomainEvent(
            r["id"], r["user_id"], r["event_type"], r["fan_profile_id"], r["fan_platform_account_id"],
            r["source_key"], r["occurred_at"], r["payload"], EventCursor(int(r["xact_id"]), r["id"]),
        )
        for r in rows
    ]
