"""The typed domain access (`geniehelper.domain`) against real PostgreSQL, as the app role in creator_tx."""

from __future__ import annotations

import asyncio
import re
import typing
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from geniehelper.db import Database
from geniehelper.domain import analytics, automation, fan_crm, fan_identity, media
from tests.conftest import make_creator

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


async def count(owner: asyncpg.Connection, table: str, user_id: uuid.UUID) -> int:
    # table names below are literals of this file
    n: int = await owner.fetchval(f"select count(*) from {table} where user_id = $1", user_id)
    return n


async def new_connection(conn: Any, user_id: uuid.UUID, platform: str = "onlyfans") -> uuid.UUID:
    connection_id: uuid.UUID = await conn.fetchval(
        "insert into platform_connections (user_id, platform, external_account_id) values ($1, $2, $3) returning id",
        user_id, platform, uuid.uuid4().hex,
    )  # fmt: skip
    return connection_id


async def new_post(conn: Any, user_id: uuid.UUID) -> uuid.UUID:
    post_id: uuid.UUID = await conn.fetchval(
        "insert into content_posts (user_id, caption) values ($1, 'hello') returning id", user_id
    )
    return post_id


async def new_rule(conn: Any, user_id: uuid.UUID) -> uuid.UUID:
    rule_id: uuid.UUID = await conn.fetchval(
        "insert into automation_rules (user_id, name, trigger_event) values ($1, $2, 'fan.subscribed') returning id",
        user_id, f"rule {uuid.uuid4().hex[:6]}",
    )  # fmt: skip
    return rule_id


# --- fan CRM ------------------------------------------------------------------------------------


async def test_upserting_a_fan_twice_keeps_one_account_and_one_profile(db: Database, owner: asyncpg.Connection) -> None:
    creator, other = await make_creator(owner), await make_creator(owner)
    async with db.creator_tx(creator) as conn:
        first = await fan_crm.upsert_platform_account(conn, creator, "onlyfans", "fan-1", "alice", seen_at=T0)
        again = await fan_crm.upsert_platform_account(
            conn, creator, "onlyfans", "fan-1", None, display_name="Alice A.", seen_at=T0 + timedelta(hours=1)
        )
        profile = await fan_crm.get_fan_profile(conn, creator, first.fan_profile_id)
    assert (again.id, again.fan_profile_id) == (first.id, first.fan_profile_id)
    assert again.username == "alice" and again.display_name == "Alice A."  # a missing value does not erase
    assert (again.first_seen_at, again.last_seen_at) == (T0, T0 + timedelta(hours=1))
    assert profile is not None and profile.display_name == "alice" and profile.status == "active"
    assert await count(owner, "fan_platform_accounts", creator) == 1
    assert await count(owner, "fan_profiles", creator) == 1

    # The same platform id under another creator is another creator's fan.
    async with db.creator_tx(other) as conn:
        theirs = await fan_crm.upsert_platform_account(conn, other, "onlyfans", "fan-1", "alice")
        assert await fan_crm.get_fan_profile(conn, other, first.fan_profile_id) is None
        assert await fan_crm.get_fan_profile(conn, creator, first.fan_profile_id) is None  # RLS, whatever is asked
    assert theirs.id != first.id and theirs.fan_profile_id != first.fan_profile_id


async def test_concurrent_upserts_of_a_new_fan_create_one_profile(db: Database, owner: asyncpg.Connection) -> None:
    creator = await make_creator(owner)

    async def upsert(i: int) -> fan_crm.FanPlatformAccount:
        async with db.creator_tx(creator) as conn:
            account = await fan_crm.upsert_platform_account(conn, creator, "fansly", "fs-42", f"name{i}")
            await asyncio.sleep(0.01)  # hold the transaction open while the others arrive
            return account

    accounts = await asyncio.gather(*(upsert(i) for i in range(8)))
    assert len({(a.id, a.fan_profile_id) for a in accounts}) == 1
    assert await count(owner, "fan_platform_accounts", creator) == 1
    assert await count(owner, "fan_profiles", creator) == 1  # no orphan profile from a lost race


async def test_one_person_on_two_platforms_is_linked_once(db: Database, owner: asyncpg.Connection) -> None:
    creator, other = await make_creator(owner), await make_creator(owner)
    async with db.creator_tx(other) as conn:
        foreign = await fan_crm.upsert_platform_account(conn, other, "fansly", "fs-x", "x")
    async with db.creator_tx(creator) as conn:
        on_of = await fan_crm.upsert_platform_account(conn, creator, "onlyfans", "of-7", "bob")
        on_fs = await fan_crm.upsert_platform_account(conn, creator, "fansly", "fs-7", "bobby")
        assert on_of.fan_profile_id != on_fs.fan_profile_id  # separate people until linked
        # Identity links are written one way: fan_identity (docs/sync.md); linking again changes nothing.
        await fan_identity.link_accounts(conn, creator, on_of.id, on_fs.id)
        await fan_identity.link_accounts(conn, creator, on_fs.id, on_of.id)
        link = await conn.fetchrow("select * from fan_identity_links where user_id = $1", creator)
        assert link["status"] == "confirmed" and link["confirmed_at"] is not None and link["source"] == "creator"
        assert (link["account_a_id"], link["account_b_id"]) == tuple(sorted((on_of.id, on_fs.id)))

        raw = "insert into fan_identity_links (user_id, account_a_id, account_b_id) values ($1, $2, $3)"
        with pytest.raises(asyncpg.UniqueViolationError):
            async with conn.transaction():
                await conn.execute(raw, creator, link["account_a_id"], link["account_b_id"])
        with pytest.raises(asyncpg.CheckViolationError):  # the reversed pair is the same pair
            async with conn.transaction():
                await conn.execute(raw, creator, link["account_b_id"], link["account_a_id"])
        with pytest.raises(ValueError, match="itself"):
            await fan_identity.link_accounts(conn, creator, on_of.id, on_of.id)
        with pytest.raises(fan_identity.UnknownAccount):  # another creator's account: invisible under RLS
            await fan_identity.link_accounts(conn, creator, on_of.id, foreign.id)
    assert await count(owner, "fan_identity_links", creator) == 1


async def test_subscription_events_are_appended_once(db: Database, owner: asyncpg.Connection) -> None:
    creator = await make_creator(owner)
    async with db.creator_tx(creator) as conn:
        account = await fan_crm.upsert_platform_account(conn, creator, "onlyfans", "of-sub", "carol")
        first = await fan_crm.append_subscription_event(
            conn, creator, account.id, "subscribe", T0, tier="gold", amount=Decimal("9.99"), payload={"raw": 1}
        )
        replay = await fan_crm.append_subscription_event(conn, creator, account.id, "subscribe", T0, tier="gold")
        rebill = await fan_crm.append_subscription_event(
            conn, creator, account.id, "rebill", T0 + timedelta(days=30), amount=Decimal("9.99")
        )
    assert first is not None and first.event_type == "subscribe" and first.amount == Decimal("9.99")
    assert replay is None
    assert rebill is not None and rebill.id != first.id
    assert await count(owner, "fan_subscription_events", creator) == 2
    assert await owner.fetchval("select payload from fan_subscription_events where id = $1", first.id) == {"raw": 1}


async def test_transactions_upsert_on_the_platform_id_and_status_only_moves_forward(
    db: Database, owner: asyncpg.Connection
) -> None:
    creator = await make_creator(owner)
    async with db.creator_tx(creator) as conn:
        account = await fan_crm.upsert_platform_account(conn, creator, "onlyfans", "of-tx", "dave")

        async def record(status: fan_crm.TransactionStatus, amount: str = "20.00") -> fan_crm.FanTransaction:
            return await fan_crm.record_transaction(
                conn, creator, account.fan_profile_id, "onlyfans", "ppv", Decimal(amount), T0,
                external_transaction_id="tx-1", fan_platform_account_id=account.id, status=status,
            )  # fmt: skip

        pending = await record("pending")
        completed = await record("completed", amount="99.00")
        stale = await record("pending")
        refunded = await record("refunded")
        untracked = [
            await fan_crm.record_transaction(conn, creator, account.fan_profile_id, "onlyfans", "tip", Decimal(5), T0)
            for _ in range(2)
        ]
    assert pending.status == "pending"
    assert completed.id == pending.id and completed.status == "completed"
    assert completed.amount == Decimal("20.00")  # only the status moves
    assert stale.status == "completed"  # a stale re-scrape does not move it back
    assert refunded.id == pending.id and refunded.status == "refunded"
    assert untracked[0].id != untracked[1].id  # no platform id: each call is a purchase
    assert await count(owner, "fan_transactions", creator) == 3


# --- media ------------------------------------------------------------------------------------------


async def test_assets_are_created_once_per_storage_key_and_scraped_item(
    db: Database, owner: asyncpg.Connection
) -> None:
    creator, other = await make_creator(owner), await make_creator(owner)
    async with db.creator_tx(creator) as conn:
        upload = await media.create_asset(
            conn, creator, "image", "u/1.jpg", width=800, height=600, tags=["beach"], metadata={"exif": False}
        )
        again = await media.create_asset(conn, creator, "image", "u/1.jpg")
        scraped = await media.create_asset(
            conn, creator, "video", "s/a.mp4", source="scrape", source_platform="onlyfans", source_external_id="m-9"
        )
        rescraped = await media.create_asset(
            conn, creator, "video", "s/b.mp4", source="scrape", source_platform="onlyfans", source_external_id="m-9"
        )
        described = await media.set_asset_analysis(
            conn, creator, upload.id, ai_description="a beach", ai_description_model="m1"
        )
        transcribed = await media.set_asset_analysis(conn, creator, upload.id, transcription_text="waves")
        fetched = await media.get_asset(conn, creator, upload.id)
    assert again == upload and upload.tags == ["beach"] and upload.metadata == {"exif": False}
    assert rescraped.id == scraped.id and rescraped.storage_key == "s/a.mp4"
    assert described is not None and described.ai_description == "a beach"
    assert (
        transcribed is not None
        and transcribed.ai_description == "a beach"
        and transcribed.transcription_text == "waves"
    )
    assert fetched == transcribed
    assert await count(owner, "media_assets", creator) == 2
    async with db.creator_tx(other) as conn:
        assert await media.get_asset(conn, other, upload.id) is None
        assert await media.set_asset_analysis(conn, other, upload.id, ai_description="stolen") is None


async def test_presets_by_id_and_the_default(db: Database, owner: asyncpg.Connection) -> None:
    creator = await make_creator(owner)
    async with db.creator_tx(creator) as conn:
        assert await media.get_preset(conn, creator) is None
        named = await conn.fetchval(
            "insert into media_presets (user_id, name, output_width, strip_metadata_fields, watermark)"
            " values ($1, 'small', 640, '{gps}', $2) returning id",
            creator, {"text": "@me"},
        )  # fmt: skip
        default = await conn.fetchval(
            "insert into media_presets (user_id, name, is_default) values ($1, 'standard', true) returning id", creator
        )
        preset = await media.get_preset(conn, creator, named)
        fallback = await media.get_preset(conn, creator)
        missing = await media.get_preset(conn, creator, uuid.uuid4())
    assert preset is not None and preset.output_width == 640 and preset.strip_metadata_fields == ["gps"]
    assert preset.watermark == {"text": "@me"} and not preset.is_default
    assert fallback is not None and fallback.id == default
    assert missing is None


async def test_an_asset_usage_links_exactly_one_target_once(db: Database, owner: asyncpg.Connection) -> None:
    creator = await make_creator(owner)
    async with db.creator_tx(creator) as conn:
        asset = await media.create_asset(conn, creator, "image", "u/usage.jpg")
        post = await new_post(conn, creator)
        first = await media.record_asset_usage(conn, creator, asset.id, content_post_id=post, position=0)
        moved = await media.record_asset_usage(conn, creator, asset.id, content_post_id=post, position=2)
        with pytest.raises(ValueError, match="exactly one"):
            await media.record_asset_usage(conn, creator, asset.id)
        with pytest.raises(ValueError, match="exactly one"):
            await media.record_asset_usage(conn, creator, asset.id, content_post_id=post, campaign_id=uuid.uuid4())
    assert moved.id == first.id and moved.position == 2 and moved.content_post_id == post
    assert await count(owner, "media_asset_usages", creator) == 1


# --- analytics ------------------------------------------------------------------------------------


async def test_snapshots_are_appended_once_per_scrape(db: Database, owner: asyncpg.Connection) -> None:
    creator = await make_creator(owner)
    async with db.creator_tx(creator) as conn:
        connection = await new_connection(conn, creator, "onlyfans")
        post = await new_post(conn, creator)
        stats = await analytics.append_platform_stats_snapshot(
            conn,
            creator,
            connection,
            "onlyfans",
            T0,
            follower_count=120,
            subscriber_count=30,
            churn_rate=Decimal("0.05"),
        )
        stats_replay = await analytics.append_platform_stats_snapshot(conn, creator, connection, "onlyfans", T0)
        later = await analytics.append_platform_stats_snapshot(
            conn, creator, connection, "onlyfans", T0 + timedelta(hours=1), follower_count=125
        )
        with pytest.raises(asyncpg.ForeignKeyViolationError):  # the platform must be the connection's
            async with conn.transaction():
                await analytics.append_platform_stats_snapshot(
                    conn, creator, connection, "fansly", T0 + timedelta(hours=2)
                )
        perf = await analytics.append_post_performance_snapshot(
            conn,
            creator,
            "onlyfans",
            "p-1",
            T0,
            content_post_id=post,
            views=1000,
            likes=50,
            ppv_revenue=Decimal("12.50"),
        )
        perf_replay = await analytics.append_post_performance_snapshot(conn, creator, "onlyfans", "p-1", T0, views=1)
    assert stats is not None and stats.churn_rate == Decimal("0.05") and stats.follower_count == 120
    assert stats_replay is None and later is not None
    assert perf is not None and perf.views == 1000 and perf.ppv_revenue == Decimal("12.50")
    assert perf_replay is None
    assert await count(owner, "platform_stats_snapshots", creator) == 2
    assert await owner.fetchval("select views from post_performance_snapshots where user_id = $1", creator) == 1000


async def test_earnings_upsert_is_idempotent_and_a_finalized_period_stays_closed(
    db: Database, owner: asyncpg.Connection
) -> None:
    creator = await make_creator(owner)
    march = (date(2026, 3, 1), date(2026, 3, 31))

    async def upsert(gross: str, count_: int) -> analytics.CreatorEarnings:
        async with db.creator_tx(creator) as conn:
            return await analytics.upsert_creator_earnings(
                conn, creator, "month", *march, "onlyfans", "ppv",
                gross_amount=Decimal(gross), fees_amount=Decimal("2.00"), transaction_count=count_,
            )  # fmt: skip

    first = await upsert("10.00", 1)
    same = await upsert("10.00", 1)
    grown = await upsert("30.00", 3)
    assert first.net_amount == Decimal("8.00") and first.finalized_at is None
    assert same.id == first.id and same.gross_amount == first.gross_amount
    assert grown.id == first.id and grown.gross_amount == Decimal("30.00") and grown.net_amount == Decimal("28.00")
    await owner.execute("update creator_earnings set finalized_at = now() where id = $1", first.id)
    closed = await upsert("99.00", 9)
    assert closed.id == first.id and closed.gross_amount == Decimal("30.00") and closed.finalized_at is not None
    assert await count(owner, "creator_earnings", creator) == 1


async def test_goal_snapshots_are_appended_once(db: Database, owner: asyncpg.Connection) -> None:
    creator = await make_creator(owner)
    async with db.creator_tx(creator) as conn:
        goal = await conn.fetchval(
            "insert into creator_goals (user_id, name, metric, target_value)"
            " values ($1, '1k subs', 'subscribers', 1000) returning id",
            creator,
        )
        first = await analytics.append_goal_snapshot(conn, creator, goal, T0, Decimal(250), Decimal(25))
        replay = await analytics.append_goal_snapshot(conn, creator, goal, T0, Decimal(260), Decimal(26))
        later = await analytics.append_goal_snapshot(
            conn, creator, goal, T0 + timedelta(days=1), Decimal(300), Decimal(30)
        )
    assert first is not None and first.progress_pct == Decimal(25) and first.current_value == Decimal(250)
    assert replay is None and later is not None
    assert await count(owner, "creator_goal_snapshots", creator) == 2


# --- automation -----------------------------------------------------------------------------------


async def test_rule_runs_and_actions_are_appended_once(db: Database, owner: asyncpg.Connection) -> None:
    creator = await make_creator(owner)
    run_id = uuid.uuid5(uuid.NAMESPACE_URL, f"rule-run:{creator}:job-1")  # derived from the evaluating job
    async with db.creator_tx(creator) as conn:
        rule = await new_rule(conn, creator)
        fan = await fan_crm.upsert_platform_account(conn, creator, "onlyfans", "of-auto", "erin")
        run = await automation.append_rule_run(
            conn, creator, rule, "fan.subscribed", T0, "completed", matched_fan_count=1, run_id=run_id,
            trigger_payload={"fan": "of-auto"},
        )  # fmt: skip
        rerun = await automation.append_rule_run(conn, creator, rule, "fan.subscribed", T0, "failed", run_id=run_id)
        action = await automation.append_rule_action(
            conn, creator, run_id, 0, "send_message", fan.fan_profile_id, "succeeded",
            fan_platform_account_id=fan.id, params={"template": "welcome"}, result={"message_id": "m1"},
        )  # fmt: skip
        replay = await automation.append_rule_action(
            conn, creator, run_id, 0, "send_message", fan.fan_profile_id, "failed"
        )
        second = await automation.append_rule_action(conn, creator, run_id, 1, "tag", fan.fan_profile_id, "skipped")
        unkeyed = await automation.append_rule_run(conn, creator, rule, "fan.subscribed", T0, "skipped")
    assert run is not None and run.id == run_id and run.outcome == "completed" and run.matched_fan_count == 1
    assert rerun is None  # the retried evaluation records nothing twice
    assert unkeyed is not None and unkeyed.id != run_id
    assert action is not None and action.params == {"template": "welcome"} and action.result == {"message_id": "m1"}
    assert replay is None and second is not None and second.outcome == "skipped"
    assert await count(owner, "automation_rule_runs", creator) == 2
    assert await count(owner, "automation_rule_actions", creator) == 2


async def test_hitl_items_are_decided_once_and_only_while_pending(db: Database, owner: asyncpg.Connection) -> None:
    creator, other = await make_creator(owner), await make_creator(owner)
    later = datetime.now(UTC) + timedelta(hours=1)
    async with db.creator_tx(creator) as conn:
        item = await automation.enqueue_hitl_item(
            conn, creator, "send_ppv", "Send the beach set to Bob for $15", {"price": "15.00"}, later
        )
        rejected_item = await automation.enqueue_hitl_item(conn, creator, "send_message", "Say hi", {}, later)
        stale = await automation.enqueue_hitl_item(
            conn, creator, "send_message", "Too late", {}, datetime.now(UTC) - timedelta(minutes=1)
        )
    assert item.status == "pending" and item.decided_at is None and item.payload == {"price": "15.00"}

    async with db.creator_tx(other) as conn:  # another creator cannot decide it
        assert await automation.decide_hitl_item(conn, other, item.id, True, "mine now") is None
    async with db.creator_tx(creator) as conn:
        approved = await automation.decide_hitl_item(conn, creator, item.id, True, "go")
        twice = await automation.decide_hitl_item(conn, creator, item.id, False, "changed my mind")
        rejected = await automation.decide_hitl_item(conn, creator, rejected_item.id, False, "no")
        expired = await automation.decide_hitl_item(conn, creator, stale.id, True, None)
        unchanged = await automation.get_hitl_item(conn, creator, item.id)
        stale_now = await automation.get_hitl_item(conn, creator, stale.id)
    assert approved is not None and approved.status == "approved" and approved.decision_note == "go"
    assert approved.decided_at is not None
    assert twice is None and unchanged == approved  # decided once: the second decision changes nothing
    assert rejected is not None and rejected.status == "rejected"
    assert expired is None and stale_now is not None and stale_now.status == "pending"  # left for the expiry sweep


# --- the Literal types mirror the CHECK constraints ------------------------------------------------

ENUMERATED = [
    (fan_crm.FanStatus, "fan_profiles", "status"),
    (fan_crm.LifecycleStage, "fan_profiles", "lifecycle_stage"),
    (fan_crm.LinkStatus, "fan_identity_links", "status"),
    (fan_crm.LinkSource, "fan_identity_links", "source"),
    (fan_crm.SubscriptionEventType, "fan_subscription_events", "event_type"),
    (fan_crm.TransactionKind, "fan_transactions", "kind"),
    (fan_crm.TransactionStatus, "fan_transactions", "status"),
    (media.AssetKind, "media_assets", "kind"),
    (media.AssetStatus, "media_assets", "status"),
    (media.AssetSource, "media_assets", "source"),
    (analytics.PeriodKind, "creator_earnings", "period_kind"),
    (analytics.EarningsContentType, "creator_earnings", "content_type"),
    (automation.RunOutcome, "automation_rule_runs", "outcome"),
    (automation.ActionOutcome, "automation_rule_actions", "outcome"),
    (automation.HitlStatus, "hitl_action_queue", "status"),
    (automation.HitlRequester, "hitl_action_queue", "requested_by"),
]


async def test_literal_types_match_the_check_constraints(owner: asyncpg.Connection) -> None:
    for literal, table, column in ENUMERATED:
        defs = await owner.fetch(
            "select pg_get_constraintdef(oid) as def from pg_constraint"
            " where conrelid = $1::regclass and contype = 'c'",
            table,
        )
        allowed = None
        for row in defs:
            if m := re.search(rf"\(\(?{column} = ANY \(ARRAY\[(.*?)\]\)\)", row["def"]):
                allowed = re.findall(r"'([^']*)'::", m.group(1))
        assert allowed is not None, f"no enumerated check on {table}.{column}"
        assert set(typing.get_args(literal)) == set(allowed), f"{table}.{column}"
