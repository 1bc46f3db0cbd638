"""Recording a job reads the job's key, not the table (migration 0033), and the runtime's group
commit records many creators' jobs in one statement, for the runtime role only."""

from __future__ import annotations

import json
import uuid

import asyncpg
import pytest

from geniehelper.db import Database
from geniehelper.runtime import store
from tests.conftest import make_creator

# Rows of media_jobs this transaction has read so far, by scans and by index fetches.
ROWS_READ = """
select coalesce(sum(seq_tup_read + coalesce(idx_tup_fetch, 0)), 0)::int
  from pg_stat_xact_user_tables where relname = 'media_jobs'
"""

OTHER_ACTIVE_JOBS = 500


async def _fill(conn: asyncpg.Connection, user_id: uuid.UUID | None, prefix: str) -> None:
    keys = [f"{prefix}:{n}" for n in range(OTHER_ACTIVE_JOBS)]
    await conn.fetch(
        store.RECORD_JOBS, user_id, "bench_fill", "default", 1, keys, [{}] * len(keys), [None] * len(keys),
        [None] * len(keys), [None] * len(keys), [None] * len(keys),
    )  # fmt: skip


async def _rows_read_recording_twice(conn: asyncpg.Connection, user_id: uuid.UUID | None) -> tuple[int, list[bool]]:
    created = []
    before = await conn.fetchval(ROWS_READ)
    for _ in range(2):
        (row,) = await conn.fetch(
            store.RECORD_JOBS, user_id, "probe", "default", 1, ["probe:1"], [{}], [None], [None], [None], [None]
        )
        created.append(row["created"])
    return await conn.fetchval(ROWS_READ) - before, created


async def test_recording_a_creator_job_reads_its_key_only(db: Database, owner: asyncpg.Connection) -> None:
    user_id = await make_creator(owner)
    async with db.creator_tx(user_id) as conn:
        await _fill(conn, user_id, "fill")
    await owner.execute("analyze media_jobs")
    async with db.creator_tx(user_id) as conn:
        rows_read, created = await _rows_read_recording_twice(conn, user_id)
    # The second call finds the first's record through the active-key index: one row, not 500.
    assert created == [True, False]
    assert rows_read <= 2, f"recording one key twice read {rows_read} media_jobs rows"


async def test_recording_a_system_job_reads_its_key_only(db: Database, owner: asyncpg.Connection) -> None:
    async with db.system_tx() as conn:
        await _fill(conn, None, "system-fill")
    await owner.execute("analyze media_jobs")
    async with db.system_tx() as conn:
        rows_read, created = await _rows_read_recording_twice(conn, None)
    assert created == [True, False]
    assert rows_read <= 2, f"recording one system key twice read {rows_read} media_jobs rows"


def _owned(user_id: uuid.UUID, key: str, job_name: str = "probe") -> store.OwnedJobRecord:
    return store.OwnedJobRecord(user_id, job_name, "default", 3, store.NewJobRecord(key, {"key": key}))


async def test_many_creators_records_go_in_one_statement_and_find_their_active_records(
    db: Database, owner: asyncpg.Connection
) -> None:
    first, second = await make_creator(owner), await make_creator(owner)
    batch = [_owned(first, "k:1"), _owned(second, "k:1"), _owned(first, "k:2"), _owned(first, "k:1")]
    async with db.records_pool.acquire() as conn:
        refs = await store.insert_for_many(conn, batch)
        again = await store.insert_for_many(conn, [_owned(second, "k:1"), _owned(second, "k:1", "other_job")])
    assert all(isinstance(ref, store.RecordRef) for ref in refs)
    ids = [ref.id for ref in refs if isinstance(ref, store.RecordRef)]
    created = [ref.created for ref in refs if isinstance(ref, store.RecordRef)]
    # One creator's key is not another's; the same key twice in a batch is one record.
    assert len(set(ids)) == 3 and ids[0] == ids[3] and created == [True, True, True, False]
    found, clash = again
    assert isinstance(found, store.RecordRef) and found.id == ids[1] and not found.created
    # A key held by another kind of job fails that request alone.
    assert isinstance(clash, ValueError) and "already used by a probe job" in str(clash)
    rows = await owner.fetch(
        "select user_id, job_key, max_attempts, payload from media_jobs where id = any($1::uuid[]) order by job_key",
        ids,
    )
    owners = sorted((row["user_id"], row["job_key"]) for row in rows)
    assert owners == sorted([(first, "k:1"), (second, "k:1"), (first, "k:2")])
    assert {row["max_attempts"] for row in rows} == {3}
    assert {json.dumps(row["payload"]) for row in rows if row["job_key"] == "k:2"} == {'{"key": "k:2"}'}


async def test_only_the_runtime_role_records_for_many_creators_and_never_a_system_job(
    db: Database, owner: asyncpg.Connection
) -> None:
    user_id = await make_creator(owner)
    args = ([user_id], ["probe"], ["default"], [1], ["k"], [{}], [None], [None], [None], [None])
    async with db.app_pool.acquire() as conn:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetch(store.RECORD_JOBS_OF_MANY, *args)
    async with db.records_pool.acquire() as conn:
        with pytest.raises(asyncpg.NullValueNotAllowedError, match="creator jobs only"):
            await conn.fetch(store.RECORD_JOBS_OF_MANY, [None], *args[1:])
    assert await owner.fetchval("select count(*) from media_jobs where job_key = 'k'") == 0
