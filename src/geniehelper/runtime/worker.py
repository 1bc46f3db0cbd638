"""Building arq `WorkerSettings` for one queue, and running a worker that outlives outages.

`workers/` calls `build_worker_settings` with the jobs of its queue; the result is a plain arq
settings class, so `arq workers.main.WorkerSettings` works as well as `geniehelper worker default`.
`run_worker` (what `geniehelper worker` runs) adds what arq lacks: arq's worker exits when Redis
goes away, so it rebuilds arq's worker around a lost connection, keeping the pools and the running
jobs, and waits for PostgreSQL at start instead of exiting.

arq's own limits are backstops, never the decision: tries are unlimited (the record counts
attempts), results are not kept (the record holds them), and arq's timeout sits well past the
job's own timeout plus the time allowed to record its outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from typing import Any

import structlog
from arq import func
from arq.connections import create_pool
from arq.constants import in_progress_key_prefix
from arq.worker import Worker

from geniehelper import health
from geniehelper.db import Database
from geniehelper.runtime.admission import MemoryAdmission, admitting
from geniehelper.runtime.attempt import (
    make_arq_function,
    make_rejected_function,
    make_unknown_job_function,
)
from geniehelper.runtime.claiming import create_worker, release_claims
from geniehelper.runtime.context import Resources
from geniehelper.runtime.definition import queue_key
from geniehelper.runtime.metrics import WorkerMetrics
from geniehelper.runtime.outcome import OUTCOME_WRITE_DELAYS_S
from geniehelper.runtime.pause import QueuePause
from geniehelper.runtime.queue import JobQueue
from geniehelper.runtime.record_writer import RecordWriter
from geniehelper.runtime.registry import JobRegistry
from geniehelper.runtime.resources import OpenResources
from geniehelper.runtime.retry import classify, describe
from geniehelper.runtime.transport import (
    REJECTED_FUNCTION,
    UNKNOWN_FUNCTION,
    config_warnings,
    job_deserializer,
    redis_settings,
    wire_dumps,
)
from geniehelper.settings import Settings, load_settings
from geniehelper.stack import resolve_urls

log = structlog.get_logger("geniehelper.worker")

UNLIMITED_TRIES = 1_000_000
# Time for the outcome write's retries and the failure hook, beyond the job's own timeout.
SETTLE_ALLOWANCE_S = sum(OUTCOME_WRITE_DELAYS_S) + 30
RECONNECT_MAX_DELAY_S = 10.0


def build_worker_settings(
    queue: str,
    registry: JobRegistry,
    *,
    settings: Settings | None = None,
    role: str | None = None,
    database_url: str | None = None,
    redis_url: str | None = None,
) -> type:
    """An arq settings class running every job of `queue` (its concurrency and role from Settings.queues)."""
    settings = settings or load_settings()
    queue_settings = settings.queue(queue)
    role = role or queue_settings.role_for(queue)
    jobs = registry.for_queue(queue)
    if not jobs:  # a configured queue may have no jobs yet: the worker idles, and says so
        log.warning("worker.queue_has_no_jobs", queue=queue, known_jobs=registry.names())
    if database_url is None or redis_url is None:
        urls = resolve_urls(settings)
        database_url, redis_url = database_url or urls.worker_url, redis_url or urls.redis_url
    db_url: str = database_url
    max_jobs = queue_settings.concurrency
    # Jobs that estimate their memory start within the budget (max_jobs stays the upper bound).
    admission = (
        MemoryAdmission(settings.media_memory_budget_mb, settings.media_admission_wait_s)
        if any(job.memory_estimate is not None for job in jobs) else None
    )  # fmt: skip

    async def on_startup(ctx: dict[str, Any]) -> None:
        if "resources" in ctx:  # a rebuilt arq worker (see run_worker): the resources outlive it
            return
        redis = ctx["redis"]
        for warning in await config_warnings(redis):
            log.warning("worker.unsafe_redis", problem=warning)
        # The system role only for a queue that runs system jobs: a creator job never needs it.
        db = await _open_database(db_url, settings, system=any(job.scope == "system" for job in jobs))
        # Resources see the servers this worker uses (the embedded stack's when none were given).
        opened = await OpenResources.open(
            (key for job in jobs for key in job.resources),
            settings.model_copy(update={"database_url": db_url, "redis_url": redis_url}),
        )
        records = RecordWriter(
            db.records_pool, f"{socket.gethostname()}:{os.getpid()}", lease_s=settings.job_lease_s,
            heartbeat_interval_s=settings.job_heartbeat_interval_s, batch_wait_s=settings.job_record_batch_wait_s,
        )  # fmt: skip
        metrics = WorkerMetrics()
        resources = Resources(
            settings=settings, db=db, redis=redis, registry=registry,
            queue=JobQueue(db, redis, registry, dispatch_ttl_s=settings.job_dispatch_ttl_s,
                           fair_queues=settings.fair_queues),
            records=records, opened=opened, metrics=metrics,
        )  # fmt: skip
        ctx["resources"] = resources
        details: dict[str, Any] = {"queue": queue, "jobs": len(jobs)}
        if settings.worker_metrics_port is not None:
            serving = contextlib.AsyncExitStack()
            details["metrics_url"] = await serving.enter_async_context(metrics.serving(settings.worker_metrics_port))
            ctx["metrics_serving"] = serving
            log.info("metrics.serving", url=details["metrics_url"])
        ctx["health_task"] = asyncio.create_task(
            health.beat_forever(
                redis, role, settings.health_interval_s, settings.health_stale_after_s,
                lambda: {**details, "paused": bool(ctx.get("queue_pause") and ctx["queue_pause"].paused)},
            )
        )  # fmt: skip
        log.info("process.ready", queue=queue, jobs=[j.name for j in jobs], max_jobs=max_jobs,
                 memory_budget_mb=admission.budget_mb if admission else None)  # fmt: skip

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        if ctx.get("keep_resources"):
            return
        await close_resources(ctx, role)
        log.info("process.stopped", queue=queue)

    functions = [
        func(
            admitting(job, make_arq_function(job), admission)  # type: ignore[arg-type]
            if admission is not None and job.memory_estimate is not None
            else make_arq_function(job),
            name=job.name,
            timeout=job.policy.timeout_s + SETTLE_ALLOWANCE_S,
            max_tries=UNLIMITED_TRIES,
        )
        for job in jobs
    ]
    functions += [
        func(make_rejected_function(), name=REJECTED_FUNCTION, timeout=60, max_tries=UNLIMITED_TRIES),  # type: ignore[arg-type]
        func(make_unknown_job_function(), name=UNKNOWN_FUNCTION, timeout=60, max_tries=UNLIMITED_TRIES),  # type: ignore[arg-type]
    ]
    attributes = {
        "functions": functions,
        "queue_name": queue_key(queue),
        "redis_settings": redis_settings(redis_url),
        "on_startup": on_startup,
        "on_shutdown": on_shutdown,
        "job_serializer": wire_dumps,
        "job_deserializer": job_deserializer({f.name for f in functions}),
        "max_jobs": max_jobs,
        # arq's default 0.5 s caps a worker at max_jobs / 0.5 s job starts per second (20/s at 10).
        "poll_delay": settings.worker_poll_delay_s,
        "health_check_interval": settings.health_interval_s,
        "job_completion_wait": int(settings.worker_shutdown_grace_s),
        "keep_result": 0,
        "handle_signals": True,
        "role": role,
        # Not arq's: run_worker follows the queue's pause with them (runtime/pause.py).
        "queue": queue,
        "queue_pause_poll_s": settings.queue_pause_poll_s,
    }
    return type(f"{role.title().replace('_', '')}WorkerSettings", (), attributes)


async def _open_database(url: str, settings: Settings, *, system: bool) -> Database:
    """Open the pools (the system role's only if `system`), waiting out a PostgreSQL that is not reachable yet."""
    delay = 0.5
    while True:
        try:
            return await Database.open(
                url, min_size=settings.db_pool_min_size, max_size=max(settings.db_pool_max_size, 2), system=system
            )
        except Exception as exc:
            if classify(exc)[0] != "transient":  # e.g. a wrong password: say it and stop
                raise
            log.warning("worker.database_unavailable", error=describe(exc), retry_in_s=delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, RECONNECT_MAX_DELAY_S)


async def close_resources(ctx: dict[str, Any], role: str) -> None:
    task = ctx.pop("health_task", None)
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    serving: contextlib.AsyncExitStack | None = ctx.pop("metrics_serving", None)
    if serving is not None:
        await serving.aclose()
    resources: Resources | None = ctx.pop("resources", None)
    if resources is not None:
        await resources.records.close()
        await resources.opened.close()
        await resources.db.close()
        with contextlib.suppress(Exception):
            await resources.redis.delete(health.health_key(role))


def _is_redis_loss(exc: BaseException) -> bool:
    """An error from Redis (or the connection to it): arq's loop is rebuilt around it, never fatal."""
    from redis.exceptions import RedisError

    return isinstance(exc, RedisError | ConnectionError | OSError)


async def run_worker(settings_cls: type) -> None:
    """Run arq's worker until SIGINT/SIGTERM; rebuild it when its Redis connection is lost.

    On a signal the running jobs get WORKER_SHUTDOWN_GRACE_S to finish, then are handed back.
    When Redis goes away the running jobs go on (their records are in PostgreSQL) and a new arq
    worker, on the same connection pool, starts polling once Redis answers again.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    role: str = settings_cls.role  # type: ignore[attr-defined]
    worker: Worker | None = None

    def on_signal(signum: int) -> None:
        log.info("worker.stopping", signal=signal.Signals(signum).name)
        stop.set()
        if worker is not None and worker.main_task is not None:
            worker.handle_sig_wait_for_completion(signal.Signals(signum))

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    redis = await _connect_redis(settings_cls, stop)
    if redis is None:  # told to stop before Redis ever answered
        log.info("process.stopped", role=role)
        return
    # arq keeps its own context dict; ours outlives each rebuilt worker (resources, health beat).
    ctx: dict[str, Any] = {"redis": redis, "keep_resources": True}
    pause = QueuePause(settings_cls.queue, settings_cls.queue_pause_poll_s)  # type: ignore[attr-defined]
    ctx["queue_pause"] = pause
    following = asyncio.create_task(pause.follow(ctx, lambda: worker, stop))
    running: set[asyncio.Task[Any]] = set()
    cleanup: list[asyncio.Task[None]] = []
    delay = 0.5
    try:
        while not stop.is_set():
            if not await _redis_answers(redis, stop, delay):
                break
            worker = create_worker(settings_cls, handle_signals=False, ctx=ctx, redis_pool=redis)
            try:
                await worker.async_run()
                break
            except asyncio.CancelledError:
                if stop.is_set():
                    break
                raise
            except Exception as exc:
                if not _is_redis_loss(exc):
                    raise
                # Every delivery this worker had started, running or already ended by the lost
                # connection (arq set its in-progress marker and could not finish it).
                lost = dict(worker.tasks)
                running.update(t for t in lost.values() if not t.done())
                unconfirmed = list(worker.unconfirmed_claims)
                log.warning("worker.redis_lost", error=describe(exc), deliveries=len(lost),
                            unconfirmed_claims=len(unconfirmed))  # fmt: skip
                if lost or unconfirmed:
                    cleanup.append(asyncio.create_task(
                        _release_lost_dispatches(redis, lost, worker.claim_token, unconfirmed, stop)
                    ))  # fmt: skip
            delay = min(delay * 2, RECONNECT_MAX_DELAY_S)
        if worker is not None:  # cancelled jobs are still recording that they were handed back
            running.update(worker.tasks.values())
        running = {t for t in running if not t.done()}
        if running:  # let them settle their records before the pools close
            await asyncio.wait(running, timeout=float(getattr(settings_cls, "job_completion_wait", 20)))
        for task in cleanup:
            task.cancel()
    finally:
        following.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        ctx["keep_resources"] = False
        await close_resources(ctx, role)
        with contextlib.suppress(Exception):
            await redis.aclose()
        log.info("process.stopped", role=role)


async def _connect_redis(settings_cls: type, stop: asyncio.Event) -> Any:
    """arq's connection pool, waiting out a Redis that is not reachable yet (None: told to stop)."""
    delay = 0.5
    while not stop.is_set():
        try:
            return await create_pool(
                settings_cls.redis_settings,  # type: ignore[attr-defined]
                job_serializer=wire_dumps, job_deserializer=settings_cls.job_deserializer,  # type: ignore[attr-defined]
            )  # fmt: skip
        except Exception as exc:
            log.warning("worker.redis_unavailable", error=describe(exc), retry_in_s=delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(delay * 2, RECONNECT_MAX_DELAY_S)
    return None


async def _release_lost_dispatches(
    redis: Any, lost: dict[str, asyncio.Task[Any]], token: str, unconfirmed: list[str], stop: asyncio.Event
) -> None:
    """Once the jobs that ran while Redis went away are done and Redis is back, drop their
    in-progress markers: arq could not finish those dispatches, and would otherwise hold them for
    the whole job timeout before delivering them again (the record, fenced, decides what then runs).
    The markers of a claim whose reply was lost (`unconfirmed`) go too, where they are still this
    worker's (`claiming.release_claims`): those jobs never started here."""
    if lost:
        await asyncio.wait(lost.values())
    keys = [in_progress_key_prefix + job_id for job_id in lost]
    delay = 0.5
    while not stop.is_set():
        try:
            if keys:
                await redis.delete(*keys)
            released = await release_claims(redis, token, unconfirmed) if unconfirmed else 0
            log.info("worker.lost_dispatches_released", dispatches=len(keys), unconfirmed_claims_released=released)
            return
        except Exception:
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_DELAY_S)


async def _redis_answers(redis: Any, stop: asyncio.Event, delay: float) -> bool:
    """Wait until Redis answers a PING (True) or the worker is told to stop (False)."""
    failed = False
    while not stop.is_set():
        try:
            await redis.ping()
            if failed:
                log.info("worker.redis_back")
            return True
        except Exception as exc:
            failed = True
            log.warning("worker.redis_unavailable", error=describe(exc), retry_in_s=delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(delay * 2, RECONNECT_MAX_DELAY_S)
    return False
