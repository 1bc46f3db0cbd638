"""Building arq `WorkerSettings` for one queue from job contracts and their implementations.

`workers/` calls `build_worker_settings` with the jobs of its queue; the result is a plain arq
settings class, so `arq workers.main.WorkerSettings` works as well as `geniehelper worker default`.
Timeout classes stay on separate queues: arq re-runs a killed worker's job only after the largest
job timeout on that worker + 10 s, so short jobs must not share a worker with long media jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping
from typing import Any

import httpx
import structlog
from arq import func

from geniehelper import health
from geniehelper.crypto import CredentialKeyError
from geniehelper.db import Database
from geniehelper.runtime.attempt import make_arq_function
from geniehelper.runtime.context import Job, Resources
from geniehelper.runtime.definition import QUEUE_NAMES, JobRegistry, JobSpec
from geniehelper.runtime.queue import JobQueue
from geniehelper.runtime.quotas import load_tier_limits
from geniehelper.runtime.transport import config_warnings, redis_settings, wire_dumps, wire_loads
from geniehelper.settings import Settings, load_settings
from geniehelper.stack import resolve_urls

log = structlog.get_logger("geniehelper.worker")


def build_worker_settings(
    queue: str,
    contracts: Iterable[JobSpec],
    implementations: Mapping[str, Job],
    *,
    role: str,
    settings: Settings | None = None,
    database_url: str | None = None,
    redis_url: str | None = None,
) -> type:
    """An arq settings class running every contract of `queue` that has an implementation."""
    settings = settings or load_settings()
    registry = JobRegistry(contracts)
    specs = [s for s in registry if s.queue == queue]
    missing = [s.name for s in specs if s.name not in implementations]
    if missing:
        raise LookupError(f"queue {queue!r}: no implementation for {missing}")
    if not specs:
        raise LookupError(f"queue {queue!r} has no jobs")
    if database_url is None or redis_url is None:
        urls = resolve_urls(settings)
        database_url, redis_url = database_url or urls.database_url, redis_url or urls.redis_url
    db_url: str = database_url

    async def on_startup(ctx: dict[str, Any]) -> None:
        redis = ctx["redis"]
        for warning in await config_warnings(redis):
            log.warning("worker.unsafe_redis", problem=warning)
        db = await Database.open(
            db_url, min_size=settings.db_pool_min_size, max_size=max(settings.db_pool_max_size, 2)
        )
        http = httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=5.0))
        limits = load_tier_limits()
        resources = Resources(
            settings=settings, db=db, redis=redis, http=http, registry=registry,
            queue=JobQueue(db, redis, registry, limits), limits=limits,
        )  # fmt: skip
        try:
            resources.credential_cipher()
        except CredentialKeyError as exc:  # the worker still runs jobs that need no credentials
            log.error("worker.credentials_unavailable", problem=str(exc))
        ctx["resources"] = resources
        ctx["health_task"] = asyncio.create_task(
            health.beat_forever(
                redis, role, settings.health_interval_s, settings.health_stale_after_s,
                lambda: {"queue": queue, "jobs": len(specs)},
            )
        )  # fmt: skip
        log.info("process.ready", queue=queue, jobs=[s.name for s in specs], max_jobs=max_jobs)

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        task = ctx.pop("health_task", None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        resources: Resources | None = ctx.pop("resources", None)
        if resources is not None:
            await resources.http.aclose()
            await resources.db.close()
            with contextlib.suppress(Exception):
                await resources.redis.delete(health.health_key(role))
        log.info("process.stopped", queue=queue)

    max_jobs = settings.media_worker_concurrency if queue == "media" else settings.worker_concurrency
    functions = [
        # arq's own try limit is only a backstop: our records count attempts (see runtime.py), and
        # infrastructure retries (PostgreSQL down before a job could start) do not use attempts up.
        func(
            make_arq_function(spec, implementations[spec.name]),  # type: ignore[arg-type]
            name=spec.name,
            timeout=spec.timeout_s + 10,
            max_tries=spec.max_attempts + 20,
        )
        for spec in specs
    ]
    attributes = {
        "functions": functions,
        "queue_name": QUEUE_NAMES[queue],
        "redis_settings": redis_settings(redis_url),
        "on_startup": on_startup,
        "on_shutdown": on_shutdown,
        "job_serializer": wire_dumps,
        "job_deserializer": wire_loads,
        "max_jobs": max_jobs,
        # arq's default 0.5 s caps a worker at max_jobs / 0.5 s job starts per second (20/s at 10).
        "poll_delay": settings.worker_poll_delay_s,
        "health_check_interval": settings.health_interval_s,
        "job_completion_wait": int(settings.worker_shutdown_grace_s),
        "keep_result": 3600,
        "handle_signals": True,
    }
    return type(f"{role.title().replace('_', '')}WorkerSettings", (), attributes)
