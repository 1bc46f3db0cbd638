"""Incremental refresh (docs/segments.md, "Incremental refresh"): after changes to every input a rule
reads, and after time alone moves fans across a window edge, a refresh that re-evaluates only the
changed fans leaves exactly the membership a full evaluation selects; the fallbacks to a full one."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg

from geniehelper.db import Database
from geniehelper.domain import fan_crm
from geniehelper.segments import evaluation, incremental
from geniehelper.segments.rules import parse_rules
from tests.conftest import make_creator
from tests.segment_fans import Fans, add_fan, build_cast, buy, message, score, set_profile, sub_event, subscribe, tag
from tests.sync_support import wait_for

# One segment per condition kind (and the groups), each selecting something of the cast.
RULES: dict[str, Any] = {
    "attribute_number": {"attribute": {"field": "lifetime_spend", "op": "gte", "value": 100}},
    "attribute_text": {"attribute": {"field": "display_name", "op": "in", "value": ["bob", "cara", "fay"]}},
    "attribute_time": {"attribute": {"field": "last_seen_at", "op": "within_days", "value": 30}},
    "lifecycle": {"lifecycle": {"in": ["vip", "at_risk"]}},
    "last_activity": {"last_activity": {"not_within_days": 60}},
    "spend_window": {"spend": {"op": "gte", "value": 20, "days": 30}},
    "spend_all_time_zero": {"spend": {"measure": "count", "op": "lt", "value": 2}},
    "messages": {"messages": {"direction": "inbound", "days": 14}},
    "subscription": {"subscription": {"status": ["active", "trial"]}},
    "subscription_event": {"subscription_event": {"types": ["cancellation"], "days": 30}},
    "tag": {"tag": {"name": "city", "values": ["Berlin", "London"]}},
    "platform": {"platform": {"in": ["fansly"]}},
    "score": {"score": {"name": "churn_risk", "op": "gte", "value": 0.5}},
    "groups": {"any": [{"all": [{"tag": {"name": "whale"}}, {"not": {"messages": {"days": 7}}}]},
                       {"lifecycle": {"in": ["churned"]}}]},
}


async def create_all(db: Database, fans: Fans, rules: dict[str, Any]) -> dict[str, uuid.UUID]:
    async with db.creator_tx(fans.user_id) as conn:
        return {name: (await evaluation.create_segment(conn, fans.user_id, name, raw)).id
                for name, raw in rules.items()}  # fmt: skip


async def refresh_all(db: Database, fans: Fans, segments: dict[str, uuid.UUID]) -> dict[str, evaluation.Refresh]:
    out = {}
    for name, segment_id in segments.items():
        async with db.creator_tx(fans.user_id) as conn:
            done = await evaluation.refresh(conn, fans.user_id, segment_id)
        assert done is not None
        out[name] = done
    return out


async def members(owner: asyncpg.Connection, segment_id: uuid.UUID) -> set[uuid.UUID]:
    rows = await owner.fetch("select fan_profile_id from fan_segment_members where fan_segment_id = $1", segment_id)
    return {r["fan_profile_id"] for r in rows}


async def selected_now(db: Database, fans: Fans, segment_id: uuid.UUID) -> set[uuid.UUID]:
    """What a full evaluation selects at this moment: the compiled query over every fan."""
    async with db.creator_tx(fans.user_id) as conn:
        segment = await evaluation.get_segment(conn, fans.user_id, segment_id)
        assert segment is not None
        compiled = await evaluation.compile_for(conn, fans.user_id, parse_rules(segment.rules), own_id=segment_id)
        return {r["id"] for r in await conn.fetch(compiled.sql, *compiled.params)}


async def assert_as_full(db: Database, owner: asyncpg.Connection, fans: Fans, segments: dict[str, uuid.UUID],
                         done: dict[str, evaluation.Refresh]) -> None:  # fmt: skip
    for name, segment_id in segments.items():
        stored = await members(owner, segment_id)
        assert stored == await selected_now(db, fans, segment_id), name
        count = await owner.fetchval("select member_count from fan_segments where id = $1", segment_id)
        assert count == len(stored) == done[name].member_count, name


async def test_after_changes_to_every_input_an_incremental_refresh_leaves_what_a_full_evaluation_selects(
    db: Database, owner: asyncpg.Connection
) -> None:
    fans = await build_cast(db, await make_creator(owner))
    segments = await create_all(db, fans, RULES)
    first = await refresh_all(db, fans, segments)
    assert {d.mode for d in first.values()} == {"full"} and {d.why for d in first.values()} == {"first"}
    before = {name: await members(owner, s) for name, s in segments.items()}

    # Nothing changed: each refresh is incremental, evaluates no fan, writes nothing.
    quiet = await refresh_all(db, fans, segments)
    assert all((d.mode, d.evaluated, d.joined, d.left) == ("incremental", 0, 0, 0) for d in quiet.values()), quiet
    assert {name: await members(owner, s) for name, s in segments.items()} == before

    # Every input table written: inserts, updates, deletes, a fan added and a fan deleted.
    async with db.creator_tx(fans.user_id) as conn:
        await add_fan(conn, fans, "fay", platforms=("fansly",), lifetime_spend=Decimal(300), last_seen_at=None)
        await set_profile(conn, fans, "cara", lifecycle_stage="churned", lifetime_spend=Decimal(150))
        await set_profile(conn, fans, "alice", last_seen_at=datetime.now().astimezone() - timedelta(days=90))
        await buy(conn, fans, "cara", "tip", "30", 2)
        await conn.execute("delete from fan_transactions where fan_profile_id = $1 and kind = 'tip'",
                           fans.ids["alice"])  # fmt: skip
        await message(conn, fans, "cara", "inbound", "received", 1)
        await conn.execute("delete from fan_messages where fan_profile_id = $1", fans.ids["alice"])
        await conn.execute("update fan_subscriptions set status = 'expired' where fan_profile_id = $1",
                           fans.ids["alice"])  # fmt: skip
        await conn.execute("update fan_subscriptions set status = 'trial' where fan_profile_id = $1", fans.ids["cara"])
        await subscribe(conn, fans, "fay", "active", "gold", "fansly")
        await sub_event(conn, fans, "alice", "cancellation", 1)
        await tag(conn, fans, "cara", "city", "London")
        await conn.execute("delete from fan_tag_values where fan_profile_id = $1 and tag = 'city'", fans.ids["bob"])
        await conn.execute("delete from fan_tag_values where fan_profile_id = $1", fans.ids["alice"])
        await score(conn, fans, "cara", churn_risk=Decimal("0.9"))
        await conn.execute("update fan_scores set churn_risk = 0.2 where fan_profile_id = $1", fans.ids["bob"])
        await conn.execute("update fan_platform_accounts set platform = 'fansly' where id = $1", fans.accounts["alice"])
        await conn.execute("delete from fan_profiles where id = $1", fans.ids["dan"])
    changed = await refresh_all(db, fans, segments)
    assert {d.mode for d in changed.values()} == {"incremental"}, changed
    await assert_as_full(db, owner, fans, segments, changed)
    moved = sum(d.joined + d.left for d in changed.values())
    after = {name: await members(owner, s) for name, s in segments.items()}
    # dan's memberships went with his profile (a cascade); every other change is a join or leave written
    dan = fans.ids["dan"]
    assert moved == sum(len((before[n] - {dan}) ^ after[n]) for n in segments) and moved > len(segments)
    # Only the fans whose inputs changed were evaluated, never the creator's whole base.
    assert all(d.evaluated is not None and d.evaluated <= 5 for d in changed.values())


async def test_time_alone_moving_fans_across_a_window_edge_is_seen_by_an_incremental_refresh(
    db: Database, owner: asyncpg.Connection
) -> None:
    fans = Fans(await make_creator(owner))
    # Each timestamp 3 seconds inside a 30-day window (or outside a not-within one): time moves it out.
    async with db.creator_tx(fans.user_id) as conn:
        edge: datetime = await conn.fetchval("select clock_timestamp() - interval '30 days' + interval '3 seconds'")
        for name in ("ann", "ben", "cat", "dov", "eli"):
            await add_fan(conn, fans, name)
        await conn.execute("update fan_profiles set first_seen_at = null, last_seen_at = null")
        await set_profile(conn, fans, "ann", last_seen_at=edge)
        await set_profile(conn, fans, "ben", last_purchase_at=edge)
        await buy(conn, fans, "cat", "tip", "50", 0)
        await conn.execute("update fan_transactions set occurred_at = $2 where fan_profile_id = $1",
                           fans.ids["cat"], edge)  # fmt: skip
        await message(conn, fans, "dov", "inbound", "received", 0)
        await conn.execute("update fan_messages set occurred_at = $2 where fan_profile_id = $1", fans.ids["dov"], edge)
        await fan_crm.append_subscription_event(conn, fans.user_id, fans.accounts["eli"], "cancellation", edge)  # type: ignore[arg-type]
    rules = {
        "seen_30d": {"attribute": {"field": "last_seen_at", "op": "within_days", "value": 30}},
        "bought_30d": {"attribute": {"field": "last_purchase_at", "op": "within_days", "value": 30}},
        "quiet_30d": {"last_activity": {"not_within_days": 30}},
        "spend_30d": {"spend": {"op": "gte", "value": 10, "days": 30}},
        "no_spend_30d": {"spend": {"op": "lt", "value": 10, "days": 30}},
        "messages_30d": {"messages": {"days": 30}},
        "cancelled_30d": {"subscription_event": {"types": ["cancellation"], "days": 30}},
    }
    segments = await create_all(db, fans, rules)
    await refresh_all(db, fans, segments)
    inside = {name: fans.names(await members(owner, s)) for name, s in segments.items()}
    assert inside["seen_30d"] == {"ann"} and inside["spend_30d"] == {"cat"} and inside["messages_30d"] == {"dov"}
    assert inside["cancelled_30d"] == {"eli"} and inside["bought_30d"] == {"ben"}
    assert inside["quiet_30d"] == {"cat", "dov", "eli"}  # ann and ben were active inside the window

    # a passage of time, no write at all
    await wait_for(owner, "select now() - interval '30 days' > $1::timestamptz", edge, timeout_s=30)

    # The window edges alone name the crossing fans (the change log left out: an xmin above every
    # transaction): ann and ben for last activity (both were active at the edge), one fan for each other.
    async with db.creator_tx(fans.user_id) as conn:
        for name, segment_id in segments.items():
            segment = await evaluation.get_segment(conn, fans.user_id, segment_id)
            assert segment is not None and segment.last_evaluated_at is not None
            compiled = await evaluation.compile_for(conn, fans.user_id, parse_rules(segment.rules))
            found = await incremental.changed_fans(conn, compiled, 2**62, segment.last_evaluated_at)
            crossing = {"ann", "ben"} if name == "quiet_30d" else {"ann"} if name == "seen_30d" else None
            assert len(found.fans) == (len(crossing) if crossing else 1), name
            assert crossing is None or fans.names(found.fans) == crossing, name
    done = await refresh_all(db, fans, segments)
    assert {d.mode for d in done.values()} == {"incremental"}
    await assert_as_full(db, owner, fans, segments, done)
    now_in = {name: fans.names(await members(owner, s)) for name, s in segments.items()}
    assert now_in["seen_30d"] == now_in["bought_30d"] == now_in["spend_30d"] == set()
    assert now_in["messages_30d"] == now_in["cancelled_30d"] == set()
    assert now_in["no_spend_30d"] == {"ann", "ben", "cat", "dov", "eli"}
    assert now_in["quiet_30d"] == {"ann", "ben", "cat", "dov", "eli"}


async def test_a_refresh_is_full_when_its_changes_are_unknown_or_too_many(
    db: Database, owner: asyncpg.Connection
) -> None:
    fans = await build_cast(db, await make_creator(owner))
    segments = await create_all(db, fans, {"vips": {"lifecycle": {"in": ["vip"]}}})
    async with db.creator_tx(fans.user_id) as conn:
        referring = await evaluation.create_segment(conn, fans.user_id, "vips_or_whales",
                                                    {"any": [{"segment": {"id": str(segments["vips"])}},
                                                             {"tag": {"name": "whale"}}]})  # fmt: skip
    segments["vips_or_whales"] = referring.id
    assert {d.why for d in (await refresh_all(db, fans, segments)).values()} == {"first"}

    # The referenced segment's rules change: both re-evaluate every fan.
    async with db.creator_tx(fans.user_id) as conn:
        await evaluation.update_rules(conn, fans.user_id, segments["vips"], {"lifecycle": {"in": ["at_risk"]}})
    done = await refresh_all(db, fans, segments)
    assert (done["vips"].why, done["vips_or_whales"].why) == ("rules_changed", "references_changed")
    await assert_as_full(db, owner, fans, segments, done)

    # More than INCREMENTAL_MAX_SHARE of the fans changed (and more than INCREMENTAL_SMALL): full.
    async with db.creator_tx(fans.user_id) as conn:
        await conn.execute(
            "insert into fan_profiles (user_id, lifecycle_stage) select $1, 'vip' from generate_series(1, $2::int)",
            fans.user_id, incremental.INCREMENTAL_SMALL + 1,
        )  # fmt: skip
    done = await refresh_all(db, fans, segments)
    assert (done["vips"].mode, done["vips"].why) == ("full", "too_many_changes")
    assert done["vips"].joined == 0  # at_risk now: the new vips are not selected
    await assert_as_full(db, owner, fans, segments, done)

    # Pruned: the log keeps only entries a next refresh may read.
    kept = await owner.fetchval("select count(*) from fan_segment_input_changes where user_id = $1", fans.user_id)
    oldest = await owner.fetchval("select min(evaluated_snapshot_xmin)::text::bigint from fan_segments"
                                  " where user_id = $1", fans.user_id)  # fmt: skip
    below = await owner.fetchval("select count(*) from fan_segment_input_changes where user_id = $1"
                                 " and xact_id < $2::text::xid8", fans.user_id, str(oldest))  # fmt: skip
    assert below == 0 and kept >= 0


async def test_the_change_log_records_deletes_and_both_fans_of_a_moved_row_but_not_unread_columns(
    db: Database, owner: asyncpg.Connection
) -> None:
    fans = await build_cast(db, await make_creator(owner))

    async def logged(since: int) -> set[tuple[str, str]]:
        rows = await owner.fetch(
            "select source, fan_profile_id from fan_segment_input_changes where user_id = $1"
            " and xact_id >= $2::text::xid8", fans.user_id, str(since),
        )  # fmt: skip
        return {(r["source"], *fans.names([r["fan_profile_id"]])) for r in rows}

    start = int(await owner.fetchval("select pg_current_xact_id()::text::bigint")) + 1
    async with db.creator_tx(fans.user_id) as conn:
        await conn.execute("update fan_profiles set updated_at = now() where id = $1", fans.ids["alice"])  # unread
        await conn.execute("update fan_transactions set fan_profile_id = $2 where fan_profile_id = $1",
                           fans.ids["bob"], fans.ids["cara"])  # fmt: skip
        await conn.execute("delete from fan_tag_values where fan_profile_id = $1", fans.ids["alice"])
    assert await logged(start) == {("transaction", "bob"), ("transaction", "cara"), ("tag", "alice")}
