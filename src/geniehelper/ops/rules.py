"""The alert rules job_monitor evaluates each tick: each returns the incidents it finds now.

All read the job records (`media_jobs`, as the system role) or the processes' health keys in Redis,
in one bounded statement each; thresholds come from `settings.job_monitor`.
"""

from __future__ import annotations

import time
from typing import Any

import asyncpg

from geniehelper.health import ProcessHealth
from geniehelper.ops.alerts import Finding
from geniehelper.settings import JobMonitorSettings

SAMPLE = 5  # record ids shown per incident
# A process restarted by its supervisor, or a leader handing over, takes seconds: not worth a page.
PROCESS_NOTIFY_DELAY_S = 30.0

# Re-driven after their lease expired and not finished since (a completion clears error_kind).
STALLED = """
select job_name, count(*)::int as n, (array_agg(id order by updated_at desc))[1:$1] as sample
  from media_jobs
 where error_kind = 'lease_expired' and status in ('queued', 'processing')
 group by job_name
"""

# Failed for good within the window and not run again successfully under the same key since.
DEAD = """
select f.job_name, count(*)::int as n, (array_agg(f.id order by f.finished_at desc))[1:$2] as sample,
       (array_agg(f.error order by f.finished_at desc))[1] as last_error
  from media_jobs f
 where f.status = 'failed' and f.finished_at > now() - make_interval(secs => $1)
   -- A subplan per failure (LIMIT keeps the planner from turning it into a scan of every completion),
   -- each one (user_id, job_key) index probe; spelled out per case, as IS NOT DISTINCT FROM is no index condition.
   and (select 1 from media_jobs r
         where (r.user_id = f.user_id or (f.user_id is null and r.user_id is null)) and r.job_key = f.job_key
           and r.status = 'completed' and r.created_at > f.created_at
         limit 1) is null
 group by f.job_name
"""

# Due work waiting longer than the threshold, per queue.
QUEUE_AGE = """
select queue, count(*)::int as n, extract(epoch from now() - min(run_at))::float8 as oldest_s
  from media_jobs
 where status = 'queued' and run_at < now() - make_interval(secs => $1)
   and queue not in (select queue from queue_pauses)  -- paused on purpose (ops/queues.py): no page
 group by queue
"""

# Failures per job name in the window, against everything that finished there.
FAILURE_SPIKE = """
select job_name, count(*) filter (where status = 'failed')::int as failed, count(*)::int as finished
  from media_jobs
 where status in ('completed', 'failed') and finished_at > now() - make_interval(secs => $1)
 group by job_name
having count(*) filter (where status = 'failed') >= $2
   and count(*) filter (where status = 'failed') >= $3::float8 * count(*)
"""

# Active connections whose last scrape found the platform failing (not an expired login: that is the
# creator's to fix by reconnecting, and is counted beside it), per platform.
PLATFORM_UNHEALTHY = """
select platform, count(*) filter (where health = 'unhealthy')::int as n,
       count(*) filter (where health = 'auth_expired')::int as auth_expired,
       (array_agg(id order by last_health_check_at desc) filter (where health = 'unhealthy'))[1:$1] as sample,
       (array_agg(health_reason order by last_health_check_at desc) filter (where health = 'unhealthy'))[1]
           as last_reason
  from platform_connections
 where status = 'active' and health in ('unhealthy', 'auth_expired')
 group by platform
having count(*) filter (where health = 'unhealthy') > 0
"""

JOB_RULES = ("jobs_stalled", "jobs_dead", "queue_age", "failure_spike", "platform_unhealthy")
PROCESS_RULES = ("role_missing", "scheduler_lag")


async def job_findings(conn: asyncpg.Connection, settings: JobMonitorSettings) -> list[Finding]:
    found: list[Finding] = []
    for row in await conn.fetch(STALLED, SAMPLE):
        found.append(Finding(
            "jobs_stalled", row["job_name"], "warning",
            f"{row['n']} {row['job_name']} job{_s(row['n'])} stalled (a worker lost its lease): re-driven, "
            "not finished yet",
            {"count": row["n"], "sample": [str(i) for i in row["sample"]]},
        ))  # fmt: skip
    for row in await conn.fetch(DEAD, settings.dead_window_s, SAMPLE):
        found.append(Finding(
            "jobs_dead", row["job_name"], "critical",
            f"{row['n']} {row['job_name']} job{_s(row['n'])} failed for good; "
            f"last error: {(row['last_error'] or '')[:200]}",
            {"count": row["n"], "sample": [str(i) for i in row["sample"]]},
        ))  # fmt: skip
    for row in await conn.fetch(QUEUE_AGE, settings.queue_age_s):
        found.append(Finding(
            "queue_age", row["queue"], "warning",
            f"queue {row['queue']}: {row['n']} due job{_s(row['n'])} waiting over {settings.queue_age_s:g}s "
            f"(oldest {row['oldest_s']:.0f}s)",
            {"count": row["n"], "oldest_s": round(row["oldest_s"], 1)},
        ))  # fmt: skip
    spike = settings.failure_spike
    for row in await conn.fetch(FAILURE_SPIKE, spike.window_s, spike.min_failures, spike.ratio):
        found.append(Finding(
            "failure_spike", row["job_name"], "critical",
            f"{row['job_name']}: {row['failed']} of {row['finished']} finished in the last {spike.window_s:g}s failed",
            {"failed": row["failed"], "finished": row["finished"]},
        ))  # fmt: skip
    for row in await conn.fetch(PLATFORM_UNHEALTHY, SAMPLE):
        found.append(Finding(
            "platform_unhealthy", row["platform"], "warning",
            f"{row['n']} {row['platform']} connection{_s(row['n'])} unhealthy at the last scrape; "
            f"last reason: {(row['last_reason'] or '')[:200]}",
            {"count": row["n"], "auth_expired": row["auth_expired"], "sample": [str(i) for i in row["sample"]]},
        ))  # fmt: skip
    return found


def process_findings(processes: list[ProcessHealth], settings: JobMonitorSettings, *, stale_after_s: float,
                     health_interval_s: float, schedulers: list[str]) -> list[Finding]:  # fmt: skip
    """From the health keys: expected roles with no live process; schedulers without a leader or late."""
    live = [p for p in processes if p.age_s <= stale_after_s]
    found: list[Finding] = []
    for role in settings.expected_roles:
        if not any(p.role == role for p in live):
            found.append(Finding("role_missing", role, "critical", f"no live {role} process", {"role": role},
                                 PROCESS_NOTIFY_DELAY_S))  # fmt: skip
    for name in schedulers:
        copies = [p for p in live if p.role == name]
        if not copies:
            continue  # not running at all: role_missing covers the roles expected
        leaders = [p for p in copies if p.details.get("leader")]
        if not leaders:
            found.append(Finding("scheduler_lag", name, "critical", f"{name}: running but no copy leads",
                                 {"copies": len(copies)}, PROCESS_NOTIFY_DELAY_S))  # fmt: skip
            continue
        lag = _tick_lag(leaders[0].details, health_interval_s)
        if lag is not None:
            found.append(Finding("scheduler_lag", name, "warning", f"{name}: last tick {lag:.0f}s ago",
                                 {"last_tick_age_s": round(lag, 1)}, PROCESS_NOTIFY_DELAY_S))  # fmt: skip
    return found


def _tick_lag(details: dict[str, Any], health_interval_s: float) -> float | None:
    """How late the leader's last tick is, if later than three intervals plus two health beats."""
    interval, last = details.get("interval_s"), details.get("last_tick_at")
    if not isinstance(interval, int | float) or not isinstance(last, int | float):
        return None
    age = time.time() - last
    return age if age > 3 * interval + 2 * health_interval_s else None


def _s(n: int) -> str:
    return "" if n == 1 else "s"
