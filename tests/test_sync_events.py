"""Domain events from the fan sync (migration 0022, docs/events.md): one per new subscription event,
purchase, tip and inbound message, written with its row, never again on a re-sync; and a cursor that
a transaction committing late can never fall behind."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import asyncpg
from arq.connections import ArqRedis

from geniehelper.db import Database
from geniehelper.domain.events import START, EventCursor, read_events
from tests.conftest import make_creator
from tests.sync_support import Sandbox, connect, enqueue_sync, run_bulk, sandbox, settings_for

__all__ = ["sandbox"]  # the module's fixture

SOURCE_COUNTS = """
select (select count(*) from fan_transactions where user_id = $1 and kind = 'tip') as tip,
       (select count(*) from fan_transactions where user_id = $1 and kind <> 'tip') as purchase,
       (select count(*) from fan_messages where user_id = $1 and direction = 'inbound') as message_received,
       (select count(*) from fan_subscription_events where user_id = $1 and event_type = 'subscribe') as new_subscriber,
       (select count(*) from fan_subscription_events where user_id = $1 and event_type = 'rebill') as rebill,
       (select count(*) from fan_subscription_events where user_id = $1 and event_type = 'cancellation')
           as cancellation,
       (select count(*) from fan_subscription_events where user_id = $1 and event_type = 'win_back') as win_back
"""


async def event_counts(owner: asyncpg.Connection, user_id: uuid.UUID) -> dict[str, int]:
    rows = await owner.fetch(
        "select event_type, count(*)::int as n from domain_events where user_id = $1 group by 1", user_id
    )
    return {r["event_type"]: r["n"] for r in rows}


async def test_each_synced_row_gives_its_event_once_and_a_re_sync_none(
    db: Database, owner: asyncpg.Connection, sandbox: Sandbox, arq_redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    settings = settings_for(database_url, redis_url, sync_page_size=25)
    c = await connect(db, owner, sandbox, seed=7, n_fans=60, n_transactions_per_fan=3, n_messages_per_fan=2)
    await enqueue_sync(db, arq_redis, settings, c)
    await run_bulk(settings, db, arq_redis, owner)

    sources = dict(await owner.fetchrow(SOURCE_COUNTS, c.user_id))
    assert sources["tip"] > 0 and sources["purchase"] > 0 and sources["message_received"] > 0
    assert sources["new_subscriber"] == 60
    assert await event_counts(owner, c.user_id) == {k: v for k, v in sources.items() if v}
    # Every event names the row it comes from, and that row's fan.
    orphans = await owner.fetchval(
        """
        select count(*) from domain_events e
         where e.user_id = $1 and not exists (
               select 1 from fan_transactions t where 'fan_transactions:' || t.id = e.source_key
                  and t.fan_platform_account_id = e.fan_platform_account_id
               union all
               select 1 from fan_messages m where 'fan_messages:' || m.id = e.source_key
                  and m.fan_platform_account_id = e.fan_platform_account_id
               union all
               select 1 from fan_subscription_events s where 'fan_subscription_events:' || s.id = e.source_key
                  and s.fan_platform_account_id = e.fan_platform_account_id)
        """,
        c.user_id,
    )
    assert orphans == 0
    assert await owner.fetchval(
        "select count(*) from domain_events where user_id = $1 and fan_profile_id is null", c.user_id
    ) == 0
    first = await owner.fetchval("select count(*) from domain_events where user_id = $1", c.user_id)

    await enqueue_sync(db, arq_redis, settings, c)  # nothing new on the platform: no new event
    await run_bulk(settings, db, arq_redis, owner)
    assert await owner.fetchval("select count(*) from domain_events where user_id = $1", c.user_id) == first

    # A consumer reading in small pages sees each event once, in cursor order.
    seen: list[int] = []
    cursor = START
    async with db.system_tx() as conn:
        while page := await read_events(conn, cursor, 7):
            seen += [e.id for e in page if e.user_id == c.user_id]
            cursor = page[-1].cursor
    assert len(seen) == len(set(seen)) == first


async def test_a_transaction_that_commits_late_never_falls_behind_the_cursor(
    db: Database, owner: asyncpg.Connection
) -> None:
    creator = await make_creator(owner)
    insert = ("insert into domain_events (user_id, event_type, source_key, occurred_at)"
              " values ($1, 'tip', $2, $3) returning id")  # fmt: skip
    async with db.system_tx() as conn:  # the consumer, caught up
        cursor = EventCursor()
        while page := await read_events(conn, cursor, 500):
            cursor = page[-1].cursor

    now = datetime.now(UTC)
    async with db.creator_tx(creator) as early:  # takes its id (and its transaction id) first...
        early_id = await early.fetchval(insert, creator, f"test:early:{uuid.uuid4()}", now)
        async with db.creator_tx(creator) as late:  # ...and is still open when this one commits
            late_id = await late.fetchval(insert, creator, f"test:late:{uuid.uuid4()}", now)
        assert late_id > early_id
        async with db.system_tx() as conn:
            assert await read_events(conn, cursor, 500) == []  # the committed one waits for the open one
    async with db.system_tx() as conn:
        page = await read_events(conn, cursor, 500)
    assert [e.id for e in page] == [early_id, late_id]
    assert all(e.user_id == creator and e.event_type == "tip" for e in page)
