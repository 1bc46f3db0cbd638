"""Job definitions used only by the runtime tests (real jobs, run by real workers)."""

from __future__ import annotations

import asyncio
from typing import Any

from arq.connections import ArqRedis
from pydantic import Field

from geniehelper.runtime.context import JobContext
from geniehelper.runtime.definition import JobDefinition, JobPayload, Policy
from geniehelper.runtime.registry import JobRegistry
from geniehelper.runtime.resources import ResourceKey
from geniehelper.runtime.retry import PermanentJobError, TransientJobError
from geniehelper.runtime.transport import create_arq_redis
from geniehelper.settings import Settings


class EchoPayload(JobPayload):
    text: str = Field(max_length=100)
    times: int = Field(default=1, ge=1, le=10)


class CountPayload(JobPayload):
    counter: str = Field(max_length=100)
    fail_first: int = Field(default=0, ge=0, le=10)
    sleep_s: float = Field(default=0.0, ge=0, le=60)


async def _open_redis(settings: Settings) -> ArqRedis:
    assert settings.redis_url is not None
    return await create_arq_redis(settings.redis_url)


async def _close_redis(redis: ArqRedis) -> None:
    await redis.aclose()


# Test jobs count their runs in Redis: a resource of their own, opened by the workers that run them.
TEST_REDIS: ResourceKey[ArqRedis] = ResourceKey("test_redis", _open_redis, _close_redis)


async def echo(ctx: JobContext, payload: EchoPayload) -> dict[str, Any]:
    await ctx.progress(50)
    return {"echo": payload.text * payload.times}


async def count(ctx: JobContext, payload: CountPayload) -> dict[str, Any]:
    """Counts its runs in Redis (so tests can see how often it really ran), after optional failures."""
    redis = ctx.resource(TEST_REDIS)
    await redis.incr(f"test:{payload.counter}:attempts")
    if ctx.attempt <= payload.fail_first:
        raise TransientJobError(f"planned failure {ctx.attempt} of {payload.fail_first}")
    if payload.sleep_s:
        await asyncio.sleep(payload.sleep_s)
    runs = await redis.incr(f"test:{payload.counter}:completed")
    return {"runs": runs}


async def permanent(ctx: JobContext, payload: CountPayload) -> None:
    raise PermanentJobError("the platform said no: this will not change on retry")


FAST = Policy(max_attempts=3, backoff_base_s=0.05, backoff_max_s=0.2)

ECHO = JobDefinition("t_echo", EchoPayload, echo)
COUNT = JobDefinition("t_count", CountPayload, count, policy=FAST, resources=(TEST_REDIS,))
PERMANENT = JobDefinition("t_permanent", CountPayload, permanent, policy=FAST)
SLOW = JobDefinition(
    "t_slow", CountPayload, count, policy=Policy(max_attempts=1, timeout_s=0.5), resources=(TEST_REDIS,)
)
QUOTA = JobDefinition("t_quota", EchoPayload, echo, quota_operation="posts_published")
MEDIA_ECHO = JobDefinition("t_media_echo", EchoPayload, echo, queue="media")

CONTRACTS = [ECHO, COUNT, PERMANENT, SLOW, QUOTA, MEDIA_ECHO]
REGISTRY = JobRegistry(CONTRACTS)
