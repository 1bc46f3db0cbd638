"""Liveness every process publishes, and what `geniehelper health` checks.

Each process (worker or scheduler) refreshes a Redis key `geniehelper:health:<role>:<host>:<pid>`
every HEALTH_INTERVAL_S, with a TTL of three intervals: a process that died or hung disappears
within seconds (arq's own health key defaults to one hour).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

PREFIX = "geniehelper:health:"
log = structlog.get_logger("geniehelper.health")


def health_key(role: str) -> str:
    return f"{PREFIX}{role}:{socket.gethostname()}:{os.getpid()}"


async def beat(redis: Any, role: str, ttl_s: float, details: dict[str, Any]) -> None:
    value = {"role": role, "host": socket.gethostname(), "pid": os.getpid(), "at": time.time(), **details}
    await redis.set(health_key(role), json.dumps(value), px=int(ttl_s * 1000))


async def beat_forever(
    redis: Any, role: str, interval_s: float, ttl_s: float, details: Callable[[], dict[str, Any]]
) -> None:
    while True:
        try:
            await beat(redis, role, ttl_s, details())
        except Exception as exc:  # Redis down: the key expires and `health` reports us missing
            log.warning("health.beat_failed", error=str(exc))
        await asyncio.sleep(interval_s)


@dataclass(frozen=True)
class ProcessHealth:
    role: str
    host: str
    pid: int
    age_s: float
    details: dict[str, Any]


async def read_health(redis: Any) -> list[ProcessHealth]:
    found = []
    async for key in redis.scan_iter(match=f"{PREFIX}*", count=500):
        raw = await redis.get(key)
        if raw is None:
            continue
        value = json.loads(raw)
        found.append(
            ProcessHealth(
                role=value.pop("role"), host=value.pop("host"), pid=value.pop("pid"),
                age_s=time.time() - value.pop("at"), details=value,
            )
        )  # fmt: skip
    return sorted(found, key=lambda p: (p.role, p.host, p.pid))
