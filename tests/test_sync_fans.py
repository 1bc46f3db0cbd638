"""The fan sync against the sandbox platform over real HTTP, through a real bulk worker: every fan,
subscription, purchase and message recorded once; a second sync writes nothing; what the account
gains is picked up incrementally; a fan is one account however often it is seen."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
from arq.connections import ArqRedis

from geniehelper.db import Database
from geniehelper.domain.fan_sync import SubscriptionState
from geniehelper.sync.fans import lifecycle_events
from tests.sync_support import (
    Sandbox,
    connect,
    counts,
    enqueue_sync,
    run_bulk,
    sandbox,
    settings_for,
    sync_directly,
)

__all__ = ["sandbox"]  # the module's fixture


def expected_events(sandbox: Sandbox, account_id: str) -> int:
    """What a first sync appends: a subscribe for each, and the end of those already over."""
    subscriptions = sandbox.platform._accounts[account_id].subscriptions
    return sum(1 + (s.status in ("expired", "cancelled")) for s in subscriptions)


async def test_a_first_sync_records_everything_once_and_a_second_writes_nothing(
    db: Database, owner: asyncpg.Connection, sandbox: Sandbox, arq_redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    settings = settings_for(database_url, redis_url, sync_page_size=50)
    c = await connect(db, owner, sandbox, seed=1, n_fans=120, n_transactions_per_fan=3, n_messages_per_fan=2)
    await enqueue_sync(db, arq_redis, settings, c)
    await run_bulk(settings, db, arq_redis, owner)

    job = await owner.fetchrow("select status, result from media_jobs where user_id = $1", c.user_id)
    assert job["status"] == "completed" and job["result"]["outcome"] == "synced", job
    first = await counts(owner, c.user_id)
    assert first == {
        "fan_profiles": 120, "fan_platform_accounts": 120, "fan_subscriptions": 120,
        "fan_subscription_events": expected_events(sandbox, c.account_id), "fan_transactions": 360,
        "fan_messages": 240,
    }  # fmt: skip
    # Composite figures on the profiles: spend and messages add up to the platform's.
    account = sandbox.platform._accounts[c.account_id]
    spent = await owner.fetchval("select sum(lifetime_spend) from fan_profiles where user_id = $1", c.user_id)
    assert spent == Decimal(sum(t.amount_cents for t in account.transactions)) / 100
    assert await owner.fetchval("select sum(message_count) from fan_profiles where user_id = $1", c.user_id) == 240
    # Activity listings (transactions, messages) create missing accounts and leave known ones alone:
    # each account keeps the fan listing's time, while its profile's last activity counts every
    # purchase and message.
    followed = {f.fan_id: f.followed_at for f in account.fans}
    latest = dict(followed)
    for item in [*account.transactions, *account.messages]:
        latest[item.fan_id] = max(latest[item.fan_id], item.created_at)
    seen = await owner.fetch(
        "select a.platform_fan_id, a.first_seen_at, a.last_seen_at,"
        " greatest(f.last_seen_at, f.last_message_at, f.last_purchase_at) as activity"
        " from fan_platform_accounts a join fan_profiles f on f.id = a.fan_profile_id where a.user_id = $1",
        c.user_id,
    )
    assert {r["platform_fan_id"]: (r["first_seen_at"], r["last_seen_at"]) for r in seen} == {
        fan_id: (at, at) for fan_id, at in followed.items()
    }
    assert {r["platform_fan_id"]: r["activity"] for r in seen} == latest
    assert latest != followed  # the activity came after the follow: the check above is not vacuous
    # Every account points at its own profile, created for it.
    assert await owner.fetchval(
        "select count(distinct fan_profile_id) from fan_platform_accounts where user_id = $1", c.user_id
    ) == 120
    cursors = {
        r["resource"]: r
        for r in await owner.fetch("select * from platform_sync_cursors where user_id = $1", c.user_id)
    }
    assert set(cursors) == {"fans", "subscriptions", "transactions", "messages"}
    assert cursors["subscriptions"]["cursor"] is None  # a full pass each sync
    assert cursors["subscriptions"]["last_pass_completed_at"] is not None
    assert all(cursors[r]["cursor"] is not None for r in ("fans", "transactions", "messages"))  # at the last page

    stamp = "select max(updated_at) from {} where user_id = $1"
    touched = {t: await owner.fetchval(stamp.format(t), c.user_id)
               for t in ("fan_profiles", "fan_platform_accounts", "fan_subscriptions")}  # fmt: skip
    before = sandbox.requests()
    await enqueue_sync(db, arq_redis, settings, c)
    await run_bulk(settings, db, arq_redis, owner)

    assert await counts(owner, c.user_id) == first
    assert {t: await owner.fetchval(stamp.format(t), c.user_id) for t in touched} == touched  # not one row rewritten
    after = sandbox.requests()
    read = {path: after.get(path, 0) - before.get(path, 0) for path in after}
    # Append-only listings: only their last page again. Subscriptions (state): the whole listing.
    assert read["GET /v1/fans"] == read["GET /v1/transactions"] == read["GET /v1/messages"] == 1, read
    assert read["GET /v1/subscriptions"] == 3, read


async def test_what_the_account_gains_is_synced_incrementally(
    db: Database, owner: asyncpg.Connection, sandbox: Sandbox, arq_redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    settings = settings_for(database_url, redis_url, sync_page_size=50)
    c = await connect(db, owner, sandbox, seed=2, n_fans=100, n_transactions_per_fan=5)
    await enqueue_sync(db, arq_redis, settings, c)
    await run_bulk(settings, db, arq_redis, owner)
    first = await counts(owner, c.user_id)
    assert (first["fan_platform_accounts"], first["fan_transactions"]) == (100, 500)

    sandbox.platform.add_fans(c.account_id, 30, n_transactions_per_fan=2, n_messages_per_fan=1, seed=3)
    before = sandbox.requests()
    await enqueue_sync(db, arq_redis, settings, c)
    await run_bulk(settings, db, arq_redis, owner)

    second = await counts(owner, c.user_id)
    assert second["fan_platform_accounts"] == second["fan_profiles"] == 130
    assert second["fan_transactions"] == 560 and second["fan_messages"] == 30
    assert second["fan_subscriptions"] == 130
    assert sandbox.platform.counts(c.account_id)["transactions"] == 560
    after = sandbox.requests()
    # 560 transactions in pages of 50: the first sync stopped in page 10 (offset 450); now pages 10-12.
    assert after["GET /v1/transactions"] - before["GET /v1/transactions"] == 3
    ids = await owner.fetch(
        "select external_transaction_id from fan_transactions where user_id = $1", c.user_id
    )
    assert {r["external_transaction_id"] for r in ids} == {
        t.transaction_id for t in sandbox.platform._accounts[c.account_id].transactions
    }


async def test_a_fan_seen_in_every_listing_and_on_two_connections_is_one_account(
    db: Database, owner: asyncpg.Connection, sandbox: Sandbox, arq_redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    settings = settings_for(database_url, redis_url)
    # The sandbox's fans are platform users: fan_000001 of each account is the same person.
    first = await connect(db, owner, sandbox, seed=4, n_fans=10, n_transactions_per_fan=2, n_messages_per_fan=2)
    second = await connect(db, owner, sandbox, user_id=first.user_id, seed=5, n_fans=15, n_transactions_per_fan=1)
    await enqueue_sync(db, arq_redis, settings, first)
    await enqueue_sync(db, arq_redis, settings, second)
    await run_bulk(settings, db, arq_redis, owner)

    found = await counts(owner, first.user_id)
    assert found["fan_platform_accounts"] == found["fan_profiles"] == 15  # fan_000001..15, each once
    assert found["fan_transactions"] == 10 * 2 + 15 * 1  # transaction ids are the platform's: none lost
    assert found["fan_subscriptions"] == 10 + 15  # one per fan and creator account
    both = await owner.fetchval(
        "select count(*) from (select fan_platform_account_id from fan_subscriptions where user_id = $1"
        " group by 1 having count(*) = 2) s",
        first.user_id,
    )
    assert both == 10


async def test_rebill_cancel_expiry_and_win_back_are_appended_once_each_in_order(
    db: Database, owner: asyncpg.Connection, sandbox: Sandbox, arq_redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    settings = settings_for(database_url, redis_url)
    c = await connect(db, owner, sandbox, seed=6, n_fans=3)
    now = datetime.now(UTC)
    platform = sandbox.platform
    # The period ended an hour ago; the platform has not reported the rebill yet.
    platform.update_subscription(c.account_id, "fan_000001", status="active", price_cents=999,
                                 started_at=now - timedelta(days=60), expires_at=now - timedelta(hours=1))  # fmt: skip

    async def sync() -> list[tuple[str, datetime]]:
        await enqueue_sync(db, arq_redis, settings, c)
        await run_bulk(settings, db, arq_redis, owner)
        rows = await owner.fetch(
            "select e.event_type, e.occurred_at from fan_subscription_events e"
            " join fan_platform_accounts a on a.id = e.fan_platform_account_id"
            " where e.user_id = $1 and a.platform_fan_id = 'fan_000001' order by e.occurred_at",
            c.user_id,
        )
        return [(r["event_type"], r["occurred_at"]) for r in rows]

    assert [e for e, _ in await sync()] == ["subscribe"]
    platform.update_subscription(c.account_id, "fan_000001", expires_at=now + timedelta(days=30) - timedelta(hours=1))
    rebilled = await sync()
    assert rebilled == [("subscribe", now - timedelta(days=60)), ("rebill", now - timedelta(hours=1))]
    platform.update_subscription(c.account_id, "fan_000001", status="cancelled")
    assert [e for e, _ in await sync()] == ["subscribe", "rebill", "cancellation"]
    ended_at = datetime.now(UTC)
    platform.update_subscription(c.account_id, "fan_000001", status="expired", expires_at=ended_at)
    assert [e for e, _ in await sync()] == ["subscribe", "rebill", "cancellation", "expiration"]
    back_at = datetime.now(UTC)
    platform.update_subscription(c.account_id, "fan_000001", status="active", started_at=back_at,
                                 expires_at=back_at + timedelta(days=30))  # fmt: skip
    events = await sync()
    assert [e for e, _ in events] == ["subscribe", "rebill", "cancellation", "expiration", "win_back"]
    assert events[3][1] == ended_at and events[4][1] == back_at
    assert len({t for _, t in events}) == 5  # distinct times: the order is the ledger's, not a tie-break
    assert await sync() == events  # nothing changed: nothing appended
    state = await owner.fetchrow(
        "select s.status, s.started_at, s.expires_at, s.cancelled_at, s.auto_renew from fan_subscriptions s"
        " join fan_platform_accounts a on a.id = s.fan_platform_account_id"
        " where s.user_id = $1 and a.platform_fan_id = 'fan_000001'",
        c.user_id,
    )
    assert dict(state) == {"status": "active", "started_at": back_at, "expires_at": back_at + timedelta(days=30),
                           "cancelled_at": None, "auto_renew": True}  # fmt: skip


def test_lifecycle_rules_for_first_sight_trials_and_price_changes() -> None:
    t = datetime(2026, 1, 1, tzinfo=UTC)

    def state(status: str, *, start: int = 0, end: int = 30, price: str = "9.99") -> SubscriptionState:
        return SubscriptionState(status, Decimal(price), "USD", t + timedelta(days=start), t + timedelta(days=end),
                                 t if status == "cancelled" else None)  # fmt: skip

    seen = t + timedelta(days=3)
    assert lifecycle_events(None, state("expired", start=-40, end=-10), seen) == [
        ("subscribe", t - timedelta(days=40), Decimal("9.99")), ("expiration", t - timedelta(days=10), None),
    ]  # fmt: skip
    assert lifecycle_events(None, state("trial", end=7), seen) == [("trial_start", t, Decimal("9.99"))]
    assert lifecycle_events(state("trial", end=7), state("active", end=37), seen) == [
        ("trial_conversion", t + timedelta(days=7), Decimal("9.99"))
    ]
    assert lifecycle_events(state("active"), state("active", price="14.99"), seen) == [
        ("price_change", seen, Decimal("14.99"))
    ]
    assert lifecycle_events(state("active"), state("active"), seen) == []
    # Resubscribed after the old period ran out, unseen in between: its end, then the win-back.
    assert lifecycle_events(state("active"), state("active", start=40, end=70), seen) == [
        ("expiration", t + timedelta(days=30), None), ("win_back", t + timedelta(days=40), Decimal("9.99")),
    ]  # fmt: skip


async def test_a_fan_first_met_in_the_transaction_listing_gets_an_account_then(
    db: Database, owner: asyncpg.Connection, sandbox: Sandbox
) -> None:
    c = await connect(db, owner, sandbox, seed=6, n_fans=12, n_transactions_per_fan=2)
    first = await sync_directly(db, sandbox, c, "transactions", page_size=10)  # before any fan listing
    assert (first.accounts_created, first.new_rows) == (12, 24)
    found = await counts(owner, c.user_id)
    assert (found["fan_platform_accounts"], found["fan_profiles"], found["fan_transactions"]) == (12, 12, 24)
    # Every account known now: the pages write no account (nothing to lock or create) and no purchase twice.
    await owner.execute("delete from platform_sync_cursors where user_id = $1", c.user_id)  # read it all again
    again = await sync_directly(db, sandbox, c, "transactions", page_size=10)
    assert (again.accounts_created, again.new_rows, again.pages) == (0, 0, 3)
    assert await counts(owner, c.user_id) == found
