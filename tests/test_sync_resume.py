"""A fan sync killed for real (SIGKILL of its worker process) mid-way resumes without a gap or a duplicate."""

from __future__ import annotations

import os
import signal
from decimal import Decimal
from typing import Any

import asyncpg
from arq.connections import ArqRedis

from geniehelper.db import Database
from geniehelper.runtime.delivery import dispatch_fair, redrive_expired_leases
from tests.helpers import BIN, spawn
from tests.sync_support import (
    KEY_B64,
    Sandbox,
    connect,
    counts,
    enqueue_sync,
    run_bulk,
    sandbox,
    settings_for,
    wait_for,
)

__all__ = ["sandbox"]  # the module's fixture

SETTINGS = {"SYNC_PAGE_SIZE": "20", "JOB_LEASE_S": "2", "JOB_HEARTBEAT_INTERVAL_S": "0.5"}


async def test_a_sync_killed_mid_way_resumes_with_no_gap_and_no_duplicate(
    db: Database, owner: asyncpg.Connection, sandbox: Sandbox, arq_redis: ArqRedis, database_url: str,
    redis_url: str, project_env: dict[str, Any],
) -> None:  # fmt: skip
    settings = settings_for(database_url, redis_url, **{k.lower(): v for k, v in SETTINGS.items()})
    c = await connect(db, owner, sandbox, seed=7, n_fans=300, n_transactions_per_fan=10, n_messages_per_fan=1)
    # Each page of transactions takes a while: the kill lands with most of them still to read.
    await sandbox.fault(kind="slow", delay_s=0.05, count=10_000, path_prefix="/v1/transactions")
    job = await enqueue_sync(db, arq_redis, settings, c)
    env = dict(project_env, DATABASE_URL=database_url, CREDENTIALS_ENC_KEY_B64=KEY_B64, LOG_FORMAT="json", **SETTINGS)
    worker = spawn([str(BIN / "geniehelper"), "worker", "bulk"], env)
    try:
        assert await dispatch_fair(db, arq_redis, "bulk", window=10, ttl_s=3600) == 1
        cursor = (
            "select items_read from platform_sync_cursors"
            " where user_id = $1 and resource = 'transactions' and pages_read >= 5"
        )
        await wait_for(owner, cursor, c.user_id)
        os.killpg(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait(10)
    finally:
        if worker.proc.poll() is None:
            os.killpg(worker.proc.pid, signal.SIGKILL)
            worker.proc.wait(10)
    await sandbox.clear_faults()

    # What the killed run committed: its pages and their cursor together, nothing half-way.
    stopped = await counts(owner, c.user_id)
    read = await owner.fetchval(
        "select items_read from platform_sync_cursors where user_id = $1 and resource = 'transactions'", c.user_id
    )
    assert 0 < stopped["fan_transactions"] == read < 3000
    # Killed mid-pass: its pages' profiles still wait for the pass's end to get their figures (0036).
    pending = "select count(*) from fan_sync_pending_figures where user_id = $1"
    assert await owner.fetchval(pending, c.user_id) > 0
    assert await owner.fetchval("select status from media_jobs where id = $1", job.id) == "processing"

    # Its lease runs out; the re-drive (job_monitor's, here called directly) hands the job to a new worker.
    await wait_for(owner, "select lease_expires_at < now() from media_jobs where id = $1", job.id)
    assert await redrive_expired_leases(db) == 1
    await run_bulk(settings, db, arq_redis, owner)

    record = await owner.fetchrow("select status, attempts from media_jobs where id = $1", job.id)
    assert (record["status"], record["attempts"]) == ("completed", 2)
    done = await counts(owner, c.user_id)
    platform = sandbox.platform.counts(c.account_id)
    assert done["fan_platform_accounts"] == done["fan_profiles"] == platform["fans"] == 300  # no orphan profile
    assert done["fan_subscriptions"] == platform["subscriptions"]
    assert done["fan_transactions"] == platform["transactions"] == 3000
    assert done["fan_messages"] == platform["messages"] == 300
    account = sandbox.platform._accounts[c.account_id]
    ids = {r[0] for r in await owner.fetch(
        "select external_transaction_id from fan_transactions where user_id = $1", c.user_id
    )}  # fmt: skip
    assert ids == {t.transaction_id for t in account.transactions}
    # The profiles' composites count each purchase once, brought up to date by the resumed pass's end.
    assert await owner.fetchval(pending, c.user_id) == 0
    spent = await owner.fetchval("select sum(lifetime_spend) from fan_profiles where user_id = $1", c.user_id)
    assert spent == Decimal(sum(t.amount_cents for t in account.transactions)) / 100
    assert await owner.fetchval("select sum(message_count) from fan_profiles where user_id = $1", c.user_id) == 300
