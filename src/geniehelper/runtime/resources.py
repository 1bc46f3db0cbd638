"""What jobs use beyond the database: typed resources, opened per worker for the jobs of its queue.

A job definition lists the resources it needs (`resources=(HTTP_CLIENT, CREDENTIALS)`); a worker
opens, at start, the union of what its queue's jobs need (the media worker its media tools, a worker
of AI jobs their model client) and nothing else, and closes them on shutdown. A job reads one with
`ctx.resource(KEY)`, typed by the key, and only if it declared it. A resource that cannot be opened
(e.g. no credentials key configured) is logged at start and raised to each job that asks for it;
the worker still runs the jobs that do not.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

import httpx
import structlog

from geniehelper.crypto import CredentialCipher
from geniehelper.platforms.transport import pooled_http_client
from geniehelper.settings import Settings

log = structlog.get_logger("geniehelper.worker")

T = TypeVar("T")


async def _no_close(_value: Any) -> None:
    return None


@dataclass(frozen=True, eq=False)
class ResourceKey(Generic[T]):
    name: str
    open: Callable[[Settings], Awaitable[T]]
    close: Callable[[T], Awaitable[None]] = _no_close


class ResourceUnavailable(RuntimeError):
    pass


class OpenResources:
    """The resources one worker opened: by key, or the error that kept each from opening."""

    def __init__(self) -> None:
        self._values: dict[ResourceKey[Any], Any] = {}
        self._errors: dict[ResourceKey[Any], BaseException] = {}

    @classmethod
    async def open(cls, keys: Iterable[ResourceKey[Any]], settings: Settings) -> OpenResources:
        opened = cls()
        for key in dict.fromkeys(keys):  # each once, in declaration order
            try:
                opened._values[key] = await key.open(settings)
            except Exception as exc:
                opened._errors[key] = exc
                log.error("worker.resource_unavailable", resource=key.name, problem=str(exc))
        return opened

    def get(self, key: ResourceKey[T]) -> T:
        if key in self._values:
            return cast(T, self._values[key])
        if key in self._errors:
            raise self._errors[key]
        raise ResourceUnavailable(f"resource {key.name!r} was not opened by this worker")

    async def close(self) -> None:
        for key, value in reversed(self._values.items()):
            with contextlib.suppress(Exception):
                await key.close(value)
        self._values.clear()


async def _open_http(settings: Settings) -> httpx.AsyncClient:
    return pooled_http_client(httpx.Timeout(30.0, connect=5.0))


async def _close_http(client: httpx.AsyncClient) -> None:
    await client.aclose()


async def _open_credentials(settings: Settings) -> CredentialCipher:
    # A missing or malformed key raises CredentialKeyError naming the variable.
    return settings.credential_cipher()


# One pooled HTTP client per worker (platform calls set their own timeouts).
HTTP_CLIENT: ResourceKey[httpx.AsyncClient] = ResourceKey("http_client", _open_http, _close_http)
# The platform-credential cipher (docs/credentials.md).
CREDENTIALS: ResourceKey[CredentialCipher] = ResourceKey("credentials", _open_credentials)
