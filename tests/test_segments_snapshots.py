"""Segment snapshots: a segment's membership frozen at a moment, whole even while an evaluation of the
segment is in flight, and never changed afterwards."""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import pytest

from geniehelper.db import Database
from geniehelper.segments import evaluation, snapshots
from tests.conftest import make_creator
from tests.segment_fans import Fans, build_cast, buy

SPENT_10_IN_30_DAYS = {"spend": {"op": "gte", "value": 10, "days": 30}}


async def waiting_on_a_lock(owner: asyncpg.Connection, timeout_s: float = 10.0) -> None:
    """Until some session of this database waits on a lock."""
    deadline = time.monotonic() + timeout_s
    while not await owner.fetchval(
        "select count(*) from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'"
    ):
        assert time.monotonic() < deadline, "no session waited on a lock"
        await asyncio.sleep(0.02)


async def members_of(db: Database, fans: Fans, snapshot: snapshots.Snapshot) -> set[str]:
    async with db.creator_tx(fans.user_id) as conn:
        return fans.names(await snapshots.snapshot_members(conn, fans.user_id, snapshot.id))


async def test_a_snapshot_taken_while_an_evaluation_is_in_flight_holds_that_evaluations_membership(
    db: Database, owner: asyncpg.Connection
) -> None:
    fans = await build_cast(db, await make_creator(owner))
    async with db.creator_tx(fans.user_id) as conn:
        segment = await evaluation.create_segment(conn, fans.user_id, "spenders", SPENT_10_IN_30_DAYS)
        await evaluation.refresh(conn, fans.user_id, segment.id)  # alice, bob
        await buy(conn, fans, "cara", "tip", "30", 1)
        await conn.execute("update fan_transactions set status = 'refunded' where fan_profile_id = $1",
                           fans.ids["alice"])  # fmt: skip

    async def snapshot() -> snapshots.Snapshot:
        async with db.creator_tx(fans.user_id) as conn:
            taken = await snapshots.take_snapshot(conn, fans.user_id, segment.id, purpose="broadcast 1")
        assert taken is not None
        return taken

    # An evaluation has written its difference (cara in, alice out) and not committed yet.
    async with db.creator_tx(fans.user_id) as conn:
        done = await evaluation.refresh(conn, fans.user_id, segment.id)
        assert done is not None and (done.joined, done.left) == (1, 1)
        pending = asyncio.create_task(snapshot())
        await waiting_on_a_lock(owner)  # the snapshot waits for the evaluation
        assert not pending.done()
    taken = await asyncio.wait_for(pending, 10)
    assert await members_of(db, fans, taken) == {"bob", "cara"}  # all of the evaluation, never half of it
    assert (taken.member_count, taken.rules_version, taken.purpose) == (2, 1, "broadcast 1")
    row = await owner.fetchrow("select last_evaluated_at, member_count from fan_segments where id = $1", segment.id)
    assert row is not None
    assert (taken.evaluated_at, taken.member_count) == (row["last_evaluated_at"], row["member_count"])

    # An evaluation starting while a snapshot is being taken waits for it: the snapshot is the membership before.
    async with db.creator_tx(fans.user_id) as conn:
        await conn.execute("update fan_transactions set status = 'refunded' where fan_profile_id = $1",
                           fans.ids["bob"])  # fmt: skip

    async def evaluate() -> evaluation.Refresh | None:
        async with db.creator_tx(fans.user_id) as conn:
            return await evaluation.refresh(conn, fans.user_id, segment.id)

    async with db.creator_tx(fans.user_id) as conn:
        before = await snapshots.take_snapshot(conn, fans.user_id, segment.id)
        assert before is not None
        running = asyncio.create_task(evaluate())
        await waiting_on_a_lock(owner)
        assert not running.done()
    after = await asyncio.wait_for(running, 10)
    assert after is not None and (after.joined, after.left) == (0, 1)  # bob left, after the snapshot
    assert await members_of(db, fans, before) == {"bob", "cara"}
    # Frozen: later evaluations change no snapshot.
    assert await members_of(db, fans, taken) == {"bob", "cara"}


async def test_snapshots_are_frozen_fresh_when_taken_after_a_refresh_and_private_to_their_creator(
    db: Database, owner: asyncpg.Connection
) -> None:
    fans = await build_cast(db, await make_creator(owner))
    other = Fans(await make_creator(owner))
    async with db.creator_tx(fans.user_id) as conn:
        segment = await evaluation.create_segment(conn, fans.user_id, "tagged", {"tag": {"name": "city"}})
        never = await snapshots.take_snapshot(conn, fans.user_id, segment.id)  # never evaluated: empty
        await evaluation.refresh(conn, fans.user_id, segment.id)  # current, then frozen, in one transaction
        fresh = await snapshots.take_snapshot(conn, fans.user_id, segment.id)
    assert never is not None and (never.member_count, never.rules_version, never.evaluated_at) == (0, None, None)
    assert fresh is not None and await members_of(db, fans, fresh) == {"bob", "cara"}

    updates = ("update fan_segment_snapshots set purpose = 'x' where id = $1",
               "update fan_segment_snapshot_members set fan_profile_id = fan_profile_id where snapshot_id = $1")
    async with db.creator_tx(fans.user_id) as conn:  # the app may not update them at all
        for sql in updates:
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied for table fan_segment_"):
                async with conn.transaction():
                    await conn.execute(sql, fresh.id)
    for sql in updates:  # nor may the owner: the trigger refuses
        with pytest.raises(asyncpg.ObjectNotInPrerequisiteStateError, match="is frozen: UPDATE is not allowed"):
            async with owner.transaction():
                await owner.execute(sql, fresh.id)
    async with db.creator_tx(other.user_id) as conn:
        assert await snapshots.take_snapshot(conn, other.user_id, segment.id) is None
        assert await snapshots.snapshot_members(conn, other.user_id, fresh.id) == []
        assert await snapshots.snapshot_members(conn, fans.user_id, fresh.id) == []  # RLS, whoever is named
    async with db.creator_tx(fans.user_id) as conn:  # deleted whole: its members go with it
        await conn.execute("delete from fan_segment_snapshots where id = $1", fresh.id)
    assert await owner.fetchval("select count(*) from fan_segment_snapshot_members where snapshot_id = $1",
                                fresh.id) == 0  # fmt: skip
    async with db.creator_tx(fans.user_id) as conn:
        assert await snapshots.take_snapshot(conn, fans.user_id, uuid.uuid4()) is None
