"""The sandbox evolving an account step by step (`advance` over its HTTP control API), and the fan sync
following it: the same seed gives the same data, a step makes exactly the changes it reports, and a
sync after it records exactly those (counts equal the platform's), a cancel then a win-back in order."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
from arq.connections import ArqRedis

from geniehelper.db import Database
from geniehelper.platforms import HttpPlatformClient, Subscription
from geniehelper.platforms.sandbox import AdvanceSpec, NewAccount, SandboxPlatform, run_sandbox
from tests.sync_support import (
    ManualClock,
    Sandbox,
    connect,
    counts,
    enqueue_sync,
    run_bulk,
    sandbox,
    settings_for,
)

__all__ = ["sandbox"]  # the module's fixture

LAZY = {"lazy": True, "n_fans": 300, "n_transactions": 2_000, "n_messages": 500}


async def _read_all(client: HttpPlatformClient, resource: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = await getattr(client, f"list_{resource}")(cursor, 200)
        items += [item.model_dump(mode="json") for item in page.items]
        if page.next_cursor is None:
            return items
        cursor = page.next_cursor


async def test_the_same_seed_gives_the_same_account_and_the_same_steps() -> None:
    clock = ManualClock()
    listings: list[dict[str, list[dict[str, Any]]]] = []
    steps = []
    for seed in (7, 7, 8):
        platform = SandboxPlatform(clock=clock)
        async with run_sandbox(platform=platform) as url, httpx.AsyncClient() as http:
            created = await http.post(f"{url}/admin/accounts", json={"seed": seed, **LAZY})
            account_id, token = created.json()["account_id"], created.json()["token"]
            step = await http.post(f"{url}/admin/accounts/{account_id}/advance",
                                   json={"new_fans": 3, "cancellations": 5, "rebills": 2, "win_backs": 4, "tips": 6,
                                         "purchases": 2, "messages": 3})  # fmt: skip
            assert step.status_code == 200, step.text
            steps.append(step.json())
            client = HttpPlatformClient(url, token, http)
            listings.append({r: await _read_all(client, r) for r in ("fans", "subscriptions", "transactions",
                                                                       "messages")})  # fmt: skip
            refused = await http.post(f"{url}/admin/accounts/{account_id}/advance", json={"tips": -1})
            assert refused.status_code == 422 and "tips" in refused.json()["error"]["message"]
    assert listings[0] == listings[1] and steps[0] == steps[1]
    assert listings[0]["transactions"] != listings[2]["transactions"] and steps[0] != steps[2]
    sizes = {r: len(items) for r, items in listings[0].items()}
    assert sizes == {"fans": 303, "subscriptions": 303, "transactions": 2_000 + 2 + 4 + 6 + 2, "messages": 503}
    # Each transaction id once, each fan's spend the sum of its base transactions.
    assert len({t["transaction_id"] for t in listings[0]["transactions"]}) == sizes["transactions"]
    spend = Counter[str]()
    for t in listings[0]["transactions"][:2_000]:
        spend[t["fan_id"]] += t["amount_cents"]
    assert all(f["total_spent_cents"] == spend[f["fan_id"]] for f in listings[0]["fans"][:300])


def test_a_large_lazy_account_is_generated_per_page_and_a_step_changes_what_it_reports() -> None:
    clock = ManualClock()
    platform = SandboxPlatform(clock=clock)
    account_id, _ = platform.create_account(
        NewAccount(seed=1, lazy=True, n_fans=100_000, n_transactions=1_000_000, n_messages=10_000)
    )
    account = platform._accounts[account_id]
    assert platform.counts(account_id) == {"fans": 100_000, "subscriptions": 100_000, "transactions": 1_000_000,
                                           "messages": 10_000, "subscription_history": 300_000}  # fmt: skip
    assert account.transactions.extras == [] and account.subscriptions.replaced == {}  # nothing built yet
    last = account.transactions[999_999]
    assert (last.transaction_id, last.fan_id) == (f"txn_{account_id}_01000000", "fan_100000")
    before = {p: account.subscriptions.json_item(p) for p in range(100_000)}

    clock.advance(3_600)
    step = platform.advance(account_id, AdvanceSpec(new_fans=10, cancellations=20, rebills=15, win_backs=12, tips=30,
                                              purchases=5, messages=8))  # fmt: skip
    assert (step.step, len(step.new_fans), len(step.cancelled), len(step.rebilled), len(step.won_back)) == (
        1, 10, 20, 15, 12)  # fmt: skip
    grown = {
        "fans": 100_010,
        "subscriptions": 100_010,
        "transactions": 1_000_000 + 15 + 12 + 30 + 5,
        "messages": 10_008,
        "subscription_history": 300_000 + 10 + 20 + 15 + 12,  # one event per change
    }
    assert platform.counts(account_id) == grown
    changed = {p for p in range(100_000) if account.subscriptions.json_item(p) != before[p]}
    fan_positions = {int(f.removeprefix("fan_")) - 1 for f in step.cancelled + step.rebilled + step.won_back}
    assert changed == fan_positions  # nothing else moved
    now = platform.now()
    for fan in step.cancelled:
        assert _subscription(platform, account_id, fan).status == "cancelled"
    for fan in step.rebilled:
        s = _subscription(platform, account_id, fan)
        old = Subscription.model_validate(before[int(fan[4:]) - 1])
        assert old.expires_at is not None
        assert (s.status, s.expires_at) == ("active", old.expires_at + timedelta(days=30))
    for fan in step.won_back:
        s = _subscription(platform, account_id, fan)
        assert (s.status, s.started_at, s.expires_at) == ("active", now, now + timedelta(days=30))
        assert before[int(fan[4:]) - 1]["status"] != "active"
    added = account.transactions[1_000_000:]
    assert [t.transaction_id for t in added] == step.transactions
    assert Counter(t.kind for t in added)["subscription"] == 15 + 12
    assert Counter(t.kind for t in added)["tip"] == 30
    # The next step wins back first the fans earlier steps cancelled, oldest first.
    again = platform.advance(account_id, AdvanceSpec(win_backs=25))
    assert again.won_back[:20] == step.cancelled


def _subscription(platform: SandboxPlatform, account_id: str, fan: str) -> Any:
    return platform._accounts[account_id].subscriptions[int(fan.removeprefix("fan_")) - 1]


async def test_a_sync_after_each_step_records_exactly_its_changes_a_cancel_then_a_win_back_in_order(
    db: Database, owner: asyncpg.Connection, sandbox: Sandbox, arq_redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    settings = settings_for(database_url, redis_url, sync_page_size=100)
    c = await connect(db, owner, sandbox, seed=11, **LAZY)

    async def sync() -> Counter[str]:
        await enqueue_sync(db, arq_redis, settings, c)
        await run_bulk(settings, db, arq_redis, owner)
        assert {
            k: v
            for k, v in (await counts(owner, c.user_id)).items()
            if k not in ("fan_profiles", "fan_subscription_events")
        } == {
            "fan_platform_accounts": len(sandbox.platform._accounts[c.account_id].fans),
            **{f"fan_{r}": n for r, n in sandbox.platform.counts(c.account_id).items()
               if r not in ("fans", "subscription_history")},
        }
        rows = await owner.fetch(
            "select event_type, count(*) from fan_subscription_events where user_id = $1 group by 1", c.user_id
        )
        return Counter({r[0]: r[1] for r in rows})

    async def advance(**step: int) -> dict[str, Any]:
        answer = await sandbox.http.post(f"{sandbox.url}/admin/accounts/{c.account_id}/advance", json=step)
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    first = await sync()
    subscriptions = sandbox.platform._accounts[c.account_id].subscriptions
    assert first == Counter({"subscribe": 300, "expiration": sum(s.status == "expired" for s in subscriptions)})

    sandbox.clock.advance(3_600)
    step = await advance(new_fans=5, cancellations=4, rebills=3, tips=6, purchases=2, messages=7)
    second = await sync()
    assert second - first == Counter({"subscribe": 5, "cancellation": 4, "rebill": 3})
    tips = await owner.fetchval(
        "select count(*) from fan_transactions where user_id = $1 and external_transaction_id = any($2::text[])"
        " and kind = 'tip'", c.user_id, step["transactions"],
    )  # fmt: skip
    assert tips == 6

    # A day later the fans cancelled in the last step come back (oldest first), with a new period.
    sandbox.clock.advance(86_400)
    back = await advance(win_backs=4)
    assert back["won_back"] == step["cancelled"]
    third = await sync()
    assert third - second == Counter({"win_back": 4})
    for fan in back["won_back"]:
        rows = await owner.fetch(
            "select e.event_type from fan_subscription_events e"
            " join fan_platform_accounts a on a.id = e.fan_platform_account_id"
            " where e.user_id = $1 and a.platform_fan_id = $2 order by e.occurred_at",
            c.user_id, fan,
        )  # fmt: skip
        assert [r[0] for r in rows] == ["subscribe", "cancellation", "win_back"], fan

    # Nothing changed: a sync writes no event and no row.
    assert await sync() == third
