"""Red team: what a process's database connection cannot do, from app code and from inside a job.

Processes log in as geniehelper_login, which acts as geniehelper_app or geniehelper_system and holds
nothing itself; the schema owner's URL is for `geniehelper migrate` only. Every attempt below is
refused by PostgreSQL, and the owner finds nothing changed afterwards.
"""

from __future__ import annotations

import re
import subprocess
import uuid
from typing import Any

import asyncpg
import pytest
from arq.connections import ArqRedis

from geniehelper.db import Database, PrivilegedLogin
from geniehelper.runtime.context import JobContext
from geniehelper.runtime.definition import JobDefinition, JobPayload, Policy
from geniehelper.runtime.queue import JobQueue
from geniehelper.runtime.quotas import load_tier_limits
from geniehelper.runtime.registry import JobRegistry
from geniehelper.settings import Settings
from tests.conftest import make_creator
from tests.helpers import BIN, drain_queue

# Each escape tried as the app role, or after RESET ROLE (which returns to the role the connection
# was opened with, the app role: never to the login role or the owner).
OWNER = "must be owner of (table|relation) "
ESCAPES = [
    ("set role postgres", 'permission denied to set role "postgres"'),
    ("reset role; set role postgres", 'permission denied to set role "postgres"'),
    ("set session authorization postgres", 'permission denied to set session authorization'),
    ("alter table media_jobs no force row level security", OWNER + "media_jobs"),
    ("alter table platform_stats_snapshots disable trigger all", OWNER + "platform_stats_snapshots"),
    ("drop policy tenant_isolation on media_jobs", OWNER + "media_jobs"),
    ("reset role; alter table media_jobs disable row level security", OWNER + "media_jobs"),
]


async def _intact(owner: asyncpg.Connection) -> None:
    """As the owner: RLS still forced on media_jobs, its policy there, the ledger triggers enabled."""
    forced = await owner.fetchval("select relforcerowsecurity from pg_class where oid = 'media_jobs'::regclass")
    policy = await owner.fetchval(
        "select count(*) from pg_policies where tablename = 'media_jobs' and policyname = 'tenant_isolation'"
    )
    disabled = await owner.fetchval(
        "select count(*) from pg_trigger where tgrelid = 'platform_stats_snapshots'::regclass and tgenabled = 'D'"
    )
    assert (forced, policy, disabled) == (True, 1, 0)


@pytest.mark.parametrize(("sql", "refusal"), ESCAPES)
async def test_an_app_connection_cannot_leave_its_role_or_touch_the_schema(
    db: Database, owner: asyncpg.Connection, sql: str, refusal: str
) -> None:
    async with db.app_pool.acquire() as conn:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match=refusal):
            await conn.execute(sql)
    await _intact(owner)


async def test_reset_role_returns_to_the_app_role_not_to_the_login_role(db: Database) -> None:
    async with db.app_pool.acquire() as conn:
        await conn.execute("reset role")
        assert await conn.fetchval("select current_user") == "geniehelper_app"
        assert await conn.fetchval("select count(*) from creators") == 0  # RLS: no creator set, nothing seen


async def test_a_role_set_on_a_pooled_connection_does_not_pass_to_its_next_user(database_url: str) -> None:
    database = await Database.open(database_url, min_size=1, max_size=1)
    try:
        async with database.app_pool.acquire() as conn:
            await conn.execute("set role geniehelper_system")  # session-wide, not local to a transaction
        async with database.app_pool.acquire() as conn:  # the same connection (max_size=1)
            assert await conn.fetchval("select current_user") == "geniehelper_app"
    finally:
        await database.close()


@pytest.mark.xfail(strict=True, reason="known gap: one login role may act as both roles, so an app connection can "
                   "SET ROLE geniehelper_system; next: a worker login for the app role plus the record functions, "
                   "a scheduler login for the system role (issue: least privilege)")  # fmt: skip
async def test_an_app_connection_cannot_become_the_system_role(database_url: str) -> None:
    database = await Database.open(database_url, min_size=1, max_size=1)
    try:
        async with database.app_pool.acquire() as conn, conn.transaction():
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("set local role geniehelper_system")
    finally:
        await database.close()


async def test_the_login_role_inherits_nothing_and_cannot_become_the_owner(owner: asyncpg.Connection) -> None:
    login = await owner.fetchrow(
        "select rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolbypassrls from pg_roles"
        " where rolname = 'geniehelper_login'"
    )
    assert login is not None and not any(login.values())
    table_owner = await owner.fetchval("select tableowner from pg_tables where tablename = 'media_jobs'")
    # The suite's schema is owned as in production: not by a superuser (tests/conftest.py).
    assert not await owner.fetchval("select rolsuper or rolbypassrls from pg_roles where rolname = $1", table_owner)
    assert not await owner.fetchval("select pg_has_role('geniehelper_login', $1::name, 'MEMBER')", table_owner)
    memberships = await owner.fetch(
        "select r.rolname, m.inherit_option, m.set_option from pg_auth_members m join pg_roles r on r.oid = m.roleid"
        " where m.member = 'geniehelper_login'::regrole order by r.rolname"
    )
    assert [tuple(m.values()) for m in memberships] == [
        ("geniehelper_app", False, True), ("geniehelper_system", False, True),
    ]  # fmt: skip


async def test_a_process_logging_in_as_the_owner_is_refused_at_start(owner_url: str) -> None:
    with pytest.raises(PrivilegedLogin, match="MIGRATE_DATABASE_URL"):
        await Database.open(owner_url, min_size=1, max_size=2)


class EscapePayload(JobPayload):
    sql: str


async def escape(ctx: JobContext, payload: EscapePayload) -> dict[str, Any]:
    async with ctx.creator_tx() as conn:
        await conn.execute(payload.sql)
    return {"escaped": True}


ESCAPE = JobDefinition("t_escape", EscapePayload, escape, policy=Policy(max_attempts=1))


async def test_a_job_cannot_leave_its_role_either(
    db: Database, arq_redis: ArqRedis, owner: asyncpg.Connection, database_url: str, redis_url: str
) -> None:
    registry = JobRegistry([ESCAPE])
    queue = JobQueue(db, arq_redis, registry, load_tier_limits())
    creator = await make_creator(owner)
    jobs = [await queue.enqueue("t_escape", {"sql": sql}, user_id=creator) for sql, _ in ESCAPES]
    await drain_queue(Settings(database_url=database_url, redis_url=redis_url), registry)
    rows = {r["id"]: r for r in await owner.fetch(
        "select id, status, error from media_jobs where id = any($1)", [j.id for j in jobs]
    )}  # fmt: skip
    for job, (_sql, refusal) in zip(jobs, ESCAPES, strict=True):
        assert rows[job.id]["status"] == "failed" and re.search(refusal, rows[job.id]["error"]), rows[job.id]
    await _intact(owner)


async def test_no_role_can_move_a_row_to_another_creator_or_change_a_tier(
    db: Database, owner: asyncpg.Connection
) -> None:
    creator, other = await make_creator(owner), await make_creator(owner)
    job = await owner.fetchval(
        "insert into media_jobs (user_id, job_name, queue, job_key, payload) values ($1, 'x', 'default', 'k', '{}')"
        " returning id", creator,
    )  # fmt: skip
    async with db.system_tx() as conn:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied for table media_jobs"):
            await conn.execute("update media_jobs set user_id = $1 where id = $2", other, job)
    async with db.system_tx() as conn:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied for table scheduled_posts"):
            await conn.execute("update scheduled_posts set user_id = $1", other)
    async with db.creator_tx(creator) as conn:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied for table creators"):
            await conn.execute("update creators set tier = 'studio' where id = $1", creator)
    async with db.creator_tx(creator) as conn:
        await conn.execute("update creators set display_name = 'Renamed' where id = $1", creator)  # still allowed
    new_id = uuid.uuid4()
    async with db.creator_tx(new_id) as conn:  # registration: its own row, at the default tier only
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied for table creators"):
            await conn.execute("insert into creators (id, email, tier) values ($1, 'x@example.test', 'studio')", new_id)
    async with db.creator_tx(new_id) as conn:
        await conn.execute("insert into creators (id, email) values ($1, 'y@example.test')", new_id)
    async with db.system_tx() as conn:  # the system path for tiers
        await conn.execute("update creators set tier = 'pro' where id = $1", new_id)
    rows = await owner.fetch("select id, tier, display_name from creators where id = any($1)", [creator, new_id])
    assert {r["id"]: (r["tier"], r["display_name"]) for r in rows} == {
        creator: ("starter", "Renamed"), new_id: ("pro", None),
    }  # fmt: skip
    assert await owner.fetchval("select user_id from media_jobs where id = $1", job) == creator


@pytest.mark.parametrize("command", [["worker", "default"], ["scheduler", "all"]])
def test_a_process_given_the_owners_url_stops_at_once_saying_what_to_set(
    project_env: dict[str, str], owner_url: str, redis_url: str, command: list[str]
) -> None:
    env = {**project_env, "DATABASE_URL": owner_url, "REDIS_URL": redis_url, "LOG_FORMAT": "json"}
    done = subprocess.run([str(BIN / "geniehelper"), *command], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "MIGRATE_DATABASE_URL" in done.stderr and "Traceback" not in done.stderr
