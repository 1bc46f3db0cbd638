"""What the dashboard's overview shows beside the queues (ops/queues.py) and alerts (ops/alerts.py):
jobs finished per minute, the scheduler leaders and the live processes (from the health keys)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import asyncpg

from geniehelper.health import ProcessHealth

# Finished jobs per minute over the last $1 minutes (media_jobs_finished_idx covers the range).
THROUGHPUT = """
select extract(epoch from date_trunc('minute', finished_at))::bigint as minute,
       count(*) filter (where status = 'completed')::int as completed,
       count(*) filter (where status = 'failed')::int as failed
  from media_jobs
 where finished_at >= date_trunc('minute', now()) - make_interval(mins => $1 - 1)
   and status in ('completed', 'failed', 'cancelled')
 group by 1
"""


@dataclass(frozen=True)
class Minute:
    at: int  # epoch seconds of the minute's start
    completed: int
    failed: int


async def throughput(conn: asyncpg.Connection, minutes: int = 60) -> list[Minute]:
    """One entry per minute, oldest first, the current minute last; minutes without jobs are zeros."""
    rows = {row["minute"]: row for row in await conn.fetch(THROUGHPUT, minutes)}
    now_minute = int(time.time()) // 60 * 60
    series = []
    for at in range(now_minute - (minutes - 1) * 60, now_minute + 1, 60):
        row = rows.get(at)
        series.append(Minute(at, row["completed"] if row else 0, row["failed"] if row else 0))
    return series


def schedulers(processes: list[ProcessHealth], stale_after_s: float) -> list[dict[str, Any]]:
    """Per scheduler (a health role whose details say who leads): its leader and last tick, or none."""
    live = [p for p in processes if p.age_s <= stale_after_s and "leader" in p.details]
    found = []
    for role in sorted({p.role for p in live}):
        copies = [p for p in live if p.role == role]
        leader = next((p for p in copies if p.details.get("leader")), None)
        last = leader.details.get("last_tick_at") if leader else None
        found.append({
            "scheduler": role, "copies": len(copies),
            "leader": f"{leader.host}:{leader.pid}" if leader else None,
            "last_tick_age_s": max(0.0, time.time() - last) if isinstance(last, int | float) else None,
            "interval_s": leader.details.get("interval_s") if leader else None,
            "failing": any(p.details.get("failing") for p in copies),
            "last_error": next((p.details.get("last_error") for p in copies if p.details.get("failing")), None),
        })  # fmt: skip
    return found
