"""One delivery of a job, from arq's call to the recorded outcome.

The record in PostgreSQL decides; Redis only carries "dispatch n of record r". For each delivery:
1. the envelope and payload are checked (an invalid one fails that job with its field and reason;
   the worker goes on);
2. an outcome parked by an earlier delivery (PostgreSQL was down when it finished) is recorded
   instead of running the job again;
3. an attempt starts only for the record's current dispatch and while no other attempt holds a
   fresh lease; the attempt number fences every later write;
4. the implementation runs under its timeout while the worker's lease loop extends its lease, and
   is cancelled if the lease is found lost;
5. the outcome is written with bounded in-process retries; if PostgreSQL stays down it is parked in
   Redis and the next delivery records it. `on_failure` runs only when the failure was recorded.

Starts, outcomes and lease beats of a worker's concurrent deliveries share statements
(`record_writer`). Transient errors (connection errors, timeouts, 5xx, 429) are retried through arq's `Retry` with
exponential backoff and jitter until the record's attempts are used up; permanent ones fail at once.
arq's own try counter is not a limit: infrastructure deferrals never use attempts up.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg
import structlog
from arq import Retry
from pydantic import BaseModel

from geniehelper.runtime import quotas, store
from geniehelper.runtime.context import JobContext, LeaseLost, Resources
from geniehelper.runtime.definition import AnyJob, InvalidPayload, JobDefinition, JobPayload
from geniehelper.runtime.outcome import Outcome, finish_of, record_parked_outcome, settle
from geniehelper.runtime.record_writer import StartAnswer, StartRequest
from geniehelper.runtime.retry import backoff_s, classify, describe
from geniehelper.runtime.transport import dispatch_no_of

log = structlog.get_logger("geniehelper.runtime")

# An unknown job name is handed back this often (every UNKNOWN_JOB_RETRY_S) before it is failed.
UNKNOWN_JOB_RETRY_S = 10.0
UNKNOWN_JOB_MAX_TRIES = 30
# A job whose concurrency key is at its limit asks again after this (plus as much again at random).
CONCURRENCY_RETRY_S = 0.5



@dataclass(frozen=True)
class Envelope:
    record_id: UUID | None
    user_id: UUID | None  # None: a system job
    payload_raw: str
    dispatch_no: int


class EnvelopeError(ValueError):
    pass


def parse_envelope(job: AnyJob, args: tuple[Any, ...], kwargs: dict[str, Any], arq_job_id: str) -> Envelope:
    if args:
        raise EnvelopeError("positional arguments are not accepted; send record_id, user_id, payload")
    unknown = set(kwargs) - JobDefinition.RESERVED_KWARGS
    if unknown:
        raise EnvelopeError(f"unknown arguments {sorted(unknown)}")
    user_id: UUID | None = None
    if job.scope == "system":
        if kwargs.get("user_id") is not None:
            raise EnvelopeError(f"user_id: {job.name} is a system job and runs for no creator")
    else:
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
    dispatch_no = dispatch_no_of(arq_job_id, record_id) if record_id is not None else 1
    return Envelope(record_id, user_id, payload, dispatch_no)


def make_arq_function(job: AnyJob) -> Callable[..., Awaitable[Outcome]]:
    """The coroutine arq calls for `job.name`."""

    async def run(ctx: dict[str, Any], *args: Any, **kwargs: Any) -> Outcome:
        resources: Resources = ctx["resources"]
        arq_job_id: str = ctx["job_id"]
        with structlog.contextvars.bound_contextvars(job_id=arq_job_id, job_name=job.name, job_try=ctx["job_try"]):
            try:
                envelope = parse_envelope(job, args, kwargs, arq_job_id)
            except EnvelopeError as exc:
                # No creator to record it against: the log line is the record.
                log.error("job.rejected", reason=str(exc))
                return {"status": "rejected", "error": str(exc)}
            with structlog.contextvars.bound_contextvars(user_id=str(envelope.user_id)), resources.records.delivering():
                return await _deliver(resources, job, arq_job_id, ctx["job_try"], envelope)

    run.__qualname__ = run.__name__ = job.name
    return run


async def _deliver(
    resources: Resources, job: AnyJob, arq_job_id: str, job_try: int, envelope: Envelope
) -> Outcome:
    try:
        payload = job.parse_payload(envelope.payload_raw)
    except InvalidPayload as exc:
        log.error("job.invalid_payload", errors=exc.as_dict()["errors"])
        await _record_rejection(resources, job, arq_job_id, envelope, str(exc), "invalid_payload")
        return {"status": "failed", "error_kind": "invalid_payload", "error": str(exc)}

    record_id = envelope.record_id
    if record_id is not None and (job_try > 1 or envelope.dispatch_no > 1):
        with structlog.contextvars.bound_contextvars(record_id=str(record_id)):
            settled = await record_parked_outcome(resources, job, record_id, envelope.user_id, payload)
        if settled is not None:
            return settled
    try:
        if record_id is None:  # pushed straight to Redis by a foreign client: record it now
            record_id = await _record_foreign_job(resources, job, arq_job_id, envelope, payload)
        limit = job.concurrency
        answer = await resources.records.start(StartRequest(
            record_id, envelope.user_id, envelope.dispatch_no,
            limit.key(payload) if limit else None, limit.limit if limit else None,
        ))  # fmt: skip
    except asyncpg.ForeignKeyViolationError:
        reason = f"user_id: no creator {envelope.user_id}"
        log.error("job.rejected", reason=reason)
        return {"status": "rejected", "error": reason}
    except Exception as exc:  # whatever the cause, arq must not finalise the dispatch: come back later
        delay = backoff_s(job.policy, 1)
        log.warning("job.start_deferred", error=describe(exc), error_class=classify(exc)[0], retry_in_s=round(delay, 2))
        raise Retry(defer=delay) from exc

    with structlog.contextvars.bound_contextvars(record_id=str(record_id)):
        if answer.attempt is None or answer.max_attempts is None:
            return _not_started(answer, envelope.dispatch_no, job)
        ctx = JobContext(resources, job, record_id, envelope.user_id, answer.attempt, answer.max_attempts)
        with structlog.contextvars.bound_contextvars(attempt=ctx.attempt):
            if ctx.attempt > ctx.max_attempts:
                # Earlier attempts died without recording an outcome (worker killed, timeouts).
                error = (
                    f"retries exhausted: attempt {ctx.attempt} of {ctx.max_attempts} (earlier attempts did not finish)"
                )
                return await settle(
                    ctx, payload, {"kind": "fail", "error": error, "error_kind": "retries_exhausted"}
                )
            if job.quota_operation is not None and answer.quota_charged != job.quota_operation:
                unpaid = await _charge_at_start(ctx, payload, job.quota_operation)
                if unpaid is not None:
                    return unpaid
            return await _attempt(ctx, payload)


async def _charge_at_start(ctx: JobContext, payload: JobPayload, operation: str) -> Outcome | None:
    """Charge the quota of a record that `enqueue()` did not charge (made in plain SQL, or pushed
    straight to Redis): a job over its creator's quota fails (`quota_exceeded`) and never runs."""
    assert ctx.user_id is not None  # quota-bound jobs are creator jobs (JobDefinition)
    try:
        async with ctx.creator_tx() as conn:
            _, refusal = await quotas.charge(conn, ctx.user_id, operation, [ctx.record_id])
    except LeaseLost:
        return {"status": "lease_lost"}
    except Exception as exc:
        delay = backoff_s(ctx.job.policy, ctx.attempt)
        log.warning("job.quota_check_failed", error=describe(exc), retry_in_s=round(delay, 2))
        return await settle(ctx, payload, {"kind": "retry", "error": describe(exc), "error_kind": "quota_check_failed",
                                           "delay_s": delay})  # fmt: skip
    if refusal is None:
        return None
    log.warning("job.quota_refused", **refusal.as_dict())
    return await settle(ctx, payload, {"kind": "fail", "error": str(refusal), "error_kind": "quota_exceeded"})


def _not_started(refused: StartAnswer, dispatch_no: int, job: AnyJob) -> Outcome:
    if refused.status is None:  # the producer's record is gone (or never committed): nothing to run against
        log.error("job.record_missing")
        return {"status": "failed", "error_kind": "record_missing"}
    if refused.dispatch_no != dispatch_no:
        log.info("job.superseded_dispatch", dispatch_no=dispatch_no, current_dispatch_no=refused.dispatch_no)
        return {"status": "superseded", "current_dispatch_no": refused.dispatch_no}
    if refused.status == "processing":
        log.info("job.lease_held")
        return {"status": "lease_held"}
    if refused.status == "queued" and refused.starts_in_s > 1:  # delivered early: come back when due
        raise Retry(defer=refused.starts_in_s)
    if refused.status == "queued" and job.concurrency is not None:  # its key's slots are all taken
        log.debug("job.concurrency_wait", limit=job.concurrency.limit)
        raise Retry(defer=CONCURRENCY_RETRY_S + random.uniform(0, CONCURRENCY_RETRY_S))
    if refused.status == "queued":
        raise Retry(defer=max(0.1, refused.starts_in_s))
    log.info("job.skipped", record_status=refused.status)
    return {"status": "skipped", "record_status": refused.status}


async def _attempt(ctx: JobContext, payload: JobPayload) -> Outcome:
    job = ctx.job
    log.info("job.started")
    loop = asyncio.get_running_loop()
    started_at = loop.time()
    lease_lost = asyncio.Event()
    run_task = asyncio.ensure_future(job.run(ctx, payload))

    def on_lease_lost() -> None:  # its writes are fenced anyway: stop the run
        lease_lost.set()
        run_task.cancel()

    timed_out = False
    running = ctx._runtime.metrics.running.labels(job.name)
    running.inc()
    try:
        try:
            with ctx._runtime.records.holding(ctx.record_id, ctx.user_id, ctx.attempt, on_lease_lost):
                async with asyncio.timeout(job.policy.timeout_s) as deadline:
                    result = await run_task
        except TimeoutError:
            if deadline.expired():
                timed_out = True
            raise
    except asyncio.CancelledError:
        if lease_lost.is_set() and not _cancelling():
            log.warning("job.lease_lost", took_ms=_ms(loop, started_at))
            return {"status": "lease_lost"}
        # Worker shutting down: hand the job back (arq re-queues this dispatch) with the record queued.
        with contextlib.suppress(Exception):
            await asyncio.shield(ctx._runtime.records.finish(
                finish_of(ctx, {"kind": "retry", "error": "worker shut down mid-job", "error_kind": "interrupted",
                                 "delay_s": 0.0})
            ))  # fmt: skip
        log.warning("job.interrupted")
        raise
    except LeaseLost:
        log.warning("job.lease_lost", took_ms=_ms(loop, started_at))
        return {"status": "lease_lost"}
    except Exception as exc:
        if timed_out:
            error_class, retry_after, kind = "transient", None, "timeout"
            error = f"timed out after {job.policy.timeout_s:g}s"
        else:
            error_class, retry_after = classify(exc, job)
            kind, error = error_class, describe(exc)
        if error_class == "transient" and not ctx.is_last_attempt:
            delay = max(retry_after or 0.0, backoff_s(job.policy, ctx.attempt))
            log.warning("job.retrying", error=error, error_kind=kind, retry_in_s=round(delay, 2),
                        took_ms=_ms(loop, started_at))  # fmt: skip
            return await settle(
                ctx, payload, {"kind": "retry", "error": error, "error_kind": kind, "delay_s": delay},
                took_ms=_ms(loop, started_at),
            )
        if error_class == "transient":
            attempts = f"{ctx.attempt} attempt{'s' if ctx.attempt != 1 else ''}"
            error = f"retries exhausted after {attempts}; last error: {error}"
        return await settle(ctx, payload, {"kind": "fail", "error": error, "error_kind": kind},
                             took_ms=_ms(loop, started_at))  # fmt: skip
    finally:
        running.dec()
        if not run_task.done():
            run_task.cancel()

    stored = result.model_dump(mode="json") if isinstance(result, BaseModel) else result
    return await settle(ctx, payload, {"kind": "complete", "result": stored}, took_ms=_ms(loop, started_at))


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _ms(loop: asyncio.AbstractEventLoop, since: float) -> int:
    return round((loop.time() - since) * 1000)


async def _record_foreign_job(
    resources: Resources, job: AnyJob, arq_job_id: str, envelope: Envelope, payload: JobPayload
) -> UUID:
    """Its record, marked as in Redis already (it is being delivered). Its quota, if it has one, is
    charged when it starts, as for any record `enqueue()` did not make."""
    async with resources.db.scoped_tx(envelope.user_id) as conn:
        (ref,) = await store.insert_many(
            conn, envelope.user_id, job.name, job.queue, job.policy.max_attempts,
            [store.NewJobRecord(f"arq:{arq_job_id}", payload.model_dump(mode="json"))],
        )  # fmt: skip
    async with resources.db.records_pool.acquire() as conn:
        await conn.execute(store.MARK_ENQUEUED_MANY, [ref.id], [ref.dispatch_no])
    return ref.id


async def _record_rejection(
    resources: Resources, job: AnyJob, arq_job_id: str, envelope: Envelope, error: str, kind: str
) -> None:
    try:
        async with resources.db.scoped_tx(envelope.user_id) as conn:
            if envelope.record_id is not None:
                await conn.execute(store.REJECT, envelope.record_id, envelope.dispatch_no, error, kind)
            else:
                await conn.execute(
                    store.RECORD_REJECTED, envelope.user_id, job.name, job.queue, f"arq:{arq_job_id}",
                    store.payload_for_record(envelope.payload_raw), error,
                )  # fmt: skip
    except Exception as exc:  # e.g. unknown creator: the log line is then the only record
        log.error("job.rejection_not_recorded", error=describe(exc))


def make_rejected_function() -> Callable[..., Awaitable[Outcome]]:
    """Handles a delivery whose envelope arq could not have run (see transport.job_deserializer)."""

    async def rejected(ctx: dict[str, Any], *, problem: str, record_id: Any, user_id: Any, job_name: Any) -> Outcome:
        log.error("job.rejected", job_id=ctx["job_id"], reason=problem, job_name=job_name)
        await _fail_record_if_known(ctx["resources"], ctx["job_id"], record_id, user_id, problem, "invalid_envelope")
        return {"status": "rejected", "error": problem}

    return rejected


def make_unknown_job_function() -> Callable[..., Awaitable[Outcome]]:
    """Hands back a job whose name this worker does not know (e.g. mid rolling deploy)."""

    async def unknown(ctx: dict[str, Any], *, job_name: str, kwargs: dict[str, Any]) -> Outcome:
        tries = ctx["job_try"]
        if tries < UNKNOWN_JOB_MAX_TRIES:
            log.warning("job.unknown_name_handed_back", job_id=ctx["job_id"], job_name=job_name, job_try=tries,
                        retry_in_s=UNKNOWN_JOB_RETRY_S)  # fmt: skip
            raise Retry(defer=UNKNOWN_JOB_RETRY_S)
        error = f"no worker on this queue knows job {job_name!r} (handed back {tries} times)"
        log.error("job.unknown_name", job_id=ctx["job_id"], job_name=job_name, error=error)
        await _fail_record_if_known(
            ctx["resources"], ctx["job_id"], kwargs.get("record_id"), kwargs.get("user_id"), error, "unknown_job"
        )
        return {"status": "failed", "error_kind": "unknown_job", "error": error}

    return unknown


async def _fail_record_if_known(
    resources: Resources, arq_job_id: str, record_raw: Any, user_raw: Any, error: str, kind: str
) -> None:
    try:
        record_id = UUID(str(record_raw))
        user_id = UUID(str(user_raw)) if user_raw is not None else None
    except ValueError:
        return
    try:
        async with resources.db.scoped_tx(user_id) as conn:
            await conn.execute(store.REJECT, record_id, dispatch_no_of(arq_job_id, record_id), error, kind)
    except Exception as exc:
        log.error("job.rejection_not_recorded", error=describe(exc))
