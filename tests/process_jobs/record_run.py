"""t_record_run: sleeps, then records that it ran in `test_runs` (its creator's transaction, fenced on
its lease), so a test counts the runs that really happened, in PostgreSQL, whatever Redis loses."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import Field

from geniehelper.runtime.context import JobContext
from geniehelper.runtime.definition import JobDefinition, JobPayload, Policy


class RunPayload(JobPayload):
    tag: str = Field(max_length=100)
    sleep_s: float = Field(default=0.0, ge=0, le=60)


async def record_run(ctx: JobContext, payload: RunPayload) -> dict[str, Any]:
    if payload.sleep_s:
        await asyncio.sleep(payload.sleep_s)
    async with ctx.creator_tx() as conn:
        await conn.execute("insert into test_runs (job_id, tag, attempt) values ($1, $2, $3)", ctx.record_id,
                           payload.tag, ctx.attempt)  # fmt: skip
    return {"ran": True}


RECORD_RUN = JobDefinition("t_record_run", RunPayload, record_run, policy=Policy(max_attempts=5, timeout_s=60))
