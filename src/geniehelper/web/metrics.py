"""The platform's Prometheus metrics on the web process (`GET /metrics`, read and admin tokens),
computed at each scrape from the job records, Redis and the health keys, in bounded queries.

    geniehelper_queue_jobs{queue, state}            queued, due, unpushed, processing (records)
    geniehelper_queue_redis_depth{queue}            dispatches in Redis (ZCARD)
    geniehelper_queue_oldest_due_age_seconds{queue} how long the oldest due job has waited
    geniehelper_jobs_failed_24h{queue}              failed in the last day
    geniehelper_jobs_stalled{job}                   re-driven after a lost lease, not finished since
    geniehelper_alerts_open{rule, severity}         incidents open or acknowledged
    geniehelper_scheduler_tick_age_seconds{scheduler}  since its leader's last tick
    geniehelper_processes_live{role}                processes with a fresh health key
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from geniehelper import health
from geniehelper.ops import queues as ops_queues
from geniehelper.ops.rules import SAMPLE, STALLED

if TYPE_CHECKING:
    from geniehelper.web.api import ApiState

OPEN_ALERTS = """
select rule, severity, count(*)::int as n from ops_alerts where status <> 'resolved' group by rule, severity
"""


class _Snapshot(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterator[Metric]:
        yield from self.families


async def render(state: ApiState) -> bytes:
    """The exposition text for one scrape."""
    settings, db, redis = state.settings, state.db, state.redis
    async with db.system_tx() as conn:
        queues = await ops_queues.queue_stats(conn, settings)
        stalled = await conn.fetch(STALLED, SAMPLE)
        open_alerts = await conn.fetch(OPEN_ALERTS)
    await ops_queues.add_redis_depths(redis, queues)
    processes = await health.read_health(redis)

    jobs = GaugeMetricFamily("geniehelper_queue_jobs", "Job records per queue and state.", labels=["queue", "state"])
    depth = GaugeMetricFamily("geniehelper_queue_redis_depth", "Dispatches in Redis per queue.", labels=["queue"])
    oldest = GaugeMetricFamily("geniehelper_queue_oldest_due_age_seconds", "Wait of the oldest due job.",
                               labels=["queue"])  # fmt: skip
    failed = GaugeMetricFamily("geniehelper_jobs_failed_24h", "Jobs failed in the last day.", labels=["queue"])
    for q in queues:
        for state_name in ("queued", "due", "unpushed", "processing"):
            jobs.add_metric([q["queue"], state_name], q[state_name])
        depth.add_metric([q["queue"]], q["redis_depth"])
        oldest.add_metric([q["queue"]], q["oldest_due_age_s"] or 0.0)
        failed.add_metric([q["queue"]], q["failed_24h"])
    stalled_family = GaugeMetricFamily("geniehelper_jobs_stalled", "Re-driven after a lost lease, not finished.",
                                       labels=["job"])  # fmt: skip
    for row in stalled:
        stalled_family.add_metric([row["job_name"]], row["n"])
    alerts = GaugeMetricFamily("geniehelper_alerts_open", "Open incidents.", labels=["rule", "severity"])
    for row in open_alerts:
        alerts.add_metric([row["rule"], row["severity"]], row["n"])
    live = [p for p in processes if p.age_s <= settings.health_stale_after_s]
    lag = GaugeMetricFamily("geniehelper_scheduler_tick_age_seconds", "Since the leader's last tick.",
                            labels=["scheduler"])  # fmt: skip
    for p in live:
        last = p.details.get("last_tick_at")
        if p.details.get("leader") and isinstance(last, int | float):
            lag.add_metric([p.role], max(0.0, time.time() - last))
    roles = GaugeMetricFamily("geniehelper_processes_live", "Processes with a fresh health key.", labels=["role"])
    for role, n in sorted(Counter(p.role for p in live).items()):
        roles.add_metric([role], n)
    registry = CollectorRegistry()
    registry.register(_Snapshot([jobs, depth, oldest, failed, stalled_family, alerts, lag, roles]))
    return generate_latest(registry)
