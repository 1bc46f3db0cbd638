"""bench_hang: the job `bench redrive` kills workers under (JOB_PACKAGES='["bench.kill_jobs"]').

Its first attempt hangs (until its worker is killed); any later attempt returns at once, so the time
from the kill to the second start is what the benchmark measures.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import Field

from geniehelper.runtime.context import JobContext
from geniehelper.runtime.definition import JobDefinition, JobPayload, Policy


class HangPayload(JobPayload):
    n: int = Field(ge=0)


async def hang_first(ctx: JobContext, payload: HangPayload) -> dict[str, Any]:
    if ctx.attempt == 1:
        await asyncio.sleep(3_600)
    return {"attempt": ctx.attempt}


BENCH_HANG = JobDefinition("bench_hang", HangPayload, hang_first, policy=Policy(max_attempts=3, timeout_s=7_200))
