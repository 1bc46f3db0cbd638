"""An httpx transport that spreads requests over several connection pools.

httpx's pool (httpcore) scans every connection and every waiting request each time a request is
assigned or finishes, so one pool serving tens of concurrent calls spends more CPU on its own
bookkeeping than on the calls: measured here with the sandbox on loopback (bench/README.md,
"publishing"), one client gave about 1,000 posts/s to one caller and 300-450/s to 20-100 callers;
spread over ten pools the rate holds at 100 callers. Each shard is an ordinary
`httpx.AsyncHTTPTransport` with its own limits; requests go to the shards in turn.
"""

from __future__ import annotations

import itertools

import httpx

# 10 x 20: a worker running 50 jobs at once has about 5 calls in flight per pool.
DEFAULT_SHARDS = 10
DEFAULT_CONNECTIONS_PER_SHARD = 20


class ShardedTransport(httpx.AsyncBaseTransport):
    def __init__(
        self, shards: int = DEFAULT_SHARDS, connections_per_shard: int = DEFAULT_CONNECTIONS_PER_SHARD
    ) -> None:
        if shards < 1 or connections_per_shard < 1:
            raise ValueError("shards and connections_per_shard must be at least 1")
        limits = httpx.Limits(max_connections=connections_per_shard, max_keepalive_connections=connections_per_shard)
        self._shards = [httpx.AsyncHTTPTransport(limits=limits) for _ in range(shards)]
        self._next = itertools.cycle(self._shards)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await next(self._next).handle_async_request(request)

    async def aclose(self) -> None:
        for shard in self._shards:
            await shard.aclose()


def pooled_http_client(timeout: httpx.Timeout) -> httpx.AsyncClient:
    """The HTTP client for many concurrent platform calls from one process (a worker's)."""
    return httpx.AsyncClient(timeout=timeout, transport=ShardedTransport())
