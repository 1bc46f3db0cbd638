"""Fan scores (docs/scoring.md) on constructed fans: the stored numbers are the documented formulas,
they move in the documented direction, each carries its model version and explanation, and
score_fans scores one creator's fans only, through a real bulk worker."""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from arq.connections import ArqRedis

from geniehelper.db import Database
from geniehelper.runtime.queue import JobQueue
from geniehelper.runtime.registry import JobRegistry
from geniehelper.segments import scoring
from geniehelper.settings import Settings
from jobs.score_fans import SCORE_FANS
from tests.conftest import make_creator
from tests.helpers import drain_queue
from tests.segment_fans import Fans, add_fan, ago, build_cast, buy, message, sub_event, subscribe

JOBS = JobRegistry([SCORE_FANS])


async def score(db: Database, fans: Fans) -> scoring.ScoreRun:
    async with db.creator_tx(fans.user_id) as conn:
        return await scoring.score_fans(conn, fans.user_id)


async def scores_of(owner: asyncpg.Connection, fans: Fans) -> dict[str, dict[str, Any]]:
    rows = await owner.fetch("select * from fan_scores where user_id = $1", fans.user_id)
    # the explanation with its names (stored in the compact form: scoring.explain)
    return {fans.names([r["fan_profile_id"]]).pop(): {**dict(r), "explanation": scoring.explain(r["explanation"])}
            for r in rows}  # fmt: skip


def logistic(z: float) -> float:
    return 1 / (1 + math.exp(-z))


async def test_stored_scores_are_the_documented_formulas(db: Database, owner: asyncpg.Connection) -> None:
    fans = Fans(await make_creator(owner))
    async with db.creator_tx(fans.user_id) as conn:
        await add_fan(conn, fans, "steady", first_seen_at=ago(200), last_seen_at=ago(10))
        for days in (5, 20, 40):
            await buy(conn, fans, "steady", "tip", "20", days)
        await buy(conn, fans, "steady", "ppv", "999", 1, status="refunded")  # never counts
        await message(conn, fans, "steady", "inbound", "received", 2)
        await subscribe(conn, fans, "steady", "active", "gold")
        await sub_event(conn, fans, "steady", "subscribe", 100)
    run = await score(db, fans)
    assert (run.scored, run.model_version) == (1, scoring.MODEL_VERSION)
    row = (await scores_of(owner, fans))["steady"]
    features = row["explanation"]["features"]
    assert features["recency_days"] == 2.0  # the inbound message is the latest activity
    assert (features["purchases_90d"], features["spend_90d"], features["purchases_30d"]) == (3, 60, 2)
    assert (features["inbound_messages_30d"], features["active_subscription"], features["cancel_signal"]) == (1, 1, 0)
    assert features["tenure_days"] == 200.0 and features["purchase_months_12"] in (2, 3)

    c, u = scoring.CHURN, scoring.UPSELL
    churn_terms = {"recency": c["recency"] * 2 / 30, "frequency": c["frequency"] * math.log(4),
                   "messages": c["messages"] * math.log(2), "active_subscription": c["active_subscription"],
                   "cancel_signal": 0.0}  # fmt: skip
    churn = logistic(c["intercept"] + sum(churn_terms.values()))
    upsell = logistic(u["intercept"] + u["recent_purchases"] * math.log(3) + u["messages"] * math.log(2)
                      + u["active_subscription"] + u["recency"] * 2 / 30)  # fmt: skip
    months = min(24.0, (1 - max(churn, 0.02)) / max(churn, 0.02))
    loyalty = 0.5 * 200 / 730 + 0.5 * features["purchase_months_12"] / 12
    assert row["churn_risk"] == Decimal(str(round(churn, 3)))
    assert row["upsell_readiness"] == Decimal(str(round(upsell, 3)))
    assert row["loyalty"] == Decimal(str(round(loyalty, 3)))
    assert abs(float(row["predicted_ltv"]) - 20 * months) < 0.01  # 60 in 90 days: 20 a month
    explanation = row["explanation"]
    assert explanation["churn_risk"]["contributions"] == {k: round(v, 3) for k, v in churn_terms.items()}
    assert explanation["churn_risk"]["intercept"] == c["intercept"]
    top = explanation["churn_risk"]["top"]
    assert [t["feature"] for t in top] == ["active_subscription", "frequency", "messages"]  # largest first
    assert top[0]["contribution"] == -1.2 and len(explanation["upsell_readiness"]["top"]) == 3
    assert explanation["predicted_ltv"] == {"monthly_spend": 20.0, "expected_months": round(months, 2)}
    assert row["model_version"] == scoring.MODEL_VERSION and row["computed_at"] is not None
    e = scoring.ENGAGEMENT
    parts = {"recency": e["recency"] * math.exp(-2 / e["recency_days"]),
             "messages": e["messages"] * min(1.0, math.log(2) / math.log(1 + e["messages_full"])),
             "purchases": e["purchases"] * min(1.0, math.log(3) / math.log(1 + e["purchases_full"]))}  # fmt: skip
    engagement = round(sum(parts.values()), 3)
    assert explanation["engagement_score"] == {"value": engagement, **{k: round(v, 3) for k, v in parts.items()}}
    stored = await owner.fetchval("select engagement_score from fan_profiles where id = $1", fans.ids["steady"])
    assert stored == Decimal(str(engagement))


async def test_the_top_three_are_the_largest_terms_ties_broken_by_name(db: Database, owner: asyncpg.Connection) -> None:
    fans = Fans(await make_creator(owner))
    async with db.creator_tx(fans.user_id) as conn:
        # silent: no purchase, message or subscription: several terms are exactly 0 and tie.
        await add_fan(conn, fans, "silent", first_seen_at=ago(50), last_seen_at=ago(45))
        await add_fan(conn, fans, "buyer", first_seen_at=ago(300), last_seen_at=ago(1))
        for days in (1, 2, 3, 20):
            await buy(conn, fans, "buyer", "ppv", "15", days)
        await message(conn, fans, "buyer", "inbound", "received", 1)
        await subscribe(conn, fans, "buyer", "cancelled", "gold")
    await score(db, fans)
    for name, row in (await scores_of(owner, fans)).items():
        for score_name in ("churn_risk", "upsell_readiness"):
            part = row["explanation"][score_name]
            expected = sorted(part["contributions"].items(), key=lambda kv: (-abs(kv[1]), kv[0]))[:3]
            assert [(t["feature"], t["contribution"]) for t in part["top"]] == expected, (name, score_name)
    silent = (await scores_of(owner, fans))["silent"]["explanation"]["churn_risk"]["top"]
    # recency (45 days) leads; then the zero terms in name order.
    assert [t["feature"] for t in silent] == ["recency", "active_subscription", "cancel_signal"]


async def test_scores_move_in_the_documented_direction(db: Database, owner: asyncpg.Connection) -> None:
    fans = Fans(await make_creator(owner))
    async with db.creator_tx(fans.user_id) as conn:
        for days in (1, 30, 60, 120, 300):  # the same fan, last seen longer and longer ago
            await add_fan(conn, fans, f"seen{days}", first_seen_at=ago(400), last_seen_at=ago(days))
        for name, cancelled in (("renewing", False), ("cancelling", True)):
            await add_fan(conn, fans, name, first_seen_at=ago(100), last_seen_at=ago(3))
            await subscribe(conn, fans, name, "active", "gold", auto_renew=not cancelled)
        for name, amount in (("small", "10"), ("big", "400")):
            await add_fan(conn, fans, name, first_seen_at=ago(100), last_seen_at=ago(3))
            await buy(conn, fans, name, "tip", amount, 4)
        for name, count in (("quiet", 0), ("chatty", 6)):
            await add_fan(conn, fans, name, first_seen_at=ago(100), last_seen_at=ago(3))
            for i in range(count):
                await message(conn, fans, name, "inbound", "received", 3 + i)
        for name, first_seen in (("newcomer", 10), ("veteran", 700)):
            await add_fan(conn, fans, name, first_seen_at=ago(first_seen), last_seen_at=ago(3))
    await score(db, fans)
    s = await scores_of(owner, fans)

    # A lapsed fan's churn risk rises with the time since they were last active.
    lapsing = [s[f"seen{d}"]["churn_risk"] for d in (1, 30, 60, 120, 300)]
    assert lapsing == sorted(lapsing) and len(set(lapsing)) == 5, lapsing
    assert lapsing[-1] > Decimal("0.9") and lapsing[0] < Decimal("0.5")
    # A cancelled renewal raises churn risk and lowers upsell readiness.
    assert s["cancelling"]["churn_risk"] > s["renewing"]["churn_risk"]
    assert s["cancelling"]["upsell_readiness"] < s["renewing"]["upsell_readiness"]
    # A big recent spender is worth more than a small one (same habits otherwise).
    assert s["big"]["predicted_ltv"] > 10 * s["small"]["predicted_ltv"] > 0
    # Talking lowers churn risk and raises upsell readiness.
    assert s["chatty"]["churn_risk"] < s["quiet"]["churn_risk"]
    assert s["chatty"]["upsell_readiness"] > s["quiet"]["upsell_readiness"]
    # Loyalty grows with tenure.
    assert s["veteran"]["loyalty"] > s["newcomer"]["loyalty"]

    # Re-scored after the small spender spends big: their LTV rises, their churn does not; rows are
    # updated in place (one per fan).
    async with db.creator_tx(fans.user_id) as conn:
        await buy(conn, fans, "small", "tip", "500", 1)
    await score(db, fans)
    again = await scores_of(owner, fans)
    assert again["small"]["predicted_ltv"] > s["small"]["predicted_ltv"] * 10
    assert again["small"]["churn_risk"] <= s["small"]["churn_risk"]
    assert again["small"]["id"] == s["small"]["id"] and again["small"]["computed_at"] > s["small"]["computed_at"]
    assert await owner.fetchval("select count(*) from fan_scores where user_id = $1", fans.user_id) == len(fans.ids)


async def engagement_of(owner: asyncpg.Connection, fans: Fans) -> dict[str, Decimal]:
    rows = await owner.fetch("select id, engagement_score from fan_profiles where user_id = $1", fans.user_id)
    return {fans.names([r["id"]]).pop(): r["engagement_score"] for r in rows}


async def test_engagement_score_moves_in_the_documented_direction(db: Database, owner: asyncpg.Connection) -> None:
    fans = Fans(await make_creator(owner))
    async with db.creator_tx(fans.user_id) as conn:
        for days in (1, 15, 45, 120, 300):  # the same fan, last seen longer and longer ago
            await add_fan(conn, fans, f"seen{days}", first_seen_at=ago(400), last_seen_at=ago(days))
        for name, count in (("quiet", 0), ("talks", 2), ("chatty", 8), ("chattiest", 20)):
            await add_fan(conn, fans, name, first_seen_at=ago(100), last_seen_at=ago(5))
            for i in range(count):
                await message(conn, fans, name, "inbound", "received", 5 + i / 10)
        for name, count in (("buys_none", 0), ("buys_one", 1), ("buys_many", 6)):
            await add_fan(conn, fans, name, first_seen_at=ago(100), last_seen_at=ago(5))
            for i in range(count):
                await buy(conn, fans, name, "tip", "5", 5 + i / 10)
        await buy(conn, fans, "buys_none", "tip", "500", 60)  # outside the 30 days: no engagement from it
        await add_fan(conn, fans, "everything", first_seen_at=ago(100), last_seen_at=ago(0.01))
        for i in range(12):
            await message(conn, fans, "everything", "inbound", "received", 0.01 + i / 10)
            await buy(conn, fans, "everything", "ppv", "5", 0.01 + i / 10)
    run = await score(db, fans)
    assert run.engagement_updated == len(fans.ids)  # every profile had no engagement_score before
    g = await engagement_of(owner, fans)

    # Silence lowers it, strictly; a fan silent for 300 days with nothing else is near 0.
    fading = [g[f"seen{d}"] for d in (1, 15, 45, 120, 300)]
    assert fading == sorted(fading, reverse=True) and len(set(fading)) == 5, fading
    assert fading[-1] < Decimal("0.01") and fading[0] > Decimal("0.35")
    # Messages and purchases in the last 30 days raise it, up to their full counts (10 and 5).
    assert g["quiet"] < g["talks"] < g["chatty"] < g["chattiest"]
    assert g["buys_none"] < g["buys_one"] < g["buys_many"]
    assert g["buys_none"] == g["quiet"]  # the 60-day-old purchase counts for nothing but recency
    # Bounded: everything at once is at most 1.
    assert Decimal("0.99") <= g["everything"] <= 1

    rerun = await score(db, fans)  # nothing changed: no profile is written again
    assert rerun.engagement_updated == 0
    async with db.creator_tx(fans.user_id) as conn:
        await message(conn, fans, "quiet", "inbound", "received", 0.5)
    after = await score(db, fans)
    assert after.engagement_updated == 1 and (await engagement_of(owner, fans))["quiet"] > g["quiet"]


async def test_score_fans_runs_on_the_bulk_worker_for_its_creator_only_and_keeps_profile_figures_current(
    db: Database, owner: asyncpg.Connection, arq_redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    ours = await build_cast(db, await make_creator(owner))
    theirs = await build_cast(db, await make_creator(owner))
    await owner.execute("delete from fan_scores where user_id = any($1)", [ours.user_id, theirs.user_id])
    job = await JobQueue(db, arq_redis, JOBS).enqueue("score_fans", {}, user_id=ours.user_id)
    await drain_queue(Settings(database_url=database_url, redis_url=redis_url), JOBS, "bulk")

    record = await owner.fetchrow("select status, result from media_jobs where id = $1", job.id)
    assert record is not None and record["status"] == "completed", record
    assert record["result"]["scored"] == 4 and record["result"]["model_version"] == scoring.MODEL_VERSION  # not eve
    scored = await scores_of(owner, ours)
    assert set(scored) == {"alice", "bob", "cara", "dan"}
    assert await owner.fetchval("select count(*) from fan_scores where user_id = $1", theirs.user_id) == 0
    # The cast's profiles claimed figures their ledgers do not hold: now they hold the ledgers' (alice:
    # 3 tips of 50 and a ppv of 20; bob's refunded ppv does not count).
    profiles = await owner.fetch(
        "select id, lifetime_spend, message_count, last_purchase_at from fan_profiles where user_id = $1", ours.user_id
    )
    by_name = {ours.names([p["id"]]).pop(): p for p in profiles}
    assert (by_name["alice"]["lifetime_spend"], by_name["bob"]["lifetime_spend"]) == (Decimal(170), Decimal(10))
    assert (by_name["alice"]["message_count"], by_name["bob"]["message_count"], by_name["dan"]["message_count"]) == (
        1, 1, 0,
    )  # fmt: skip
    assert by_name["cara"]["last_purchase_at"] is None and record["result"]["profiles_updated"] >= 2
    theirs_alice = await owner.fetchval("select lifetime_spend from fan_profiles where id = $1", theirs.ids["alice"])
    assert theirs_alice == Decimal(500)  # the other creator's profiles untouched

    # A second run changes no profile (their figures are current) and still one score row per fan.
    async with db.creator_tx(ours.user_id) as conn:
        rerun = await scoring.score_fans(conn, ours.user_id)
    assert (rerun.scored, rerun.profiles_updated) == (4, 0)


async def test_thousands_of_fans_are_scored_in_one_call(db: Database, owner: asyncpg.Connection) -> None:
    fans = Fans(await make_creator(owner))
    ids = await owner.fetch(
        "insert into fan_profiles (user_id, display_name, first_seen_at, last_seen_at)"
        " select $1, 'fan ' || g, now() - make_interval(days => g % 500), now() - make_interval(days => g % 200)"
        "   from generate_series(1, 3000) g returning id",
        fans.user_id,
    )  # fmt: skip
    await owner.execute(
        "insert into fan_transactions (user_id, fan_profile_id, platform, kind, amount, occurred_at)"
        " select $1, f, 'onlyfans', 'tip', (g % 50) + 1, now() - make_interval(days => (g % 120)::int)"
        "   from unnest($2::uuid[]) with ordinality as u(f, g)",
        fans.user_id, [r["id"] for r in ids],
    )  # fmt: skip
    run = await score(db, fans)
    assert (run.scored, run.profiles_updated) == (3000, 3000)  # every profile's lifetime spend was 0
    rows = await owner.fetch("select churn_risk, predicted_ltv, model_version from fan_scores where user_id = $1",
                             fans.user_id)  # fmt: skip
    assert len(rows) == 3000 and {r["model_version"] for r in rows} == {scoring.MODEL_VERSION}
    assert all(Decimal(0) <= r["churn_risk"] <= Decimal(1) and r["predicted_ltv"] >= 0 for r in rows)


async def test_the_stored_explanation_is_the_compact_layout_and_unchanged_scores_are_not_rewritten(
    db: Database, owner: asyncpg.Connection
) -> None:
    fans = await build_cast(db, await make_creator(owner))
    await score(db, fans)
    raw = await owner.fetch("select fan_profile_id, explanation, xmin::text as xmin, churn_risk, predicted_ltv,"
                            " upsell_readiness, loyalty from fan_scores where user_id = $1", fans.user_id)  # fmt: skip
    # The stored form: the layout's name and one number per entry of scoring.EXPLANATION, in its order.
    for row in raw:
        stored = row["explanation"]
        assert stored["layout"] == scoring.EXPLANATION_LAYOUT and len(stored["values"]) == len(scoring.EXPLANATION)
        named = scoring.explain(stored)
        assert set(named) == {"features", "churn_risk", "upsell_readiness", "predicted_ltv", "loyalty",
                              "engagement_score"}  # fmt: skip
        assert set(named["churn_risk"]["contributions"]) == set(scoring.CHURN_TERMS)
    with pytest.raises(ValueError, match="unknown layout"):
        scoring.explain({"features": {}})

    # cara buys: her row is rewritten; every other fan's row is rewritten exactly when a value of it
    # differs from what was stored (time alone can move recency by a rounding step), never otherwise.
    async with db.creator_tx(fans.user_id) as conn:
        await buy(conn, fans, "cara", "tip", "80", 0)
    again = await score(db, fans)
    after = {r["fan_profile_id"]: r for r in await owner.fetch(
        "select fan_profile_id, explanation, xmin::text as xmin, churn_risk, predicted_ltv, upsell_readiness, loyalty"
        " from fan_scores where user_id = $1", fans.user_id)}  # fmt: skip
    values = ("explanation", "churn_risk", "predicted_ltv", "upsell_readiness", "loyalty")
    rewritten = 0
    for row in raw:
        new = after[row["fan_profile_id"]]
        changed = any(row[k] != new[k] for k in values)
        assert (row["xmin"] != new["xmin"]) == changed, fans.names([row["fan_profile_id"]])
        rewritten += changed
    assert after[fans.ids["cara"]]["xmin"] != {r["fan_profile_id"]: r for r in raw}[fans.ids["cara"]]["xmin"]
    assert again.scored == len(raw) and again.written == rewritten >= 1
