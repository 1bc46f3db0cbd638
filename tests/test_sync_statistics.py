"""Fresh planner statistics while a sync grows the fan tables (migration 0039): this module's
database starts empty, so the first large pass is what an initial sync on a new deployment meets."""

from __future__ import annotations

import asyncio
import time

import asyncpg

from geniehelper.db import Database
from geniehelper.domain import fan_sync
from geniehelper.sync.fans import STATISTICS_EVERY_PAGES
from tests.sync_support import Sandbox, connect, sandbox, sync_directly

__all__ = ["sandbox"]  # the module's fixture

STATS = (
    "select c.reltuples, coalesce(s.analyze_count, 0) as analyses from pg_class c"
    " left join pg_stat_user_tables s on s.relid = c.oid where c.oid = 'fan_platform_accounts'::regclass"
)


async def test_a_large_pass_analyses_the_tables_it_grew_and_an_unchanged_table_is_left_alone(
    db: Database, owner: asyncpg.Connection, sandbox: Sandbox
) -> None:
    before = await owner.fetchrow(STATS)
    assert before["reltuples"] < 0 and before["analyses"] == 0  # never analysed: the planner is guessing
    c = await connect(db, owner, sandbox, seed=9, n_fans=3000)
    result = await sync_directly(db, sandbox, c, "fans", page_size=200)
    assert result.pages == 15 > STATISTICS_EVERY_PAGES
    # ANALYZE sets pg_class at once; the manual-analyse counter (autovacuum's is another) arrives
    # with the statistics flush of the connection that ran it.
    after = await owner.fetchrow(STATS)
    assert after["reltuples"] >= 2000, dict(after)  # analysed during the pass or at its end
    deadline = time.monotonic() + 30
    while (await owner.fetchrow(STATS))["analyses"] == 0:
        assert time.monotonic() < deadline, "the sync ran no ANALYZE of fan_platform_accounts"
        await asyncio.sleep(0.2)

    async with db.creator_tx(c.user_id) as conn:  # the app role may call it; nothing grew since
        assert await fan_sync.refresh_statistics(conn) == []
