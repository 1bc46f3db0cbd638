"""The data model as PostgreSQL enforces it: tenant isolation on every creator table (found in the
catalog, so a table added later is checked too), append-only ledgers, no creator leaking across
pooled connections, migrations applied once, and the scheduler queries on their indexes.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from geniehelper.db import APP_ROLE, Database, connect_owner
from geniehelper.domain import publishing
from geniehelper.embedded import StackUrls
from geniehelper.migrations import MigrationError, apply_migrations, load_migrations
from geniehelper.settings import Settings
from tests.conftest import drop_database, make_creator, with_database

LEDGERS = (
    "subscription_events",
    "fan_subscription_events",
    "automation_rule_runs",
    "automation_rule_actions",
    "post_performance_snapshots",
    "platform_stats_snapshots",
    "domain_events",
)
# Operations logs (no creator data; the system role's only): append-only too.
OPS_LOGS = ("ops_alert_deliveries", "ops_actions")


def ident(name: str) -> str:
    """A catalog name quoted as an SQL identifier (test-only dynamic SQL over catalog names)."""
    return '"' + name.replace('"', '""') + '"'


# --- a row factory driven by pg_catalog -------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    name: str
    type_name: str
    category: str  # pg_type.typcategory
    not_null: bool
    has_default: bool
    generated: bool

    @property
    def required(self) -> bool:
        return self.not_null and not self.has_default and not self.generated


@dataclass(frozen=True)
class ForeignKey:
    columns: tuple[str, ...]
    ref_table: str
    ref_columns: tuple[str, ...]


@dataclass
class Table:
    name: str
    oid: int
    rls: bool
    force_rls: bool
    columns: dict[str, Column] = field(default_factory=dict)
    primary_key: tuple[str, ...] = ()
    foreign_keys: list[ForeignKey] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)

    def enumerated(self, column: str) -> list[str] | None:
        """Allowed values from a `check (column in (...))` constraint, in declaration order."""
        for check in self.checks:
            if m := re.search(rf"\(\(?{column} = ANY \(ARRAY\[(.*?)\]\)\)", check):
                return re.findall(r"'((?:[^']|'')*)'::", m.group(1))
        return None

    def ordered_pairs(self) -> list[tuple[str, str]]:
        """Column pairs of `check (a < b)` constraints (an unordered pair stored once)."""
        return [
            (m.group(1), m.group(2))
            for check in self.checks
            if (m := re.fullmatch(r"CHECK \(\((\w+) < (\w+)\)\)", check))
        ]

    def exactly_one_groups(self) -> list[list[str]]:
        """Column groups of `check (num_nonnulls(a, b, c) = 1)` constraints."""
        return [
            [c.strip() for c in m.group(1).split(",")]
            for check in self.checks
            if (m := re.search(r"num_nonnulls\(([^)]*)\) = 1", check))
        ]


TABLES_SQL = """
select c.oid, c.relname, c.relrowsecurity, c.relforcerowsecurity
  from pg_class c join pg_namespace n on n.oid = c.relnamespace
 where n.nspname = 'public' and c.relkind in ('r', 'p')
"""

COLUMNS_SQL = """
select a.attrelid, a.attname, format_type(a.atttypid, a.atttypmod) as type_name, t.typcategory::text as typcategory,
       a.attnotnull, a.atthasdef, a.attgenerated::text <> '' or a.attidentity = 'a' as generated
  from pg_attribute a join pg_type t on t.oid = a.atttypid
 where a.attrelid = any($1::oid[]) and a.attnum > 0 and not a.attisdropped
 order by a.attrelid, a.attnum
"""

CONSTRAINTS_SQL = """
select con.conrelid, con.contype::text as contype, con.confrelid::regclass::text as ref_table,
       pg_get_constraintdef(con.oid) as def,
       array(select a.attname from unnest(con.conkey) with ordinality k(num, i)
               join pg_attribute a on a.attrelid = con.conrelid and a.attnum = k.num order by k.i) as cols,
       array(select a.attname from unnest(con.confkey) with ordinality k(num, i)
               join pg_attribute a on a.attrelid = con.confrelid and a.attnum = k.num order by k.i) as ref_cols
  from pg_constraint con
 where con.conrelid = any($1::oid[]) and con.contype in ('p', 'f', 'c')
 order by con.conname
"""


async def load_catalog(conn: asyncpg.Connection) -> dict[str, Table]:
    tables = {r["relname"]: Table(r["relname"], r["oid"], r["relrowsecurity"], r["relforcerowsecurity"])
              for r in await conn.fetch(TABLES_SQL)}  # fmt: skip
    by_oid = {t.oid: t for t in tables.values()}
    oids = list(by_oid)
    for r in await conn.fetch(COLUMNS_SQL, oids):
        by_oid[r["attrelid"]].columns[r["attname"]] = Column(
            r["attname"], r["type_name"], r["typcategory"], r["attnotnull"], r["atthasdef"], r["generated"]
        )
    for r in await conn.fetch(CONSTRAINTS_SQL, oids):
        table = by_oid[r["conrelid"]]
        if r["contype"] == "p":
            table.primary_key = tuple(r["cols"])
        elif r["contype"] == "f":
            table.foreign_keys.append(ForeignKey(tuple(r["cols"]), r["ref_table"], tuple(r["ref_cols"])))
        else:
            table.checks.append(r["def"])
    return tables


# Per-table values a generic generator cannot guess (multi-column CHECKs over generated values).
OVERRIDES: dict[str, Callable[[], dict[str, Any]]] = {
    "campaigns": lambda: {"starts_at": datetime.now(UTC), "ends_at": datetime.now(UTC) + timedelta(days=7)},
}


class RowFactory:
    """Inserts a valid row into any creator table as the owner, creating the rows it references."""

    def __init__(self, owner: asyncpg.Connection, tables: dict[str, Table]) -> None:
        self.owner = owner
        self.tables = tables
        self.counter = 0

    def value_for(self, table: Table, column: Column) -> Any:
        self.counter += 1
        allowed = table.enumerated(column.name)
        if allowed:
            return allowed[0]
        if column.category == "A":
            return []
        type_name = column.type_name
        if type_name == "uuid":
            return uuid.uuid4()
        if type_name in ("text", "character varying") or type_name.startswith("character varying("):
            return f"{column.name}-{self.counter}"
        if type_name in ("smallint", "integer", "bigint"):
            return 1
        if type_name.startswith("numeric"):
            return Decimal(1)
        if type_name in ("double precision", "real"):
            return 1.0
        if type_name == "boolean":
            return True
        if type_name == "timestamp with time zone":
            return datetime.now(UTC)
        if type_name == "date":
            return date.today()
        if type_name in ("jsonb", "json"):
            return {}
        raise AssertionError(f"row factory: no value generator for {table.name}.{column.name} ({type_name})")

    async def make(self, table_name: str, user_id: uuid.UUID, depth: int = 0) -> dict[str, Any]:
        assert depth < 10, f"row factory: reference cycle through {table_name}"
        table = self.tables[table_name]
        values: dict[str, Any] = {"user_id": user_id}
        values.update(OVERRIDES.get(table_name, dict)())
        must_fill = {name for name, column in table.columns.items() if column.required}
        for group in table.exactly_one_groups():  # "exactly one of": fill the first
            if not any(values.get(c) is not None for c in group):
                must_fill.add(group[0])
        for fk in table.foreign_keys:
            own = [c for c in fk.columns if c != "user_id"]
            if fk.ref_table == "creators" or not own or all(c in values for c in own):
                continue
            if any(c in must_fill for c in own):
                parent = await self.make(fk.ref_table, user_id, depth + 1)
                for column, ref_column in zip(fk.columns, fk.ref_columns, strict=True):
                    values[column] = parent[ref_column]
        for name in sorted(must_fill - set(values)):
            values[name] = self.value_for(table, table.columns[name])
        for low, high in table.ordered_pairs():  # both reference the same table: swapping keeps them valid
            if values.get(low) is not None and values.get(high) is not None and values[low] > values[high]:
                values[low], values[high] = values[high], values[low]
        names = list(values)
        sql = (f"insert into {ident(table_name)} ({', '.join(map(ident, names))}) "
               f"values ({', '.join(f'${i}' for i in range(1, len(names) + 1))}) returning *")  # fmt: skip
        row = await self.owner.fetchrow(sql, *values.values())
        assert row is not None
        return dict(row)


def key_where(table: Table, first_param: int = 1) -> str:
    return " and ".join(f"{ident(c)} = ${i}" for i, c in enumerate(table.primary_key, start=first_param))


def key_of(table: Table, row: dict[str, Any]) -> list[Any]:
    return [row[c] for c in table.primary_key]


# --- isolation ------------------------------------------------------------------------------------

POLICIES_FOR_APP = """
select count(*) from pg_policy
 where polrelid = $1 and ((select oid from pg_roles where rolname = $2) = any(polroles) or 0 = any(polroles))
"""


async def check_isolation(db: Database, owner: asyncpg.Connection, factory: RowFactory, table: Table) -> None:
    assert table.rls, "row level security is not enabled"
    assert table.force_rls, "row level security is not forced"
    assert await owner.fetchval(POLICIES_FOR_APP, table.oid, APP_ROLE) >= 1, f"no policy for {APP_ROLE}"
    assert table.primary_key, "no primary key"
    # On any column: some tables grant INSERT/UPDATE column by column (e.g. media_jobs.quota_charged is not the app's).
    privileges = {
        p: await owner.fetchval("select has_any_column_privilege($1, $2::oid, $3)", APP_ROLE, table.oid, p)
        if p in ("INSERT", "UPDATE") else
        await owner.fetchval("select has_table_privilege($1, $2::oid, $3)", APP_ROLE, table.oid, p)
        for p in ("SELECT", "INSERT", "UPDATE", "DELETE")
    }  # fmt: skip
    assert privileges["SELECT"], f"{APP_ROLE} cannot read it"
    creator_a, creator_b = await make_creator(owner), await make_creator(owner)
    row_a = await factory.make(table.name, creator_a)
    row_b = await factory.make(table.name, creator_b)
    t, where, n = ident(table.name), key_where(table), len(table.primary_key)

    async with db.creator_tx(creator_a) as conn:
        count = f"select count(*) from {t} where {where}"
        assert await conn.fetchval(count, *key_of(table, row_a)) == 1, "A cannot see its own row"
        assert await conn.fetchval(count, *key_of(table, row_b)) == 0, "A sees B's row"
        assert await conn.fetchval(f"select count(*) from {t} where user_id = $1", creator_b) == 0, "A sees B's rows"
        assert await conn.fetchval(f"select count(*) from {t}") == 1, "A sees rows of other creators"

        # Writing a row for B: refused by the policy's WITH CHECK (or by the grants).
        stolen = {
            k: v for k, v in row_b.items()
            if not table.columns[k].generated
            and (not privileges["INSERT"] or await owner.fetchval(
                "select has_column_privilege($1, $2::oid, $3, 'INSERT')", APP_ROLE, table.oid, k
            ))
        }  # fmt: skip
        if table.primary_key == ("id",) and not table.columns["id"].generated:  # identity ids make their own
            stolen["id"] = uuid.uuid4()
        names = list(stolen)
        insert = (f"insert into {t} ({', '.join(map(ident, names))}) "
                  f"values ({', '.join(f'${i}' for i in range(1, len(names) + 1))})")  # fmt: skip
        expected = "new row violates row-level security policy" if privileges["INSERT"] else "permission denied"
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match=expected):
            async with conn.transaction():
                await conn.execute(insert, *stolen.values())

        if privileges["UPDATE"]:
            update = f"update {t} set user_id = ${n + 1} where {where}"
            assert await conn.execute(update, *key_of(table, row_b), creator_a) == "UPDATE 0", "A updated B's row"
            # Nor can A hand its own row over to B.
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="new row violates row-level security"):
                async with conn.transaction():
                    await conn.execute(update, *key_of(table, row_a), creator_b)
        else:
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
                async with conn.transaction():
                    await conn.execute(f"update {t} set user_id = user_id where {where}", *key_of(table, row_b))
        if privileges["DELETE"]:
            deleted = await conn.execute(f"delete from {t} where {where}", *key_of(table, row_b))
            assert deleted == "DELETE 0", "A deleted B's row"

    still_b = f"select count(*) from {t} where {where} and user_id = ${n + 1}"
    assert await owner.fetchval(still_b, *key_of(table, row_b), creator_b) == 1, "B's row was changed"


async def test_every_creator_table_isolates_creators(db: Database, owner: asyncpg.Connection) -> None:
    tables = await load_catalog(owner)
    creator_tables = sorted(n for n, t in tables.items() if "user_id" in t.columns and n != "schema_migrations")
    assert len(creator_tables) >= 45, creator_tables
    factory = RowFactory(owner, tables)
    failures = []
    for name in creator_tables:
        try:
            await check_isolation(db, owner, factory, tables[name])
        except (AssertionError, asyncpg.PostgresError) as exc:
            failures.append(f"{name}: {type(exc).__name__}: {exc}".splitlines()[0])
    assert not failures, "tables not isolated per creator:\n" + "\n".join(failures)


async def test_a_creator_sees_only_its_own_creators_row(db: Database, owner: asyncpg.Connection) -> None:
    creator_a, creator_b = await make_creator(owner), await make_creator(owner)
    async with db.creator_tx(creator_a) as conn:
        assert await conn.fetchval("select count(*) from creators where id = $1", creator_b) == 0
        assert [r["id"] for r in await conn.fetch("select id from creators")] == [creator_a]
        assert await conn.execute("update creators set display_name = 'x' where id = $1", creator_b) == "UPDATE 0"
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
            async with conn.transaction():
                await conn.execute("insert into creators (email) values ('someone-else@example.test')")
    async with db.system_tx() as conn:  # the system role reads every creator and writes only tiers
        assert await conn.fetchval("select count(*) from creators where id = any($1)", [creator_a, creator_b]) == 2
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("update creators set email = 'taken@example.test' where id = $1", creator_a)


# --- append-only ledgers ----------------------------------------------------------------------------


async def test_exactly_the_ledgers_and_ops_logs_carry_the_append_only_triggers(owner: asyncpg.Connection) -> None:
    # tgtype bits: 1 row-level, 2 BEFORE, 8 DELETE, 16 UPDATE, 32 TRUNCATE
    rows = await owner.fetch(
        """
        select tgrelid::regclass::text as table_name,
               bool_or(tgtype & 3 = 3 and tgtype & 24 = 24) as row_update_delete,
               bool_or(tgtype & 3 = 2 and tgtype & 32 = 32) as statement_truncate
          from pg_trigger
         where tgfoid = 'refuse_append_only_change'::regproc and tgenabled <> 'D'
         group by 1
        """
    )
    assert {r["table_name"]: (r["row_update_delete"], r["statement_truncate"]) for r in rows} == {
        ledger: (True, True) for ledger in (*LEDGERS, *OPS_LOGS)
    }


@pytest.mark.parametrize("ledger", LEDGERS)
async def test_ledgers_refuse_update_delete_and_truncate_for_app_and_owner(
    ledger: str, db: Database, owner: asyncpg.Connection
) -> None:
    factory = RowFactory(owner, await load_catalog(owner))
    creator = await make_creator(owner)
    row = await factory.make(ledger, creator)
    t = ident(ledger)
    attempts = {
        "UPDATE": f"update {t} set created_at = created_at + interval '1 second' where id = $1",
        "DELETE": f"delete from {t} where id = $1",
    }
    async with db.creator_tx(creator) as conn:
        assert await conn.fetchval(f"select count(*) from {t} where id = $1", row["id"]) == 1
        for sql in attempts.values():
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match=f"permission denied for table {ledger}"):
                async with conn.transaction():
                    await conn.execute(sql, row["id"])
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match=f"permission denied for table {ledger}"):
            async with conn.transaction():
                await conn.execute(f"truncate {t}")

    assert await owner.fetchval("select rolsuper from pg_roles where rolname = current_user")
    for op, sql in attempts.items():
        with pytest.raises(asyncpg.ObjectNotInPrerequisiteStateError) as refused:
            async with owner.transaction():
                await owner.execute(sql, row["id"])
        assert str(refused.value).startswith(f"{ledger} is append-only: {op} is not allowed")
    # CASCADE too: truncating a ledger through a table that references it is refused the same way.
    with pytest.raises(asyncpg.ObjectNotInPrerequisiteStateError) as refused:
        async with owner.transaction():
            await owner.execute(f"truncate {t} cascade")
    assert str(refused.value).startswith(f"{ledger} is append-only: TRUNCATE is not allowed")
    after = await owner.fetchrow(f"select * from {t} where id = $1", row["id"])
    assert after is not None and dict(after) == row


# --- pooled connections never carry a creator over ----------------------------------------------------


class Boom(Exception):
    pass


async def test_pooled_connections_never_show_another_creators_rows(
    database_url: str, owner: asyncpg.Connection
) -> None:
    creators = [await make_creator(owner) for _ in range(5)]
    for creator in creators:
        await owner.execute(
            "insert into fan_profiles (user_id, display_name) select $1, 'fan ' || g from generate_series(1, 3) g",
            creator,
        )
    rng = random.Random(20240611)
    plans = [(rng.choice(creators), rng.random() < 0.2, rng.random() < 0.5, rng.random() < 0.5) for _ in range(200)]
    seen: list[int] = []
    db = await Database.open(database_url, min_size=1, max_size=3)
    try:

        async def task(creator: uuid.UUID, fail: bool, yield_first: bool, fail_before_read: bool) -> None:
            try:
                async with db.creator_tx(creator) as conn:
                    if fail and fail_before_read:
                        raise Boom
                    if yield_first:
                        await asyncio.sleep(0)
                    owners = [r["user_id"] for r in await conn.fetch("select user_id from fan_profiles")]
                    assert owners == [creator] * 3, f"{creator} saw {owners}"
                    seen.append(len(owners))
                    if fail:
                        raise Boom
            except Boom:
                pass

        await asyncio.gather(*(task(*plan) for plan in plans))
        assert len(seen) == sum(1 for _, fail, _, before in plans if not (fail and before))
        assert any(fail for _, fail, _, _ in plans)

        # Every pooled connection, used outside creator_tx, has no creator and sees nothing.
        conns = [await db.app_pool.acquire() for _ in range(3)]
        try:
            for conn in conns:
                assert await conn.fetchval("select count(*) from fan_profiles") == 0
                assert await conn.fetchval("select app_current_user_id()") is None
                assert await conn.fetchval("select current_user") == APP_ROLE
        finally:
            for conn in conns:
                await db.app_pool.release(conn)
    finally:
        await db.close()


# --- migrations ----------------------------------------------------------------------------------


async def test_migrations_apply_once_even_when_two_processes_race(
    stack: StackUrls, database_url: str, owner: asyncpg.Connection
) -> None:
    assert await apply_migrations(owner) == []  # the module's database is up to date

    name = f"gh_migrate_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(with_database(stack.owner_url, "postgres"))
    try:
        await admin.execute(f"create database {ident(name)}")
    finally:
        await admin.close()
    try:
        url = with_database(stack.owner_url, name)
        first, second = await connect_owner(url), await connect_owner(url)
        try:
            results = await asyncio.gather(apply_migrations(first), apply_migrations(second))
            all_names = [m.name for m in load_migrations()]
            assert sorted(results, key=len) == [[], all_names]
            recorded = await first.fetch("select version, name from schema_migrations order by version")
            assert [r["name"] for r in recorded] == all_names

            # An applied file edited afterwards (its checksum differs) is refused, by name.
            edited = load_migrations()[2]
            await first.execute("update schema_migrations set checksum = 'edited' where version = $1", edited.version)
            with pytest.raises(MigrationError, match=re.escape(edited.name)):
                await apply_migrations(second)
        finally:
            await first.close()
            await second.close()
    finally:
        await drop_database(stack, name)


# --- indexes for the scheduler and per-creator queries ----------------------------------------------


def plan_nodes(plan: Any) -> list[dict[str, Any]]:
    if isinstance(plan, str):
        plan = json.loads(plan)
    if isinstance(plan, list):
        return [n for item in plan for n in plan_nodes(item)]
    node = plan.get("Plan", plan)
    return [node] + [n for child in node.get("Plans", []) for n in plan_nodes(child)]


def scans_of(plan: Any, relation: str) -> list[tuple[str, str | None]]:
    """(node type, index) of each scan of `relation`; a bitmap heap scan is listed once per index it reads."""
    scans: list[tuple[str, str | None]] = []
    for node in plan_nodes(plan):
        if node.get("Relation Name") != relation or node["Node Type"] == "ModifyTable":
            continue
        if node["Node Type"] == "Bitmap Heap Scan":
            below = [n for child in node.get("Plans", []) for n in plan_nodes(child)]
            scans += [(node["Node Type"], n["Index Name"]) for n in below if "Index Name" in n]
        else:
            scans.append((node["Node Type"], node.get("Index Name")))
    return scans


async def test_scheduler_claim_and_creator_job_list_use_their_indexes(db: Database, owner: asyncpg.Connection) -> None:
    factory = RowFactory(owner, await load_catalog(owner))
    creators = [await make_creator(owner) for _ in range(8)]
    expected: set[uuid.UUID] = set()
    for creator in creators:
        post = await factory.make("content_posts", creator)
        connection = await factory.make("platform_connections", creator)
        # 2500 posts each: mostly posted (each with its completed publish job), 1 in 100 scheduled (12 of
        # them due, 11 of those more than an hour ago), and 8 in flight, claimed 10 minutes ago (even g
        # queued, odd g publishing), half of each with an active job (queued: waiting for a retry;
        # processing: running), half stranded without one.
        rows = await owner.fetch(
            """
            insert into scheduled_posts (user_id, content_post_id, platform_connection_id, platform, scheduled_time,
                                         status, queued_at, publishing_started_at)
            select $1, $2, $3, $4, now() + make_interval(mins => g - 1250),
                   case when g <= 8 and g % 2 = 0 then 'queued' when g <= 8 then 'publishing'
                        when g % 100 = 0 then 'scheduled' else 'posted' end,
                   case when g % 100 <> 0 then now() - interval '10 minutes' end,
                   case when g <= 8 and g % 2 = 1 then now() - interval '10 minutes' end
              from generate_series(1, 2500) g
            returning id, status, scheduled_time
            """,
            creator, post["id"], connection["id"], connection["platform"],
        )  # fmt: skip
        queued = [r["id"] for r in rows if r["status"] == "queued"]
        in_publishing = [r["id"] for r in rows if r["status"] == "publishing"]
        expected |= set(queued[1::2] + in_publishing[1::2])
        expected |= {r["id"] for r in rows if r["status"] == "scheduled" and r["scheduled_time"] <= datetime.now(UTC)}
        await owner.execute(
            """
            insert into media_jobs (user_id, job_name, queue, job_key, payload, status, created_at, subject_type,
                                    subject_id)
            select $1, 'publish_post', 'default', 'publish_post:' || p.id || ':r1', '{}',
                   case when p.id = any($2::uuid[]) then 'queued' when p.id = any($3::uuid[]) then 'processing'
                        else 'completed' end,
                   now() - interval '10 minutes', 'scheduled_post', p.id
              from scheduled_posts p where p.user_id = $1 and p.status in ('posted', 'queued', 'publishing')
            """,
            creator, queued[::2], in_publishing[::2],
        )  # fmt: skip
        await owner.execute(
            """
            insert into media_jobs (user_id, job_name, queue, job_key, payload, status, created_at)
            select $1, 't_echo', 'default', 'k-' || g, '{}', 'completed', now() - make_interval(secs => g)
              from generate_series(1, 2500) g
            """,
            creator,
        )
    await owner.execute("analyze scheduled_posts")
    await owner.execute("analyze media_jobs")

    # The post_scheduler's own statement, with the parameters it passes (the defaults).
    settings = Settings()
    params = (settings.post_dispatch_batch, settings.post_max_lateness_s, settings.post_requeue_after_s)
    async with db.system_tx() as conn:
        plan = await conn.fetchval("explain (format json) " + publishing.CLAIM_DUE, *params)
    index_scans = {"Index Scan", "Index Only Scan", "Bitmap Heap Scan"}
    scans = scans_of(plan, "scheduled_posts")
    assert {node for node, _ in scans} <= index_scans, scans
    # due posts, in-flight posts, and the update of the claimed rows by primary key
    assert {index for _, index in scans} == {
        "scheduled_posts_due_idx", "scheduled_posts_in_flight_idx", "scheduled_posts_pkey"
    }, scans  # fmt: skip
    # "No active job": per post through its job index, or (the planner's pick while active jobs are
    # few) one pass over the active jobs' partial index.
    job_scans = scans_of(plan, "media_jobs")
    assert job_scans and {node for node, _ in job_scans} <= index_scans, job_scans
    assert {index for _, index in job_scans} <= {"media_jobs_subject_idx", "media_jobs_live_queue_idx"}

    # And it claims what the plan is for: the due posts and the in-flight ones without an active job,
    # up to a batch of each kind, oldest first.
    assert len(expected) == 8 * (4 + 12)  # per creator: 4 stranded, 12 due (g = 100, 200, ..., 1200)
    async with db.system_tx() as conn:
        first = await conn.fetch(publishing.CLAIM_DUE, 5, *params[1:])
        rest = await conn.fetch(publishing.CLAIM_DUE, *params)
    # The 5 oldest due posts are this test's (due for hours), as are all the stranded ones.
    assert len(first) == 10 and {r["id"] for r in first} <= expected
    assert sorted(r["status"] for r in first) == ["missed"] * 5 + ["queued"] * 5
    ours = [r for r in [*first, *rest] if r["user_id"] in creators]  # other tests' rows are due too
    assert len(ours) == len(expected) and {r["id"] for r in ours} == expected
    assert sum(r["status"] == "missed" for r in ours) == 8 * 11  # due more than an hour ago

    async with db.creator_tx(creators[0]) as conn:
        plan = await conn.fetchval(
            "explain (format json) select * from media_jobs where user_id = $1 order by created_at desc limit 50",
            creators[0],
        )
        assert len(await conn.fetch(
            "select * from media_jobs where user_id = $1 order by created_at desc limit 50", creators[0]
        )) == 50  # fmt: skip
    scans = scans_of(plan, "media_jobs")
    assert scans and all(index == "media_jobs_user_created_idx" for _, index in scans), scans
    assert not any(node == "Seq Scan" for node, _ in scans)


async def test_an_owner_that_cannot_set_up_the_roles_is_told_every_grant_at_once(stack: StackUrls) -> None:
    name, role, password = f"gh_weak_{uuid.uuid4().hex[:10]}", f"gh_weak_owner_{uuid.uuid4().hex[:6]}", "weakpw"
    admin = await asyncpg.connect(with_database(stack.owner_url, "postgres"))
    try:
        await admin.execute(f"create role {role} login password '{password}'")  # no CREATEROLE, no ADMIN on ours
        await admin.execute(f"create database {ident(name)} owner {role}")
        parts = urlsplit(with_database(stack.owner_url, name))
        url = urlunsplit((parts.scheme, f"{role}:{password}@{parts.hostname}:{parts.port}", parts.path, "", ""))
        conn = await connect_owner(url)
        try:
            with pytest.raises(MigrationError) as refused:
                await apply_migrations(conn)
            assert await conn.fetchval("select to_regclass('schema_migrations')") is None  # nothing applied
        finally:
            await conn.close()
        message = str(refused.value)
        for nologin in ("geniehelper_app", "geniehelper_system", "geniehelper_runtime"):
            assert f"GRANT {nologin} TO {role} WITH ADMIN OPTION, INHERIT FALSE, SET TRUE;" in message
    finally:
        await admin.execute(f"drop database if exists {ident(name)} with (force)")
        await admin.execute(f"drop role if exists {role}")
        await admin.close()


# --- foreign keys at scale --------------------------------------------------------------------------

# Each foreign key, and whether some index leads with its first two columns (one, if it has one).
UNINDEXED_FOREIGN_KEYS = """
with fks as (
    select c.conrelid, c.conrelid::regclass::text as table_name, c.confrelid::regclass::text as ref,
           array_agg(a.attname::text order by k.ord) as cols
      from pg_constraint c
     cross join lateral unnest(c.conkey) with ordinality k(attnum, ord)
      join pg_attribute a on a.attrelid = c.conrelid and a.attnum = k.attnum
     where c.contype = 'f' and c.connamespace = 'public'::regnamespace
     group by c.oid, 1, 2, 3
)
select f.table_name, f.ref, f.cols
  from fks f
 where not exists (
       select from pg_index i
        where i.indrelid = f.conrelid and i.indnkeyatts >= least(cardinality(f.cols), 2)
          and (select array_agg(a.attname::text order by k.ord)
                 from unnest(i.indkey::int2[]) with ordinality k(attnum, ord)
                 join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
                where k.ord <= least(cardinality(f.cols), 2)) = f.cols[1:least(cardinality(f.cols), 2)])
 order by 1, 3
"""


async def test_every_foreign_key_has_an_index_leading_with_its_columns(owner: asyncpg.Connection) -> None:
    """Deleting or merging a referenced row (a fan account, a message) must not scan the referencing
    table: each foreign key has an index leading with its first two columns (user_id and the reference)."""
    missing = [f"{r['table_name']} ({', '.join(r['cols'])}) -> {r['ref']}"
               for r in await owner.fetch(UNINDEXED_FOREIGN_KEYS)]  # fmt: skip
    assert missing == [], "foreign keys without an index:\n" + "\n".join(missing)
