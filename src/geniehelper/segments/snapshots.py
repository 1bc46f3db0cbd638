"""Segment snapshots: a segment's membership frozen at a moment, for a broadcast to target.

`take_snapshot` first takes the segment's row lock in share mode: an evaluation of the segment in
flight (which holds the row FOR UPDATE) is waited for, and none starts until the snapshot's
transaction ends. Then one statement copies the membership with the segment's member count and the
rules version it was evaluated with. So a snapshot holds exactly the membership of one evaluation,
even while segment_evaluator runs. For a snapshot that is also current, refresh the segment in the
same transaction first (`evaluation.refresh`, then `take_snapshot`).

Snapshots never change afterwards (a trigger refuses UPDATE); a snapshot can be deleted whole.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

LOCK_SEGMENT_SHARED = "select id from fan_segments where user_id = $1 and id = $2 for share"
TAKE_SNAPSHOT = """
with segment as (
    select s.id, s.evaluated_rules_version, s.last_evaluated_at from fan_segments s where s.user_id = $1 and s.id = $2
), members as (
    select m.fan_profile_id from fan_segment_members m where m.user_id = $1 and m.fan_segment_id = $2
), snap as (
    insert into fan_segment_snapshots (user_id, fan_segment_id, purpose, member_count, rules_version, evaluated_at)
    select $1, segment.id, $3, (select count(*) from members), segment.evaluated_rules_version,
           segment.last_evaluated_at
      from segment
    returning id, user_id, fan_segment_id, purpose, member_count, rules_version, evaluated_at, taken_at
), added as (
    insert into fan_segment_snapshot_members (user_id, snapshot_id, fan_profile_id)
    select $1, snap.id, members.fan_profile_id from snap, members
    returning 1
)
select snap.*, (select count(*) from added)::int as added from snap
"""
SNAPSHOT_MEMBERS = """
select fan_profile_id from fan_segment_snapshot_members where user_id = $1 and snapshot_id = $2 order by 1
"""


@dataclass(frozen=True)
class Snapshot:
    id: UUID
    user_id: UUID
    fan_segment_id: UUID
    purpose: str | None
    member_count: int
    rules_version: int | None  # the rules version its membership was evaluated with (None: never evaluated)
    evaluated_at: datetime | None
    taken_at: datetime

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> Snapshot:
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})


async def take_snapshot(conn: Any, user_id: UUID, segment_id: UUID, *, purpose: str | None = None) -> Snapshot | None:
    """Freeze the segment's current membership, in the caller's creator transaction. None: no such segment."""
    if await conn.fetchval(LOCK_SEGMENT_SHARED, user_id, segment_id) is None:
        return None
    row = await conn.fetchrow(TAKE_SNAPSHOT, user_id, segment_id, purpose)
    assert row is not None and row["added"] == row["member_count"]
    return Snapshot.of(row)


async def snapshot_members(conn: Any, user_id: UUID, snapshot_id: UUID) -> list[UUID]:
    return [r["fan_profile_id"] for r in await conn.fetch(SNAPSHOT_MEMBERS, user_id, snapshot_id)]
