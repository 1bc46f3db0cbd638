"""PostgreSQL access: pools and creator isolation.

Pools per database role (the roles are created by the migrations):
- `geniehelper_app`: per-creator work. Row-level security shows it only the rows of the creator
  set for the current transaction by `creator_tx`; with no creator set it sees nothing.
- `geniehelper_system`: the few cross-creator scans schedulers need, on narrow grants; and, in a
  pool of its own (`records_pool`), the runtime's writes to job records, which span creators.
DATABASE_URL logs in as the schema owner (which runs migrations); each pooled connection switches
to its role at connect time, so even a raw `pool.acquire()` never runs with the owner's rights.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg

APP_ROLE = "geniehelper_app"
SYSTEM_ROLE = "geniehelper_system"

async def init_connection(conn: asyncpg.Connection) -> None:
    """JSON on the wire as Python objects, for json and jsonb columns."""
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(type_name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _keep_session(_conn: asyncpg.Connection) -> None:
    return None


async def _reset_session(conn: asyncpg.Connection) -> None:
    """asyncpg's reset (RESET ALL, UNLISTEN, advisory locks, cursors) plus RESET ROLE, which RESET ALL
    leaves alone: a SET ROLE run by one user of a pooled connection must not pass to the next."""
    await conn.execute("reset role;\n" + conn.get_reset_query())


async def create_pool(
    database_url: str, *, role: str | None, min_size: int = 1, max_size: int = 10, fixed_statements: bool = False
) -> Any:
    """`fixed_statements`: a pool that only ever runs the runtime's own statements (the worker's
    record writes): a released connection is not reset, since no code that could leave session
    state behind ever uses it, and the reset would cost a round trip per use."""
    server_settings = {"application_name": "geniehelper"}
    if role is not None:
        server_settings["role"] = role
    # Plans made for the arrays each call passes: a generic plan, fixed after a few small batches
    # (or while statistics lag a burst of new rows), once turned a 2,500-row batch into a nested
    # loop over the whole table (1.8 s instead of 50 ms).
    server_settings["plan_cache_mode"] = "force_custom_plan"
    return await asyncpg.create_pool(
        database_url,
        min_size=min_size,
        max_size=max_size,
        init=init_connection,
        server_settings=server_settings,
        reset=_keep_session if fixed_statements else _reset_session,
    )


async def connect_owner(database_url: str) -> asyncpg.Connection:
    """A single connection as the schema owner: migrations and tests only."""
    conn: asyncpg.Connection = await asyncpg.connect(database_url, server_settings={"application_name": "geniehelper"})
    await init_connection(conn)
    return conn


class PrivilegedLogin(RuntimeError):
    """DATABASE_URL logs in as a role that could undo creator isolation."""


# The login role of a process must not be a superuser nor able to become the schema's owner: from
# either, any SQL (RESET ROLE first) could disable RLS or the append-only triggers.
LOGIN_PRIVILEGES = """
select session_user::text as login, r.rolsuper as superuser,
       c.oid is not null and pg_has_role(session_user, c.relowner, 'MEMBER') as can_be_owner
  from pg_roles r left join pg_class c on c.oid = to_regclass('public.media_jobs')
 where r.rolname = session_user
"""


async def _refuse_privileged_login(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        row = await conn.fetchrow(LOGIN_PRIVILEGES)
    assert row is not None  # session_user always has a pg_roles row
    if row["superuser"] or row["can_be_owner"]:
        what = "a superuser" if row["superuser"] else "the schema owner (or may become it)"
        raise PrivilegedLogin(
            f"DATABASE_URL logs in as {row['login']}, {what}: processes must log in as a role that can only "
            "act as geniehelper_app and geniehelper_system (geniehelper_login: README, 'Production roles'); "
            "the owner's URL goes in MIGRATE_DATABASE_URL, used by `geniehelper migrate` only"
        )


@dataclass
class Database:
    app_pool: asyncpg.Pool
    system_pool: asyncpg.Pool
    # The runtime's own job-record writes (enqueue marks, a worker's starts, outcomes and leases):
    # the system role, connections never reset (see create_pool's fixed_statements).
    records_pool: asyncpg.Pool

    @classmethod
    async def open(cls, database_url: str, *, min_size: int = 1, max_size: int = 10) -> Database:
        pools: list[asyncpg.Pool] = []
        try:
            for role, low, high, fixed in (
                (APP_ROLE, min_size, max_size, False),
                (SYSTEM_ROLE, 0, max(2, max_size // 4), False),
                (SYSTEM_ROLE, 0, 3, True),
            ):
                pools.append(await create_pool(database_url, role=role, min_size=low, max_size=high,
                                               fixed_statements=fixed))  # fmt: skip
            await _refuse_privileged_login(pools[0])
        except BaseException:
            for pool in pools:
                await pool.close()
            raise
        return cls(*pools)

    async def close(self) -> None:
        await self.app_pool.close()
        await self.system_pool.close()
        await self.records_pool.close()

    @asynccontextmanager
    async def creator_tx(self, user_id: UUID | str) -> AsyncIterator[Any]:
        """A transaction acting for one creator: RLS shows and accepts only that creator's rows.

        `set_config(..., true)` is transaction-local, so the setting dies with COMMIT/ROLLBACK and
        never leaks to the next user of the pooled connection (a plain SET would).
        """
        async with self.app_pool.acquire() as conn, conn.transaction():
            await conn.execute("select set_config('app.user_id', $1, true)", str(UUID(str(user_id))))
            yield conn

    @asynccontextmanager
    async def system_tx(self) -> AsyncIterator[Any]:
        """A transaction for cross-creator scans, limited to the system role's grants."""
        async with self.system_pool.acquire() as conn, conn.transaction():
            yield conn

    def scoped_tx(self, user_id: UUID | None) -> Any:
        """The creator's transaction, or the system's for a job of no creator (a system job)."""
        return self.creator_tx(user_id) if user_id is not None else self.system_tx()
