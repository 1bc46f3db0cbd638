"""Serving a sandbox platform: in the caller's event loop (tests, benchmarks) or until signalled (the CLI)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator

import structlog

from geniehelper.platforms.sandbox.platform import SandboxPlatform
from geniehelper.web.serve import serve_app


@contextlib.asynccontextmanager
async def run_sandbox(
    host: str = "127.0.0.1", port: int = 0, *, platform: SandboxPlatform | None = None
) -> AsyncIterator[str]:
    """Serve a sandbox platform in the current event loop; yields its base URL, stops it on exit.

    Pass `platform` to reach its state from the test (its clock, `create_account`, ...).
    """
    async with serve_app((platform or SandboxPlatform()).create_app(), host, port) as base_url:
        yield base_url


def serve_sandbox(host: str = "127.0.0.1", port: int = 8765, *, platform: SandboxPlatform | None = None) -> None:
    """Serve a sandbox platform until SIGINT or SIGTERM, then return (the `geniehelper sandbox-platform`
    command). Blocking: it runs its own event loop."""
    asyncio.run(_serve_until_signalled(host, port, platform))


async def _serve_until_signalled(host: str, port: int, platform: SandboxPlatform | None) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    log = structlog.get_logger(__name__)
    try:
        async with run_sandbox(host, port, platform=platform) as base_url:
            log.info("sandbox.listening", base_url=base_url)
            await stop.wait()
            log.info("sandbox.stopping", base_url=base_url)
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
