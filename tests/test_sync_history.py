"""The subscription-history listing (sandbox `GET /v1/subscriptions/history`, the client's
`list_subscription_history`) and the fan sync reading it (`SYNC_SUBSCRIPTION_HISTORY`): every
lifecycle event lands once, in order, with its domain event; a re-sync adds nothing; a sync killed
(SIGKILL) mid-way resumes without a gap or a duplicate."""

from __future__ import annotations

import os
import signal
from collections import Counter
from typing import Any

import asyncpg
import httpx
import pytest
from arq.connections import ArqRedis

from geniehelper.db import Database
from geniehelper.platforms import AuthExpired, HttpPlatformClient, PermanentPlatformError, RateLimited
from geniehelper.platforms.sandbox import SandboxPlatform, run_sandbox
from geniehelper.runtime.delivery import dispatch_fair, redrive_expired_leases
from tests.helpers import BIN, spawn
from tests.sync_support import (
    KEY_B64,
    ManualClock,
    Sandbox,
    connect,
    counts,
    enqueue_sync,
    run_bulk,
    sandbox,
    settings_for,
    wait_for,
)

__all__ = ["sandbox"]  # the module's fixture

OURS = {"new": "subscribe", "rebill": "rebill", "cancellation": "cancellation", "trial_start": "trial_start",
        "expiry": "expiration", "win_back": "win_back"}  # fmt: skip
FOLLOWED = ("subscribe", "rebill", "cancellation", "win_back")  # the types with a domain event


async def _read_all(client: HttpPlatformClient, limit: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = await client.list_subscription_history(cursor, limit)
        items += [item.model_dump(mode="json") for item in page.items]
        if page.next_cursor is None:
            return items
        cursor = page.next_cursor


async def test_the_history_listing_is_paged_deterministic_and_ends_in_the_current_subscription() -> None:
    listings = []
    states = []
    clock = ManualClock()  # one clock: times count back from the account's creation
    for seed in (5, 5, 6):
        platform = SandboxPlatform(clock=clock)
        async with run_sandbox(platform=platform) as url, httpx.AsyncClient() as http:
            created = await http.post(f"{url}/admin/accounts", json={"seed": seed, "lazy": True, "n_fans": 400,
                                                                     "n_history_per_fan": 6})  # fmt: skip
            account_id, token = created.json()["account_id"], created.json()["token"]
            client = HttpPlatformClient(url, token, http)
            items = await _read_all(client, 70)
            assert items == await _read_all(client, 200)  # the page size does not change the listing
            sizes = (await http.get(f"{url}/admin/accounts/{account_id}/counts")).json()
            assert sizes["subscription_history"] == 2_400
            states.append({s.fan_id: s for s in platform._accounts[account_id].subscriptions})
            listings.append(items)
            # The 429, auth and cursor handling of every listing.
            await http.post(f"{url}/admin/faults", json={"kind": "rate_limit", "count": 1, "retry_after_s": 7,
                                                         "path_prefix": "/v1/subscriptions/history"})  # fmt: skip
            with pytest.raises(RateLimited) as limited:
                await client.list_subscription_history(None, 10)
            assert limited.value.retry_after_s == 7
            with pytest.raises(PermanentPlatformError) as refused:
                await client.list_subscription_history("not-a-cursor", 10)
            assert refused.value.status_code == 400
            await http.post(f"{url}/admin/accounts/{account_id}/expire-token")
            with pytest.raises(AuthExpired):
                await client.list_subscription_history(None, 10)
    assert listings[0] == listings[1] and listings[0] != listings[2]
    items, subscriptions = listings[0], states[0]
    assert len({e["event_id"] for e in items}) == 2_400
    by_fan: dict[str, list[dict[str, Any]]] = {}
    for e in items:
        by_fan.setdefault(e["fan_id"], []).append(e)
    kinds = Counter(e["kind"] for e in items)
    assert set(kinds) == set(OURS) and kinds["win_back"] > 0 and kinds["trial_start"] > 0
    for fan, events in by_fan.items():
        assert [e["sequence"] for e in events] == list(range(1, 7))
        assert [e["occurred_at"] for e in events] == sorted(e["occurred_at"] for e in events)
        assert events[0]["kind"] in ("new", "trial_start")
        current = subscriptions[fan]
        if current.status == "expired":
            assert events[-1]["kind"] == "expiry"
            assert current.expires_at is not None
            assert events[-1]["occurred_at"] == current.expires_at.isoformat().replace("+00:00", "Z")


async def _ledger(owner: asyncpg.Connection, user_id: Any) -> list[tuple[str, str, Any]]:
    """(fan, event type, external id) of every ledger row, in the order they were appended."""
    rows = await owner.fetch(
        "select a.platform_fan_id, e.event_type, e.external_event_id from fan_subscription_events e"
        " join fan_platform_accounts a on a.id = e.fan_platform_account_id"
        " where e.user_id = $1 order by e.created_at, e.ctid",
        user_id,
    )
    return [(r[0], r[1], r[2]) for r in rows]


async def test_a_history_with_rebills_cancels_and_win_backs_lands_in_order_once(
    db: Database, owner: asyncpg.Connection, sandbox: Sandbox, arq_redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    settings = settings_for(database_url, redis_url, sync_page_size=25, sync_subscription_history=True)
    c = await connect(db, owner, sandbox, seed=21, n_fans=40, n_history_per_fan=7, n_transactions_per_fan=1)
    account = sandbox.platform._accounts[c.account_id]

    async def sync() -> list[tuple[str, str, Any]]:
        await enqueue_sync(db, arq_redis, settings, c)
        await run_bulk(settings, db, arq_redis, owner)
        found = await counts(owner, c.user_id)
        platform = sandbox.platform.counts(c.account_id)
        assert found["fan_subscription_events"] == platform["subscription_history"]
        assert found["fan_subscriptions"] == platform["subscriptions"]
        return await _ledger(owner, c.user_id)

    def expected() -> list[tuple[str, str, Any]]:
        return [(e.fan_id, OURS[e.kind], e.event_id) for e in account.history]

    first = await sync()
    assert first == expected()  # each event once, in the listing's order
    assert {t for _, t, _ in first} >= {"subscribe", "rebill", "cancellation", "expiration", "win_back"}

    sandbox.clock.advance(3_600)
    step = await sandbox.http.post(f"{sandbox.url}/admin/accounts/{c.account_id}/advance",
                                   json={"new_fans": 2, "cancellations": 3, "rebills": 3})  # fmt: skip
    step_history = step.json()["history"]
    assert len(step_history) == 8
    sandbox.clock.advance(86_400)
    back = (await sandbox.http.post(f"{sandbox.url}/admin/accounts/{c.account_id}/advance",
                                    json={"win_backs": 3})).json()  # fmt: skip
    assert back["won_back"] == step.json()["cancelled"]
    second = await sync()
    assert second[: len(first)] == first and second == expected()
    assert [e for _, _, e in second[len(first):]] == step_history + back["history"]
    for fan in back["won_back"]:  # its history in order: ... cancellation, then win_back
        rows = await owner.fetch(
            "select e.event_type from fan_subscription_events e"
            " join fan_platform_accounts a on a.id = e.fan_platform_account_id"
            " where e.user_id = $1 and a.platform_fan_id = $2 order by e.occurred_at", c.user_id, fan,
        )  # fmt: skip
        assert [r[0] for r in rows][-2:] == ["cancellation", "win_back"]
        assert [r[0] for r in rows] == [OURS[e.kind] for e in account.history if e.fan_id == fan]

    # One domain event per followed ledger row, naming it; none for the others.
    outbox = await owner.fetchval(
        "select count(*) from domain_events d join fan_subscription_events e"
        " on d.source_key = 'fan_subscription_events:' || e.id where d.user_id = $1", c.user_id,
    )  # fmt: skip
    assert outbox == sum(t in FOLLOWED for _, t, _ in second)
    # The current-state pass derived no event of its own: the ledger is exactly the history.
    before = await owner.fetchval("select count(*) from domain_events where user_id = $1", c.user_id)
    assert await sync() == second  # a re-sync adds nothing
    assert await owner.fetchval("select count(*) from domain_events where user_id = $1", c.user_id) == before


SETTINGS = {"SYNC_PAGE_SIZE": "20", "JOB_LEASE_S": "2", "JOB_HEARTBEAT_INTERVAL_S": "0.5",
            "SYNC_SUBSCRIPTION_HISTORY": "true"}  # fmt: skip


async def test_a_history_sync_killed_mid_way_resumes_with_no_gap_and_no_duplicate(
    db: Database, owner: asyncpg.Connection, sandbox: Sandbox, arq_redis: ArqRedis, database_url: str,
    redis_url: str, project_env: dict[str, Any],
) -> None:  # fmt: skip
    settings = settings_for(database_url, redis_url, **{k.lower(): v for k, v in SETTINGS.items()})
    c = await connect(db, owner, sandbox, seed=8, n_fans=200, n_history_per_fan=5)
    await sandbox.fault(kind="slow", delay_s=0.05, count=10_000, path_prefix="/v1/subscriptions/history")
    job = await enqueue_sync(db, arq_redis, settings, c)
    env = dict(project_env, DATABASE_URL=database_url, CREDENTIALS_ENC_KEY_B64=KEY_B64, LOG_FORMAT="json", **SETTINGS)
    worker = spawn([str(BIN / "geniehelper"), "worker", "bulk"], env)
    try:
        assert await dispatch_fair(db, arq_redis, "bulk", window=10, ttl_s=3600) == 1
        cursor = ("select items_read from platform_sync_cursors"
                  " where user_id = $1 and resource = 'subscription_history' and pages_read >= 5")  # fmt: skip
        await wait_for(owner, cursor, c.user_id)
        os.killpg(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait(10)
    finally:
        if worker.proc.poll() is None:
            os.killpg(worker.proc.pid, signal.SIGKILL)
            worker.proc.wait(10)
    await sandbox.clear_faults()

    stopped = await counts(owner, c.user_id)
    read = await owner.fetchval(
        "select items_read from platform_sync_cursors where user_id = $1 and resource = 'subscription_history'",
        c.user_id,
    )
    assert 0 < stopped["fan_subscription_events"] == read < 1_000  # its committed pages, nothing half-way

    await wait_for(owner, "select lease_expires_at < now() from media_jobs where id = $1", job.id)
    assert await redrive_expired_leases(db) == 1
    await run_bulk(settings, db, arq_redis, owner)
    record = await owner.fetchrow("select status, attempts from media_jobs where id = $1", job.id)
    assert (record["status"], record["attempts"]) == ("completed", 2)
    account = sandbox.platform._accounts[c.account_id]
    assert await _ledger(owner, c.user_id) == [(e.fan_id, OURS[e.kind], e.event_id) for e in account.history]
    assert (await counts(owner, c.user_id))["fan_subscription_events"] == 1_000
