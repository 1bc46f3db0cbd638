"""Wake-ups by NOTIFY: a scheduler that polls can also be woken early when the database says there
is work (post_scheduler, segment_evaluator). One LISTEN connection of the system role per scheduler,
reopened by the next wait when it was lost; polling goes on without it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import asyncpg
import structlog

from geniehelper.db import SYSTEM_ROLE
from schedulers.base import SchedulerContext

log = structlog.get_logger("schedulers.wakeups")


class NotifyWakeup:
    def __init__(self, scheduler: str, channel: str, accept: Callable[[str], bool] = lambda _payload: True) -> None:
        self.scheduler = scheduler
        self.channel = channel
        self.accept = accept  # whether a notification's payload is worth waking for
        self.event = asyncio.Event()
        self._listener: asyncpg.Connection | None = None

    async def ensure(self, ctx: SchedulerContext) -> None:
        """Listening, if the database lets us (else polling alone until a later call)."""
        if self._listener is not None and not self._listener.is_closed():
            return
        await self.close()  # never leave an old listener connection behind
        try:
            listener = await asyncpg.connect(ctx.database_url, timeout=10, server_settings={"role": SYSTEM_ROLE})
            await listener.add_listener(self.channel, self._on_notify)
        except Exception as exc:  # polling still works without it; the next wait tries again
            log.warning(f"{self.scheduler}.listen_failed", error=f"{type(exc).__name__}: {exc}")
            return
        self._listener = listener

    async def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                await listener.close(timeout=5)
            except Exception:  # server gone: drop the socket
                listener.terminate()

    async def wait(self, stop: asyncio.Event, timeout_s: float) -> None:
        """Until `stop`, a wake-up, or `timeout_s`; the wake-up stays set until `event.clear()`."""
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self.event.wait())]
        try:
            await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        if self.accept(str(payload)):
            self.event.set()
