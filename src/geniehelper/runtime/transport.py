"""The Redis-compatible server: arq connections with our JSON serializer, and a config check."""

from __future__ import annotations

import json
from typing import Any

from arq.connections import ArqRedis, RedisSettings, create_pool


def _json_default(value: object) -> object:
    # arq stores a failed job's exception as its result: keep it readable instead of unserialisable.
    if isinstance(value, BaseException):
        return {"error": type(value).__name__, "message": str(value)}
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def wire_dumps(value: Any) -> bytes:
    """The one serializer for arq jobs and results (both directions)."""
    return json.dumps(value, default=_json_default, separators=(",", ":")).encode()


def wire_loads(data: bytes) -> Any:
    return json.loads(data)


def redis_settings(url: str) -> RedisSettings:
    settings = RedisSettings.from_dsn(url)
    # Fail fast instead of arq's default of retrying the first connection for ~5 s per try.
    settings.conn_retries = 3
    settings.conn_retry_delay = 1
    return settings


async def create_arq_redis(url: str) -> ArqRedis:
    pool: ArqRedis = await create_pool(
        redis_settings(url), job_serializer=wire_dumps, job_deserializer=wire_loads
    )
    return pool


async def config_warnings(redis: Any) -> list[str]:
    """What makes this server unsafe as a job queue: it must persist and must never evict jobs."""
    warnings = []
    try:
        config = await redis.config_get("appendonly", "maxmemory-policy")
    except Exception as exc:  # managed servers may forbid CONFIG
        return [f"could not read the server configuration ({exc}); make sure it persists and never evicts"]
    appendonly = config.get("appendonly") or config.get(b"appendonly")
    policy = config.get("maxmemory-policy") or config.get(b"maxmemory-policy")
    if appendonly not in ("yes", b"yes"):
        warnings.append("appendonly is not 'yes': queued jobs are lost if the server restarts")
    if policy not in ("noeviction", b"noeviction"):
        warnings.append(f"maxmemory-policy is {policy!r}, not 'noeviction': the server may evict queued jobs")
    return warnings
