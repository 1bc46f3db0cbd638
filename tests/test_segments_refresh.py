"""Segment membership refreshed by difference, through evaluate_segment on a real bulk worker: exactly
the changed fans join or leave and nothing else is written; rules referring to other segments (and
refused cycles); rules versions; one creator's evaluation never reaching another's fans."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest
from arq.connections import ArqRedis

from geniehelper.db import Database
from geniehelper.runtime.queue import JobQueue
from geniehelper.runtime.registry import JobRegistry
from geniehelper.segments import evaluation
from geniehelper.segments.evaluation import Segment
from geniehelper.segments.rules import RuleErrors, parse_rules
from geniehelper.settings import Settings
from jobs.evaluate_segment import EVALUATE_SEGMENT
from tests.conftest import make_creator
from tests.helpers import drain_queue
from tests.segment_fans import Fans, build_cast, buy, tag

JOBS = JobRegistry([EVALUATE_SEGMENT])
SPENT_10_IN_30_DAYS = {"spend": {"op": "gte", "value": 10, "days": 30}}


async def new_segment(db: Database, fans: Fans, name: str, rules: Any) -> Segment:
    async with db.creator_tx(fans.user_id) as conn:
        return await evaluation.create_segment(conn, fans.user_id, name, rules)


async def refresh(db: Database, fans: Fans, segment_id: uuid.UUID) -> evaluation.Refresh:
    async with db.creator_tx(fans.user_id) as conn:
        done = await evaluation.refresh(conn, fans.user_id, segment_id)
    assert done is not None
    return done


async def member_rows(owner: asyncpg.Connection, segment_id: uuid.UUID) -> dict[uuid.UUID, tuple[Any, ...]]:
    """Each member's row as stored, with its row version (xmin changes whenever the row is written)."""
    rows = await owner.fetch(
        "select fan_profile_id, created_at, updated_at, xmin::text as xmin from fan_segment_members"
        " where fan_segment_id = $1", segment_id,
    )  # fmt: skip
    return {r["fan_profile_id"]: (r["created_at"], r["updated_at"], r["xmin"]) for r in rows}


async def segment_row(owner: asyncpg.Connection, segment_id: uuid.UUID) -> dict[str, Any]:
    row = await owner.fetchrow("select * from fan_segments where id = $1", segment_id)
    assert row is not None
    return dict(row)


async def test_a_refresh_adds_and_removes_exactly_the_changed_fans_and_writes_nothing_else(
    db: Database, owner: asyncpg.Connection
) -> None:
    fans = await build_cast(db, await make_creator(owner))
    segment = await new_segment(db, fans, "spenders", SPENT_10_IN_30_DAYS)
    assert (segment.rules_version, segment.member_count, segment.last_evaluated_at) == (1, 0, None)

    first = await refresh(db, fans, segment.id)
    assert (first.joined, first.left, first.member_count, first.rules_version) == (2, 0, 2, 1)
    before = await member_rows(owner, segment.id)
    assert fans.names(before) == {"alice", "bob"}
    evaluated = await segment_row(owner, segment.id)
    assert evaluated["member_count"] == 2 and evaluated["evaluated_rules_version"] == 1
    assert evaluated["last_evaluated_at"] is not None and evaluated["evaluation_claimed_at"] is None

    # Nothing changed: nothing joins or leaves, and no member row is written.
    same = await refresh(db, fans, segment.id)
    assert (same.joined, same.left, same.member_count) == (0, 0, 2)
    assert await member_rows(owner, segment.id) == before

    # cara starts spending; alice's tips are refunded: cara joins, alice leaves, bob's row is untouched.
    async with db.creator_tx(fans.user_id) as conn:
        await buy(conn, fans, "cara", "tip", "25", 2)
        await conn.execute("update fan_transactions set status = 'refunded' where fan_profile_id = $1 and kind = 'tip'",
                           fans.ids["alice"])  # fmt: skip
    changed = await refresh(db, fans, segment.id)
    assert (changed.joined, changed.left, changed.member_count) == (1, 1, 2)
    after = await member_rows(owner, segment.id)
    assert fans.names(after) == {"bob", "cara"}
    assert after[fans.ids["bob"]] == before[fans.ids["bob"]]  # same row version: never rewritten
    again = await segment_row(owner, segment.id)
    assert again["member_count"] == 2 and again["last_evaluated_at"] > evaluated["last_evaluated_at"]

    # Each join and leave is one domain event, written with the change (none for the unchanged refresh),
    # except those of the first evaluation: it populates the new segment, nobody joined it.
    events = await owner.fetch(
        "select event_type, fan_profile_id, payload from domain_events where user_id = $1 order by id", fans.user_id
    )
    changes = sorted((e["event_type"], *fans.names([e["fan_profile_id"]])) for e in events)
    assert changes == [("segment_join", "cara"), ("segment_leave", "alice")]
    assert all(e["payload"]["segment_id"] == str(segment.id) for e in events)


async def test_evaluate_segment_runs_on_the_bulk_worker_as_its_creator_and_records_joined_and_left(
    db: Database, owner: asyncpg.Connection, arq_redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    fans = await build_cast(db, await make_creator(owner))
    segment = await new_segment(db, fans, "tagged", {"tag": {"name": "city"}})
    queue = JobQueue(db, arq_redis, JOBS)
    settings = Settings(database_url=database_url, redis_url=redis_url)
    job = await queue.enqueue("evaluate_segment", {"segment_id": str(segment.id)}, user_id=fans.user_id)
    again = await queue.enqueue("evaluate_segment", {"segment_id": str(segment.id)}, user_id=fans.user_id)
    assert again.duplicate and again.id == job.id  # one active evaluation per segment
    await drain_queue(settings, JOBS, "bulk")

    record = await owner.fetchrow("select status, result, subject_type, subject_id from media_jobs where id = $1",
                                  job.id)  # fmt: skip
    assert record is not None and record["status"] == "completed", record
    result = record["result"]
    assert (result["outcome"], result["joined"], result["left"], result["member_count"]) == ("evaluated", 2, 0, 2)
    assert isinstance(result["duration_ms"], int) and result["duration_ms"] >= 0
    assert (record["subject_type"], record["subject_id"]) == ("fan_segment", segment.id)
    assert fans.names(await member_rows(owner, segment.id)) == {"bob", "cara"}

    # bob's tag goes, dan gets one: the next run records one joined and one left.
    async with db.creator_tx(fans.user_id) as conn:
        await conn.execute("delete from fan_tag_values where fan_profile_id = $1", fans.ids["bob"])
        await tag(conn, fans, "dan", "city", "Rome")
    second = await queue.enqueue("evaluate_segment", {"segment_id": str(segment.id)}, user_id=fans.user_id)
    await drain_queue(settings, JOBS, "bulk")
    result = await owner.fetchval("select result from media_jobs where id = $1", second.id)
    assert (result["joined"], result["left"], result["member_count"]) == (1, 1, 2)
    assert fans.names(await member_rows(owner, segment.id)) == {"cara", "dan"}

    # A segment that no longer exists: nothing to do, said so.
    gone = await queue.enqueue("evaluate_segment", {"segment_id": str(uuid.uuid4())}, user_id=fans.user_id)
    await drain_queue(settings, JOBS, "bulk")
    assert (await owner.fetchval("select result from media_jobs where id = $1", gone.id))["outcome"] == "missing"


async def test_stored_rules_that_cannot_be_evaluated_fail_the_job_and_leave_the_members_alone(
    db: Database, owner: asyncpg.Connection, arq_redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    fans = await build_cast(db, await make_creator(owner))
    segment = await new_segment(db, fans, "whales", {"tag": {"name": "whale"}})
    await refresh(db, fans, segment.id)
    members = await member_rows(owner, segment.id)
    # Written around the validation (plain SQL): an unknown operator.
    async with db.creator_tx(fans.user_id) as conn:
        await conn.execute("update fan_segments set rules = $2 where id = $1", segment.id,
                           {"tag": {"name": "whale", "op": "like"}})  # fmt: skip
    job = await JobQueue(db, arq_redis, JOBS).enqueue("evaluate_segment", {"segment_id": str(segment.id)},
                                                      user_id=fans.user_id)  # fmt: skip
    await drain_queue(Settings(database_url=database_url, redis_url=redis_url), JOBS, "bulk")
    record = await owner.fetchrow("select status, error, attempts from media_jobs where id = $1", job.id)
    assert record is not None and (record["status"], record["attempts"]) == ("failed", 1)  # permanent: no retry
    assert "tag.op: unknown field" in record["error"]
    row = await segment_row(owner, segment.id)
    assert row["evaluation_error"] == "tag.op: unknown field" and row["evaluated_rules_version"] == 2
    assert await member_rows(owner, segment.id) == members and row["member_count"] == 1


async def test_a_rule_referring_to_another_segment_reads_that_segments_rules_live(
    db: Database, owner: asyncpg.Connection
) -> None:
    fans = await build_cast(db, await make_creator(owner))
    vips = await new_segment(db, fans, "vips and actives", {"lifecycle": {"in": ["vip", "active"]}})
    onlyfans = await new_segment(db, fans, "on onlyfans", {"platform": {"in": ["onlyfans"]}})
    both = await new_segment(db, fans, "onlyfans vips", {"all": [{"segment": {"id": str(vips.id)}},
                                                                 {"segment": {"id": str(onlyfans.id)}}]})  # fmt: skip
    outside = await new_segment(db, fans, "not vips", {"not": {"segment": {"id": str(vips.id)}}})
    assert (await refresh(db, fans, both.id)).member_count == 1
    assert fans.names(await member_rows(owner, both.id)) == {"alice"}
    await refresh(db, fans, outside.id)
    assert fans.names(await member_rows(owner, outside.id)) == {"cara", "dan"}
    # The referenced segment was never evaluated: its rules are inlined, not its stored membership.
    assert (await segment_row(owner, vips.id))["last_evaluated_at"] is None

    # The referenced segment's rules change: the referring one follows at its next refresh.
    async with db.creator_tx(fans.user_id) as conn:
        await evaluation.update_rules(conn, fans.user_id, vips.id, {"lifecycle": {"in": ["new", "vip"]}})
    done = await refresh(db, fans, both.id)
    assert (done.joined, done.left) == (1, 0)
    assert fans.names(await member_rows(owner, both.id)) == {"alice", "dan"}


async def test_references_that_would_make_a_cycle_or_reach_nothing_are_refused_and_nothing_is_written(
    db: Database, owner: asyncpg.Connection
) -> None:
    fans = await build_cast(db, await make_creator(owner))
    other = await build_cast(db, await make_creator(owner))
    a = await new_segment(db, fans, "a", {"tag": {"name": "whale"}})
    b = await new_segment(db, fans, "b", {"any": [{"segment": {"id": str(a.id)}}, {"tag": {"name": "city"}}]})
    c = await new_segment(db, fans, "c", {"not": {"segment": {"id": str(b.id)}}})
    theirs = await new_segment(db, other, "theirs", {"all": []})

    async def refused(segment_id: uuid.UUID, rules: Any) -> list[tuple[str, str]]:
        with pytest.raises(RuleErrors) as caught:
            async with db.creator_tx(fans.user_id) as conn:
                await evaluation.update_rules(conn, fans.user_id, segment_id, rules)
        return [(e.path, e.reason) for e in caught.value.errors]

    # a -> c -> b -> a
    assert await refused(a.id, {"all": [{"tag": {"name": "whale"}}, {"segment": {"id": str(c.id)}}]}) == [
        ("all[1].segment.id", f"in segment {c.id}: not.segment.id: in segment {b.id}: any[0].segment.id: "
                              f"segment {a.id} refers back to itself (cycle: {a.id} -> {c.id} -> {b.id} -> {a.id})"),
    ]  # fmt: skip
    assert await refused(b.id, {"segment": {"id": str(b.id)}}) == [
        ("segment.id", f"segment {b.id} refers back to itself (cycle: {b.id} -> {b.id})")
    ]
    missing = uuid.uuid4()
    assert await refused(c.id, {"segment": {"id": str(missing)}}) == [
        ("segment.id", f"segment {missing} does not exist")
    ]
    # Another creator's segment does not exist for this one (row-level security).
    assert await refused(c.id, {"segment": {"id": str(theirs.id)}}) == [
        ("segment.id", f"segment {theirs.id} does not exist")
    ]
    with pytest.raises(RuleErrors, match="does not exist"):
        await new_segment(db, fans, "d", {"segment": {"id": str(theirs.id)}})
    for segment in (a, b, c):  # nothing was written
        row = await segment_row(owner, segment.id)
        assert (row["rules_version"], row["rules"]) == (1, segment.rules)
    assert await owner.fetchval("select count(*) from fan_segments where user_id = $1", fans.user_id) == 3


async def test_the_rules_version_moves_with_the_rules_only(db: Database, owner: asyncpg.Connection) -> None:
    fans = Fans(await make_creator(owner))
    segment = await new_segment(db, fans, "s", {"tag": {"name": "whale"}})
    first = await segment_row(owner, segment.id)
    assert first["rules_version"] == 1 and first["rules_changed_at"] is not None
    async with db.creator_tx(fans.user_id) as conn:
        same = await evaluation.update_rules(conn, fans.user_id, segment.id, {"tag": {"name": "whale"}})
        await conn.execute("update fan_segments set rules_version = 99, description = 'd' where id = $1", segment.id)
    assert same is not None and same.rules_version == 1
    unchanged = await segment_row(owner, segment.id)
    assert (unchanged["rules_version"], unchanged["rules_changed_at"]) == (1, first["rules_changed_at"])
    async with db.creator_tx(fans.user_id) as conn:
        changed = await evaluation.update_rules(conn, fans.user_id, segment.id, {"tag": {"name": "fan"}})
    assert changed is not None and changed.rules_version == 2
    assert (await segment_row(owner, segment.id))["rules_changed_at"] > first["rules_changed_at"]


async def test_one_creators_evaluation_never_reads_another_creators_fans(
    db: Database, owner: asyncpg.Connection
) -> None:
    ours = await build_cast(db, await make_creator(owner))
    theirs = await build_cast(db, await make_creator(owner))
    segment = await new_segment(db, ours, "everyone", {"all": []})
    their_segment = await new_segment(db, theirs, "everyone", {"all": []})
    await refresh(db, ours, segment.id)
    rows = await owner.fetch("select user_id, fan_profile_id from fan_segment_members where fan_segment_id = $1",
                             segment.id)  # fmt: skip
    assert {r["user_id"] for r in rows} == {ours.user_id}
    assert ours.names(r["fan_profile_id"] for r in rows) == {"alice", "bob", "cara", "dan"}
    async with db.creator_tx(ours.user_id) as conn:
        assert await evaluation.refresh(conn, ours.user_id, their_segment.id) is None  # not visible to us
        assert await evaluation.refresh(conn, theirs.user_id, their_segment.id) is None  # nor by naming them
        # The compiled query for the other creator, run in our transaction: row-level security shows nothing.
        compiled = await evaluation.compile_for(conn, theirs.user_id, parse_rules({"all": []}))
        assert await conn.fetch(compiled.sql, *compiled.params) == []
    assert await owner.fetchval("select count(*) from fan_segment_members where fan_segment_id = $1",
                                their_segment.id) == 0  # fmt: skip
