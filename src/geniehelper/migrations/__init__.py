"""Versioned SQL migrations: `NNNN_name.sql` files in this package, applied in order.

Each file runs once, in its own transaction, recorded in `schema_migrations` with its checksum.
A file edited after it was applied is refused (write a new migration instead). The whole run holds
a PostgreSQL advisory lock, so processes starting at once apply each migration exactly once.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

from geniehelper.runtime.quotas import load_tier_limits, sync_tier_quotas

# Any fixed 64-bit number; the name documents whose lock it is.
MIGRATION_LOCK_ID = int.from_bytes(hashlib.sha256(b"geniehelper.migrations").digest()[:8], "big", signed=True)
FILE_PATTERN = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations() -> list[Migration]:
    found = []
    for entry in resources.files(__package__).iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = FILE_PATTERN.match(entry.name)
        if not match:
            raise MigrationError(f"migration file name {entry.name!r} must look like 0001_some_name.sql")
        found.append(Migration(match.group(1), entry.name, entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a version number: {versions}")
    return found


MIN_SERVER_VERSION_NUM = 160000

# Processes log in as roles that hold nothing themselves and may only SET ROLE (inherit nothing: after
# RESET ROLE they can read and change nothing). They are created by the embedded stack, or by the DBA
# in production (README, "Production roles"); every migrate grants each what it may act as:
# geniehelper_login (schedulers, the CLI, services) the three roles, geniehelper_worker_login
# (WORKER_DATABASE_URL: workers) the app and runtime roles only, never the system role.
LOGIN_ROLES = {
    "geniehelper_login": ("geniehelper_app", "geniehelper_system", "geniehelper_runtime"),
    "geniehelper_worker_login": ("geniehelper_app", "geniehelper_runtime"),
}
HOLDS_ROLE = "select exists (select from pg_auth_members where roleid = $1::regrole and member = $2::regrole)"


async def grant_login_roles(conn: asyncpg.Connection) -> None:
    for login, roles in LOGIN_ROLES.items():
        if not await conn.fetchval("select exists (select from pg_roles where rolname = $1)", login):
            continue
        for role in roles:
            if not await conn.fetchval(HOLDS_ROLE, role, login):  # names from LOGIN_ROLES, never from input
                await conn.execute(f'grant "{role}" to "{login}" with inherit false, set true')


NOLOGIN_ROLES = ("geniehelper_app", "geniehelper_system", "geniehelper_runtime")

# What the migrating role needs on the cluster-wide roles: to create those missing (CREATEROLE) and
# ADMIN on those that exist already (to let itself and the logins act as them).
ROLE_PRIVILEGES = """
select me.rolsuper as superuser, me.rolcreaterole as createrole,
       array(select r.rolname::text from pg_roles r where r.rolname = any($1)
              and not exists (select from pg_auth_members m
                               where m.roleid = r.oid and m.member = me.oid and m.admin_option)) as without_admin,
       array(select n from unnest($1::text[]) n where not exists (select from pg_roles r where r.rolname = n))
           as missing
  from pg_roles me where me.rolname = current_user
"""


async def check_role_privileges(conn: asyncpg.Connection) -> None:
    """Refuse, naming every GRANT needed at once, when the migrating role cannot set up the roles."""
    row = await conn.fetchrow(ROLE_PRIVILEGES, list(NOLOGIN_ROLES))
    assert row is not None
    if row["superuser"]:
        return
    me = await conn.fetchval("select current_user")
    problems = []
    if row["without_admin"]:
        grant = "GRANT {} TO {} WITH ADMIN OPTION, INHERIT FALSE, SET TRUE;"
        grants = " ".join(grant.format(role, me) for role in row["without_admin"])
        problems.append(f"roles exist already that {me} has no ADMIN on; as a superuser run: {grants}")
    if row["missing"] and not row["createrole"]:
        problems.append(f"{me} cannot create the roles {', '.join(row['missing'])}: ALTER ROLE {me} CREATEROLE;")
    if problems:
        raise MigrationError(f"{me} cannot set up the database roles: " + " ".join(problems))


def require_server_version(version_num: int, shown: str) -> None:
    if version_num < MIN_SERVER_VERSION_NUM:
        raise MigrationError(
            f"PostgreSQL 16 or newer is required (this server is {shown}): the roles' SET-only membership "
            "(GRANT ... WITH SET TRUE, INHERIT FALSE) that keeps processes from the owner's rights is 16's"
        )


async def apply_migrations(conn: asyncpg.Connection) -> list[str]:
    """Apply what is missing; return the names applied (empty when up to date)."""
    require_server_version(
        int(await conn.fetchval("select current_setting('server_version_num')")),
        await conn.fetchval("select current_setting('server_version')"),
    )
    await check_role_privileges(conn)
    migrations = load_migrations()
    await conn.execute("select pg_advisory_lock($1)", MIGRATION_LOCK_ID)
    try:
        await conn.execute(
            """
            create table if not exists schema_migrations (
                version text primary key,
                name text not null,
                checksum text not null,
                applied_at timestamptz not null default now()
            )
            """
        )
        applied = {r["version"]: r for r in await conn.fetch("select version, name, checksum from schema_migrations")}
        unknown = sorted(set(applied) - {m.version for m in migrations})
        if unknown:
            raise MigrationError(f"the database has migrations this code does not know: {unknown} (older code?)")
        done: list[str] = []
        for migration in migrations:
            previous = applied.get(migration.version)
            if previous is not None:
                if previous["checksum"] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.name} was edited after it was applied "
                        f"(checksum differs from the one recorded); add a new migration instead"
                    )
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "insert into schema_migrations (version, name, checksum) values ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            done.append(migration.name)
        await grant_login_roles(conn)
        await sync_tier_quotas(conn, load_tier_limits())
        return done
    finally:
        await conn.execute("select pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
