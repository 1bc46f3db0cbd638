"""An attempt's outcome, from its record write to its hooks.

The outcome (complete, fail, retry) is written with bounded in-process retries; if PostgreSQL stays
down it is parked in Redis (`geniehelper:outcome:<record id>`, with its attempt) and the next
delivery records it instead of running the job again. `on_failure` runs only once the failure was
recorded; `on_success` once the completion was.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import Any
from uuid import UUID

import structlog
from arq import Retry

from geniehelper.runtime.context import JobContext, Resources
from geniehelper.runtime.definition import AnyJob, JobPayload
from geniehelper.runtime.record_writer import Finish, OutcomeStatus
from geniehelper.runtime.retry import backoff_s, describe

log = structlog.get_logger("geniehelper.runtime")

Outcome = dict[str, Any]

OUTCOME_PREFIX = "geniehelper:outcome:"
OUTCOME_TTL_S = 7 * 86_400
# In-process retries of an outcome write before it is parked in Redis (about 8 s in all).
OUTCOME_WRITE_DELAYS_S = (0.2, 0.5, 1.0, 2.0, 4.0)


OUTCOME_STATUS: dict[str, OutcomeStatus] = {"complete": "completed", "fail": "failed", "retry": "queued"}
METRIC_OUTCOME = {"complete": "completed", "fail": "failed", "retry": "retried"}


def finish_of(ctx: JobContext, outcome: Outcome) -> Finish:
    """The record write of an outcome ({"kind": complete|fail|retry, ...}, the shape parked in Redis)."""
    return Finish(
        ctx.record_id, ctx.user_id, ctx.attempt, OUTCOME_STATUS[outcome["kind"]], outcome.get("result"),
        outcome.get("error"), outcome.get("error_kind"), outcome.get("delay_s", 0.0),
    )  # fmt: skip


async def settle(
    ctx: JobContext, payload: JobPayload, outcome: Outcome, *, took_ms: int | None = None
) -> Outcome:
    """Record an attempt's outcome; park it in Redis if PostgreSQL stays unreachable."""
    try:
        landed = await _write_with_retries(ctx, finish_of(ctx, outcome))
    except Exception as exc:
        await _park(ctx, outcome, exc)
        raise Retry(defer=backoff_s(ctx.job.policy, ctx.attempt)) from exc
    return await after_write(ctx, payload, outcome, landed, took_ms)


async def after_write(
    ctx: JobContext, payload: JobPayload, outcome: Outcome, landed: bool, took_ms: int | None = None
) -> Outcome:
    kind = outcome["kind"]
    ctx._runtime.metrics.finished(ctx.job.name, METRIC_OUTCOME[kind] if landed else "stale", took_ms)
    if not landed:
        log.warning("job.stale_outcome_ignored", outcome=kind, took_ms=took_ms)
        return {"status": "stale", "outcome": kind}
    if kind == "complete":
        log.info("job.completed", took_ms=took_ms)
        if ctx.job.on_success is not None:  # the next step of a chain
            try:
                await ctx.job.on_success(replace(ctx, fenced=False), payload, outcome.get("result"))
            except Exception as exc:
                log.error("job.success_hook_failed", error=describe(exc))
        return {"status": "completed", "result": outcome.get("result")}
    if kind == "retry":
        raise Retry(defer=outcome["delay_s"])
    log.error("job.failed", error=outcome["error"], error_kind=outcome["error_kind"], took_ms=took_ms)
    await _on_failure(replace(ctx, fenced=False), payload, outcome["error"])
    return {"status": "failed", "error_kind": outcome["error_kind"], "error": outcome["error"]}


async def _write_with_retries(ctx: JobContext, finish: Finish) -> bool:
    last: Exception | None = None
    for delay in (*OUTCOME_WRITE_DELAYS_S, None):
        try:
            return await asyncio.shield(ctx._runtime.records.finish(finish))
        except Exception as exc:
            last = exc
            log.warning("job.outcome_write_failed", error=describe(exc), retry_in_s=delay)
            if delay is not None:
                await asyncio.sleep(delay)
    assert last is not None
    raise last


async def _park(ctx: JobContext, outcome: Outcome, exc: Exception) -> None:
    """Keep the outcome in Redis by record and attempt: the next delivery records it."""
    value = json.dumps({**outcome, "attempt": ctx.attempt})
    try:
        await ctx._runtime.redis.set(f"{OUTCOME_PREFIX}{ctx.record_id}", value, ex=OUTCOME_TTL_S)
    except Exception as redis_exc:
        log.error("job.outcome_lost", outcome=outcome["kind"], error=describe(exc), redis_error=describe(redis_exc))
        return
    log.warning("job.outcome_parked", outcome=outcome["kind"], error=describe(exc))


async def record_parked_outcome(
    resources: Resources, job: AnyJob, record_id: UUID, user_id: UUID | None, payload: JobPayload
) -> Outcome | None:
    """Record an outcome an earlier delivery parked; None when there is none (or it was a retry)."""
    key = f"{OUTCOME_PREFIX}{record_id}"
    raw = await resources.redis.get(key)
    if raw is None:
        return None
    outcome = json.loads(raw)
    attempt = int(outcome.pop("attempt"))
    ctx = JobContext(resources, job, record_id, user_id, attempt, attempt)
    try:
        landed = await resources.records.finish(finish_of(ctx, outcome))
    except Exception as exc:
        delay = backoff_s(job.policy, attempt)
        log.warning("job.parked_outcome_not_recorded", error=describe(exc), retry_in_s=round(delay, 2))
        raise Retry(defer=delay) from exc
    await resources.redis.delete(key)
    log.info("job.parked_outcome_recorded", outcome=outcome["kind"], attempt=attempt, landed=landed)
    if outcome["kind"] == "retry" and landed:
        return None  # recorded; this delivery now starts the next attempt when it is due
    with structlog.contextvars.bound_contextvars(attempt=attempt):
        return await after_write(ctx, payload, outcome, landed)


async def _on_failure(ctx: JobContext, payload: JobPayload, error: str) -> None:
    if ctx.job.on_failure is None:
        return
    try:
        await ctx.job.on_failure(ctx, payload, error)
    except Exception as exc:  # the job is failed either way; say that its rows may not say so
        log.error("job.failure_hook_failed", error=describe(exc))
