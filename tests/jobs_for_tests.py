"""Job contracts and implementations used only by the runtime tests (real jobs, run by real workers)."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import Field

from geniehelper.runtime.context import Job, JobContext
from geniehelper.runtime.definition import JobPayload, JobSpec
from geniehelper.runtime.retry import PermanentJobError, TransientJobError


class EchoPayload(JobPayload):
    text: str = Field(max_length=100)
    times: int = Field(default=1, ge=1, le=10)


class CountPayload(JobPayload):
    counter: str = Field(max_length=100)
    fail_first: int = Field(default=0, ge=0, le=10)
    sleep_s: float = Field(default=0.0, ge=0, le=60)


async def echo(ctx: JobContext, payload: EchoPayload) -> dict[str, Any]:
    await ctx.progress(50)
    return {"echo": payload.text * payload.times}


async def count(ctx: JobContext, payload: CountPayload) -> dict[str, Any]:
    """Counts its runs in Redis (so tests can see how often it really ran), after optional failures."""
    redis = ctx.resources.redis
    await redis.incr(f"test:{payload.counter}:attempts")
    if ctx.attempt <= payload.fail_first:
        raise TransientJobError(f"planned failure {ctx.attempt} of {payload.fail_first}")
    if payload.sleep_s:
        await asyncio.sleep(payload.sleep_s)
    runs = await redis.incr(f"test:{payload.counter}:completed")
    return {"runs": runs}


async def permanent(ctx: JobContext, payload: CountPayload) -> None:
    raise PermanentJobError("the platform said no: this will not change on retry")


FAST_RETRY = {"backoff_base_s": 0.05, "backoff_max_s": 0.2}

CONTRACTS = [
    JobSpec("t_echo", EchoPayload),
    JobSpec("t_count", CountPayload, max_attempts=3, **FAST_RETRY),
    JobSpec("t_permanent", CountPayload, max_attempts=3, **FAST_RETRY),
    JobSpec("t_slow", CountPayload, max_attempts=1, timeout_s=0.5),
    JobSpec("t_quota", EchoPayload, quota_operation="posts_published"),
    JobSpec("t_media_echo", EchoPayload, queue="media"),
]

IMPLEMENTATIONS = {
    "t_echo": Job(echo),
    "t_count": Job(count),
    "t_permanent": Job(permanent),
    "t_slow": Job(count),
    "t_quota": Job(echo),
    "t_media_echo": Job(echo),
}
