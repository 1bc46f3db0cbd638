"""Red team: what a process's database connection cannot do, from app code and from inside a job.

Schedulers log in as geniehelper_login (acts as the app, runtime and system roles), workers as
geniehelper_worker_login (app and runtime only); neither holds anything itself, and the schema
owner's URL is for `geniehelper migrate` only. Every attempt below is
refused by PostgreSQL, and the owner finds nothing changed afterwards.
"""

from __future__ import annotations

import re
import subprocess
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from arq.connections import ArqRedis

from geniehelper.db import Database, LoginLacksRole, PrivilegedLogin
from geniehelper.domain import publishing
from geniehelper.runtime.context import JobContext
from geniehelper.runtime.definition import JobDefinition, JobPayload, Policy
from geniehelper.runtime.queue import JobQueue
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


async def test_a_job_transaction_resets_its_session_with_its_commit_or_rollback(
    database_url: str, owner: asyncpg.Connection
) -> None:
    creator = await make_creator(owner)
    insert = "insert into media_jobs (user_id, job_name, queue, job_key, payload) values ($1, 'x', 'default', $2, '{}')"
    database = await Database.open(database_url, min_size=1, max_size=1)
    try:
        async with database.app_tx() as conn:  # what a fenced job transaction runs (JobContext.creator_tx)
            await conn.execute("select set_config('app.user_id', $1, false)", str(creator))  # session-wide
            await conn.execute(insert, creator, "committed")
            await conn.execute("set role geniehelper_system")
        async with database.app_pool.acquire() as conn:  # the same connection (max_size=1)
            assert await conn.fetchval("select current_user") == "geniehelper_app"
            assert await conn.fetchval("select current_setting('app.user_id', true)") in (None, "")
        with pytest.raises(RuntimeError, match="job failed"):
            async with database.app_tx() as conn:
                await conn.execute("select set_config('app.user_id', $1, false)", str(creator))
                await conn.execute(insert, creator, "rolled back")
                await conn.execute("set role geniehelper_system")
                raise RuntimeError("job failed")
        async with database.app_pool.acquire() as conn:
            assert await conn.fetchval("select current_user") == "geniehelper_app"
            assert await conn.fetchval("select current_setting('app.user_id', true)") in (None, "")
            assert not await conn.fetchval("select pg_catalog.pg_current_xact_id_if_assigned() is not null")
    finally:
        await database.close()
    keys = await owner.fetch("select job_key from media_jobs where user_id = $1", creator)
    assert [row["job_key"] for row in keys] == ["committed"]


async def test_a_self_fencing_statement_leaves_no_creator_on_its_connection(
    database_url: str, owner: asyncpg.Connection
) -> None:
    creator = await make_creator(owner)
    database = await Database.open(database_url, min_size=1, max_size=1)
    try:
        async with database.app_statement() as conn:  # what JobContext.fenced_fetchrow runs (migration 0037)
            post, attempt = await publishing.start_unfenced(conn, creator, uuid.uuid4(), 1, 60.0)
            assert (post, attempt) == (None, None)  # no such post: nothing started
        async with database.app_pool.acquire() as conn:  # the same connection (max_size=1), not reset
            assert await conn.fetchval("select current_setting('app.user_id', true)") in (None, "")
            assert await conn.fetchval("select count(*) from creators") == 0  # RLS: no creator set
        with pytest.raises(RuntimeError, match="step failed"):
            async with database.app_statement() as conn:  # a failure: the release resets the session
                await conn.execute("set role geniehelper_system")
                raise RuntimeError("step failed")
        async with database.app_pool.acquire() as conn:
            assert await conn.fetchval("select current_user") == "geniehelper_app"
    finally:
        await database.close()


async def test_a_worker_connection_cannot_become_the_system_role_or_read_across_creators(
    worker_database_url: str, owner: asyncpg.Connection
) -> None:
    creator = await make_creator(owner)
    await owner.execute(
        "insert into media_jobs (user_id, job_name, queue, job_key, payload) values ($1, 'x', 'default', 'k', '{}')",
        creator,
    )
    database = await Database.open(worker_database_url, min_size=1, max_size=1, system=False)
    try:
        assert database.system_pool is None
        async with database.app_pool.acquire() as conn:
            refusal = 'permission denied to set role "geniehelper_system"'
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match=refusal):
                await conn.execute("set role geniehelper_system")
            # The runtime role, which the worker login may act as, calls the record functions and reads nothing.
            await conn.execute("set role geniehelper_runtime")
            for sql in ("select count(*) from media_jobs", "update media_jobs set status = 'failed'",
                        "select count(*) from creators", "select count(*) from platform_connections"):  # fmt: skip
                with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied for table"):
                    await conn.execute(sql)
            held = "select runtime_attempts_hold(array[gen_random_uuid()], array[$1::uuid], '{1}')"
            assert await conn.fetch(held, creator) == []
    finally:
        await database.close()
    assert await owner.fetchval("select status from media_jobs where user_id = $1", creator) == "queued"


async def test_the_login_roles_inherit_nothing_and_cannot_become_the_owner(owner: asyncpg.Connection) -> None:
    table_owner = await owner.fetchval("select tableowner from pg_tables where tablename = 'media_jobs'")
    # The suite's schema is owned as in production: not by a superuser (tests/conftest.py).
    assert not await owner.fetchval("select rolsuper or rolbypassrls from pg_roles where rolname = $1", table_owner)
    expected = {
        "geniehelper_login": ["geniehelper_app", "geniehelper_runtime", "geniehelper_system"],
        "geniehelper_worker_login": ["geniehelper_app", "geniehelper_runtime"],
    }
    for name, roles in expected.items():
        login = await owner.fetchrow(
            "select rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolbypassrls from pg_roles where rolname = $1",
            name,
        )
        assert login is not None and not any(login.values()), name
        assert not await owner.fetchval("select pg_has_role($1::name, $2::name, 'MEMBER')", name, table_owner)
        memberships = await owner.fetch(
            "select r.rolname, m.inherit_option, m.set_option"
            "  from pg_auth_members m join pg_roles r on r.oid = m.roleid"
            " where m.member = $1::regrole order by r.rolname", name,
        )  # fmt: skip
        assert [tuple(m.values()) for m in memberships] == [(role, False, True) for role in roles], name


async def test_a_worker_whose_queue_runs_system_jobs_needs_a_login_with_the_system_role(
    worker_database_url: str,
) -> None:
    with pytest.raises(LoginLacksRole, match="cannot act as geniehelper_system"):
        await Database.open(worker_database_url, min_size=1, max_size=2, system=True)


async def test_the_app_cannot_write_quota_counters_or_mark_a_record_charged(
    db: Database, owner: asyncpg.Connection
) -> None:
    creator, other = await make_creator(owner), await make_creator(owner)
    job = await owner.fetchval(
        "insert into media_jobs (user_id, job_name, queue, job_key, payload) values ($1, 'x', 'default', 'k', '{}')"
        " returning id", creator,
    )  # fmt: skip
    attempts = [
        ("insert into user_usage_counts (user_id, operation, period_start, used) values ($1, 'x', current_date, 0)",
         "permission denied for table user_usage_counts"),
        ("update user_usage_counts set used = 0 where user_id = $1", "permission denied for table user_usage_counts"),
        ("delete from user_usage_counts where user_id = $1", "permission denied for table user_usage_counts"),
        ("update media_jobs set quota_charged = 'scheduled_post' where user_id = $1",
         "permission denied for table media_jobs"),
        ("select charge_quota($1, 'scheduled_post', '{}')", "not for creator"),  # set per row below
    ]  # fmt: skip
    for sql, refusal in attempts:
        async with db.creator_tx(creator) as conn:
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match=refusal):
                await conn.execute(sql, other if "charge_quota" in sql else creator)
    assert await owner.fetchval("select count(*) from user_usage_counts where user_id = any($1)", [creator, other]) == 0
    assert await owner.fetchval("select quota_charged from media_jobs where id = $1", job) is None


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


# What a job in a worker (geniehelper_worker_login) cannot do beyond that: reach the system role, or
# read through the runtime role.
JOB_ESCAPES = [
    *ESCAPES,
    ("set role geniehelper_system", 'permission denied to set role "geniehelper_system"'),
    ("set local role geniehelper_runtime; select count(*) from media_jobs", "permission denied for table media_jobs"),
    ("update creators set tier = 'studio'", "permission denied for table creators"),
    ("update user_usage_counts set used = 0", "permission denied for table user_usage_counts"),
    ("update platform_stats_snapshots set follower_count = 0", "permission denied for table platform_stats_snapshots"),
    ("delete from fan_subscription_events", "permission denied for table fan_subscription_events"),
    ("truncate subscription_events", "permission denied for table subscription_events"),
]


async def test_a_job_cannot_leave_its_role_either(
    db: Database, arq_redis: ArqRedis, owner: asyncpg.Connection, database_url: str, worker_database_url: str,
    redis_url: str,
) -> None:
    registry = JobRegistry([ESCAPE])
    queue = JobQueue(db, arq_redis, registry)
    creator = await make_creator(owner)
    jobs = [await queue.enqueue("t_escape", {"sql": sql}, user_id=creator) for sql, _ in JOB_ESCAPES]
    settings = Settings(database_url=database_url, worker_database_url=worker_database_url, redis_url=redis_url)
    await drain_queue(settings, registry)
    rows = {r["id"]: r for r in await owner.fetch(
        "select id, status, error from media_jobs where id = any($1)", [j.id for j in jobs]
    )}  # fmt: skip
    for job, (_sql, refusal) in zip(jobs, JOB_ESCAPES, strict=True):
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


async def test_another_creators_credentials_are_not_visible(db: Database, owner: asyncpg.Connection) -> None:
    creator, other = await make_creator(owner), await make_creator(owner)
    await owner.execute(
        "insert into platform_connections (user_id, platform, external_account_id, auth_token_enc)"
        " values ($1, 'sandbox', 'acct', 'v1.k1.secret')", other,
    )  # fmt: skip
    async with db.creator_tx(creator) as conn:
        assert await conn.fetch("select auth_token_enc from platform_connections where user_id = $1", other) == []
        wiped = await conn.execute("update platform_connections set auth_token_enc = null where user_id = $1", other)
        assert wiped == "UPDATE 0"
    assert await owner.fetchval("select auth_token_enc from platform_connections where user_id = $1", other) == (
        "v1.k1.secret"
    )


def test_only_the_runtime_sets_the_current_creator() -> None:
    """`app.user_id` decides what the app role sees: only db.py (and the migrations' functions) set it."""
    root = Path(__file__).resolve().parent.parent
    allowed = {root / "src" / "geniehelper" / "db.py"}
    setters = [
        path.relative_to(root)
        for top in ("src", "jobs", "schedulers", "workers") for path in (root / top).rglob("*.py")
        if "app.user_id" in path.read_text(encoding="utf-8") and path not in allowed
    ]  # fmt: skip
    assert setters == []


def test_job_modules_reach_the_database_only_through_their_context() -> None:
    """A job gets its own creator's transaction from its context; the worker's pools stay with the runtime."""
    root = Path(__file__).resolve().parent.parent
    words = ("_runtime", "geniehelper.db", "_pool", "set_config")
    reaching = [p.name for p in (root / "jobs").glob("*.py") if any(w in p.read_text(encoding="utf-8") for w in words)]
    assert reaching == []
