"""`geniehelper web`: the dashboard and HTTP API process (Procfile `web`), until SIGINT or SIGTERM.

It listens on WEB_HOST:WEB_PORT (127.0.0.1:8080 by default). Beyond loopback it refuses to start
without WEB_TOKENS; on loopback without tokens it starts, every API call answers 401 and the
dashboard's sign-in page says that no token is configured.
"""

from __future__ import annotations

import asyncio
import signal

import structlog

from geniehelper import health
from geniehelper.db import Database
from geniehelper.runtime.queue import JobQueue
from geniehelper.runtime.registry import discover
from geniehelper.runtime.transport import create_arq_redis
from geniehelper.settings import Settings
from geniehelper.stack import resolve_urls
from geniehelper.web import WebConfigError
from geniehelper.web.api import ApiState
from geniehelper.web.app import create_app
from geniehelper.web.serve import is_loopback, serve_app

log = structlog.get_logger("geniehelper.web")


def run_web(settings: Settings) -> int:
    asyncio.run(_run(settings))
    return 0


async def _run(settings: Settings) -> None:
    tokens = settings.api_tokens()
    if not tokens and not is_loopback(settings.web_host):
        raise WebConfigError(f"WEB_HOST={settings.web_host} is beyond loopback: set WEB_TOKENS first")
    urls = resolve_urls(settings)
    db = await Database.open(urls.database_url, min_size=1, max_size=settings.db_pool_max_size)
    redis = await create_arq_redis(urls.redis_url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    beat = asyncio.create_task(health.beat_forever(
        redis, "web", settings.health_interval_s, settings.health_stale_after_s, lambda: {"tokens": len(tokens)}
    ))  # fmt: skip
    try:
        queue = JobQueue(db, redis, discover(settings.job_packages), dispatch_ttl_s=settings.job_dispatch_ttl_s,
                         fair_queues=settings.fair_queues)  # fmt: skip
        app = create_app(ApiState(settings, db, redis, queue, tokens))
        async with serve_app(app, settings.web_host, settings.web_port, loopback_only=False) as base_url:
            log.info("web.listening", url=base_url, dashboard=f"{base_url}/", api=f"{base_url}/api", tokens=len(tokens))
            log.info("process.ready", url=base_url)
            if not tokens:
                log.warning("web.no_tokens", problem="WEB_TOKENS is not set: every API call answers 401")
            await stop.wait()
    finally:
        beat.cancel()
        await redis.aclose()
        await db.close()
        log.info("process.stopped")
