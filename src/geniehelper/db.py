"""PostgreSQL access: pools and creator isolation.

Pools per database role (the roles are created by the migrations):
- `geniehelper_app`: per-creator work. Row-level security shows it only the rows of the creator
  set for the current transaction by `creator_tx`; with no creator set it sees nothing.
- `geniehelper_runtime` (`records_pool`): the runtime's bookkeeping on job records, which spans
  creators; it may only call the record functions of migration 0015.
- `geniehelper_system` (only where asked for): the few cross-creator scans schedulers need, on narrow
  grants. Workers open it only when their queue runs system jobs.
A process logs in as a role that holds nothing itself and may only SET ROLE to these (README,
"Production roles"); each pooled connection switches to its role at connect time.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy

APP_ROLE = "geniehelper_app"
SYSTEM_ROLE = "geniehelper_system"
RUNTIME_ROLE = "geniehelper_runtime"

log = structlog.get_logger("geniehelper.db")

async def init_connection(conn: asyncpg.Connection) -> None:
    """JSON on the wire as Python objects, for json and jsonb columns."""
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(type_name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _keep_session(_conn: asyncpg.Connection) -> None:
    return None


# Set while `Database.app_tx` releases a connection it has reset already.
_RELEASING_CLEAN: contextvars.ContextVar[bool] = contextvars.ContextVar("releasing_clean", default=False)


async def _reset_session(conn: asyncpg.Connection) -> None:
    """asyncpg's reset (RESET ALL, UNLISTEN, advisory locks, cursors) plus RESET ROLE, which RESET ALL
    leaves alone: a SET ROLE run by one user of a pooled connection must not pass to the next."""
    if _RELEASING_CLEAN.get():
        return  # asyncpg still rolls back a transaction left open (Connection._reset) before this
    await conn.execute(_session_reset(conn))


def _session_reset(conn: asyncpg.Connection | PoolConnectionProxy) -> str:
    return "reset role;\n" + conn.get_reset_query()


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


class LoginLacksRole(RuntimeError):
    """The login cannot act as a role this process needs."""


class NoSystemRole(RuntimeError):
    """A system transaction was asked of a Database opened without the system role."""


# The login role of a process must not be a superuser nor able to become the schema's owner: from
# either, any SQL (RESET ROLE first) could disable RLS or the append-only triggers.
LOGIN_PRIVILEGES = """
select session_user::text as login, r.rolsuper as superuser,
       c.oid is not null and pg_has_role(session_user, c.relowner, 'MEMBER') as can_be_owner,
       coalesce((select pg_has_role(session_user, s.oid, 'SET') from pg_roles s where s.rolname = $1), false)
           as can_be_system,
       coalesce((select pg_has_role(session_user, s.oid, 'SET') from pg_roles s where s.rolname = $2), false)
           as can_be_runtime
  from pg_roles r left join pg_class c on c.oid = to_regclass('public.media_jobs')
 where r.rolname = session_user
"""


async def _check_login(pool: asyncpg.Pool, *, system: bool) -> None:
    """Refuse a login that could undo isolation, or that lacks a role this process needs; warn when
    it could act as the system role and the process does not need it (a worker: WORKER_DATABASE_URL)."""
    async with pool.acquire() as conn:
        row = await conn.fetchrow(LOGIN_PRIVILEGES, SYSTEM_ROLE, RUNTIME_ROLE)
    assert row is not None  # session_user always has a pg_roles row
    needs = ((RUNTIME_ROLE, True, row["can_be_runtime"]), (SYSTEM_ROLE, system, row["can_be_system"]))
    lacking = [role for role, needed, held in needs if needed and not held]
    if lacking:
        raise LoginLacksRole(
            f"the database login {row['login']} cannot act as {' and '.join(lacking)}, which this process needs: "
            "`geniehelper migrate` grants the roles to geniehelper_login (all three) and geniehelper_worker_login "
            "(app and runtime: workers of queues without system jobs); see README, 'Production roles'"
        )
    if not system and row["can_be_system"]:
        log.warning(
            "db.login_broader_than_needed", login=row["login"], could_act_as=SYSTEM_ROLE,
            hint="give workers WORKER_DATABASE_URL (geniehelper_worker_login: README, 'Production roles')",
        )  # fmt: skip
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
    # The runtime's own job-record writes (enqueue marks, a worker's starts, outcomes and leases):
    # geniehelper_runtime, connections never reset (see create_pool's fixed_statements).
    records_pool: asyncpg.Pool
    system_pool: asyncpg.Pool | None  # None: opened without the system role (a worker's, usually)

    @classmethod
    async def open(
        cls, database_url: str, *, min_size: int = 1, max_size: int = 10, system: bool = True
    ) -> Database:
        """`system`: whether this process needs the system role (schedulers, the CLI, system jobs)."""
        pools: list[asyncpg.Pool] = []
        try:
            pools.append(await create_pool(database_url, role=APP_ROLE, min_size=min_size, max_size=max_size))
            await _check_login(pools[0], system=system)
            pools.append(await create_pool(database_url, role=RUNTIME_ROLE, min_size=0, max_size=3,
                                           fixed_statements=True))  # fmt: skip
            if system:
                system_size = max(2, max_size // 4)
                pools.append(await create_pool(database_url, role=SYSTEM_ROLE, min_size=0, max_size=system_size))
        except BaseException:
            for pool in pools:
                await pool.close()
            raise
        return cls(pools[0], pools[1], pools[2] if system else None)

    async def close(self) -> None:
        await self.app_pool.close()
        await self.records_pool.close()
        if self.system_pool is not None:
            await self.system_pool.close()

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
    async def app_tx(self) -> AsyncIterator[Any]:
        """An app transaction that ends with the session reset in the same round trip as its COMMIT
        (or ROLLBACK): one round trip fewer than a pooled `conn.transaction()`. The caller sets the
        creator (a job's `begin_job_tx`). asyncpg refuses `conn.transaction()` inside it (a
        transaction asyncpg did not start): its users are the runtime's fenced job transactions."""
        conn = await self.app_pool.acquire()
        clean = False  # True once the reset ran: the release then sends nothing
        try:
            await conn.execute("begin")
            try:
                yield conn
            except BaseException:
                with contextlib.suppress(Exception):  # a broken connection: the pool's release handles it
                    await conn.execute("rollback;\n" + _session_reset(conn))
                    clean = True
                raise
            await conn.execute("commit;\n" + _session_reset(conn))  # a failed COMMIT skips the reset
            clean = True
        finally:
            await self._release_app(conn, clean=clean)

    @asynccontextmanager
    async def app_statement(self) -> AsyncIterator[Any]:
        """An app connection for statements outside a transaction block that act for their creator
        transaction-locally (a function calling `set_config(..., true)`, as the job steps of
        migration 0037): the setting ends with the statement, so a release after success skips
        the session reset's round trip. Only for such fixed statements of ours."""
        conn = await self.app_pool.acquire()
        clean = False
        try:
            yield conn
            clean = True
        finally:
            await self._release_app(conn, clean=clean)

    async def _release_app(self, conn: Any, *, clean: bool) -> None:
        """Back to the app pool; `clean`: its session holds nothing, so the reset is not sent."""
        token = _RELEASING_CLEAN.set(clean)
        try:
            await self.app_pool.release(conn)
        finally:
            _RELEASING_CLEAN.reset(token)

    @asynccontextmanager
    async def system_tx(self) -> AsyncIterator[Any]:
        """A transaction for cross-creator scans, limited to the system role's grants."""
        if self.system_pool is None:
            raise NoSystemRole("this process opened the database without the system role (Database.open(system=False))")
        async with self.system_pool.acquire() as conn, conn.transaction():
            yield conn

    def scoped_tx(self, user_id: UUID | None) -> Any:
        """The creator's transaction, or the system's for a job of no creator (a system job)."""
        return self.creator_tx(user_id) if user_id is not None else self.system_tx()
