"""The workers' HTTP client (platforms/transport.py) over a real loopback server: many concurrent
calls, and every connection kept alive for the next burst (httpx's default keeps only 20)."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from geniehelper.platforms.transport import ShardedTransport, pooled_http_client
from geniehelper.web.serve import serve_app

BURST = 50


class HeldServer:
    """Answers with the caller's port once `BURST` requests are in flight, so each burst really
    holds BURST connections open at once."""

    def __init__(self) -> None:
        self.arrived = 0
        self.release = asyncio.Event()

    async def handle(self, request: Request) -> PlainTextResponse:
        self.arrived += 1
        if self.arrived % BURST == 0:
            self.release.set()
        await self.release.wait()
        assert request.client is not None
        return PlainTextResponse(str(request.client.port))

    async def burst(self, http: httpx.AsyncClient, url: str) -> set[str]:
        self.release = asyncio.Event()
        responses = await asyncio.gather(*(http.get(f"{url}/port") for _ in range(BURST)))
        assert all(r.status_code == 200 for r in responses)
        return {r.text for r in responses}


async def test_a_burst_uses_many_connections_and_the_next_burst_reuses_them() -> None:
    server = HeldServer()
    async with serve_app(Starlette(routes=[Route("/port", server.handle)])) as url:
        async with pooled_http_client(httpx.Timeout(10.0)) as http:
            first = await server.burst(http, url)
            second = await server.burst(http, url)
        assert len(first) == BURST  # one connection per call in flight, spread over the shards
        assert second <= first  # all kept alive: the second burst opened none

        async with httpx.AsyncClient(timeout=10.0) as plain:  # httpx's default pool, for contrast
            first = await server.burst(plain, url)
            second = await server.burst(plain, url)
        assert len(second - first) >= BURST - 20  # it kept 20 and opened the rest again


@pytest.mark.parametrize(("shards", "connections"), [(0, 5), (5, 0)])
def test_a_transport_needs_at_least_one_shard_and_connection(shards: int, connections: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ShardedTransport(shards, connections)
