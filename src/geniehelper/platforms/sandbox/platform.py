"""`SandboxPlatform`: the state of one sandbox platform and its Python API (what the admin endpoints
and in-process tests call). Its HTTP handlers are in `routes`."""

from __future__ import annotations

import itertools
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from geniehelper.platforms.models import Fan, Subscription
from geniehelper.platforms.sandbox.accounts import Account, NewAccount, generated_account, seed_items
from geniehelper.platforms.sandbox.evolve import Advanced, AdvanceSpec, advance
from geniehelper.platforms.sandbox.faults import FaultSpec, PendingFault, retry_after_header
from geniehelper.platforms.sandbox.listing import Listing, fan_position
from geniehelper.platforms.sandbox.wire import ApiError, decode_cursor, encode_cursor, error, hold_unless_disconnected

DEFAULT_PAGE_SIZE = 50


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
        self.clock = clock
        self.followers_per_hour = followers_per_hour
        self.subscribers_per_hour = subscribers_per_hour
        self.views_per_hour = views_per_hour
        self._max_page_size = max_page_size
        self._accounts: dict[str, Account] = {}
        self._accounts_by_token: dict[str, Account] = {}
        self._faults: list[PendingFault] = []
        self._request_counts: Counter[str] = Counter()
        self.ids = itertools.count(1)

    # --- Python API (what the admin endpoints call) ------------------------------------------------

    def create_account(self, spec: NewAccount) -> tuple[str, str]:
        """Create an account with seeded data; returns (account_id, token)."""
        n = len(self._accounts) + 1
        account_id = f"acct_{n:04d}"
        now_s = self.clock()
        account = Account(
            account_id=account_id,
            username=spec.username or f"creator{n}",
            token=secrets.token_urlsafe(24),
            created_at_s=now_s,
            base_followers=spec.base_followers,
            seed=spec.seed,
        )
        if spec.lazy:
            generated_account(account, spec)
        else:
            seed_items(account, spec, now=datetime.fromtimestamp(now_s, UTC))
        self._accounts[account_id] = account
        self._accounts_by_token[account.token] = account
        return account_id, account.token

    def add_fans(
        self,
        account_id: str,
        n_fans: int,
        *,
        n_transactions_per_fan: int = 0,
        n_messages_per_fan: int = 0,
        seed: int = 0,
    ) -> None:
        """Append new fans (with their subscriptions, transactions and messages) to an account, numbered
        after the existing ones: what an account gains between two syncs."""
        account = self.account(account_id)
        spec = NewAccount(
            seed=seed, n_fans=n_fans, n_transactions_per_fan=n_transactions_per_fan,
            n_messages_per_fan=n_messages_per_fan,
        )  # fmt: skip
        seed_items(account, spec, now=self.now())

    def advance(self, account_id: str, spec: AdvanceSpec) -> Advanced:
        """One step of the account's evolution (`evolve`): new fans, cancellations, rebills, win-backs,
        tips, purchases and messages, deterministic from its seed and the step; says what changed."""
        return advance(self.account(account_id), spec, self.clock())

    def update_subscription(self, account_id: str, fan_id: str, **changes: Any) -> Subscription:
        """Change a fan's subscription in place (status, expires_at, started_at, price_cents, ...): a
        cancellation, a rebill or a win-back as the platform's listing then shows it."""
        account = self.account(account_id)
        position = self._position(account, account.subscriptions, fan_id)
        subscription = account.subscriptions[position]
        account.subscriptions.replace(position, Subscription.model_validate({**subscription.model_dump(), **changes}))
        return account.subscriptions[position]

    def verify_email(self, account_id: str, fan_id: str, address: str) -> Fan:
        """The platform has verified a fan's e-mail address: its listing now reports it."""
        account = self.account(account_id)
        position = self._position(account, account.fans, fan_id)
        fan = account.fans[position]
        account.fans.replace(position, Fan.model_validate({**fan.model_dump(), "verified_email": address}))
        return account.fans[position]

    def counts(self, account_id: str) -> dict[str, int]:
        """How many fans, subscriptions, transactions, messages and subscription-history events the account lists."""
        account = self.account(account_id)
        return {
            "fans": len(account.fans), "subscriptions": len(account.subscriptions),
            "transactions": len(account.transactions), "messages": len(account.messages),
            "subscription_history": len(account.history),
        }  # fmt: skip

    def expire_token(self, account_id: str) -> None:
        account = self.account(account_id)
        self._accounts_by_token.pop(account.token, None)

    def rotate_token(self, account_id: str) -> str:
        account = self.account(account_id)
        self._accounts_by_token.pop(account.token, None)
        account.token = secrets.token_urlsafe(24)
        self._accounts_by_token[account.token] = account
        return account.token

    def add_fault(self, spec: FaultSpec) -> str:
        fault = PendingFault(fault_id=f"fault_{next(self.ids)}", spec=spec, remaining=spec.count)
        self._faults.append(fault)
        return fault.fault_id

    def clear_faults(self) -> int:
        cleared = len(self._faults)
        self._faults.clear()
        return cleared

    def request_counts(self) -> dict[str, int]:
        return dict(self._request_counts)

    def create_app(self) -> Starlette:
        from geniehelper.platforms.sandbox.routes import routes  # routes import this module's class

        return Starlette(routes=routes(self))

    # --- plumbing --------------------------------------------------------------------------------------

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    def account(self, account_id: str) -> Account:
        account = self._accounts.get(account_id)
        if account is None:
            raise ApiError(404, "account_not_found", f"no account {account_id!r}")
        return account

    @staticmethod
    def _position(account: Account, listing: Listing[Any], fan_id: str) -> int:
        position = fan_position(fan_id)
        if not 0 <= position < len(listing) or listing.json_item(position)["fan_id"] != fan_id:
            raise KeyError(f"{account.account_id} has no fan {fan_id!r}")
        return position

    def api(
        self, handler: Callable[[Request, Account], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        """Wrap a /v1 handler: count, authenticate, apply a pending fault, map `ApiError`s."""

        async def endpoint(request: Request) -> Response:
            self._request_counts[f"{request.method} {request.url.path}"] += 1
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            account = self._accounts_by_token.get(token) if scheme.lower() == "bearer" else None
            if account is None:
                return error(401, "invalid_token", "unknown or expired token")
            fault = next((f for f in self._faults if f.matches(request, account)), None)
            if fault is not None:
                fault.remaining -= 1
                if fault.remaining == 0:
                    self._faults.remove(fault)
                if fault.spec.kind == "rate_limit":
                    return error(429, "rate_limited", "slow down", headers=retry_after_header(fault.spec))
                if fault.spec.kind == "server_error":
                    return error(fault.spec.status, "server_error", "injected server error")
                if fault.spec.kind == "slow":
                    await hold_unless_disconnected(request, fault.spec.delay_s)
            try:
                response = await handler(request, account)
            except ApiError as exc:
                response = error(exc.status, exc.code, exc.message)
            if fault is not None and fault.spec.kind == "accept_then_timeout":
                await hold_unless_disconnected(request, fault.spec.delay_s)
            return response

        return endpoint

    def page(self, request: Request, items: Listing[Any] | list[Any]) -> Response:
        """One page of a listing: `limit` items from the position the cursor holds."""
        raw_limit = request.query_params.get("limit", str(DEFAULT_PAGE_SIZE))
        try:
            limit = int(raw_limit)
        except ValueError:
            raise ApiError(400, "invalid_limit", "limit must be an integer") from None
        if limit < 1:
            raise ApiError(400, "invalid_limit", "limit must be at least 1")
        # Like real platforms, clamp an oversized page instead of refusing it.
        limit = min(limit, self._max_page_size)
        cursor = request.query_params.get("cursor")
        offset = decode_cursor(cursor) if cursor else 0
        if isinstance(items, Listing):
            chunk = items.json_slice(offset, offset + limit)
        else:
            chunk = [item.model_dump(mode="json") for item in items[offset : offset + limit]]
        next_offset = offset + len(chunk)
        return JSONResponse(
            {"items": chunk, "next_cursor": encode_cursor(next_offset) if next_offset < len(items) else None}
        )
