"""Running one job: the wrapper every job implementation runs inside.

For each arq delivery it: checks the envelope and validates the payload (an invalid one fails that
job with a recorded validation error; the worker keeps running), starts an attempt on the job
record (the attempt number is the fencing token of every later write), runs the implementation
under a timeout with a heartbeat, and records the outcome. Errors are classified: transient ones
(connection errors, timeouts, 5xx, 429) are retried through arq's `Retry` with exponential backoff
and jitter until the job's attempts are used up; permanent ones fail at once. A failed job is
always recorded failed with its last error, never dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg
import structlog
from arq import Retry
from pydantic import BaseModel

from geniehelper.db import Database
from geniehelper.runtime import store
from geniehelper.runtime.context import Job, JobContext, Resources
from geniehelper.runtime.definition import InvalidPayload, JobPayload, JobSpec
from geniehelper.runtime.retry import backoff_s, classify, describe

log = structlog.get_logger("geniehelper.runtime")


@dataclass(frozen=True)
class Envelope:
    record_id: UUID | None
    user_id: UUID
    payload_raw: str


class EnvelopeError(ValueError):
    pass


def parse_envelope(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Envelope:
    if args:
        raise EnvelopeError("positional arguments are not accepted; send record_id, user_id, payload")
    unknown = set(kwargs) - JobSpec.RESERVED_KWARGS
    if unknown:
        raise EnvelopeError(f"unknown arguments {sorted(unknown)}")
    try:
        user_id = UUID(str(kwargs["user_id"]))
    except (KeyError, ValueError):
        raise EnvelopeError("user_id: a creator uuid is required") from None
    record_raw = kwargs.get("record_id")
    try:
        record_id = UUID(str(record_raw)) if record_raw is not None else None
    except ValueError:
        raise EnvelopeError("record_id: not a uuid") from None
    payload = kwargs.get("payload")
    if not isinstance(payload, str):
        raise EnvelopeError("payload: must be a JSON object encoded as a string")
    return Envelope(record_id, user_id, payload)


def make_arq_function(spec: JobSpec, impl: Job) -> Callable[..., Awaitable[dict[str, Any]]]:
    """The coroutine arq calls for `spec.name`."""

    async def run(ctx: dict[str, Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        resources: Resources = ctx["resources"]
        arq_job_id: str = ctx["job_id"]
        with structlog.contextvars.bound_contextvars(job_id=arq_job_id, job_name=spec.name, job_try=ctx["job_try"]):
            try:
                envelope = parse_envelope(args, kwargs)
            except EnvelopeError as exc:
                # No creator to record it against: the log line is the record.
                log.error("job.rejected", reason=str(exc))
                return {"status": "rejected", "error": str(exc)}
            with structlog.contextvars.bound_contextvars(user_id=str(envelope.user_id)):
                return await _run_enveloped(resources, spec, impl, arq_job_id, envelope)

    run.__qualname__ = run.__name__ = spec.name
    return run


async def _run_enveloped(
    resources: Resources, spec: JobSpec, impl: Job, arq_job_id: str, envelope: Envelope
) -> dict[str, Any]:
    db = resources.db
    record_id = envelope.record_id
    try:
        payload = spec.parse_payload(envelope.payload_raw)
    except InvalidPayload as exc:
        try:
            await _record_rejection(db, spec, arq_job_id, envelope, exc)
        except Exception as record_exc:  # e.g. unknown creator: the log line is then the only record
            log.error("job.rejection_not_recorded", error=describe(record_exc))
        log.error("job.invalid_payload", errors=exc.as_dict()["errors"])
        return {"status": "failed", "error_kind": "invalid_payload", "error": str(exc)}

    try:
        async with db.creator_tx(envelope.user_id) as conn:
            if record_id is None:  # pushed straight to Redis by a foreign client: record it now
                record_id = await _record_foreign_job(conn, spec, arq_job_id, envelope, payload)
            started = await conn.fetchrow(store.START_ATTEMPT, record_id, resources.worker_id)
            if started is None:
                current = await conn.fetchval("select status from media_jobs where id = $1", record_id)
    except Exception as exc:
        error_class, _ = classify(exc)
        if error_class == "transient":
            delay = backoff_s(spec, 1)
            log.warning("job.start_deferred", error=describe(exc), retry_in_s=round(delay, 2))
            raise Retry(defer=delay) from exc
        raise
    if started is None:
        if current is None:  # the producer's record is gone (or never committed): nothing to run against
            log.error("job.record_missing", record_id=str(record_id))
            return {"status": "failed", "error_kind": "record_missing"}
        log.info("job.skipped", record_id=str(record_id), record_status=current)
        return {"status": "skipped", "record_status": current}

    attempt, max_attempts = started["attempts"], started["max_attempts"]
    ctx = JobContext(resources, spec, record_id, envelope.user_id, attempt, max_attempts)
    with structlog.contextvars.bound_contextvars(record_id=str(record_id), attempt=attempt):
        if attempt > max_attempts:
            # Earlier attempts died without recording an outcome (worker killed, timeouts).
            error = f"retries exhausted: attempt {attempt} of {max_attempts} (earlier attempts did not finish)"
            await _fenced(ctx, store.FAIL, error, "retries_exhausted")
            log.error("job.failed", error=error, error_kind="retries_exhausted")
            await _on_failure(ctx, impl, payload, error)
            return {"status": "failed", "error_kind": "retries_exhausted", "error": error}
        return await _attempt(ctx, impl, payload)


async def _attempt(ctx: JobContext, impl: Job, payload: JobPayload) -> dict[str, Any]:
    spec, settings = ctx.spec, ctx.resources.settings
    log.info("job.started")
    loop = asyncio.get_running_loop()
    started_at = loop.time()
    heartbeat = asyncio.create_task(_heartbeat(ctx, settings.job_heartbeat_interval_s))
    timed_out = False
    try:
        try:
            async with asyncio.timeout(spec.timeout_s) as deadline:
                result = await impl.run(ctx, payload)
        except TimeoutError:
            if deadline.expired():
                timed_out = True
            raise
    except asyncio.CancelledError:
        # Worker shutting down: hand the job back (arq re-queues it) with the record queued again.
        with contextlib.suppress(Exception):
            await asyncio.shield(
                _fenced(ctx, store.SCHEDULE_RETRY, "worker shut down mid-job", "interrupted", 0.0)
            )
        log.warning("job.interrupted")
        raise
    except Exception as exc:
        took_ms = round((loop.time() - started_at) * 1000)
        if timed_out:
            error_class, retry_after, kind = "transient", None, "timeout"
            error = f"timed out after {spec.timeout_s:g}s"
        else:
            error_class, retry_after = classify(exc)
            kind, error = error_class, describe(exc)
        if error_class == "transient" and not ctx.is_last_attempt:
            delay = max(retry_after or 0.0, backoff_s(spec, ctx.attempt))
            await _record_outcome(ctx, store.SCHEDULE_RETRY, error, kind, delay)
            log.warning("job.retrying", error=error, error_kind=kind, retry_in_s=round(delay, 2), took_ms=took_ms)
            raise Retry(defer=delay) from exc
        if error_class == "transient":
            attempts = f"{ctx.attempt} attempt{'s' if ctx.attempt != 1 else ''}"
            error = f"retries exhausted after {attempts}; last error: {error}"
        await _record_outcome(ctx, store.FAIL, error, kind)
        log.error("job.failed", error=error, error_kind=kind, took_ms=took_ms)
        await _on_failure(ctx, impl, payload, error)
        return {"status": "failed", "error_kind": kind, "error": error}
    finally:
        heartbeat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await heartbeat

    took_ms = round((loop.time() - started_at) * 1000)
    stored = result.model_dump(mode="json") if isinstance(result, BaseModel) else result
    written = await _fenced(ctx, store.COMPLETE, stored)
    if not written:
        log.warning("job.stale_completion_ignored", took_ms=took_ms)
        return {"status": "stale", "result": stored}
    log.info("job.completed", took_ms=took_ms)
    return {"status": "completed", "result": stored}


async def _fenced(ctx: JobContext, sql: str, *args: Any) -> bool:
    """A record write that only lands if this attempt is still the current one."""
    async with ctx.creator_tx() as conn:
        status = await conn.execute(sql, ctx.record_id, ctx.attempt, *args)
    return bool(status.endswith(" 1"))


async def _on_failure(ctx: JobContext, impl: Job, payload: JobPayload, error: str) -> None:
    if impl.on_failure is None:
        return
    try:
        await impl.on_failure(ctx, payload, error)
    except Exception as exc:  # the job is failed either way; say that its rows may not say so
        log.error("job.failure_hook_failed", error=describe(exc))


async def _record_outcome(ctx: JobContext, sql: str, *args: Any) -> None:
    """Record a failure or a retry; if PostgreSQL is unreachable, come back later to record it.

    The next delivery starts a new attempt, which fails the job for good once attempts are used up.
    """
    try:
        await _fenced(ctx, sql, *args)
    except Exception as exc:
        delay = backoff_s(ctx.spec, ctx.attempt)
        log.warning("job.outcome_not_recorded", error=describe(exc), retry_in_s=round(delay, 2))
        raise Retry(defer=delay) from exc


async def _heartbeat(ctx: JobContext, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            async with ctx.creator_tx() as conn:
                await conn.execute(store.HEARTBEAT, ctx.record_id, ctx.attempt)
        except Exception as exc:  # a missed beat is not worth failing the job over
            log.warning("job.heartbeat_failed", error=describe(exc))


async def _record_foreign_job(
    conn: asyncpg.Connection, spec: JobSpec, arq_job_id: str, envelope: Envelope, payload: JobPayload
) -> UUID:
    (ref,) = await store.insert_many(
        conn, envelope.user_id, spec.name, spec.queue, spec.max_attempts,
        [store.NewJobRecord(f"arq:{arq_job_id}", payload.model_dump(mode="json"))],
    )  # fmt: skip
    await conn.execute(store.MARK_ENQUEUED, ref.id)
    return ref.id


async def _record_rejection(
    db: Database, spec: JobSpec, arq_job_id: str, envelope: Envelope, exc: InvalidPayload
) -> None:
    async with db.creator_tx(envelope.user_id) as conn:
        if envelope.record_id is not None:
            await conn.execute(
                "update media_jobs set status = 'failed', error = $2, error_kind = 'invalid_payload',"
                " finished_at = now(), updated_at = now() where id = $1 and status in ('queued', 'processing')",
                envelope.record_id,
                str(exc),
            )
        else:
            await conn.execute(
                store.RECORD_REJECTED, envelope.user_id, spec.name, spec.queue, f"arq:{arq_job_id}",
                store.payload_for_record(envelope.payload_raw), str(exc),
            )  # fmt: skip
