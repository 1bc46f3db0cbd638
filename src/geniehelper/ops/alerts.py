"""Alerts: one `ops_alerts` row per incident, opened when a rule finds its condition and resolved
(by job_monitor) when the condition clears; acknowledged or resolved by hand from the CLI.

An incident is keyed `<rule>:<key>` (e.g. `jobs_dead:publish_post`): a rule finding the same thing
tick after tick refreshes one row (`seen_count`, `last_seen_at`, the latest summary) rather than
adding rows, and a flood (1,000 stalled jobs) is one incident whose summary counts them.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from uuid import UUID

import asyncpg
import structlog

log = structlog.get_logger("geniehelper.alerts")

Severity = Literal["warning", "critical"]


@dataclass(frozen=True)
class Finding:
    """What a rule found this tick: one incident's current state."""

    rule: str
    key: str  # what the incident is about, within its rule: a job name, a queue, a role
    severity: Severity
    summary: str
    details: dict[str, Any] = field(default_factory=dict)
    # Wait this long before notifying: an incident that clears sooner (a process restarted by its
    # supervisor, a leader handing over) is recorded but never paged.
    notify_delay_s: float = 0.0

    @property
    def dedup_key(self) -> str:
        return f"{self.rule}:{self.key}"


# New incidents are opened (to be notified); open ones are refreshed.
OPEN_OR_REFRESH = """
insert into ops_alerts as a (rule, dedup_key, severity, summary, details, notify, notify_after)
select t.rule, t.dedup_key, t.severity, t.summary, t.details, 'opened', now() + make_interval(secs => t.delay_s)
  from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6::float8[])
       as t(rule, dedup_key, severity, summary, details, delay_s)
on conflict (dedup_key) where status <> 'resolved' do update
   set summary = excluded.summary, details = excluded.details, severity = excluded.severity,
       seen_count = a.seen_count + 1, last_seen_at = now()
returning a.id, a.dedup_key, a.summary, a.severity, a.seen_count = 1 as opened
"""

# The rules' incidents not found this tick have cleared. Their resolution is notified only if
# their opening was (a webhook that never heard of an incident need not hear it ended).
RESOLVE_CLEARED = """
update ops_alerts
   set status = 'resolved', resolved_at = now(), resolved_by = 'job_monitor',
       notify = case when delivered_at is not null then 'resolved' end,
       notify_after = case when delivered_at is not null then now() end
 where rule = any($1::text[]) and status <> 'resolved' and dedup_key <> all($2::text[])
returning id, dedup_key, summary
"""


async def reconcile(conn: asyncpg.Connection, rules: Collection[str], findings: Sequence[Finding]) -> tuple[int, int]:
    """Make the open incidents of `rules` exactly `findings`: (opened, resolved)."""
    opened = 0
    if findings:
        rows = await conn.fetch(
            OPEN_OR_REFRESH, [f.rule for f in findings], [f.dedup_key for f in findings],
            [f.severity for f in findings], [f.summary for f in findings], [f.details for f in findings],
            [f.notify_delay_s for f in findings],
        )  # fmt: skip
        for row in rows:
            if row["opened"]:
                opened += 1
                log.warning("alert.opened", alert_id=str(row["id"]), key=row["dedup_key"], severity=row["severity"],
                            summary=row["summary"])  # fmt: skip
    resolved = await conn.fetch(RESOLVE_CLEARED, list(rules), [f.dedup_key for f in findings])
    for row in resolved:
        log.info("alert.resolved", alert_id=str(row["id"]), key=row["dedup_key"], summary=row["summary"])
    return opened, len(resolved)


LIST = """
select id, rule, dedup_key, severity, status, summary, details, seen_count, opened_at, last_seen_at,
       acknowledged_at, acknowledged_by, resolved_at, resolved_by, notify, delivery_attempts, delivered_at,
       delivery_error
  from ops_alerts
 where ($1::text[] is null or status = any($1::text[]))
 order by opened_at desc
 limit $2
"""

ACKNOWLEDGE = """
update ops_alerts set status = 'acknowledged', acknowledged_at = now(), acknowledged_by = $2
 where id = $1 and status = 'open'
returning id
"""

RESOLVE_BY_HAND = """
update ops_alerts set status = 'resolved', resolved_at = now(), resolved_by = $2,
       notify = case when delivered_at is not null then 'resolved' end,
       notify_after = case when delivered_at is not null then now() end
 where id = $1 and status <> 'resolved'
returning id
"""

RECORD_ACTION = "insert into ops_actions (actor, action, target, affected) values ($1, $2, $3, $4)"


async def list_alerts(conn: asyncpg.Connection, statuses: list[str] | None, limit: int = 100) -> list[dict[str, Any]]:
    return [dict(r) for r in await conn.fetch(LIST, statuses, limit)]


async def acknowledge(conn: asyncpg.Connection, alert_id: UUID, actor: str) -> bool:
    done = await conn.fetchval(ACKNOWLEDGE, alert_id, actor) is not None
    await conn.execute(RECORD_ACTION, actor, "alert.acknowledge", {"alert_id": str(alert_id)}, int(done))
    return done


async def resolve(conn: asyncpg.Connection, alert_id: UUID, actor: str) -> bool:
    done = await conn.fetchval(RESOLVE_BY_HAND, alert_id, actor) is not None
    await conn.execute(RECORD_ACTION, actor, "alert.resolve", {"alert_id": str(alert_id)}, int(done))
    return done

