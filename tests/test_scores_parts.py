"""score_fans at scale (docs/scoring.md, "In parts"): the fans scored part by part, by fan id, two
parts at once, get the scores the one statement gives; the per-statement window starts and month
buckets are the per-row formulas they replaced; the profile-change log trigger (migration 0035)
still logs exactly the fans whose rule-read columns changed, after small updates cached its plan."""

from __future__ import annotations

from typing import Any

import asyncpg

from geniehelper.db import Database
from geniehelper.segments import scoring, scoring_parts
from tests.conftest import make_creator
from tests.segment_fans import Fans, add_fan, build_cast, buy, message

SCORE_COLUMNS = "fan_profile_id, churn_risk, predicted_ltv, upsell_readiness, loyalty, model_version, explanation"


class Rollback(Exception):
    pass


async def test_scoring_in_parts_gives_the_one_statements_scores(db: Database, owner: asyncpg.Connection) -> None:
    fans = await build_cast(db, await make_creator(owner))
    async with db.creator_tx(fans.user_id) as conn:
        for i in range(5):
            await add_fan(conn, fans, f"extra{i}")
            await buy(conn, fans, f"extra{i}", "tip", str(10 + i), i * 20)
            await message(conn, fans, f"extra{i}", "inbound", "received", i * 9)
    every = await owner.fetchval("select count(*) from fan_profiles where user_id = $1", fans.user_id)
    count = await owner.fetchval("select count(*) from fan_profiles where user_id = $1 and status <> 'merged'",
                                 fans.user_id)  # fmt: skip
    async with db.creator_tx(fans.user_id) as conn:
        starts = await conn.fetchval(scoring_parts.PART_STARTS, fans.user_id, 2)
    bounds = scoring_parts.part_bounds(list(starts))
    assert len(bounds) == (every + 1) // 2 > 3 and bounds[0][0] == scoring.NIL and bounds[-1][1] is None

    run = await scoring_parts.score_in_parts(lambda: db.creator_tx(fans.user_id), fans.user_id, part_fans=2)
    assert (run.scored, run.written) == (count, count)
    recorded = await owner.fetchrow("select fans_scored, claimed_at from fan_scoring where user_id = $1", fans.user_id)
    assert recorded is not None and (recorded["fans_scored"], recorded["claimed_at"]) == (count, None)
    in_parts = {r["fan_profile_id"]: dict(r) for r in await owner.fetch(
        f"select {SCORE_COLUMNS} from fan_scores where user_id = $1", fans.user_id)}  # fmt: skip
    assert len(in_parts) == count

    one: dict[Any, dict[str, Any]] = {}
    try:  # the one statement over every fan, moments later, compared and rolled back
        async with db.creator_tx(fans.user_id) as conn:
            await scoring.score_fans(conn, fans.user_id)
            one = {r["fan_profile_id"]: dict(r) for r in await conn.fetch(f"select {SCORE_COLUMNS} from fan_scores")}
            raise Rollback
    except Rollback:
        pass
    assert one == in_parts


async def test_a_creator_within_one_part_is_scored_in_one_transaction(db: Database, owner: asyncpg.Connection) -> None:
    fans = await build_cast(db, await make_creator(owner))
    count = await owner.fetchval("select count(*) from fan_profiles where user_id = $1 and status <> 'merged'",
                                 fans.user_id)  # fmt: skip
    run = await scoring_parts.score_in_parts(lambda: db.creator_tx(fans.user_id), fans.user_id)
    assert run.scored == count
    xmins = await owner.fetchval("select count(distinct xmin::text) from fan_scores where user_id = $1", fans.user_id)
    assert xmins == 1


async def test_month_buckets_are_the_calendar_months_back(owner: asyncpg.Connection) -> None:
    # The bit each purchase time sets, as scoring computes it now (binary search among month starts)
    # and as the per-row date arithmetic did, every 7 hours from 400 days back to 40 days ahead, in
    # two time zones.
    sql = f"""
select count(*) filter (where (1 << (width_bucket(t, {scoring._MONTH_STARTS}) - 1))::bit(13)
                          <> (1 << (12 - ((date_part('year', now()) - date_part('year', t)) * 12
                                          + date_part('month', now()) - date_part('month', t))::int))::bit(13)),
       count(*)
  from generate_series(now() - interval '365 days', now() + interval '40 days', interval '7 hours') t
"""
    for zone in ("UTC", "America/New_York"):
        async with owner.transaction():
            await owner.execute(f"set local timezone = '{zone}'")
            differ, total = await owner.fetchrow(sql)
        assert (differ, total > 1300) == (0, True), zone


async def test_the_profile_log_trigger_after_small_updates_logs_exactly_the_changed_fans(
    db: Database, owner: asyncpg.Connection
) -> None:
    fans = Fans(await make_creator(owner))
    ids = [r["id"] for r in await owner.fetch(
        "insert into fan_profiles (user_id, display_name) select $1, 'fan ' || g from generate_series(1, 3000) g"
        " returning id", fans.user_id)]  # fmt: skip
    logged = "select count(*) from fan_segment_input_changes where user_id = $1 and xact_id = $2::text::xid8"
    async with db.creator_tx(fans.user_id) as conn:  # one connection: the trigger's plan is cached on it
        for i in range(8):
            await conn.execute("update fan_profiles set lifecycle_stage = $2 where id = $1", ids[0],
                               "vip" if i % 2 else "new")  # fmt: skip
        xact = await conn.fetchval("select pg_current_xact_id()::text")
        before = await conn.fetchval(logged, fans.user_id, xact)
        # every other fan's message count changes; the rest are touched without a rule-read change
        await conn.execute("update fan_profiles set message_count = message_count + (display_name like '%0')::int"
                           " where user_id = $1", fans.user_id)  # fmt: skip
        after = await conn.fetchval(logged, fans.user_id, xact)
    assert after - before == 300
