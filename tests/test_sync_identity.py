"""Identity links through the fan sync: a verified e-mail the sandbox platform reports for two accounts
joins them under one profile when synced over real HTTP by a real bulk worker (the app role, RLS)."""

from __future__ import annotations

from decimal import Decimal

import asyncpg
from arq.connections import ArqRedis

from geniehelper.db import Database
from geniehelper.domain import fan_identity
from tests.sync_support import Sandbox, connect, counts, enqueue_sync, run_bulk, sandbox, settings_for

__all__ = ["sandbox"]  # the module's fixture

PROFILE_OF = """
select f.id, f.lifetime_spend, f.platforms, f.status from fan_platform_accounts a
  join fan_profiles f on f.user_id = a.user_id and f.id = a.fan_profile_id
 where a.user_id = $1 and a.platform_fan_id = $2
"""


async def test_a_verified_email_match_links_on_sync_and_an_unlink_splits_again(
    db: Database, owner: asyncpg.Connection, sandbox: Sandbox, arq_redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    settings = settings_for(database_url, redis_url)
    c = await connect(db, owner, sandbox, seed=11, n_fans=6, n_transactions_per_fan=3)
    sandbox.platform.verify_email(c.account_id, "fan_000002", "Dana@Example.com")
    sandbox.platform.verify_email(c.account_id, "fan_000005", "dana@example.com")
    sandbox.platform.verify_email(c.account_id, "fan_000003", "solo@example.com")
    await enqueue_sync(db, arq_redis, settings, c)
    await run_bulk(settings, db, arq_redis, owner)

    spent = {f.fan_id: Decimal(f.total_spent_cents) / 100 for f in sandbox.platform._accounts[c.account_id].fans}
    two, five = await owner.fetchrow(PROFILE_OF, c.user_id, "fan_000002"), await owner.fetchrow(
        PROFILE_OF, c.user_id, "fan_000005")  # fmt: skip
    assert two["id"] == five["id"]  # one person with two accounts
    assert two["lifetime_spend"] == spent["fan_000002"] + spent["fan_000005"]
    assert two["platforms"] == ["sandbox"]
    found = await counts(owner, c.user_id)
    assert found["fan_platform_accounts"] == 6
    assert await owner.fetchval(
        "select count(*) from fan_profiles where user_id = $1 and status = 'active'", c.user_id
    ) == 5  # fmt: skip
    link = await owner.fetchrow("select source, status, evidence from fan_identity_links where user_id = $1", c.user_id)
    assert (link["source"], link["status"], link["evidence"]) == (
        "rule",
        "confirmed",
        {"verified_email": "dana@example.com"},
    )

    async with db.creator_tx(c.user_id) as conn:
        ids = {
            r["platform_fan_id"]: r["id"]
            for r in await conn.fetch("select id, platform_fan_id from fan_platform_accounts")
        }
        await fan_identity.unlink_accounts(conn, c.user_id, ids["fan_000002"], ids["fan_000005"])
    await enqueue_sync(db, arq_redis, settings, c)  # a re-sync does not join them again
    await run_bulk(settings, db, arq_redis, owner)
    two, five = await owner.fetchrow(PROFILE_OF, c.user_id, "fan_000002"), await owner.fetchrow(
        PROFILE_OF, c.user_id, "fan_000005")  # fmt: skip
    assert two["id"] != five["id"]
    assert (two["lifetime_spend"], five["lifetime_spend"]) == (spent["fan_000002"], spent["fan_000005"])
