"""Queues as on-call sees them: `geniehelper queues`, the dashboard's queue table, the API's
`GET /api/queues` and the metrics' queue gauges all read `queue_stats`; pausing and resuming a
queue (`geniehelper queues pause|resume NAME`, the dashboard) go through `pause` and `resume`.

A paused queue is a `queue_pauses` row: its workers start no new job (they ask about once a second,
see runtime/pause.py) and finish the ones running; its jobs keep their records and their place.
Both actions are recorded in ops_actions with who asked. Everything runs as the system role.
"""

from __future__ import annotations

from typing import Any

import asyncpg
from arq.connections import ArqRedis

from geniehelper.ops.alerts import RECORD_ACTION
from geniehelper.runtime.definition import queue_key
from geniehelper.settings import Settings

FAILED_WINDOW_S = 86_400.0  # failures counted over the last day

# Live records per queue (the partial index media_jobs_live_queue_idx covers them).
QUEUE_LIVE = """
select queue,
       count(*) filter (where status = 'queued')::int as queued,
       count(*) filter (where status = 'queued' and run_at <= now())::int as due,
       count(*) filter (where status = 'queued' and enqueued_at is null)::int as unpushed,
       count(*) filter (where status = 'processing')::int as processing,
       extract(epoch from now() - min(run_at) filter (where status = 'queued' and run_at <= now()))::float8
           as oldest_due_s
  from media_jobs
 where status in ('queued', 'processing')
 group by queue
"""

QUEUE_FAILED = """
select queue, count(*)::int as failed
  from media_jobs
 where status = 'failed' and finished_at > now() - make_interval(secs => $1)
 group by queue
"""

PAUSES = "select queue, paused_by, reason, paused_at from queue_pauses order by queue"

# A second pause of a paused queue changes nothing (its first pauser and time stay).
PAUSE = """
insert into queue_pauses (queue, paused_by, reason) values ($1, $2, $3)
on conflict (queue) do nothing
returning queue
"""

RESUME = "delete from queue_pauses where queue = $1 returning queue"


class UnknownQueue(LookupError):
    """The name is not a configured queue (QUEUES)."""


async def paused_queues(conn: asyncpg.Connection) -> dict[str, dict[str, Any]]:
    """Paused queue → {paused_by, reason, paused_at}."""
    return {row["queue"]: dict(row) for row in await conn.fetch(PAUSES)}


async def pause(conn: asyncpg.Connection, settings: Settings, queue: str, actor: str, reason: str | None) -> bool:
    """Pause `queue`; False when it was paused already. Recorded either way (who asked, and why)."""
    _check_configured(settings, queue)
    paused = await conn.fetchval(PAUSE, queue, actor, reason) is not None
    await conn.execute(RECORD_ACTION, actor, "queues.pause", {"queue": queue, "reason": reason}, int(paused))
    return paused


async def resume(conn: asyncpg.Connection, settings: Settings, queue: str, actor: str) -> bool:
    """Resume `queue`; False when it was not paused. Recorded either way."""
    _check_configured(settings, queue)
    resumed = await conn.fetchval(RESUME, queue) is not None
    await conn.execute(RECORD_ACTION, actor, "queues.resume", {"queue": queue}, int(resumed))
    return resumed


def _check_configured(settings: Settings, queue: str) -> None:
    if queue not in settings.queues:
        raise UnknownQueue(f"no queue {queue!r} is configured (QUEUES has: {', '.join(sorted(settings.queues))})")


async def queue_stats(
    conn: asyncpg.Connection, settings: Settings, *, failed_window_s: float = FAILED_WINDOW_S
) -> list[dict[str, Any]]:
    """One row per configured queue, then one per queue the records name that is not configured (no
    worker serves it). `redis_depth` is None here: `add_redis_depths` fills it in."""
    live = {row["queue"]: row for row in await conn.fetch(QUEUE_LIVE)}
    failed = {row["queue"]: row["failed"] for row in await conn.fetch(QUEUE_FAILED, failed_window_s)}
    pauses = await paused_queues(conn)
    names = sorted(settings.queues) + sorted((set(live) | set(failed)) - set(settings.queues))
    stats = []
    for name in names:
        row = live.get(name)
        pause_row = pauses.get(name)
        stats.append({
            "queue": name, "configured": name in settings.queues, "fair": name in settings.fair_queues,
            "paused": pause_row is not None,
            "paused_by": pause_row["paused_by"] if pause_row else None,
            "paused_at": pause_row["paused_at"] if pause_row else None,
            "redis_depth": None,
            "queued": row["queued"] if row else 0, "due": row["due"] if row else 0,
            "unpushed": row["unpushed"] if row else 0, "processing": row["processing"] if row else 0,
            "failed_24h": failed.get(name, 0),
            "oldest_due_age_s": row["oldest_due_s"] if row else None,
        })  # fmt: skip
    return stats


async def add_redis_depths(redis: ArqRedis, stats: list[dict[str, Any]]) -> None:
    """Each queue's dispatches in Redis (ZCARD of its sorted set: due, deferred and retrying ones)."""
    async with redis.pipeline(transaction=False) as pipe:
        for row in stats:
            pipe.zcard(queue_key(row["queue"]))
        depths = await pipe.execute()
    for row, depth in zip(stats, depths, strict=True):
        row["redis_depth"] = int(depth)
