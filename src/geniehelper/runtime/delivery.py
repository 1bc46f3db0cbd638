"""Delivery: making every queued record's current dispatch reach Redis, and re-driving the stuck.

Run by the outbox_relay scheduler (system role). Each step is bounded and idempotent:
- `redrive_expired_leases`: records `processing` whose attempt stopped heartbeating get a new dispatch;
- `LostDispatchFinder.redrive_lost`: records `queued` and pushed whose dispatch Redis no longer holds
  (restart without persistence, flush, failover, expiry) get a new dispatch, compared in id-ordered
  batches from a cursor so a large backlog is covered over several ticks;
- `relay_unpushed`: records whose dispatch is not in Redis yet are pushed, in small chunks with no
  transaction held across Redis calls; a row that cannot be pushed gets its error recorded and
  never blocks the rows behind it.
A re-driven record's older dispatch, if it is ever delivered, finds its number stale and does nothing.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import structlog
from arq.connections import ArqRedis

from geniehelper.db import Database
from geniehelper.runtime import store
from geniehelper.runtime.definition import queue_key
from geniehelper.runtime.queue import push_dispatches
from geniehelper.runtime.transport import Dispatch, dispatches_present

log = structlog.get_logger("geniehelper.delivery")

RELAY_CHUNK = 100
ZERO_UUID = UUID(int=0)


async def relay_unpushed(
    db: Database, redis: ArqRedis, *, grace_s: float, ttl_s: float, queues: Collection[str] | None = None,
    fair_queues: Collection[str] = (), batch: int = 500,
) -> tuple[int, int]:
    """Push records whose current dispatch is not in Redis: (pushed, failed).

    With `queues`, a record on a queue no worker is configured for is not pushed (it would wait
    unread): its row says why instead.
    """
    async with db.system_tx() as conn:
        rows = await conn.fetch(store.UNPUSHED, grace_s, batch, list(fair_queues))
    return await _push_rows(db, redis, rows, ttl_s=ttl_s, queues=queues)


async def dispatch_fair(db: Database, redis: ArqRedis, queue: str, *, window: int, ttl_s: float) -> int:
    """Top a fair queue up to `window` dispatches waiting in Redis, round-robin across creators."""
    room = window - await redis.zcard(queue_key(queue))
    if room <= 0:
        return 0
    async with db.system_tx() as conn:
        rows = await conn.fetch(store.NEXT_FAIR, queue, room)
    pushed, _ = await _push_rows(db, redis, rows, ttl_s=ttl_s, queues=None)
    return pushed


async def _push_rows(
    db: Database, redis: ArqRedis, rows: list[Any], *, ttl_s: float, queues: Collection[str] | None
) -> tuple[int, int]:
    pushed = failed = 0
    for start in range(0, len(rows), RELAY_CHUNK):
        chunk = [
            Dispatch(
                r["id"],
                r["dispatch_no"],
                r["user_id"],
                r["job_name"],
                r["queue"],
                json.dumps(r["payload"]),
                r["run_at"],
            )
            for r in rows[start : start + RELAY_CHUNK]
        ]
        unknown = {d for d in chunk if queues is not None and d.queue not in queues}
        errors = await push_dispatches(redis, [d for d in chunk if d not in unknown], ttl_s)
        errors_by = dict(zip([d for d in chunk if d not in unknown], errors, strict=True))
        for d in unknown:
            errors_by[d] = f"queue {d.queue!r} is not configured (QUEUES): no worker would run it"
        errors = [errors_by[d] for d in chunk]
        delivered = [d for d, error in zip(chunk, errors, strict=True) if error is None]
        async with db.system_tx() as conn:
            if delivered:
                await conn.execute(
                    store.MARK_ENQUEUED_MANY, [d.record_id for d in delivered], [d.dispatch_no for d in delivered]
                )
            failures = [(d, error) for d, error in zip(chunk, errors, strict=True) if error is not None]
            if failures:
                await conn.execute(
                    store.MARK_DISPATCH_FAILED_MANY, [d.record_id for d, _ in failures],
                    [d.dispatch_no for d, _ in failures], [error for _, error in failures],
                )  # fmt: skip
        pushed += len(delivered)
        failed += len(chunk) - len(delivered)
    return pushed, failed


async def redrive_expired_leases(db: Database, *, batch: int = 500) -> int:
    async with db.system_tx() as conn:
        rows = await conn.fetch(store.REDRIVE_EXPIRED_LEASES, batch)
    for row in rows:
        log.warning("job.lease_expired", record_id=str(row["id"]), user_id=str(row["user_id"]),
                    job_name=row["job_name"], attempt=row["attempts"], dispatch_no=row["dispatch_no"])  # fmt: skip
    return len(rows)


@dataclass
class LostDispatchFinder:
    """Compares queued records with what Redis holds, `batch` records per call, wrapping around."""

    batch: int = 1000
    grace_s: float = 10.0
    cursor: UUID = ZERO_UUID

    async def redrive_lost(self, db: Database, redis: ArqRedis) -> int:
        async with db.system_tx() as conn:
            rows = await conn.fetch(store.PUSHED_QUEUED_AFTER, self.cursor, self.grace_s, self.batch)
        self.cursor = rows[-1]["id"] if len(rows) == self.batch else ZERO_UUID
        if not rows:
            return 0
        present = await dispatches_present(redis, [(r["id"], r["dispatch_no"]) for r in rows])
        lost = [r for r, here in zip(rows, present, strict=True) if not here]
        if not lost:
            return 0
        async with db.system_tx() as conn:
            redriven = await conn.fetch(store.REDRIVE_LOST, [r["id"] for r in lost], [r["dispatch_no"] for r in lost])
        for row in redriven:
            log.warning(
                "job.dispatch_lost", record_id=str(row["id"]), user_id=str(row["user_id"]), job_name=row["job_name"]
            )
        return len(redriven)


async def prune_finished(db: Database, *, older_than_s: float, batch: int = 1000, max_batches: int = 10) -> int:
    """Delete finished records older than `older_than_s`, a batch per transaction."""
    total = 0
    for _ in range(max_batches):
        async with db.system_tx() as conn:
            deleted = int((await conn.execute(store.PRUNE_FINISHED, older_than_s, batch)).split()[-1])
        total += deleted
        if deleted < batch:
            break
    return total
