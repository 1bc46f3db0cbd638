"""Test servers: one real PostgreSQL and one real Redis-compatible server for the whole run.

With TEST_DATABASE_URL / TEST_REDIS_URL (and TEST_MIGRATE_DATABASE_URL, the owner's, and
TEST_WORKER_DATABASE_URL, the worker login's) set, those
servers are used (DATABASE_URL and REDIS_URL are never taken for the tests); otherwise an embedded stack is started
under .data/test (no fsync: throw-away data) and stopped at the end. The schema is migrated once
into a template database; each test module gets its own database cloned from it, and each test a
flushed Redis database.
"""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from arq.connections import ArqRedis

from geniehelper.db import Database, connect_owner
from geniehelper.embedded import EmbeddedStack, StackUrls
from geniehelper.migrations import apply_migrations
from geniehelper.runtime.queue import JobQueue
from geniehelper.runtime.transport import create_arq_redis

if TYPE_CHECKING:
    from tests.media_harness import Media

ROOT = Path(__file__).resolve().parent.parent
RUN_ID = f"{os.getpid()}"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    from tests.helpers import ARTIFACTS

    for path in ARTIFACTS:
        terminalreporter.write_line(f"written for review: {path}")


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


@pytest.fixture(scope="session")
def stack() -> Iterator[StackUrls]:
    # Servers of your own only when named for tests: the suite creates databases and flushes Redis.
    given_db, given_redis = os.environ.get("TEST_DATABASE_URL"), os.environ.get("TEST_REDIS_URL")
    if given_db and given_redis:  # the owner's URL too: TEST_MIGRATE_DATABASE_URL
        yield StackUrls(
            given_db, given_redis, os.environ.get("TEST_MIGRATE_DATABASE_URL"),
            os.environ.get("TEST_WORKER_DATABASE_URL"),
        )  # fmt: skip
        return
    # TEST_DATA_DIR: a second test run at the same time needs servers of its own (tests flush Redis).
    embedded = EmbeddedStack(Path(os.environ.get("TEST_DATA_DIR", ROOT / ".data" / "test")), durable=False)
    urls = embedded.start()
    try:
        yield urls
    finally:
        embedded.stop()


async def _admin(stack: StackUrls) -> asyncpg.Connection:
    return await asyncpg.connect(with_database(stack.owner_url, "postgres"))


# The schema is owned as in production: by a role that is not a superuser (its URL carries a password
# of this run's, for servers that ask for one). Inspecting fixtures use the superuser.
SCHEMA_OWNER = "gh_test_schema_owner"


async def _schema_owner_url(admin: asyncpg.Connection, stack: StackUrls) -> str:
    if not await admin.fetchval("select rolsuper from pg_roles where rolname = current_user"):
        return stack.owner_url  # given servers: the owner you named
    await admin.execute(f"""
        do $$ begin
            if not exists (select from pg_roles where rolname = '{SCHEMA_OWNER}') then
                create role {SCHEMA_OWNER} login createrole nosuperuser nobypassrls;
            end if;
        end $$
    """)
    # Roles are cluster-wide: ones an earlier run's superuser created need handing to this owner.
    for role in ("geniehelper_app", "geniehelper_system", "geniehelper_runtime"):
        if await admin.fetchval("select 1 from pg_roles where rolname = $1", role):
            await admin.execute(f"grant {role} to {SCHEMA_OWNER} with admin option, inherit false, set true")
    # A password of this run's (hex: safe in SQL), for servers that ask for one.
    password = secrets.token_hex(16)
    await admin.execute(f"alter role {SCHEMA_OWNER} password '{password}'")
    parts = urlsplit(stack.owner_url)
    netloc = f"{SCHEMA_OWNER}:{password}@{parts.hostname}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@pytest.fixture(scope="session")
async def template_database(stack: StackUrls) -> AsyncIterator[str]:
    name = f"gh_template_{RUN_ID}"
    admin = await _admin(stack)
    try:
        await admin.execute(f'drop database if exists "{name}"')
        owner_url = await _schema_owner_url(admin, stack)
        owner_role = urlsplit(owner_url).username
        await admin.execute(f'create database "{name}" owner "{owner_role}"')
        conn = await connect_owner(with_database(owner_url, name))
        try:
            await apply_migrations(conn)
        finally:
            await conn.close()
        yield name
    finally:
        await admin.execute(f'drop database if exists "{name}" with (force)')
        await admin.close()


async def create_database_from_template(stack: StackUrls, template: str) -> str:
    name = f"gh_{RUN_ID}_{uuid.uuid4().hex[:10]}"
    admin = await _admin(stack)
    try:
        await admin.execute(f'create database "{name}" template "{template}"')
    finally:
        await admin.close()
    return name


async def drop_database(stack: StackUrls, name: str) -> None:
    admin = await _admin(stack)
    try:
        await admin.execute(f'drop database if exists "{name}" with (force)')
    finally:
        await admin.close()


@pytest.fixture(scope="module")
async def module_database(stack: StackUrls, template_database: str) -> AsyncIterator[str]:
    """A migrated database of this test module's own (its name)."""
    name = await create_database_from_template(stack, template_database)
    yield name
    await drop_database(stack, name)


@pytest.fixture(scope="module")
def database_url(stack: StackUrls, module_database: str) -> str:
    """The module's database as processes reach it: the login role (geniehelper_login)."""
    return with_database(stack.database_url, module_database)


@pytest.fixture(scope="module")
def worker_database_url(stack: StackUrls, module_database: str) -> str:
    """The module's database as workers reach it (geniehelper_worker_login: no system role)."""
    return with_database(stack.worker_url, module_database)


@pytest.fixture(scope="module")
def owner_url(stack: StackUrls, module_database: str) -> str:
    """The module's database as the schema owner: for arranging and inspecting only."""
    return with_database(stack.owner_url, module_database)


@pytest.fixture(scope="module")
async def db(database_url: str) -> AsyncIterator[Database]:
    database = await Database.open(database_url, min_size=1, max_size=10)
    yield database
    await database.close()


@pytest.fixture
async def owner(owner_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection as the schema owner: for arranging and inspecting, never for app code paths."""
    conn = await connect_owner(owner_url)
    yield conn
    await conn.close()


@pytest.fixture
async def redis_url(stack: StackUrls) -> AsyncIterator[str]:
    redis = await create_arq_redis(stack.redis_url)
    await redis.flushdb()
    await redis.aclose()
    yield stack.redis_url


@pytest.fixture
async def arq_redis(redis_url: str) -> AsyncIterator[ArqRedis]:
    redis = await create_arq_redis(redis_url)
    yield redis
    await redis.aclose()


async def make_creator(owner: asyncpg.Connection, *, tier: str = "starter") -> uuid.UUID:
    creator_id: uuid.UUID = await owner.fetchval(
        "insert into creators (email, tier) values ($1, $2) returning id", f"{uuid.uuid4().hex}@example.test", tier
    )
    return creator_id


@pytest.fixture
def media_dirs(tmp_path: Path) -> Media:
    from tests.media_harness import make_media  # imported here: only media tests load the media jobs

    return make_media(tmp_path)


@pytest.fixture
def media_queue(db: Database, arq_redis: ArqRedis) -> JobQueue:
    """A JobQueue that knows every media job (tests/media_harness.JOBS)."""
    from tests.media_harness import JOBS

    return JobQueue(db, arq_redis, JOBS)


@pytest.fixture
def project_env(stack: StackUrls) -> dict[str, Any]:
    """The environment a subprocess of ours needs to reach the test servers. Tests point DATABASE_URL at
    their module's database; without WORKER_DATABASE_URL, workers use it too (the broader login)."""
    env = dict(os.environ)
    env.update(stack.as_env())
    env.pop("WORKER_DATABASE_URL", None)
    return env
