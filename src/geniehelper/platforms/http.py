"""`PlatformClient` over a platform's REST API (the shape the sandbox platform serves).

Failures are classified by whether the request can have had an effect:
- not connected (connect error/timeout, no pooled connection): nothing was sent -> transient;
- sent, then no answer (read/write timeout, dropped connection): for a read -> transient; for a write
  -> `OutcomeUnknown`, which the caller settles by looking the write up by its idempotency key.
The token lives only inside the request auth object: it is never logged, never in an error message,
and never in a repr or a local variable of these frames (tracebacks rendered with locals stay clean).
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Generator
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import structlog
from pydantic import BaseModel

from geniehelper.platforms.errors import (
    AuthExpired,
    OutcomeUnknown,
    PermanentPlatformError,
    PlatformError,
    RateLimited,
    TransientPlatformError,
)
from geniehelper.platforms.models import (
    AccountInfo,
    AccountStats,
    Fan,
    Message,
    Page,
    PostMetrics,
    PostToPublish,
    PublishedPost,
    SentMessage,
    Subscription,
    SubscriptionHistoryEvent,
    Transaction,
)

DEFAULT_RETRY_AFTER_S = 30.0
MAX_IDEMPOTENCY_KEY_LEN = 255

ModelT = TypeVar("ModelT", bound=BaseModel)

# Raised before any byte of the request left: safe to retry, reads and writes alike.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.ProxyError)
# Our own misconfiguration or bug: retrying sends the same broken request.
_OUR_FAULT = (httpx.UnsupportedProtocol, httpx.LocalProtocolError, httpx.TooManyRedirects)


class _BearerAuth(httpx.Auth):
    """Adds the bearer token at send time; the only object that holds it."""

    def __init__(self, token: str) -> None:
        self._authorization = f"Bearer {token}"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self._authorization
        yield request

    def __repr__(self) -> str:
        return "_BearerAuth(<redacted>)"


def parse_retry_after(value: str | None, *, now: datetime) -> float:
    """Seconds to wait from a `Retry-After` header: delta-seconds or an HTTP date; 30 s if absent/invalid."""
    if value is None or not value.strip():
        return DEFAULT_RETRY_AFTER_S
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else DEFAULT_RETRY_AFTER_S
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return DEFAULT_RETRY_AFTER_S
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def _check_idempotency_key(key: str) -> None:
    # It travels in a header: visible ASCII only, bounded, so it can never smuggle a header line.
    if not 0 < len(key) <= MAX_IDEMPOTENCY_KEY_LEN or not all(33 <= ord(c) <= 126 for c in key):
        raise ValueError(f"idempotency key must be 1-{MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters")


def _check_limit(limit: int) -> None:
    if limit < 1:
        raise ValueError("limit must be at least 1")


def _error_detail(response: httpx.Response) -> str:
    """The platform's own error code/message, short; the body is the platform's, never our headers."""
    try:
        body = response.json()
    except ValueError:
        return ""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        parts = [str(error.get(name)) for name in ("code", "message") if error.get(name)]
        return (": " + " - ".join(parts))[:200] if parts else ""
    return ""


class HttpPlatformClient:
    """One creator's token on one platform, over a shared `httpx.AsyncClient` (its pool is reused)."""

    def __init__(self, base_url: str, token: str, http: httpx.AsyncClient, *, timeout_s: float = 10.0) -> None:
        url = httpx.URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("base_url must be an absolute http(s) URL")
        if not token or any(c in token for c in "\r\n\0") or token != token.strip():
            raise ValueError("token must be non-empty, without surrounding spaces or line breaks")
        if not timeout_s > 0:
            raise ValueError("timeout_s must be positive")
        self._base_url = base_url.rstrip("/")
        self._auth = _BearerAuth(token)
        self._http = http
        self._timeout = httpx.Timeout(timeout_s)
        self._log = structlog.get_logger(__name__).bind(platform_host=url.host)

    def __repr__(self) -> str:
        return f"HttpPlatformClient(base_url={self._base_url!r})"

    # --- the contract -----------------------------------------------------------------------------

    async def check_auth(self) -> AccountInfo:
        return await self._read("GET", "/v1/me", AccountInfo)

    async def publish_post(self, post: PostToPublish, *, idempotency_key: str) -> PublishedPost:
        return await self._write(
            "POST",
            "/v1/posts",
            PublishedPost,
            body=post.model_dump(mode="json"),
            idempotency_key=idempotency_key,
        )

    async def find_post_by_idempotency_key(self, key: str) -> PublishedPost | None:
        _check_idempotency_key(key)
        page = await self._read("GET", "/v1/posts", Page[PublishedPost], params={"idempotency_key": key})
        # Only an exact key match counts: a platform that ignored the filter must not "find" another post.
        matches = [post for post in page.items if post.idempotency_key == key]
        if len(matches) > 1:
            # The platform did not honour the key at some point: report it, keep the oldest.
            self._log.warning("platform.duplicate_posts_for_key", idempotency_key=key, count=len(matches))
        return min(matches, key=lambda post: post.created_at) if matches else None

    async def get_account_stats(self) -> AccountStats:
        return await self._read("GET", "/v1/stats", AccountStats)

    async def get_post_metrics(self, external_post_id: str) -> PostMetrics:
        if not external_post_id:
            raise ValueError("external_post_id must be non-empty")
        path = f"/v1/posts/{quote(external_post_id, safe='')}/metrics"
        return await self._read("GET", path, PostMetrics)

    async def list_fans(self, cursor: str | None, limit: int) -> Page[Fan]:
        return await self._list("/v1/fans", Page[Fan], cursor, limit)

    async def list_subscriptions(self, cursor: str | None, limit: int) -> Page[Subscription]:
        return await self._list("/v1/subscriptions", Page[Subscription], cursor, limit)

    async def list_subscription_history(self, cursor: str | None, limit: int) -> Page[SubscriptionHistoryEvent]:
        return await self._list("/v1/subscriptions/history", Page[SubscriptionHistoryEvent], cursor, limit)

    async def list_transactions(self, cursor: str | None, limit: int) -> Page[Transaction]:
        return await self._list("/v1/transactions", Page[Transaction], cursor, limit)

    async def list_messages(self, cursor: str | None, limit: int) -> Page[Message]:
        return await self._list("/v1/messages", Page[Message], cursor, limit)

    async def send_message(self, fan_id: str, text: str, *, idempotency_key: str) -> SentMessage:
        return await self._write(
            "POST",
            "/v1/messages",
            SentMessage,
            body={"fan_id": fan_id, "text": text},
            idempotency_key=idempotency_key,
        )

    # --- transport --------------------------------------------------------------------------------

    async def _list(self, path: str, page_type: type[ModelT], cursor: str | None, limit: int) -> ModelT:
        _check_limit(limit)
        params: dict[str, str | int] = {"limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        return await self._read("GET", path, page_type, params=params)

    async def _read(
        self, method: str, path: str, model: type[ModelT], *, params: dict[str, str | int] | None = None
    ) -> ModelT:
        response = await self._send(method, path, params=params, body=None, idempotency_key=None)
        try:
            return model.model_validate(response.json())
        except ValueError as exc:  # JSON or validation error
            raise PermanentPlatformError(
                f"{method} {path}: malformed response ({type(exc).__name__})",
                status_code=response.status_code,
            ) from None

    async def _write(
        self, method: str, path: str, model: type[ModelT], *, body: dict[str, Any], idempotency_key: str
    ) -> ModelT:
        _check_idempotency_key(idempotency_key)
        response = await self._send(method, path, params=None, body=body, idempotency_key=idempotency_key)
        try:
            return model.model_validate(response.json())
        except ValueError as exc:  # JSON or validation error
            # The platform said yes but we cannot read what it made: the caller must look it up.
            raise OutcomeUnknown(
                f"{method} {path}: accepted (HTTP {response.status_code}) but the response is malformed "
                f"({type(exc).__name__})",
                idempotency_key=idempotency_key,
                status_code=response.status_code,
            ) from None

    async def _send(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str | int] | None,
        body: dict[str, Any] | None,
        idempotency_key: str | None,
    ) -> httpx.Response:
        """Send once and return a 2xx response, or raise the `PlatformError` that says what to do next."""
        what = f"{method} {path}"
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else {}
        started = time.monotonic()
        try:
            response = await self._http.request(
                method,
                self._base_url + path,
                params=params,
                json=body,
                headers=headers,
                auth=self._auth,
                timeout=self._timeout,
            )
        except httpx.HTTPError as exc:
            # `from None`: the httpx exception holds the request; its cause chain adds nothing we keep.
            raise self._classify_transport_error(what, exc, idempotency_key) from None
        elapsed_ms = round((time.monotonic() - started) * 1000, 1)
        status = response.status_code
        if 200 <= status < 300:
            self._log.debug("platform.request", request=what, status=status, elapsed_ms=elapsed_ms)
            return response
        error = self._classify_status(what, response)
        self._log.info(
            "platform.request_failed",
            request=what,
            status=status,
            error=type(error).__name__,
            elapsed_ms=elapsed_ms,
        )
        raise error

    def _classify_transport_error(self, what: str, exc: httpx.HTTPError, idempotency_key: str | None) -> PlatformError:
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        error: PlatformError
        if isinstance(exc, _NOT_SENT):
            error = TransientPlatformError(f"{what}: not sent ({reason})")
        elif isinstance(exc, _OUR_FAULT) or not isinstance(exc, httpx.RequestError):
            error = PermanentPlatformError(f"{what}: cannot be sent ({reason})")
        elif idempotency_key is not None:
            error = OutcomeUnknown(
                f"{what}: sent but no response ({reason}); look it up by idempotency key before retrying",
                idempotency_key=idempotency_key,
            )
        else:
            error = TransientPlatformError(f"{what}: no response ({reason})")
        self._log.info("platform.request_failed", request=what, error=type(error).__name__, reason=reason)
        return error

    def _classify_status(self, what: str, response: httpx.Response) -> PlatformError:
        status = response.status_code
        message = f"{what}: HTTP {status}{_error_detail(response)}"
        if status in (401, 403):
            return AuthExpired(message, status_code=status)
        if status == 429:
            retry_after_s = parse_retry_after(response.headers.get("Retry-After"), now=datetime.now(UTC))
            return RateLimited(f"{message} (retry after {retry_after_s:g} s)", retry_after_s=retry_after_s)
        # 408: the server gave up waiting for our request, so it was not processed.
        if status >= 500 or status == 408:
            return TransientPlatformError(message, status_code=status)
        return PermanentPlatformError(message, status_code=status)
