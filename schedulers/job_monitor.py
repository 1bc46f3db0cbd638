"""job_monitor: stalled and lost jobs re-driven in seconds, alert incidents kept true, notifications sent.

Each tick (JOB_MONITOR_INTERVAL_S, default 5 s), leader-elected, each step bounded:
1. records whose attempt's lease expired (worker killed, paused, partitioned) get a new dispatch: the
   next delivery starts a new attempt, or fails the job for good when none is left (its
   `on_failure` runs there). A SIGKILLed job is re-run within JOB_LEASE_S + one interval;
2. queued records whose dispatch Redis no longer holds (restart without persistence, flush, failover,
   eviction) get a new dispatch: compared with Redis in batches of 1,000, wrapping around;
   outbox_relay pushes what both re-drive;
3. the alert rules (geniehelper.ops.rules) are evaluated and `ops_alerts` made to match: one incident
   per rule and key, resolved when its condition clears (the process rules from one health
   staleness window after this copy began leading);
4. due notifications are POSTed to ALERT_WEBHOOK_URL (geniehelper.ops.webhook).
Every re-drive is appended to the job's `history` and logged (`job.lease_expired`, `job.dispatch_lost`).
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import httpx

from geniehelper import health
from geniehelper.ops import alerts, rules, webhook
from geniehelper.runtime.delivery import LostDispatchFinder, redrive_expired_leases
from geniehelper.settings import Settings
from schedulers.base import Scheduler, SchedulerContext, TickResult


class JobMonitor(Scheduler):
    name: ClassVar[str] = "job_monitor"

    def __init__(self, *, process_rules_after_s: float | None = None) -> None:
        """`process_rules_after_s`: how long after it starts leading before the process rules apply
        (default: the health keys' staleness window)."""
        self._process_rules_after_s = process_rules_after_s
        self._lost = LostDispatchFinder()
        self._http: httpx.AsyncClient | None = None
        self._leading_since = 0.0

    def interval_s(self, settings: Settings) -> float:
        return settings.job_monitor.interval_s

    async def setup(self, ctx: SchedulerContext) -> None:
        self._http = httpx.AsyncClient()
        self._leading_since = time.monotonic()

    async def teardown(self, ctx: SchedulerContext) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def tick(self, ctx: SchedulerContext) -> TickResult:
        settings = ctx.settings
        monitor = settings.job_monitor
        expired = await redrive_expired_leases(ctx.db)
        self._lost.grace_s = settings.outbox_relay.grace_s
        lost = await self._lost.redrive_lost(ctx.db, ctx.redis)

        # The process rules wait one staleness window after this copy starts leading: processes
        # started with it (`./dev up`, a deploy) have not published their health keys yet.
        found: list[alerts.Finding] = []
        checked = list(rules.JOB_RULES)
        grace = self._process_rules_after_s
        if time.monotonic() - self._leading_since >= (settings.health_stale_after_s if grace is None else grace):
            processes = await health.read_health(ctx.redis)
            schedulers = sorted({p.role for p in processes if "leader" in p.details})
            found += rules.process_findings(
                processes, monitor, stale_after_s=settings.health_stale_after_s,
                health_interval_s=settings.health_interval_s, schedulers=schedulers,
            )  # fmt: skip
            checked += rules.PROCESS_RULES
        async with ctx.db.system_tx() as conn:
            found += await rules.job_findings(conn, monitor)
            opened, resolved = await alerts.reconcile(conn, checked, found)

        hook = None
        if monitor.webhook_url:
            hook = webhook.Webhook(monitor.webhook_url, monitor.webhook_secret, retry_max_s=monitor.webhook_retry_max_s)
        assert self._http is not None  # opened by setup
        delivered, undelivered = await webhook.deliver_due(ctx.db, self._http, hook)
        details: dict[str, Any] = {
            "lease_expired": expired, "dispatch_lost": lost, "incidents": len(found), "opened": opened,
            "resolved": resolved, "notified": delivered, "notify_failed": undelivered,
        }  # fmt: skip
        return TickResult(found=expired + lost, enqueued=0, skipped=0, details=details)
