"""The on-call CLI for real: `geniehelper jobs|queues|alerts` as subprocesses on the module's database.

The records are arranged as the schema owner (or by real enqueues and workers), the commands run as
processes do (the login role), and every test reads back what the command did to the records, to
Redis and to ops_actions.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import subprocess
import uuid
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from arq.connections import ArqRedis

from geniehelper.db import Database
from geniehelper.ops.alerts import Finding, reconcile
from geniehelper.runtime.definition import queue_key
from geniehelper.runtime.queue import JobQueue
from geniehelper.settings import Settings
from tests import jobs_for_tests
from tests.conftest import make_creator
from tests.helpers import BIN, drain_queue

ROOT = Path(__file__).resolve().parent.parent
REGISTRY = jobs_for_tests.REGISTRY


@pytest.fixture
def env(project_env: dict[str, str], database_url: str, redis_url: str) -> dict[str, str]:
    """The CLI's environment: this module's servers, the test jobs as the registry (for retries)."""
    return dict(
        project_env, DATABASE_URL=database_url, REDIS_URL=redis_url, PYTHONPATH=str(ROOT), LOG_FORMAT="json",
        JOB_PACKAGES=json.dumps(["tests.jobs_for_tests"]), USER="oncall-test",
    )  # fmt: skip


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI without a terminal (stdin is /dev/null)."""
    return subprocess.run([str(BIN / "geniehelper"), *args], env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


async def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(run, env, *args)


def run_on_terminal(env: dict[str, str], answer: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI with a real terminal (a pty) on stdin, answering its question with `answer`."""
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen([str(BIN / "geniehelper"), *args], env=env, stdin=follower, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
        os.close(follower)
        os.write(leader, f"{answer}\n".encode())
        out, err = proc.communicate(timeout=120)
    finally:
        os.close(leader)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def settings_for(database_url: str, redis_url: str) -> Settings:
    return Settings(database_url=database_url, redis_url=redis_url, job_heartbeat_interval_s=0.2)


async def insert_job(
    owner: asyncpg.Connection, creator: UUID | None, job_name: str = "t_count", *, status: str = "failed",
    counter: str | None = None, error: str | None = None, age: str = "1 second", queue: str = "default",
    key: str | None = None, run_in: str = "-1 second",
) -> UUID:
    """A record as the runtime leaves it (finished ones with finished_at), created `age` ago."""
    job_id: UUID = await owner.fetchval(
        "insert into media_jobs (user_id, job_name, queue, job_key, payload, status, attempts, max_attempts, error,"
        "                        created_at, run_at, finished_at, enqueued_at)"
        " values ($1, $2, $3, $4, $5, $6, case when $6 = 'queued' then 0 else 3 end, 3, $7,"
        "         now() - $8::text::interval, now() + $9::text::interval,"
        "         case when $6 in ('completed', 'failed', 'cancelled') then now() - $8::text::interval end, now())"
        " returning id",
        creator, job_name, queue, key or f"{job_name}:{uuid.uuid4()}", {"counter": counter or uuid.uuid4().hex},
        status, error, age, run_in,
    )  # fmt: skip
    return job_id


async def record(owner: asyncpg.Connection, job_id: UUID) -> dict[str, Any]:
    row = await owner.fetchrow("select * from media_jobs where id = $1", job_id)
    assert row is not None
    return dict(row)


async def actions(owner: asyncpg.Connection, action: str, actor: str) -> list[dict[str, Any]]:
    rows = await owner.fetch("select * from ops_actions where action = $1 and actor = $2 order by id", action, actor)
    return [dict(r) for r in rows]


def one_line_usage_error(result: subprocess.CompletedProcess[str], argument: str) -> None:
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert argument in result.stderr, result.stderr


async def test_list_filters_by_status_job_error_creator_and_age_newest_first(
    owner: asyncpg.Connection, env: dict[str, str]
) -> None:
    creator, other = await make_creator(owner), await make_creator(owner)
    timeout = await insert_job(owner, creator, error="Platform TIMEOUT after 30s", age="2 hours")
    forbidden = await insert_job(owner, creator, "t_permanent", error="403 forbidden", age="3 days")
    done = await insert_job(owner, creator, status="completed", age="10 minutes")
    waiting = await insert_job(owner, creator, "t_echo", status="queued")
    await insert_job(owner, other, error="Platform TIMEOUT after 30s")

    async def ids(*filters: str) -> list[UUID]:
        result = await cli(env, "jobs", "list", "--creator", str(creator), *filters, "--json")
        assert result.returncode == 0, result.stderr
        return [UUID(j["id"]) for j in json.loads(result.stdout)]

    assert await ids() == [waiting, done, timeout, forbidden]  # newest first, only this creator's
    assert await ids("--status", "failed") == [timeout, forbidden]
    assert await ids("--status", "failed", "--status", "queued") == [waiting, timeout, forbidden]
    assert await ids("--job", "t_count") == [done, timeout]
    assert await ids("--error", "timeout") == [timeout]  # any case, a substring
    assert await ids("--older-than", "1h") == [timeout, forbidden]
    assert await ids("--newer-than", "1d") == [waiting, done, timeout]
    assert await ids("--older-than", "30m", "--newer-than", "1d") == [timeout]
    assert await ids("--limit", "1") == [waiting]

    listed = json.loads((await cli(env, "jobs", "list", "--creator", str(creator), "--json", "--limit", "1")).stdout)
    assert (listed[0]["job_name"], listed[0]["status"], listed[0]["user_id"]) == ("t_echo", "queued", str(creator))
    table = await cli(env, "jobs", "list", "--creator", str(creator), "--status", "failed")
    assert table.returncode == 0
    header, first, second = table.stdout.splitlines()
    assert header.split() == ["ID", "JOB", "QUEUE", "STATUS", "TRIES", "AGE", "ERROR"]
    assert first.split()[:6] == [str(timeout), "t_count", "default", "failed", "3/3", "2h"]
    assert first.endswith("Platform TIMEOUT after 30s") and second.split()[5] == "3d"

    nothing = await cli(env, "jobs", "list", "--creator", str(uuid.uuid4()))
    assert nothing.returncode == 1 and nothing.stdout == "" and "no jobs match" in nothing.stderr
    one_line_usage_error(await cli(env, "jobs", "list", "--creator", "not-a-uuid"), "--creator")
    one_line_usage_error(await cli(env, "jobs", "list", "--older-than", "5x"), "--older-than")
    one_line_usage_error(await cli(env, "jobs", "list", "--status", "stuck"), "--status")


async def test_show_gives_the_whole_record_with_its_attempt_history(
    db: Database, owner: asyncpg.Connection, arq_redis: ArqRedis, database_url: str, redis_url: str,
    env: dict[str, str],
) -> None:
    creator = await make_creator(owner)
    job = await JobQueue(db, arq_redis, REGISTRY).enqueue(
        "t_count", {"counter": f"show-{uuid.uuid4().hex}", "fail_first": 1}, user_id=creator
    )
    await drain_queue(settings_for(database_url, redis_url), REGISTRY)

    result = await cli(env, "jobs", "show", str(job.id), "--json")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert (shown["id"], shown["status"], shown["attempts"], shown["user_id"]) == (str(job.id), "completed", 2,
                                                                                   str(creator))  # fmt: skip
    assert shown["payload"]["fail_first"] == 1 and shown["result"] == {"runs": 1}
    (retry,) = shown["history"]
    assert (retry["event"], retry["attempt"], retry["error_kind"]) == ("retry", 1, "transient")
    assert retry["error"] == "TransientJobError: planned failure 1 of 1" and retry["worker"]

    text = await cli(env, "jobs", "show", str(job.id))
    assert text.returncode == 0
    assert "completed (attempt 2 of 3" in text.stdout
    assert "history:" in text.stdout and "retry  attempt 1" in text.stdout and "planned failure 1 of 1" in text.stdout
    assert '"runs": 1' in text.stdout

    missing = await cli(env, "jobs", "show", str(uuid.uuid4()))
    assert missing.returncode == 1 and "no job" in missing.stderr
    one_line_usage_error(await cli(env, "jobs", "show", "12345"), "ID")


async def test_bulk_retry_by_filter_makes_new_records_that_run_and_complete(
    owner: asyncpg.Connection, arq_redis: ArqRedis, database_url: str, redis_url: str, env: dict[str, str]
) -> None:
    creator = await make_creator(owner)
    counters = [f"retry-{n}-{uuid.uuid4().hex[:8]}" for n in range(3)]
    failed = [await insert_job(owner, creator, counter=c, error="upstream 503", age=f"{n + 1} minutes")
              for n, c in enumerate(counters)]  # fmt: skip
    other_job = await insert_job(owner, creator, "t_permanent", error="upstream 503")
    completed = await insert_job(owner, creator, status="completed")
    # Failed, then already run again under its key: a retry by filter leaves it alone.
    await insert_job(owner, creator, error="upstream 503", key="t_count:rerun", age="1 hour")
    await insert_job(owner, creator, status="completed", key="t_count:rerun", age="50 minutes")

    result = await cli(env, "jobs", "retry", "--creator", str(creator), "--job", "t_count", "--error", "503",
                       "--yes", "--json", "--actor", "alice")  # fmt: skip
    assert result.returncode == 0, result.stderr
    retried = json.loads(result.stdout)["retried"]
    assert sorted(UUID(r["id"]) for r in retried) == sorted(failed) and not any(r["duplicate"] for r in retried)
    new_ids = [UUID(r["new_id"]) for r in retried]
    for old_id, new_id in zip((UUID(r["id"]) for r in retried), new_ids, strict=True):
        old, new = await record(owner, old_id), await record(owner, new_id)
        assert old["status"] == "failed" and old["error"] == "upstream 503"  # the old record is left as it was
        assert (new["status"], new["job_key"], new["payload"]["counter"], new["attempts"]) == (
            "queued", old["job_key"], old["payload"]["counter"], 0,
        )  # fmt: skip
        assert new["enqueued_at"] is not None  # pushed to Redis
    assert (await record(owner, other_job))["status"] == "failed"
    assert (await record(owner, completed))["status"] == "completed"
    (action,) = await actions(owner, "jobs.retry", "alice")
    assert action["affected"] == 3 and sorted(action["target"]["new_jobs"]) == sorted(map(str, new_ids))
    assert action["target"]["filter"] == {"job_name": "t_count", "creator": str(creator), "error": "503"}

    await drain_queue(settings_for(database_url, redis_url), REGISTRY)
    for new_id in new_ids:
        assert (await record(owner, new_id))["status"] == "completed"
    for counter in counters:
        assert await arq_redis.get(f"test:{counter}:completed") == b"1"

    # The same filter again: every key has run again since, so nothing matches.
    again = await cli(env, "jobs", "retry", "--creator", str(creator), "--job", "t_count", "--error", "503", "--yes")
    assert again.returncode == 1 and "no jobs match" in again.stderr
    # By id: a completed job is not retried.
    refused = await cli(env, "jobs", "retry", str(completed))
    assert refused.returncode == 1 and "it is completed" in refused.stderr
    assert await owner.fetchval("select count(*) from media_jobs where user_id = $1", creator) == 7 + 3


async def test_a_retry_of_several_jobs_asks_first_and_without_a_terminal_needs_yes(
    owner: asyncpg.Connection, env: dict[str, str]
) -> None:
    creator = await make_creator(owner)
    for _ in range(2):
        await insert_job(owner, creator, error="boom")
    filters = ("jobs", "retry", "--creator", str(creator), "--status", "failed")

    refused = await cli(env, *filters)
    assert refused.returncode == 2 and "add --yes" in refused.stderr and "2 jobs" in refused.stderr
    declined = await asyncio.to_thread(run_on_terminal, env, "n", *filters)
    assert declined.returncode == 1 and "retry 2 jobs? [y/N]" in declined.stderr, declined.stderr
    assert "nothing retried" in declined.stderr
    assert await owner.fetchval("select count(*) from media_jobs where user_id = $1", creator) == 2
    assert not [a for a in await actions(owner, "jobs.retry", "oncall-test")
                if a["target"]["filter"].get("creator") == str(creator)]  # fmt: skip

    accepted = await asyncio.to_thread(run_on_terminal, env, "y", *filters)
    assert accepted.returncode == 0, accepted.stderr
    assert accepted.stdout.startswith("retried 2 jobs:")
    assert await owner.fetchval("select count(*) from media_jobs where user_id = $1 and status = 'queued'",
                                creator) == 2  # fmt: skip
    one_line_usage_error(await cli(env, "jobs", "retry"), "job ID or at least one filter")


async def test_cancel_of_a_queued_job_and_its_later_delivery_does_nothing(
    db: Database, owner: asyncpg.Connection, arq_redis: ArqRedis, database_url: str, redis_url: str,
    env: dict[str, str],
) -> None:
    creator = await make_creator(owner)
    counter = f"cancel-{uuid.uuid4().hex}"
    job = await JobQueue(db, arq_redis, REGISTRY).enqueue("t_count", {"counter": counter}, user_id=creator)
    assert await arq_redis.zcard(queue_key("default")) == 1  # its dispatch waits in Redis
    completed = await insert_job(owner, creator, status="completed")

    result = await cli(env, "jobs", "cancel", str(job.id), "--actor", "bob", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"cancelled": [{"id": str(job.id), "was": "queued"}], "skipped": []}
    cancelled = await record(owner, job.id)
    assert (cancelled["status"], cancelled["error"], cancelled["error_kind"]) == (
        "cancelled", "cancelled by bob", "cancelled",
    )  # fmt: skip
    assert cancelled["finished_at"] is not None
    entry = cancelled["history"][-1]
    assert (entry["event"], entry["by"], entry["attempt"]) == ("cancelled", "bob", 0)
    (action,) = await actions(owner, "jobs.cancel", "bob")
    assert action["affected"] == 1 and action["target"] == {"id": str(job.id), "jobs": [str(job.id)]}

    await drain_queue(settings_for(database_url, redis_url), REGISTRY)  # the stale dispatch is delivered
    after = await record(owner, job.id)
    assert (after["status"], after["attempts"], after["started_at"]) == ("cancelled", 0, None)
    assert await arq_redis.get(f"test:{counter}:attempts") is None  # the job never ran

    for finished in (job.id, completed):  # never touched again
        again = await cli(env, "jobs", "cancel", str(finished))
        assert again.returncode == 1 and "skipped" in again.stderr
    assert (await record(owner, completed))["status"] == "completed"
    assert (await record(owner, job.id))["history"] == cancelled["history"]


async def test_cancel_of_a_running_job_stops_it_and_its_outcome_never_lands(
    db: Database, owner: asyncpg.Connection, arq_redis: ArqRedis, database_url: str, redis_url: str,
    env: dict[str, str],
) -> None:
    creator = await make_creator(owner)
    counter = f"running-{uuid.uuid4().hex}"
    job = await JobQueue(db, arq_redis, REGISTRY).enqueue(
        "t_count", {"counter": counter, "sleep_s": 30}, user_id=creator
    )
    worker = asyncio.create_task(drain_queue(settings_for(database_url, redis_url), REGISTRY))
    try:
        async with asyncio.timeout(30):
            while (await record(owner, job.id))["status"] != "processing":
                await asyncio.sleep(0.05)
        result = await cli(env, "jobs", "cancel", "--creator", str(creator), "--status", "processing", "--json")
        assert result.returncode == 0, result.stderr  # one job matched: no confirmation needed
        assert json.loads(result.stdout)["cancelled"] == [{"id": str(job.id), "was": "processing"}]
        async with asyncio.timeout(15):  # far less than the job's 30 s: its lease loop stopped it
            await worker
    finally:
        worker.cancel()
    after = await record(owner, job.id)
    assert (after["status"], after["attempts"], after["result"]) == ("cancelled", 1, None)
    assert after["history"][-1]["worker"] == after["worker_id"]
    assert await arq_redis.get(f"test:{counter}:attempts") == b"1"
    assert await arq_redis.get(f"test:{counter}:completed") is None  # stopped before it finished


async def test_queues_counts_match_the_records_and_redis(
    owner: asyncpg.Connection, arq_redis: ArqRedis, env: dict[str, str]
) -> None:
    creator = await make_creator(owner)
    name, orphan = f"q{uuid.uuid4().hex[:8]}", f"o{uuid.uuid4().hex[:8]}"
    await insert_job(owner, creator, status="queued", queue=name, age="10 minutes", run_in="-10 minutes")
    await insert_job(owner, creator, status="queued", queue=name)
    await insert_job(owner, creator, status="queued", queue=name, run_in="1 hour")  # not due yet
    await insert_job(owner, creator, status="processing", queue=name)
    for age in ("1 minute", "2 hours", "2 days"):  # the last one is outside the 24 h window
        await insert_job(owner, creator, queue=name, age=age)
    await insert_job(owner, creator, status="completed", queue=name)
    await insert_job(owner, creator, status="queued", queue=orphan)
    await arq_redis.zadd(queue_key(name), {"a:1": 1.0, "b:1": 2.0, "c:1": 3.0})
    env = dict(env, QUEUES=json.dumps({name: {"concurrency": 1}}))

    result = await cli(env, "queues", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["queue"]: row for row in json.loads(result.stdout)}
    mine = rows[name]
    assert {k: mine[k] for k in ("configured", "fair", "redis_depth", "queued", "due", "processing", "failed_24h")} == {
        "configured": True, "fair": False, "redis_depth": 3, "queued": 3, "due": 2, "processing": 1, "failed_24h": 2,
    }  # fmt: skip
    assert 595 <= mine["oldest_due_age_s"] < 900
    assert rows["bulk"]["fair"] is True and rows["default"]["configured"] is True
    assert (rows[orphan]["configured"], rows[orphan]["queued"]) == (False, 1)
    table = await cli(env, "queues")
    assert table.returncode == 0
    (line,) = [row for row in table.stdout.splitlines() if row.startswith(name)]
    assert line.split() == [name, "running", "no", "3", "3", "2", "0", "1", "2", "10m"]


async def test_alerts_list_ack_and_resolve(db: Database, owner: asyncpg.Connection, env: dict[str, str]) -> None:
    async with db.system_tx() as conn:
        await reconcile(conn, ["ops_cli_test"], [
            Finding("ops_cli_test", "first", "critical", "first thing broke"),
            Finding("ops_cli_test", "second", "warning", "second thing is slow"),
        ])  # fmt: skip
    ids = {r["dedup_key"]: r["id"] for r in await owner.fetch("select id, dedup_key from ops_alerts")}
    first, second = ids["ops_cli_test:first"], ids["ops_cli_test:second"]

    listed = await cli(env, "alerts", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert {(a["dedup_key"], a["status"]) for a in json.loads(listed.stdout)} == {
        ("ops_cli_test:first", "open"), ("ops_cli_test:second", "open"),
    }  # fmt: skip
    table = await cli(env, "alerts", "list")
    assert "ops_cli_test:first" in table.stdout and "first thing broke" in table.stdout

    acked = await cli(env, "alerts", "ack", str(first), "--actor", "carol")
    assert acked.returncode == 0 and f"acknowledged alert {first}" in acked.stdout
    row = await owner.fetchrow("select status, acknowledged_by from ops_alerts where id = $1", first)
    assert row is not None and (row["status"], row["acknowledged_by"]) == ("acknowledged", "carol")
    again = await cli(env, "alerts", "ack", str(first), "--actor", "carol")
    assert again.returncode == 1 and "no open alert" in again.stderr

    resolved = await cli(env, "alerts", "resolve", str(first), "--actor", "carol")
    assert resolved.returncode == 0, resolved.stderr
    row = await owner.fetchrow("select status, resolved_by from ops_alerts where id = $1", first)
    assert row is not None and (row["status"], row["resolved_by"]) == ("resolved", "carol")
    done = await owner.fetch("select action, affected from ops_actions where actor = 'carol' order by id")
    assert [(a["action"], a["affected"]) for a in done] == [
        ("alert.acknowledge", 1), ("alert.acknowledge", 0), ("alert.resolve", 1),
    ]  # fmt: skip

    open_now = json.loads((await cli(env, "alerts", "list", "--json")).stdout)
    assert [a["id"] for a in open_now] == [str(second)]
    gone = json.loads((await cli(env, "alerts", "list", "--status", "resolved", "--json")).stdout)
    assert [a["id"] for a in gone] == [str(first)]
    assert (await cli(env, "alerts", "resolve", str(uuid.uuid4()))).returncode == 1
    one_line_usage_error(await cli(env, "alerts", "ack", "nope"), "ID")


async def _health_of(arq_redis: ArqRedis, pid: int) -> dict[str, Any]:
    from geniehelper import health

    found = [p for p in await health.read_health(arq_redis) if p.pid == pid]
    return {"age_s": found[0].age_s, **found[0].details} if found else {}


async def test_a_paused_queue_starts_nothing_until_resumed_and_both_actions_are_recorded(
    owner: asyncpg.Connection, db: Database, arq_redis: ArqRedis, env: dict[str, str]
) -> None:
    from tests.helpers import spawn

    creator = await make_creator(owner)
    queue = JobQueue(db, arq_redis, REGISTRY)
    worker_env = dict(env, HEALTH_INTERVAL_S="0.2", QUEUE_PAUSE_POLL_S="0.2")
    out = spawn([str(BIN / "geniehelper"), "worker", "default"], worker_env)
    try:
        out.wait_for(r'"event": "process.ready"')
        paused = await cli(env, "queues", "pause", "default", "--reason", "platform outage, INC-42", "--actor", "alice")
        assert paused.returncode == 0 and "paused queue default" in paused.stdout, paused.stderr
        await asyncio.to_thread(out.wait_for, r'"event": "worker.paused"')
        # The next health beat (every 0.2 s) reports it.
        for _ in range(100):
            if (await _health_of(arq_redis, out.proc.pid)).get("paused") is True:
                break
            await asyncio.sleep(0.05)
        assert (await _health_of(arq_redis, out.proc.pid))["paused"] is True

        counter = f"pause-{uuid.uuid4().hex[:8]}"
        job = await queue.enqueue("t_count", {"counter": counter}, user_id=creator)
        assert (await record(owner, job.id))["enqueued_at"] is not None  # in Redis, due now
        # The worker polls Redis every 50 ms: three fresh health beats (0.2 s apart) after the push
        # are many chances to start the job.
        beats, last_age = 0, (await _health_of(arq_redis, out.proc.pid))["age_s"]
        while beats < 3:
            age = (await _health_of(arq_redis, out.proc.pid))["age_s"]
            beats, last_age = beats + (age < last_age), age
            await asyncio.sleep(0.05)
        row = await record(owner, job.id)
        assert (row["status"], row["attempts"], row["started_at"]) == ("queued", 0, None)

        shown = json.loads((await cli(env, "queues", "--json")).stdout)
        default = next(q for q in shown if q["queue"] == "default")
        assert (default["paused"], default["paused_by"], default["redis_depth"]) == (True, "alice", 1)
        again = await cli(env, "queues", "pause", "default", "--actor", "bob")
        assert again.returncode == 0 and "already paused by alice" in again.stdout

        resumed = await cli(env, "queues", "resume", "default", "--actor", "alice")
        assert resumed.returncode == 0 and "resumed queue default" in resumed.stdout
        await asyncio.to_thread(out.wait_for, r'"event": "worker.resumed"')
        while (row := await record(owner, job.id))["status"] != "completed":
            await asyncio.sleep(0.05)
    finally:
        out.proc.terminate()
        out.proc.wait(20)
    (resume_action,) = await actions(owner, "queues.resume", "alice")
    assert row["started_at"] > resume_action["at"]  # it started only once resumed
    pauses = await owner.fetch("select actor, affected, target from ops_actions where action = 'queues.pause' "
                               "and target->>'queue' = 'default' order by at")  # fmt: skip
    assert [(p["actor"], p["affected"]) for p in pauses] == [("alice", 1), ("bob", 0)]
    assert pauses[0]["target"]["reason"] == "platform outage, INC-42"
    not_paused = await cli(env, "queues", "resume", "default")
    assert not_paused.returncode == 0 and "was not paused" in not_paused.stdout
    unknown = await cli(env, "queues", "pause", "nosuchqueue")
    assert unknown.returncode == 2 and "no queue 'nosuchqueue' is configured" in unknown.stderr
