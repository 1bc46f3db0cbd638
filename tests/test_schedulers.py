"""The scheduler base: one leader among copies, failover when the leader dies."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from typing import ClassVar

import psutil

from geniehelper.health import read_health
from geniehelper.runtime.transport import create_arq_redis
from geniehelper.settings import Settings
from schedulers.base import Scheduler, SchedulerContext, SchedulerRunner, TickResult
from tests.helpers import BIN, spawn, wait_until


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


async def test_two_copies_elect_one_leader_and_the_other_takes_over(database_url: str, redis_url: str) -> None:
    settings = Settings(database_url=database_url, redis_url=redis_url, scheduler_jitter_s=0, health_interval_s=1)
    ticks: list[tuple[str, float]] = []
    first = SchedulerRunner(RecordingScheduler("a", ticks), settings, database_url, redis_url)
    second = SchedulerRunner(RecordingScheduler("b", ticks), settings, database_url, redis_url)
    task_a = asyncio.create_task(first.run())
    await asyncio.sleep(0.5)
    task_b = asyncio.create_task(second.run())
    await asyncio.sleep(1.5)
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
