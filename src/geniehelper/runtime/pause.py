"""A worker follows its queue's pause (`geniehelper queues pause|resume`, ops/queues.py).

While its queue is paused a worker starts no new job: arq's own switch, `Worker.allow_pick_jobs`,
is off (the one arq turns off itself on a shutdown signal). Running jobs go on and finish; jobs in
Redis keep their place. The worker asks PostgreSQL every QUEUE_PAUSE_POLL_S through
runtime_paused_queues() (its login may not read queue_pauses itself). When PostgreSQL cannot be
asked, the last answer stands.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import asyncpg
import structlog
from arq.worker import Worker

log = structlog.get_logger("geniehelper.worker")

PAUSED = "select runtime_paused_queues($1::text[])"


class QueuePause:
    def __init__(self, queue: str, interval_s: float) -> None:
        self.queue = queue
        self.interval_s = interval_s
        self.paused = False
        self._unreachable = False

    async def follow(self, ctx: dict[str, Any], current: Callable[[], Worker | None], stop: asyncio.Event) -> None:
        """Until `stop`: ask, then set the current arq worker's switch (a rebuilt worker starts with it on).
        Never turns it on once stopping: arq turned it off for the shutdown."""
        while not stop.is_set():
            resources = ctx.get("resources")  # set by on_startup once the pools are open
            if resources is not None:
                await self._ask(resources.db.records_pool)
            worker = current()
            if worker is not None and not stop.is_set():
                worker.allow_pick_jobs = not self.paused
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval_s)

    async def _ask(self, pool: asyncpg.Pool) -> None:
        try:
            paused = self.queue in await pool.fetchval(PAUSED, [self.queue])
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            if not self._unreachable:
                log.warning("worker.pause_unknown", queue=self.queue, error=str(exc), paused=self.paused,
                            problem="cannot ask whether the queue is paused: the last answer stands")  # fmt: skip
            self._unreachable = True
            return
        self._unreachable = False
        if paused != self.paused:
            self.paused = paused
            log.info("worker.paused" if paused else "worker.resumed", queue=self.queue)
