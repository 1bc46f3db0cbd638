"""scrape_scheduler: keeps every active platform connection scraped on its cadence.

Every SCRAPE_SCHEDULER_INTERVAL_S (60 s) it claims the active connections whose `next_scrape_at` has
come (a never-scheduled connection is due at once) and, in the same UPDATE, moves each to its next
slot (`geniehelper.domain.scraping.CLAIM_DUE`). A connection's slots are a fixed phase (a hash of its
id) plus whole cadences, so due times are spread evenly over the cadence rather than bunched at the
top of the hour, and a connection keeps its place from cycle to cycle.

Cadence (docs/sync.md): the creator's tier's (SCRAPE_TIER_INTERVALS_S: starter 6 h, as the original
scraped everyone; creator 3 h; pro 1 h; studio 30 min), SCRAPE_INTERVAL_S for a tier not listed. A
connection whose auth expired is not scraped: it gets a health-only scrape_connection every
SCRAPE_AUTH_EXPIRED_INTERVAL_S (24 h); once a check passes, or the creator reconnects, it is due at once.

Each due connection becomes a `scrape_connection` and a `sync_fans` job (health-only: the scrape only),
recorded through the due-work base. Their keys (one active job per connection each) and shared
concurrency key (one job running per connection) mean a connection is never scraped twice at once:
a cycle that finds the last one still queued or running enqueues nothing (counted as skipped).
"""

from __future__ import annotations

from typing import Any, ClassVar
from uuid import UUID

import asyncpg

from geniehelper.domain import scraping
from geniehelper.runtime.queue import JobRequest
from geniehelper.settings import Settings
from schedulers.base import TickResult
from schedulers.due_work import DueWorkScheduler


class ScrapeScheduler(DueWorkScheduler[asyncpg.Record]):
    name: ClassVar[str] = "scrape_scheduler"
    job_name: ClassVar[str] = "scrape_connection"
    sync_job_name: ClassVar[str] = "sync_fans"

    def interval_s(self, settings: Settings) -> float:
        return settings.scrape_scheduler.interval_s

    def batch_size(self, settings: Settings) -> int:
        return settings.scrape_scheduler.batch

    async def claim(self, conn: asyncpg.Connection, settings: Settings, limit: int) -> list[asyncpg.Record]:
        group = settings.scrape_scheduler
        tiers = sorted(group.tier_cadence_s)
        return await conn.fetch(
            scraping.CLAIM_DUE, limit, tiers, [group.tier_cadence_s[t] for t in tiers], group.default_cadence_s,
            group.auth_expired_cadence_s,
        )  # fmt: skip

    def initial_details(self) -> dict[str, Any]:
        return {"health_only": 0}

    def request(self, row: asyncpg.Record, settings: Settings, result: TickResult) -> tuple[UUID, JobRequest] | None:
        if row["health_only"]:
            result.details["health_only"] += 1
        payload = {
            "platform_connection_id": str(row["id"]), "cycle_at": row["cycle_at"].isoformat(),
            "health_only": row["health_only"],
        }  # fmt: skip
        return row["user_id"], JobRequest(payload)

    def requests(
        self, row: asyncpg.Record, settings: Settings, result: TickResult
    ) -> list[tuple[UUID, str, JobRequest]]:
        jobs = super().requests(row, settings, result)
        if not row["health_only"]:
            jobs.append((row["user_id"], self.sync_job_name, JobRequest({"platform_connection_id": str(row["id"])})))
        return jobs
