"""Serving an ASGI app on loopback inside the current event loop (the sandbox platform, metrics, tests).

uvicorn runs on a socket bound here, without its own signal handling or logging set-up, so the
host process (a worker, a test, a benchmark) keeps both.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import AsyncIterator, Generator

import uvicorn
from starlette.applications import Starlette


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the host process."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _address(host: str, loopback_only: bool) -> str:
    if loopback_only and not is_loopback(host):
        raise ValueError(f"binds loopback addresses only, not {host!r}")
    return "127.0.0.1" if host == "localhost" else host


def bind(host: str, port: int, *, loopback_only: bool = True) -> tuple[socket.socket, str]:
    """Bind a listening socket; returns it and the base URL (with the real port when `port` is 0)."""
    address = _address(host, loopback_only)
    family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted connections only when the listening
    # socket says TCP; without it every response waits ~40 ms on Nagle + delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    bound_port = sock.getsockname()[1]
    url_host = f"[{address}]" if family == socket.AF_INET6 else address
    return sock, f"http://{url_host}:{bound_port}"


def config(app: Starlette) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        # None: leave logging as the host process configured it (uvicorn's default would replace it).
        log_config=None,
        lifespan="off",
        ws="none",
        server_header=False,
        # Held responses (the sandbox's injected faults) must not keep a stopping server alive for long.
        timeout_graceful_shutdown=1,
    )


@contextlib.asynccontextmanager
async def serve_app(
    app: Starlette, host: str = "127.0.0.1", port: int = 0, *, loopback_only: bool = True
) -> AsyncIterator[str]:
    """Serve an app in the current event loop (port 0: a free one; loopback only unless told);
    yields its base URL."""
    sock, base_url = bind(host, port, loopback_only=loopback_only)
    server = EmbeddedServer(config(app))
    task = asyncio.create_task(server.serve(sockets=[sock]), name=f"http:{base_url}")
    try:
        while not server.started:
            if task.done():
                await task  # raises the start-up error, if any
                raise RuntimeError(f"the server at {base_url} stopped during start-up")
            await asyncio.sleep(0.01)
        yield base_url
    finally:
        server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=10)
        except TimeoutError:
            server.force_exit = True
            await task
        finally:
            sock.close()
