"""Alert notifications to a Slack-compatible webhook, signed, retried with backoff, every try logged.

Each incident is said twice at most: when it opens and when it resolves (`ops_alerts.notify`).
A delivery that fails is tried again after 2, 4, 8 ... s (at most ALERT_RETRY_MAX_S) until it lands;
every POST is a row in `ops_alert_deliveries` (status code or error, duration).

Signature: `X-GenieHelper-Signature: v1=<hex HMAC-SHA256 of "<timestamp>.<body>">` with the secret,
and `X-GenieHelper-Timestamp: <unix seconds>`, so a receiver can verify the body and refuse replays.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any

import httpx
import structlog

from geniehelper.db import Database

log = structlog.get_logger("geniehelper.alerts")

DUE = """
select id, rule, dedup_key, severity, status, summary, details, seen_count, opened_at, resolved_at, notify,
       delivery_attempts
  from ops_alerts
 where notify is not null and notify_after <= now()
 order by notify_after
 limit $1
"""

DELIVERED = """
update ops_alerts set notify = null, notify_after = null, delivered_at = now(), delivery_error = null,
       delivery_attempts = delivery_attempts + 1
 where id = $1 and notify = $2
"""

NOT_DELIVERED = """
update ops_alerts set notify_after = now() + make_interval(secs => $3), delivery_error = $4,
       delivery_attempts = delivery_attempts + 1
 where id = $1 and notify = $2
"""

NO_WEBHOOK = """
update ops_alerts set notify = null, notify_after = null, delivery_error = 'not sent: no ALERT_WEBHOOK_URL set'
 where id = any($1::uuid[])
"""

LOG_DELIVERY = """
insert into ops_alert_deliveries (alert_id, event, status_code, error, duration_ms) values ($1, $2, $3, $4, $5)
"""


@dataclass(frozen=True)
class Webhook:
    url: str
    secret: str | None
    timeout_s: float = 5.0
    retry_max_s: float = 300.0


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"v1={mac.hexdigest()}"


def message(alert: dict[str, Any]) -> dict[str, Any]:
    """Slack-compatible: `text` is what chat tools show; `alert` carries the fields for machines."""
    event = alert["notify"]
    icon = ":white_check_mark:" if event == "resolved" else (":red_circle:" if alert["severity"] == "critical"
                                                               else ":warning:")  # fmt: skip
    verb = "RESOLVED" if event == "resolved" else alert["severity"].upper()
    text = f"{icon} {verb} {alert['dedup_key']}: {alert['summary']}"
    return {
        "text": text,
        "alert": {
            "id": str(alert["id"]), "event": event, "rule": alert["rule"], "key": alert["dedup_key"],
            "severity": alert["severity"], "status": alert["status"], "summary": alert["summary"],
            "details": alert["details"], "seen_count": alert["seen_count"],
            "opened_at": alert["opened_at"].isoformat(),
            "resolved_at": alert["resolved_at"].isoformat() if alert["resolved_at"] else None,
        },
    }  # fmt: skip


async def deliver_due(db: Database, http: httpx.AsyncClient, webhook: Webhook | None, *, batch: int = 20
                      ) -> tuple[int, int]:  # fmt: skip
    """POST the notifications that are due: (delivered, failed). Without a webhook nothing is sent
    (the log lines `alert.opened`/`alert.resolved` are then the only notice) and nothing is queued.
    No transaction is held while a POST is in flight: each outcome is written on its own."""
    async with db.system_tx() as conn:
        rows = await conn.fetch(DUE, batch)
        if webhook is None:
            if rows:
                await conn.execute(NO_WEBHOOK, [row["id"] for row in rows])
            return 0, 0
    delivered = failed = 0
    for row in rows:
        alert = dict(row)
        body = json.dumps(message(alert), default=str).encode()
        timestamp = int(time.time())
        headers = {"Content-Type": "application/json", "X-GenieHelper-Timestamp": str(timestamp)}
        if webhook.secret:
            headers["X-GenieHelper-Signature"] = sign(webhook.secret, timestamp, body)
        started = time.monotonic()
        status: int | None = None
        error: str | None = None
        try:
            response = await http.post(webhook.url, content=body, headers=headers, timeout=webhook.timeout_s)
            status = response.status_code
            if not response.is_success:
                error = f"HTTP {status}: {response.text[:200]}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        took_ms = round((time.monotonic() - started) * 1000)
        retry_in = min(webhook.retry_max_s, 2.0 ** (alert["delivery_attempts"] + 1))
        async with db.system_tx() as conn:
            await conn.execute(LOG_DELIVERY, alert["id"], alert["notify"], status, error, took_ms)
            if error is None:
                await conn.execute(DELIVERED, alert["id"], alert["notify"])
            else:
                await conn.execute(NOT_DELIVERED, alert["id"], alert["notify"], retry_in, error)
        if error is None:
            delivered += 1
            log.info("alert.delivered", alert_id=str(alert["id"]), notification=alert["notify"], took_ms=took_ms)
        else:
            failed += 1
            log.warning("alert.delivery_failed", alert_id=str(alert["id"]), notification=alert["notify"], error=error,
                        retry_in_s=retry_in)  # fmt: skip
    return delivered, failed
