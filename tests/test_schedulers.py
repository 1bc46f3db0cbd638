"""The scheduler base: one leader among copies, failover, several schedulers in one process, and
surviving PostgreSQL and Redis outages (real processes against a proxy that goes down)."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import psutil
import pytest
from arq.connections import ArqRedis

from geniehelper.db import Database, connect_owner
from geniehelper.embedded import free_port
from geniehelper.health import read_health
from geniehelper.runtime.transport import create_arq_redis
from geniehelper.settings import Settings
from schedulers.base import Scheduler, SchedulerContext, SchedulerRunner, TickResult
from schedulers.host import SchedulerHost
from tests.conftest import make_creator
from tests.helpers import BIN, ProcessOutput, base_env, spawn, wait_until


class RecordingScheduler(Scheduler):
    name: ClassVar[str] = "test_recording"

    def __init__(self, label: str, ticks: list[tuple[str, float]]) -> None:
        self.label = label
        self.ticks = ticks

    def interval_s(self, settings: Settings) -> float:
        return 0.3

    async def tick(self, ctx: SchedulerContext) -> TickResult:
        self.ticks.append((self.label, time.monotonic()))
        return TickResult(found=1)


async def wait_for_state(condition: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "state not reached in time"
        await asyncio.sleep(0.02)


async def test_two_copies_elect_one_leader_and_the_other_takes_over(database_url: str, redis_url: str) -> None:
    settings = Settings(database_url=database_url, redis_url=redis_url, scheduler_jitter_s=0, health_interval_s=1)
    ticks: list[tuple[str, float]] = []
    first = SchedulerRunner(RecordingScheduler("a", ticks), settings, database_url, redis_url)
    second = SchedulerRunner(RecordingScheduler("b", ticks), settings, database_url, redis_url)
    task_a = asyncio.create_task(first.run())
    await wait_for_state(lambda: first.is_leader)
    task_b = asyncio.create_task(second.run())
    # b retries the lock every 0.3 s: over a's next four ticks it has tried several times.
    await wait_for_state(lambda: len(ticks) >= 5)
    assert {label for label, _ in ticks} == {"a"}
    assert first.is_leader and not second.is_leader

    # The leader dies abruptly: its PostgreSQL session (and so its lock) goes away with it.
    task_a.cancel()
    assert first._lock_conn is not None
    first._lock_conn.terminate()
    died_at = time.monotonic()
    assert await asyncio.wait_for(_until(lambda: any(label == "b" for label, _ in ticks)), 10)
    took_over_after = next(t for label, t in ticks if label == "b") - died_at
    assert took_over_after < 0.3 + 1.0  # within one interval (plus scheduling slack)
    second.stop.set()
    await asyncio.wait_for(task_b, 10)
    await asyncio.gather(task_a, return_exceptions=True)


async def _until(condition: object) -> bool:
    while not condition():  # type: ignore[operator]
        await asyncio.sleep(0.05)
    return True


async def test_scheduler_processes_fail_over_after_sigkill(
    project_env: dict[str, str], database_url: str, redis_url: str
) -> None:
    env = dict(project_env, DATABASE_URL=database_url, OUTBOX_RELAY_INTERVAL_S="1", SCHEDULER_JITTER_S="0",
               HEALTH_INTERVAL_S="0.5", LOG_FORMAT="json")  # fmt: skip
    copies = [spawn([str(BIN / "geniehelper"), "scheduler", "outbox_relay"], env) for _ in range(2)]
    redis = await create_arq_redis(redis_url)
    try:
        for copy in copies:
            copy.wait_for(r'"event": "process.ready"')

        async def leaders() -> list[int]:
            found = await read_health(redis)
            return [p.pid for p in found if p.role == "outbox_relay" and p.details["leader"]]

        deadline = time.monotonic() + 15
        while len(await leaders()) != 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        (leader_pid,) = await leaders()
        leader = next(c for c in copies if c.proc.pid == leader_pid)
        standby = next(c for c in copies if c.proc.pid != leader_pid)
        assert '"event": "scheduler.tick"' in leader.text()
        assert '"event": "scheduler.tick"' not in standby.text()

        psutil.Process(leader_pid).kill()
        standby.wait_for(r'"event": "scheduler.leader"', timeout_s=10)
        tick = json.loads(standby.wait_for(r'^(\{.*"event": "scheduler.tick".*\})$', timeout_s=10)[0].group(1))
        assert tick["scheduler"] == "outbox_relay" and tick["found"] == 0 and "took_ms" in tick
        assert wait_until(lambda: standby.proc.poll() is None, 1)
    finally:
        for copy in copies:
            if copy.proc.poll() is None:
                copy.proc.send_signal(signal.SIGTERM)
        for copy in copies:
            copy.proc.wait(20)
        await redis.aclose()
    assert copies[0].proc.returncode in (0, -9) and copies[1].proc.returncode in (0, -9)


# --- one process, several schedulers ---------------------------------------------------------------


class HealthyScheduler(RecordingScheduler):
    name: ClassVar[str] = "test_host_healthy"


class AlwaysFailingScheduler(Scheduler):
    name: ClassVar[str] = "test_host_failing"

    def __init__(self) -> None:
        self.attempts = 0

    def interval_s(self, settings: Settings) -> float:
        return 0.3

    async def tick(self, ctx: SchedulerContext) -> TickResult:
        self.attempts += 1
        raise RuntimeError(f"boom #{self.attempts}")


class CrashingScheduler(Scheduler):
    """Raises outside the guarded steps (its interval), so its whole loop crashes each time it starts."""

    name: ClassVar[str] = "test_host_crashing"

    def __init__(self) -> None:
        self.starts = 0

    def interval_s(self, settings: Settings) -> float:
        self.starts += 1
        raise ValueError("no interval today")

    async def tick(self, ctx: SchedulerContext) -> TickResult:
        raise AssertionError("never reached")


async def test_host_keeps_one_scheduler_ticking_while_others_fail_every_time(
    database_url: str, redis_url: str, arq_redis: ArqRedis
) -> None:
    settings = Settings(database_url=database_url, redis_url=redis_url, scheduler_jitter_s=0, health_interval_s=0.2)
    ticks: list[tuple[str, float]] = []
    failing, crashing = AlwaysFailingScheduler(), CrashingScheduler()
    host = SchedulerHost([HealthyScheduler("ok", ticks), failing, crashing], settings, database_url, redis_url,
                         role="test_host")  # fmt: skip
    task = asyncio.create_task(host.run())
    try:
        assert await _eventually(lambda: len(ticks) >= 8 and failing.attempts >= 3 and crashing.starts >= 3, 20)
        assert not task.done()

        async def health_of() -> dict[str, dict[str, Any]]:
            return {p.role: p.details for p in await read_health(arq_redis)}

        # The crashing one never gets as far as its own health key; the host's key reports it.
        roles = {"test_host", HealthyScheduler.name, AlwaysFailingScheduler.name}
        assert await _eventually_async(lambda: _has_roles(health_of, roles), 5)
        found = await health_of()
        healthy, bad = found["test_host_healthy"], found["test_host_failing"]
        assert healthy["leader"] and healthy["ticks"] >= 5 and healthy["failing"] is False  # a beat lags a little
        assert bad["leader"] and bad["ticks"] == 0 and bad["failing"] is True and bad["failures"] >= 3
        assert bad["last_error"].startswith("tick_failed: RuntimeError: boom #")
        assert found["test_host"]["failing"] == ["test_host_failing", "test_host_crashing"]
        assert set(found["test_host"]["leading"]) == {"test_host_healthy", "test_host_failing"}
        # The failing one backs off (0.5, 1, 2, ... s), it does not spin: few attempts for many healthy ticks.
        assert failing.attempts <= 6
        # The healthy one kept its interval throughout.
        gaps = [b - a for (_, a), (_, b) in itertools.pairwise(ticks)]
        assert max(gaps) < 0.3 + 0.5, gaps
    finally:
        host.stop.set()
        await asyncio.wait_for(task, 10)
    # Stopped cleanly: every health key of the host is gone, every lock released.
    assert not [p for p in await read_health(arq_redis) if p.role.startswith("test_host")]
    assert all(r._lock_conn is None and not r.is_leader for r in host.runners)


async def _has_roles(health_of: Any, roles: set[str]) -> bool:
    return roles <= set(await health_of())


async def _eventually(condition: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def _eventually_async(condition: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not await condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


# --- outages: a real scheduler process, its server behind a proxy that goes down -----------------


class OutageProxy:
    """A TCP proxy on loopback to a real server, in a thread of its own. `down()` drops every connection
    and refuses new ones (nothing listens on the port), `up()` listens again on the same port."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def __enter__(self) -> OutageProxy:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.down()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def up(self) -> None:
        asyncio.run_coroutine_threadsafe(self._up(), self._loop).result(10)

    def down(self) -> None:
        asyncio.run_coroutine_threadsafe(self._down(), self._loop).result(10)

    def url(self, url: str) -> str:
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        return urlunsplit(parts._replace(netloc=f"{userinfo + '@' if userinfo else ''}127.0.0.1:{self.port}"))

    async def _up(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _down(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        pair = {writer, up_writer}
        self._writers |= pair

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except OSError:
                pass
            finally:
                for w in pair:
                    w.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= pair


SCHEDULER_NAMES = ("dispatcher", "job_monitor", "job_retention", "outbox_relay", "post_scheduler")


def _scheduler_env(project_env: dict[str, str], **extra: str) -> dict[str, str]:
    defaults = {"POST_SCHEDULER_INTERVAL_S": "1", "OUTBOX_RELAY_INTERVAL_S": "1", "JOB_RETENTION_INTERVAL_S": "1",
                "SCHEDULER_JITTER_S": "0",
                "HEALTH_INTERVAL_S": "0.5", "LOG_FORMAT": "json"}  # fmt: skip
    return {**project_env, **defaults, **extra}


def _events(out: ProcessOutput, event: str, **fields: object) -> list[dict[str, Any]]:
    """The JSON log records of `out` whose event matches the regex `event` and that carry `fields`."""
    pattern = re.compile(rf'"event": "{event}"')
    found = []
    for line in list(out.lines):
        if not pattern.search(line):
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if all(record.get(k) == v for k, v in fields.items()):
            found.append(record)
    return found


def _wait_events(
    out: ProcessOutput, event: str, count: int = 1, timeout_s: float = 15, **fields: object
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while len(found := _events(out, event, **fields)) < count:
        what = f"{count}x {event} {fields}"
        assert out.proc.poll() is None, f"exited ({out.proc.returncode}) before {what}:\n{out.text()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{out.text()}"
        time.sleep(0.05)
    return found


def _health(project_env: dict[str, str], *roles: str) -> tuple[int, dict[str, Any]]:
    result = subprocess.run(
        [str(BIN / "geniehelper"), "health", "--json", *[a for role in roles for a in ("--role", role)]],
        env=project_env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return result.returncode, json.loads(result.stdout)


def _stay_up_until(out: ProcessOutput, until: float) -> None:
    """The outage lasts until `until` (monotonic); the process must stay up all along."""
    while time.monotonic() < until:
        assert out.proc.poll() is None, f"exited ({out.proc.returncode}) during the outage:\n{out.text()}"
        time.sleep(0.1)


def _stop(out: ProcessOutput) -> int:
    if out.proc.poll() is None:
        out.proc.send_signal(signal.SIGTERM)
    try:
        return out.proc.wait(20)
    except subprocess.TimeoutExpired:
        out.proc.kill()
        raise


OUTAGE_S = 10.0


def test_scheduler_host_survives_a_postgresql_outage_and_resumes(
    project_env: dict[str, str], database_url: str, redis_url: str
) -> None:
    with OutageProxy(urlsplit(database_url).port or 5432) as proxy:
        proxy.up()
        env = _scheduler_env(project_env, DATABASE_URL=proxy.url(database_url))
        out = spawn([str(BIN / "geniehelper"), "scheduler", "all"], env)
        try:
            for name in SCHEDULER_NAMES:
                _wait_events(out, "scheduler.tick", scheduler=name)

            proxy.down()  # every PostgreSQL connection of the process dies; new ones are refused
            outage_ends = time.monotonic() + OUTAGE_S
            for name in SCHEDULER_NAMES:
                _wait_events(out, r"scheduler\.\w+_failed", scheduler=name)
            # Meanwhile `geniehelper health` shows every scheduler alive but failing, with the error.
            deadline = time.monotonic() + 8
            while True:
                code, report = _health(project_env, "scheduler", *SCHEDULER_NAMES)
                if set(report["failing_roles"]) >= {"scheduler", *SCHEDULER_NAMES} or time.monotonic() > deadline:
                    break
            assert code == 0 and report["missing_roles"] == []
            assert set(report["failing_roles"]) >= {"scheduler", *SCHEDULER_NAMES}, report
            errors = {p["role"]: p["details"].get("last_error") for p in report["processes"]}
            assert all(errors[name] for name in SCHEDULER_NAMES), errors
            _stay_up_until(out, outage_ends)

            failures = {n: _events(out, r"scheduler\.\w+_failed", scheduler=n) for n in SCHEDULER_NAMES}
            ticks_before = {n: len(_events(out, "scheduler.tick", scheduler=n)) for n in SCHEDULER_NAMES}
            proxy.up()
            for name in SCHEDULER_NAMES:
                _wait_events(out, "scheduler.tick", ticks_before[name] + 1, timeout_s=15, scheduler=name)
                _wait_events(out, "scheduler.recovered", scheduler=name)
            # It backed off during the outage (0.5 s doubling, capped at 10 s): a handful of tries, no spin.
            for name, records in failures.items():
                delays = [r["retry_in_s"] for r in records]
                assert 1 <= len(records) <= 8 and delays == sorted(delays) and max(delays) <= 10, (name, delays)
            deadline = time.monotonic() + 8
            while (report := _health(project_env, *SCHEDULER_NAMES)[1])["failing_roles"]:
                assert time.monotonic() < deadline, report
            assert report["failing_roles"] == [] and report["missing_roles"] == []
        finally:
            code = _stop(out)
    assert code == 0, out.text()
    assert '"event": "process.stopped"' in out.text()


def test_scheduler_host_survives_a_redis_outage_and_resumes(
    project_env: dict[str, str], database_url: str, redis_url: str
) -> None:
    roles = ("scheduler", *SCHEDULER_NAMES)
    with OutageProxy(urlsplit(redis_url).port or 6379) as proxy:
        proxy.up()
        env = _scheduler_env(project_env, DATABASE_URL=database_url, REDIS_URL=proxy.url(redis_url))
        out = spawn([str(BIN / "geniehelper"), "scheduler", "all"], env)
        try:
            for name in SCHEDULER_NAMES:
                _wait_events(out, "scheduler.tick", scheduler=name)
            assert _health(project_env, *roles)[0] == 0

            proxy.down()
            outage_ends = time.monotonic() + OUTAGE_S
            _wait_events(out, r"health\.beat_failed")
            # Its health keys cannot be refreshed, so they expire: `health` reports the roles missing.
            # Each key expires on its own clock (its last beat), so wait until all have gone.
            deadline = time.monotonic() + 8
            while (result := _health(project_env, *roles))[1]["missing_roles"] != sorted(roles):
                if time.monotonic() > deadline:
                    break
            assert result[0] == 1 and result[1]["missing_roles"] == sorted(roles), result
            _stay_up_until(out, outage_ends)

            ticks_before = {n: len(_events(out, "scheduler.tick", scheduler=n)) for n in SCHEDULER_NAMES}
            proxy.up()
            for name in SCHEDULER_NAMES:
                _wait_events(out, "scheduler.tick", ticks_before[name] + 2, timeout_s=15, scheduler=name)
            deadline = time.monotonic() + 10
            while (result := _health(project_env, *roles))[0] != 0 and time.monotonic() < deadline:
                pass
            assert result[0] == 0 and result[1]["missing_roles"] == [], result
        finally:
            code = _stop(out)
    assert code == 0, out.text()


def test_scheduler_waits_for_servers_at_start_and_still_stops_promptly(
    project_env: dict[str, str], database_url: str, redis_url: str
) -> None:
    with (
        OutageProxy(urlsplit(database_url).port or 5432) as pg,
        OutageProxy(urlsplit(redis_url).port or 6379) as rd,
    ):
        env = _scheduler_env(project_env, DATABASE_URL=pg.url(database_url), REDIS_URL=rd.url(redis_url))
        waiting = spawn([str(BIN / "geniehelper"), "scheduler", "outbox_relay"], env)
        stopped = spawn([str(BIN / "geniehelper"), "scheduler", "all"], env)
        try:
            # Nothing listens: both keep retrying (with a log line each time) instead of exiting.
            _wait_events(waiting, "scheduler.connect_failed", 2, timeout_s=20, server="redis")
            _wait_events(stopped, "scheduler.connect_failed", server="redis")
            # SIGTERM while retrying stops at once, cleanly.
            stopped.proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            assert stopped.proc.wait(10) == 0, stopped.text()
            assert time.monotonic() - signalled < 3, stopped.text()

            rd.up()  # Redis first: it connects, then waits for PostgreSQL
            _wait_events(waiting, "scheduler.connect_failed", timeout_s=20, server="postgresql")
            assert not _events(waiting, "process.ready")
            pg.up()
            _wait_events(waiting, "process.ready", timeout_s=20)
            tick = _wait_events(waiting, "scheduler.tick", scheduler="outbox_relay")[0]
            assert tick["found"] == 0
            delays = [r["retry_in_s"] for r in _events(waiting, "scheduler.connect_failed")]
            assert delays == sorted(delays) and delays[0] == 0.5 and max(delays) <= 10, delays
        finally:
            code = _stop(waiting)
            _stop(stopped)
    assert code == 0, waiting.text()


# --- post_scheduler's next-due floor ----------------------------------------------------------------


async def test_due_post_locked_by_another_transaction_does_not_make_post_scheduler_spin(
    project_env: dict[str, str], db: Database, owner: asyncpg.Connection, database_url: str, owner_url: str,
    redis_url: str,
) -> None:
    user_id = await make_creator(owner, tier="pro")
    async with db.creator_tx(user_id) as conn:
        connection_id = await conn.fetchval(
            "insert into platform_connections (user_id, platform, external_account_id) values ($1, 'sandbox', 'a1')"
            " returning id", user_id,
        )  # fmt: skip
        post_id = await conn.fetchval("insert into content_posts (user_id, caption) values ($1, 'hi') returning id",
                                      user_id)  # fmt: skip
        scheduled_id = await conn.fetchval(
            "insert into scheduled_posts (user_id, content_post_id, platform_connection_id, platform, scheduled_time)"
            " values ($1, $2, $3, 'sandbox', now() - interval '1 second') returning id",
            user_id, post_id, connection_id,
        )  # fmt: skip
    # Another transaction holds the due row: the claim (FOR UPDATE SKIP LOCKED) passes it over.
    locker = await connect_owner(owner_url)
    lock = locker.transaction()
    await lock.start()
    await locker.execute("select id from scheduled_posts where id = $1 for update", scheduled_id)
    env = _scheduler_env(project_env, DATABASE_URL=database_url, POST_SCHEDULER_INTERVAL_S="60")
    out = spawn([str(BIN / "geniehelper"), "scheduler", "post_scheduler"], env)
    try:
        await asyncio.to_thread(_wait_events, out, "scheduler.tick", scheduler="post_scheduler")
        window_s = 3.0
        before = len(_events(out, "scheduler.tick"))
        await asyncio.to_thread(_stay_up_until, out, time.monotonic() + window_s)
        during = _events(out, "scheduler.tick")[before:]
        # Without the floor this is hundreds of ticks (the next due post is always "now"); with it, 4 a second.
        assert 3 <= len(during) <= window_s / 0.25 + 4, len(during)
        assert all(t["found"] == 0 for t in during)
        assert await owner.fetchval("select status from scheduled_posts where id = $1", scheduled_id) == "scheduled"

        await lock.rollback()  # released: the next check (at most 0.25 s away) dispatches it
        released = time.monotonic()
        claimed = await asyncio.to_thread(_wait_events, out, "scheduler.tick", 1, 10, found=1)
        assert claimed[0]["scheduler"] == "post_scheduler" and time.monotonic() - released < 3
        assert await owner.fetchval("select status from scheduled_posts where id = $1", scheduled_id) != "scheduled"
    finally:
        if not locker.is_closed():
            await locker.close()
        code = await asyncio.to_thread(_stop, out)
    assert code == 0, out.text()


# --- settings: a bad server URL is one line, not a traceback ----------------------------------------


@pytest.mark.parametrize("command", [["worker", "default"], ["scheduler", "post_scheduler"]])
@pytest.mark.parametrize(
    ("variable", "value"),
    [("REDIS_URL", "not-a-url"), ("DATABASE_URL", "mysql://x"), ("DATABASE_URL", "mysql://admin:hunter2@db/app")],
)
def test_bad_server_url_stops_the_process_with_one_line_naming_the_variable(
    command: list[str], variable: str, value: str
) -> None:
    valid = {"DATABASE_URL": "postgresql://app@127.0.0.1:1/app", "REDIS_URL": "redis://127.0.0.1:1/0"}
    env = base_env(**{**valid, variable: value})
    result = subprocess.run([str(BIN / "geniehelper"), *command], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"geniehelper: invalid setting {variable}='"), lines[0]
    assert "hunter2" not in result.stderr + result.stdout
    if "hunter2" in value:
        assert "mysql://admin:***@db/app" in lines[0]
