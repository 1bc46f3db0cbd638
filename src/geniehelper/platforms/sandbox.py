"""The sandbox platform: an in-memory creator platform served over real HTTP, for tests and benchmarks.

It speaks the REST shape `HttpPlatformClient` uses (`/v1/...`, bearer token, `Idempotency-Key` on
writes) and adds loopback-only admin endpoints to create accounts, expire tokens, inject faults and
inspect what was created. State belongs to one `SandboxPlatform` instance; nothing is module-level.

Tests in the same process also change an account over time through the Python API: `add_fans`
(new fans with their subscriptions, transactions and messages), `update_subscription` (a
cancellation, rebill or win-back) and `verify_email` (the platform reports a verified address);
`counts` says how many items each listing holds.

Admin API (no token; the server binds loopback only):
    POST   /admin/accounts                    {username?, seed?, n_fans?, n_transactions_per_fan?,
                                               n_messages_per_fan?, base_followers?} -> {account_id, token}
    POST   /admin/accounts/{id}/expire-token  the token now gets 401
    POST   /admin/accounts/{id}/rotate-token  -> {account_id, token}: a new valid token
    GET    /admin/accounts/{id}/posts         every post with the idempotency key it was created with
    POST   /admin/faults                      {kind, count, path_prefix, method?, account_id?, retry_after_s,
                                               retry_after_format, delay_s, status} -> {fault_id}
    DELETE /admin/faults                      drop all pending faults
    GET    /admin/requests                    {"counts": {"GET /v1/me": n, ...}} for /v1 requests

Fault kinds, applied to the next `count` matching authenticated /v1 requests:
    rate_limit            429 with Retry-After (seconds or an HTTP date)
    server_error          `status` (5xx), nothing done
    slow                  wait `delay_s`, then handle normally
    accept_then_timeout   handle normally (a post is stored), then hold the response `delay_s`: longer than
                          the client's timeout, it simulates a write accepted whose answer never arrives
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import email.utils
import itertools
import json
import math
import random
import secrets
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from geniehelper.platforms.models import (
    AccountInfo,
    AccountStats,
    Fan,
    Message,
    PlatformModel,
    PostMetrics,
    PostToPublish,
    PublishedPost,
    SentMessage,
    Subscription,
    Transaction,
)
from geniehelper.web.serve import is_loopback, serve_app

ModelT = TypeVar("ModelT", bound=BaseModel)

DEFAULT_PAGE_SIZE = 50
MAX_IDEMPOTENCY_KEY_LEN = 255
# How often a held response checks whether the client has gone (then it stops waiting).
_DISCONNECT_POLL_S = 0.05


# --- admin request bodies --------------------------------------------------------------------------


class NewAccount(BaseModel):
    """Body of POST /admin/accounts. The same seed gives the same fans, subscriptions and transactions."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    username: str | None = Field(default=None, min_length=1, max_length=64)
    seed: int = 0
    n_fans: int = Field(default=0, ge=0, le=100_000)
    n_transactions_per_fan: int = Field(default=0, ge=0, le=1_000)
    n_messages_per_fan: int = Field(default=0, ge=0, le=1_000)
    base_followers: int = Field(default=0, ge=0)


FaultKind = Literal["rate_limit", "server_error", "slow", "accept_then_timeout"]


class FaultSpec(BaseModel):
    """Body of POST /admin/faults."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: FaultKind
    count: int = Field(default=1, ge=1, le=1_000_000)
    path_prefix: str = Field(default="/v1/", pattern=r"^/")
    method: str | None = None
    account_id: str | None = None
    retry_after_s: float = Field(default=2.0, ge=0, le=86_400)
    retry_after_format: Literal["seconds", "http_date", "none"] = "seconds"
    delay_s: float = Field(default=3.0, ge=0, le=600)
    status: int = Field(default=503, ge=500, le=599)


class _MessageToSend(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    fan_id: str = Field(min_length=1)
    text: str = Field(min_length=1, max_length=10_000)


# --- state -------------------------------------------------------------------------------------------


@dataclass
class _StoredPost:
    post: PublishedPost
    content: PostToPublish
    created_at_s: float


@dataclass
class _StoredSend:
    sent: SentMessage
    request: _MessageToSend


@dataclass
class _Account:
    account_id: str
    username: str
    token: str
    created_at_s: float
    base_followers: int
    posts: list[_StoredPost] = field(default_factory=list)
    posts_by_key: dict[str, _StoredPost] = field(default_factory=dict)
    fans: list[Fan] = field(default_factory=list)
    fan_ids: set[str] = field(default_factory=set)
    subscriptions: list[Subscription] = field(default_factory=list)
    transactions: list[Transaction] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    sends_by_key: dict[str, _StoredSend] = field(default_factory=dict)


@dataclass
class _PendingFault:
    fault_id: str
    spec: FaultSpec
    remaining: int

    def matches(self, request: Request, account: _Account) -> bool:
        return (
            self.remaining > 0
            and request.url.path.startswith(self.spec.path_prefix)
            and (self.spec.method is None or self.spec.method.upper() == request.method)
            and (self.spec.account_id is None or self.spec.account_id == account.account_id)
        )


class _ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def _dump(model: PlatformModel, status: int = 200) -> JSONResponse:
    return JSONResponse(model.model_dump(mode="json"), status_code=status)


def _encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o:{offset}".encode()).rstrip(b"=").decode()


def _decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, _, number = text.partition(":")
        offset = int(number)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise _ApiError(400, "invalid_cursor", "cursor is not one this platform issued") from None
    if prefix != "o" or offset < 0:
        raise _ApiError(400, "invalid_cursor", "cursor is not one this platform issued")
    return offset


async def _json_body(request: Request) -> Any:
    try:
        return json.loads(await request.body() or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _ApiError(400, "invalid_json", "body is not JSON") from None


def _validated(model: type[ModelT], data: Any) -> ModelT:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        detail = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
        raise _ApiError(422, "invalid_request", detail[:500]) from None


def _idempotency_key(request: Request) -> str:
    key = request.headers.get("Idempotency-Key", "")
    if not key:
        raise _ApiError(400, "missing_idempotency_key", "writes require an Idempotency-Key header")
    if len(key) > MAX_IDEMPOTENCY_KEY_LEN:
        raise _ApiError(400, "invalid_idempotency_key", "Idempotency-Key is too long")
    return key


async def _hold_unless_disconnected(request: Request, delay_s: float) -> None:
    """Wait `delay_s`, or less if the client goes away (nobody is left to answer)."""
    # Read the body first: `is_disconnected` consumes the next ASGI message, which must not be the body.
    await request.body()
    deadline = time.monotonic() + delay_s
    while (remaining := deadline - time.monotonic()) > 0:
        await asyncio.sleep(min(_DISCONNECT_POLL_S, remaining))
        if await request.is_disconnected():
            return


class SandboxPlatform:
    """All state of one sandbox platform. Handlers run on one event loop and never await between a
    check and the write that depends on it, so idempotency holds without locks."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        followers_per_hour: float = 360.0,
        subscribers_per_hour: float = 36.0,
        views_per_hour: float = 3_600.0,
        max_page_size: int = 200,
    ) -> None:
        # `clock` gives epoch seconds; tests pass a manual clock to make growth exact.
        self._clock = clock
        self._followers_per_hour = followers_per_hour
        self._subscribers_per_hour = subscribers_per_hour
        self._views_per_hour = views_per_hour
        self._max_page_size = max_page_size
        self._accounts: dict[str, _Account] = {}
        self._accounts_by_token: dict[str, _Account] = {}
        self._faults: list[_PendingFault] = []
        self._request_counts: Counter[str] = Counter()
        self._ids = itertools.count(1)

    # --- Python API (what the admin endpoints call) ------------------------------------------------

    def create_account(self, spec: NewAccount) -> tuple[str, str]:
        """Create an account with seeded data; returns (account_id, token)."""
        n = len(self._accounts) + 1
        account_id = f"acct_{n:04d}"
        now_s = self._clock()
        account = _Account(
            account_id=account_id,
            username=spec.username or f"creator{n}",
            token=secrets.token_urlsafe(24),
            created_at_s=now_s,
            base_followers=spec.base_followers,
        )
        _seed(account, spec, now=datetime.fromtimestamp(now_s, UTC))
        self._accounts[account_id] = account
        self._accounts_by_token[account.token] = account
        return account_id, account.token

    def add_fans(
        self, account_id: str, n_fans: int, *, n_transactions_per_fan: int = 0, n_messages_per_fan: int = 0,
        seed: int = 0,
    ) -> None:
        """Append new fans (with their subscriptions, transactions and messages) to an account, numbered
        after the existing ones: what an account gains between two syncs."""
        account = self._account(account_id)
        spec = NewAccount(
            seed=seed, n_fans=n_fans, n_transactions_per_fan=n_transactions_per_fan,
            n_messages_per_fan=n_messages_per_fan,
        )  # fmt: skip
        _seed(account, spec, now=self._now())

    def update_subscription(self, account_id: str, fan_id: str, **changes: Any) -> Subscription:
        """Change a fan's subscription in place (status, expires_at, started_at, price_cents, ...): a
        cancellation, a rebill or a win-back as the platform's listing then shows it."""
        account = self._account(account_id)
        for i, subscription in enumerate(account.subscriptions):
            if subscription.fan_id == fan_id:
                account.subscriptions[i] = Subscription.model_validate({**subscription.model_dump(), **changes})
                return account.subscriptions[i]
        raise KeyError(f"{account_id} has no subscription for {fan_id!r}")

    def verify_email(self, account_id: str, fan_id: str, address: str) -> Fan:
        """The platform has verified a fan's e-mail address: its listing now reports it."""
        account = self._account(account_id)
        for i, fan in enumerate(account.fans):
            if fan.fan_id == fan_id:
                account.fans[i] = Fan.model_validate({**fan.model_dump(), "verified_email": address})
                return account.fans[i]
        raise KeyError(f"{account_id} has no fan {fan_id!r}")

    def counts(self, account_id: str) -> dict[str, int]:
        """How many fans, subscriptions, transactions and messages the account lists."""
        account = self._account(account_id)
        return {
            "fans": len(account.fans), "subscriptions": len(account.subscriptions),
            "transactions": len(account.transactions), "messages": len(account.messages),
        }  # fmt: skip

    def expire_token(self, account_id: str) -> None:
        account = self._account(account_id)
        self._accounts_by_token.pop(account.token, None)

    def rotate_token(self, account_id: str) -> str:
        account = self._account(account_id)
        self._accounts_by_token.pop(account.token, None)
        account.token = secrets.token_urlsafe(24)
        self._accounts_by_token[account.token] = account
        return account.token

    def add_fault(self, spec: FaultSpec) -> str:
        fault = _PendingFault(fault_id=f"fault_{next(self._ids)}", spec=spec, remaining=spec.count)
        self._faults.append(fault)
        return fault.fault_id

    def clear_faults(self) -> int:
        cleared = len(self._faults)
        self._faults.clear()
        return cleared

    def request_counts(self) -> dict[str, int]:
        return dict(self._request_counts)

    def create_app(self) -> Starlette:
        api = self._api
        routes = [
            Route("/v1/me", api(self._me), methods=["GET"]),
            Route("/v1/posts", api(self._create_post), methods=["POST"]),
            Route("/v1/posts", api(self._list_posts), methods=["GET"]),
            Route("/v1/posts/{post_id}/metrics", api(self._post_metrics), methods=["GET"]),
            Route("/v1/stats", api(self._stats), methods=["GET"]),
            Route("/v1/fans", api(self._list_fans), methods=["GET"]),
            Route("/v1/subscriptions", api(self._list_subscriptions), methods=["GET"]),
            Route("/v1/transactions", api(self._list_transactions), methods=["GET"]),
            Route("/v1/messages", api(self._list_messages), methods=["GET"]),
            Route("/v1/messages", api(self._send_message), methods=["POST"]),
            Route("/admin/accounts", _admin(self._admin_create_account), methods=["POST"]),
            Route(
                "/admin/accounts/{account_id}/expire-token",
                _admin(self._admin_expire_token),
                methods=["POST"],
            ),
            Route(
                "/admin/accounts/{account_id}/rotate-token",
                _admin(self._admin_rotate_token),
                methods=["POST"],
            ),
            Route("/admin/accounts/{account_id}/posts", _admin(self._admin_posts), methods=["GET"]),
            Route("/admin/faults", _admin(self._admin_add_fault), methods=["POST"]),
            Route("/admin/faults", _admin(self._admin_clear_faults), methods=["DELETE"]),
            Route("/admin/requests", _admin(self._admin_requests), methods=["GET"]),
        ]
        return Starlette(routes=routes)

    # --- plumbing --------------------------------------------------------------------------------------

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    def _account(self, account_id: str) -> _Account:
        account = self._accounts.get(account_id)
        if account is None:
            raise _ApiError(404, "account_not_found", f"no account {account_id!r}")
        return account

    def _api(
        self, handler: Callable[[Request, _Account], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        """Wrap a /v1 handler: count, authenticate, apply a pending fault, map `_ApiError`s."""

        async def endpoint(request: Request) -> Response:
            self._request_counts[f"{request.method} {request.url.path}"] += 1
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            account = self._accounts_by_token.get(token) if scheme.lower() == "bearer" else None
            if account is None:
                return _error(401, "invalid_token", "unknown or expired token")
            fault = next((f for f in self._faults if f.matches(request, account)), None)
            if fault is not None:
                fault.remaining -= 1
                if fault.remaining == 0:
                    self._faults.remove(fault)
                if fault.spec.kind == "rate_limit":
                    return _error(429, "rate_limited", "slow down", headers=_retry_after_header(fault.spec))
                if fault.spec.kind == "server_error":
                    return _error(fault.spec.status, "server_error", "injected server error")
                if fault.spec.kind == "slow":
                    await _hold_unless_disconnected(request, fault.spec.delay_s)
            try:
                response = await handler(request, account)
            except _ApiError as exc:
                response = _error(exc.status, exc.code, exc.message)
            if fault is not None and fault.spec.kind == "accept_then_timeout":
                await _hold_unless_disconnected(request, fault.spec.delay_s)
            return response

        return endpoint

    def _page(self, request: Request, items: Sequence[PlatformModel]) -> Response:
        raw_limit = request.query_params.get("limit", str(DEFAULT_PAGE_SIZE))
        try:
            limit = int(raw_limit)
        except ValueError:
            raise _ApiError(400, "invalid_limit", "limit must be an integer") from None
        if limit < 1:
            raise _ApiError(400, "invalid_limit", "limit must be at least 1")
        # Like real platforms, clamp an oversized page instead of refusing it.
        limit = min(limit, self._max_page_size)
        cursor = request.query_params.get("cursor")
        offset = _decode_cursor(cursor) if cursor else 0
        chunk = items[offset : offset + limit]
        next_offset = offset + len(chunk)
        return JSONResponse(
            {
                "items": [item.model_dump(mode="json") for item in chunk],
                "next_cursor": _encode_cursor(next_offset) if next_offset < len(items) else None,
            }
        )

    # --- /v1 handlers ----------------------------------------------------------------------------------

    async def _me(self, _request: Request, account: _Account) -> Response:
        return _dump(AccountInfo(account_id=account.account_id, username=account.username))

    async def _list_fans(self, request: Request, account: _Account) -> Response:
        return self._page(request, account.fans)

    async def _list_subscriptions(self, request: Request, account: _Account) -> Response:
        return self._page(request, account.subscriptions)

    async def _list_transactions(self, request: Request, account: _Account) -> Response:
        return self._page(request, account.transactions)

    async def _list_messages(self, request: Request, account: _Account) -> Response:
        return self._page(request, account.messages)

    async def _create_post(self, request: Request, account: _Account) -> Response:
        key = _idempotency_key(request)
        content = _validated(PostToPublish, await _json_body(request))
        # No await from here on: the check and the insert are atomic on the event loop.
        existing = account.posts_by_key.get(key)
        if existing is not None:
            if existing.content != content:
                raise _ApiError(422, "idempotency_key_reused", "key was used for a different post")
            return _dump(existing.post, 200)
        now_s = self._clock()
        post = PublishedPost(
            external_post_id=f"post_{next(self._ids):06d}",
            created_at=datetime.fromtimestamp(now_s, UTC),
            idempotency_key=key,
        )
        stored = _StoredPost(post=post, content=content, created_at_s=now_s)
        account.posts.append(stored)
        account.posts_by_key[key] = stored
        return _dump(post, 201)

    async def _list_posts(self, request: Request, account: _Account) -> Response:
        key = request.query_params.get("idempotency_key")
        posts = [s.post for s in account.posts if key is None or s.post.idempotency_key == key]
        return self._page(request, posts)

    async def _post_metrics(self, request: Request, account: _Account) -> Response:
        post_id = request.path_params["post_id"]
        stored = next((s for s in account.posts if s.post.external_post_id == post_id), None)
        if stored is None:
            raise _ApiError(404, "post_not_found", f"no post {post_id!r}")
        age_h = max(0.0, self._clock() - stored.created_at_s) / 3_600
        views = math.floor(age_h * self._views_per_hour)
        return _dump(
            PostMetrics(
                external_post_id=post_id,
                views=views,
                likes=views // 10,
                comments=views // 50,
                as_of=self._now(),
            )
        )

    async def _stats(self, _request: Request, account: _Account) -> Response:
        now = self._now()
        age_h = max(0.0, self._clock() - account.created_at_s) / 3_600
        active = sum(1 for s in account.subscriptions if s.status == "active")
        return _dump(
            AccountStats(
                followers=account.base_followers + len(account.fans) + math.floor(age_h * self._followers_per_hour),
                subscribers=active + math.floor(age_h * self._subscribers_per_hour),
                posts=len(account.posts),
                as_of=now,
            )
        )

    async def _send_message(self, request: Request, account: _Account) -> Response:
        key = _idempotency_key(request)
        wanted = _validated(_MessageToSend, await _json_body(request))
        existing = account.sends_by_key.get(key)
        if existing is not None:
            if existing.request != wanted:
                raise _ApiError(422, "idempotency_key_reused", "key was used for a different message")
            return _dump(existing.sent, 200)
        if wanted.fan_id not in account.fan_ids:
            raise _ApiError(404, "fan_not_found", f"no fan {wanted.fan_id!r}")
        now = self._now()
        message_id = f"msg_{next(self._ids):06d}"
        sent = SentMessage(message_id=message_id, fan_id=wanted.fan_id, created_at=now, idempotency_key=key)
        account.messages.append(
            Message(message_id=message_id, fan_id=wanted.fan_id, direction="out", text=wanted.text, created_at=now)
        )
        account.sends_by_key[key] = _StoredSend(sent=sent, request=wanted)
        return _dump(sent, 201)

    # --- admin handlers ----------------------------------------------------------------------------

    async def _admin_create_account(self, request: Request) -> Response:
        account_id, token = self.create_account(_validated(NewAccount, await _json_body(request)))
        return JSONResponse({"account_id": account_id, "token": token}, status_code=201)

    async def _admin_expire_token(self, request: Request) -> Response:
        account_id = request.path_params["account_id"]
        self.expire_token(account_id)
        return JSONResponse({"account_id": account_id, "expired": True})

    async def _admin_rotate_token(self, request: Request) -> Response:
        account_id = request.path_params["account_id"]
        return JSONResponse({"account_id": account_id, "token": self.rotate_token(account_id)})

    async def _admin_posts(self, request: Request) -> Response:
        account = self._account(request.path_params["account_id"])
        items = [
            {
                **stored.post.model_dump(mode="json"),
                "text": stored.content.text,
                "media_urls": list(stored.content.media_urls),
            }
            for stored in account.posts
        ]
        return JSONResponse({"items": items})

    async def _admin_add_fault(self, request: Request) -> Response:
        fault_id = self.add_fault(_validated(FaultSpec, await _json_body(request)))
        return JSONResponse({"fault_id": fault_id}, status_code=201)

    async def _admin_clear_faults(self, _request: Request) -> Response:
        return JSONResponse({"cleared": self.clear_faults()})

    async def _admin_requests(self, _request: Request) -> Response:
        return JSONResponse({"counts": self.request_counts()})


def _admin(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """Wrap an admin handler: loopback clients only (a second fence behind the loopback bind)."""

    async def endpoint(request: Request) -> Response:
        if request.client is None or not is_loopback(request.client.host):
            return _error(403, "forbidden", "admin endpoints answer loopback clients only")
        try:
            return await handler(request)
        except _ApiError as exc:
            return _error(exc.status, exc.code, exc.message)

    return endpoint


def _retry_after_header(spec: FaultSpec) -> dict[str, str]:
    if spec.retry_after_format == "none":
        return {}
    if spec.retry_after_format == "http_date":
        # Wall-clock time, not the sandbox clock: the client compares it with its own clock.
        when = datetime.now(UTC) + timedelta(seconds=spec.retry_after_s)
        return {"Retry-After": email.utils.format_datetime(when, usegmt=True)}
    return {"Retry-After": str(math.ceil(spec.retry_after_s))}


# --- seeded data -------------------------------------------------------------------------------------

_SUBSCRIPTION_PRICES_CENTS = (499, 999, 1_499, 1_999)
_TRANSACTION_KINDS = ("subscription", "tip", "message", "post")
_INCOMING_TEXTS = ("hey!", "love your posts", "when is the next drop?", "thank you <3", "hi from Lisbon")
_OUTGOING_TEXTS = ("thanks for subscribing!", "glad you like it", "soon, stay tuned", "xo")


def _seed(account: _Account, spec: NewAccount, *, now: datetime) -> None:
    """Fans, subscriptions, transactions and messages drawn from `spec.seed`; times are relative to now."""
    rng = random.Random(spec.seed)
    # Numbered after what the account has: seeding again appends (add_fans).
    transaction_number = itertools.count(len(account.transactions) + 1)
    message_number = itertools.count(len(account.messages) + 1)
    first = len(account.fans) + 1
    for i in range(first, first + spec.n_fans):
        fan_id = f"fan_{i:06d}"
        followed_at = now - timedelta(seconds=rng.randint(3_600, 365 * 86_400))
        price = rng.choice(_SUBSCRIPTION_PRICES_CENTS)
        if rng.random() < 0.7:
            status, expires_at = "active", now + timedelta(seconds=rng.randint(3_600, 30 * 86_400))
        else:
            status, expires_at = "expired", now - timedelta(seconds=rng.randint(0, 30 * 86_400))
        account.subscriptions.append(
            Subscription(
                subscription_id=f"sub_{account.account_id}_{i:06d}",
                fan_id=fan_id,
                status=status,
                price_cents=price,
                started_at=min(followed_at, expires_at - timedelta(days=30)),
                expires_at=expires_at,
            )
        )
        spent = 0
        window_s = max(1, int((now - followed_at).total_seconds()))
        for _ in range(spec.n_transactions_per_fan):
            kind = rng.choice(_TRANSACTION_KINDS)
            amount = price if kind == "subscription" else rng.choice((300, 500, 1_000, 2_000, 5_000))
            spent += amount
            account.transactions.append(
                Transaction(
                    transaction_id=f"txn_{account.account_id}_{next(transaction_number):08d}",
                    fan_id=fan_id,
                    kind=kind,
                    amount_cents=amount,
                    created_at=followed_at + timedelta(seconds=rng.randint(0, window_s)),
                )
            )
        for j in range(spec.n_messages_per_fan):
            incoming = j % 2 == 0
            account.messages.append(
                Message(
                    message_id=f"msg_{account.account_id}_{next(message_number):08d}",
                    fan_id=fan_id,
                    direction="in" if incoming else "out",
                    text=rng.choice(_INCOMING_TEXTS if incoming else _OUTGOING_TEXTS),
                    created_at=followed_at + timedelta(seconds=rng.randint(0, window_s)),
                )
            )
        account.fans.append(
            Fan(
                fan_id=fan_id,
                username=f"fan{rng.randrange(10**8):08d}",
                followed_at=followed_at,
                total_spent_cents=spent,
            )
        )
        account.fan_ids.add(fan_id)


# --- serving -----------------------------------------------------------------------------------------


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
