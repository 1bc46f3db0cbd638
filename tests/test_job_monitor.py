"""job_monitor: re-drives stalled jobs, keeps one alert per incident, POSTs it to a real local receiver."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest
from arq.connections import ArqRedis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from geniehelper.db import Database
from geniehelper.runtime.context import JobContext
from geniehelper.runtime.definition import JobDefinition, Policy
from geniehelper.runtime.delivery import relay_unpushed
from geniehelper.runtime.queue import JobQueue
from geniehelper.runtime.registry import JobRegistry
from geniehelper.runtime.retry import PermanentJobError
from geniehelper.settings import Settings
from geniehelper.web.serve import serve_app
from schedulers.base import SchedulerContext
from schedulers.job_monitor import JobMonitor
from tests import jobs_for_tests
from tests.conftest import make_creator
from tests.helpers import drain_queue

SECRET = "test-signing-secret"


async def until_fixed(ctx: JobContext, payload: jobs_for_tests.CountPayload) -> dict[str, Any]:
    """Fails for good while `test:<counter>:broken` is set (an outside cause ops fix, then retry)."""
    if await ctx.resource(jobs_for_tests.TEST_REDIS).get(f"test:{payload.counter}:broken"):
        raise PermanentJobError(f"{payload.counter} is broken")
    return {"fixed": True}


UNTIL_FIXED = JobDefinition(
    "t_until_fixed", jobs_for_tests.CountPayload, until_fixed, policy=Policy(max_attempts=1),
    resources=(jobs_for_tests.TEST_REDIS,),
)  # fmt: skip
REGISTRY = JobRegistry([*jobs_for_tests.CONTRACTS, UNTIL_FIXED])


@dataclass
class Receiver:
    """A real HTTP endpoint taking the webhook's POSTs; answers `status` (200 unless a test changes it)."""

    url: str = ""
    posts: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        self.posts.append({"body": json.loads(body), "raw": body, "headers": dict(request.headers)})
        return JSONResponse({"ok": self.status == 200}, status_code=self.status)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    async with serve_app(Starlette(routes=[Route("/hook", found.handle, methods=["POST"])])) as url:
        found.url = f"{url}/hook"
        yield found


def settings_for(database_url: str, redis_url: str, receiver: Receiver | None, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url, "redis_url": redis_url, "alert_expected_roles": [], **extra,
    }  # fmt: skip
    if receiver is not None:
        values |= {"alert_webhook_url": receiver.url, "alert_webhook_secret": SECRET}
    return Settings(**values)


async def monitor_ticks(
    settings: Settings, db: Database, redis: ArqRedis, database_url: str, n: int = 1, *, grace_s: float = 0.0
) -> list[Any]:
    monitor = JobMonitor(process_rules_after_s=grace_s)
    ctx = SchedulerContext(settings, db, redis, JobQueue(db, redis, REGISTRY), database_url)
    await monitor.setup(ctx)
    try:
        return [await monitor.tick(ctx) for _ in range(n)]
    finally:
        await monitor.teardown(ctx)


async def alerts(owner: asyncpg.Connection, key: str) -> list[dict[str, Any]]:
    """The incidents of one rule and key, oldest first (the module's tests share a database)."""
    rows = await owner.fetch("select * from ops_alerts where dedup_key = $1 order by opened_at", key)
    return [dict(r) for r in rows]


DEAD_KEY = "jobs_dead:t_until_fixed"


async def test_a_dead_job_pages_once_and_resolves_once_after_a_retry_succeeds(
    db: Database, owner: asyncpg.Connection, arq_redis: ArqRedis, database_url: str, redis_url: str,
    receiver: Receiver,
) -> None:
    settings = settings_for(database_url, redis_url, receiver)
    queue = JobQueue(db, arq_redis, REGISTRY)
    creator = await make_creator(owner)
    await arq_redis.set("test:sync:broken", "1")
    job = await queue.enqueue("t_until_fixed", {"counter": "sync"}, user_id=creator)
    await drain_queue(settings, REGISTRY)
    assert await owner.fetchval("select status from media_jobs where id = $1", job.id) == "failed"

    await monitor_ticks(settings, db, arq_redis, database_url, n=3)  # found three times: one incident, one page
    (alert,) = await alerts(owner, DEAD_KEY)
    assert (alert["dedup_key"], alert["status"], alert["severity"], alert["seen_count"]) == (
        "jobs_dead:t_until_fixed", "open", "critical", 3,
    )  # fmt: skip
    assert "1 t_until_fixed job failed for good" in alert["summary"] and "sync is broken" in alert["summary"]
    assert alert["details"]["sample"] == [str(job.id)] and alert["delivered_at"] is not None
    (page,) = receiver.posts
    assert page["body"]["alert"]["event"] == "opened" and page["body"]["text"].startswith(":red_circle: CRITICAL")
    timestamp = page["headers"]["x-geniehelper-timestamp"]
    expected = hmac.new(SECRET.encode(), f"{timestamp}.".encode() + page["raw"], hashlib.sha256).hexdigest()
    assert page["headers"]["x-geniehelper-signature"] == f"v1={expected}"

    # Ops fix the cause and retry: while the retry has not run, the incident stays open.
    await arq_redis.delete("test:sync:broken")
    retried = await queue.requeue(job.id, user_id=creator)
    await monitor_ticks(settings, db, arq_redis, database_url)
    assert (await alerts(owner, DEAD_KEY))[0]["status"] == "open" and len(receiver.posts) == 1
    await drain_queue(settings, REGISTRY)
    assert await owner.fetchval("select status from media_jobs where id = $1", retried.id) == "completed"
    await monitor_ticks(settings, db, arq_redis, database_url, n=2)
    (alert,) = await alerts(owner, DEAD_KEY)
    assert alert["status"] == "resolved" and alert["resolved_by"] == "job_monitor"
    assert [p["body"]["alert"]["event"] for p in receiver.posts] == ["opened", "resolved"]
    deliveries = await owner.fetch("select event, status_code, error from ops_alert_deliveries where alert_id = $1"
                                   " order by id", alert["id"])  # fmt: skip
    assert [tuple(d.values()) for d in deliveries] == [("opened", 200, None), ("resolved", 200, None)]


async def test_a_webhook_that_fails_is_tried_again_with_each_attempt_recorded(
    db: Database, owner: asyncpg.Connection, arq_redis: ArqRedis, database_url: str, redis_url: str,
    receiver: Receiver,
) -> None:
    settings = settings_for(database_url, redis_url, receiver)
    creator = await make_creator(owner)
    await owner.execute(
        "insert into media_jobs (user_id, job_name, queue, job_key, payload, status, error, finished_at)"
        " values ($1, 't_permanent', 'default', 'k1', '{\"counter\": \"x\"}', 'failed', 'no', now())", creator,
    )  # fmt: skip
    receiver.status = 503
    await monitor_ticks(settings, db, arq_redis, database_url)
    (alert,) = await alerts(owner, "jobs_dead:t_permanent")
    assert alert["delivered_at"] is None and alert["delivery_attempts"] == 1
    assert alert["delivery_error"].startswith("HTTP 503") and alert["notify"] == "opened"
    receiver.status = 200
    await owner.execute("update ops_alerts set notify_after = now() where id = $1", alert["id"])  # the backoff passed
    await monitor_ticks(settings, db, arq_redis, database_url)
    (alert,) = await alerts(owner, "jobs_dead:t_permanent")
    assert alert["delivered_at"] is not None and alert["notify"] is None and alert["delivery_attempts"] == 2
    codes = await owner.fetch(
        "select status_code from ops_alert_deliveries where alert_id = $1 order by id", alert["id"]
    )
    assert [c["status_code"] for c in codes] == [503, 200]
    assert len(receiver.posts) == 2


async def test_a_thousand_stalled_jobs_are_re_driven_and_one_summarised_alert(
    db: Database, owner: asyncpg.Connection, arq_redis: ArqRedis, database_url: str, redis_url: str,
    receiver: Receiver,
) -> None:
    settings = settings_for(database_url, redis_url, receiver)
    creator = await make_creator(owner)
    await owner.execute(
        "insert into media_jobs (user_id, job_name, queue, job_key, payload, status, attempts, started_at,"
        "                        lease_expires_at, worker_id, enqueued_at)"
        " select $1, 't_count', 'default', 'stalled-' || n, jsonb_build_object('counter', 'stalled'), 'processing', 1,"
        "        now() - interval '1 minute', now() - interval '10 seconds', 'host:4242', now()"
        "   from generate_series(1, 1000) n", creator,
    )  # fmt: skip
    ticks = await monitor_ticks(settings, db, arq_redis, database_url, n=3)
    assert [t.details["lease_expired"] for t in ticks] == [500, 500, 0], ticks  # bounded per tick
    (alert,) = await alerts(owner, "jobs_stalled:t_count")
    assert alert["summary"].startswith("1000 t_count jobs stalled") and alert["details"]["count"] == 1000
    assert len(alert["details"]["sample"]) == 5
    assert len(receiver.posts) == 1  # a flood is one page
    rows = await owner.fetch("select status, dispatch_no, history from media_jobs where job_key like 'stalled-%'")
    assert {(r["status"], r["dispatch_no"]) for r in rows} == {("queued", 2)}
    entry = rows[0]["history"][-1]
    assert (entry["event"], entry["attempt"], entry["worker"], entry["by"]) == (
        "lease_expired", 1, "host:4242", "job_monitor",
    )  # fmt: skip

    # The re-driven jobs run (outbox_relay would push them; here the test does) and the incident clears.
    pushed = [(await relay_unpushed(db, arq_redis, grace_s=0, ttl_s=600))[0] for _ in range(3)]
    assert pushed == [500, 500, 0]
    await drain_queue(settings, REGISTRY)
    assert await owner.fetchval("select count(*) from media_jobs where job_key like 'stalled-%' and"
                                " status = 'completed'") == 1000  # fmt: skip
    await monitor_ticks(settings, db, arq_redis, database_url)
    assert (await alerts(owner, "jobs_stalled:t_count"))[0]["status"] == "resolved"
    assert [p["body"]["alert"]["event"] for p in receiver.posts] == ["opened", "resolved"]


async def test_a_process_back_within_the_grace_is_recorded_and_never_paged(
    db: Database, owner: asyncpg.Connection, arq_redis: ArqRedis, database_url: str, redis_url: str,
    receiver: Receiver,
) -> None:
    missing = settings_for(database_url, redis_url, receiver, alert_expected_roles=["media_worker"])
    # Just after a monitor starts leading, processes may not have reported yet: nothing is opened.
    await monitor_ticks(missing, db, arq_redis, database_url, grace_s=3600)
    assert await alerts(owner, "role_missing:media_worker") == []
    await monitor_ticks(missing, db, arq_redis, database_url)
    (alert,) = await alerts(owner, "role_missing:media_worker")
    assert alert["summary"] == "no live media_worker process" and alert["severity"] == "critical"
    assert alert["notify"] == "opened" and alert["notify_after"] > alert["opened_at"]  # held for the grace
    back = settings_for(database_url, redis_url, receiver)  # the role is no longer missing
    await monitor_ticks(back, db, arq_redis, database_url)
    (alert,) = await alerts(owner, "role_missing:media_worker")
    assert alert["status"] == "resolved" and alert["notify"] is None
    assert receiver.posts == []


async def test_without_a_webhook_incidents_are_recorded_and_logged_only(
    db: Database, owner: asyncpg.Connection, arq_redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    creator = await make_creator(owner)
    await owner.execute(
        "insert into media_jobs (user_id, job_name, queue, job_key, payload, status, error, finished_at)"
        " values ($1, 't_echo', 'default', 'k1', '{\"text\": \"x\"}', 'failed', 'no', now())", creator,
    )  # fmt: skip
    await monitor_ticks(settings_for(database_url, redis_url, None), db, arq_redis, database_url)
    (alert,) = await alerts(owner, "jobs_dead:t_echo")
    assert alert["status"] == "open" and alert["notify"] is None
    assert alert["delivery_error"] == "not sent: no ALERT_WEBHOOK_URL set"


async def test_queue_age_pages_for_a_waiting_queue_and_not_while_it_is_paused(
    db: Database, owner: asyncpg.Connection, arq_redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    from geniehelper.ops import queues

    creator = await make_creator(owner)
    name = "agedq"
    await owner.execute(
        "insert into media_jobs (user_id, job_name, queue, job_key, payload, status, run_at, created_at) "
        "values ($1, 't_count', $2, 'aged:1', '{}', 'queued', now() - interval '10 minutes', "
        "now() - interval '10 minutes')",
        creator, name,
    )  # fmt: skip
    settings = settings_for(database_url, redis_url, None, queues={name: {"concurrency": 1}}, alert_queue_age_s=60)
    await monitor_ticks(settings, db, arq_redis, database_url)
    (opened,) = await alerts(owner, f"queue_age:{name}")
    assert opened["status"] == "open" and "oldest 6" in opened["summary"]

    async with db.system_tx() as conn:  # paused on purpose: the incident clears, no new one opens
        assert await queues.pause(conn, settings, name, "alice", "maintenance")
    await monitor_ticks(settings, db, arq_redis, database_url)
    assert [a["status"] for a in await alerts(owner, f"queue_age:{name}")] == ["resolved"]
    async with db.system_tx() as conn:
        assert await queues.resume(conn, settings, name, "alice")
    await monitor_ticks(settings, db, arq_redis, database_url)
    assert [a["status"] for a in await alerts(owner, f"queue_age:{name}")] == ["resolved", "open"]


async def test_a_platform_whose_connections_fail_their_scrapes_is_one_incident_until_they_recover(
    db: Database, owner: asyncpg.Connection, arq_redis: ArqRedis, database_url: str, redis_url: str
) -> None:
    creators = [await make_creator(owner) for _ in range(3)]
    for n, (creator, health) in enumerate(zip(creators, ["unhealthy", "unhealthy", "auth_expired"], strict=True)):
        await owner.execute(
            "insert into platform_connections (user_id, platform, external_account_id, health, health_reason,"
            " last_health_check_at) values ($1, 'flaky', $2, $3, $4, now())",
            creator, f"acct-{n}", health, "HTTP 503 from the platform" if health == "unhealthy" else "token expired",
        )  # fmt: skip
    settings = settings_for(database_url, redis_url, None)
    await monitor_ticks(settings, db, arq_redis, database_url, n=2)
    (opened,) = await alerts(owner, "platform_unhealthy:flaky")  # one incident for the platform, not per tick
    assert opened["status"] == "open" and opened["severity"] == "warning"
    assert opened["summary"] == (
        "2 flaky connections unhealthy at the last scrape; last reason: HTTP 503 from the platform"
    )
    assert (opened["details"]["count"], opened["details"]["auth_expired"]) == (2, 1)

    await owner.execute("update platform_connections set health = 'healthy' where platform = 'flaky'"
                        " and health = 'unhealthy'")  # fmt: skip
    await monitor_ticks(settings, db, arq_redis, database_url)
    assert [a["status"] for a in await alerts(owner, "platform_unhealthy:flaky")] == ["resolved"]
