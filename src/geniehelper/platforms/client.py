"""The platform client contract every adapter (HTTP, sandbox, future platforms) implements."""

from __future__ import annotations

from typing import Protocol

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


class PlatformClient(Protocol):
    """One creator's connection to one platform. Every method raises only `PlatformError` subclasses.

    Writes take an idempotency key chosen by the caller from what it is writing (for example
    `publish_post:<scheduled_post_id>`): sending the same write twice with the same key creates it once.
    """

    async def check_auth(self) -> AccountInfo: ...

    async def publish_post(self, post: PostToPublish, *, idempotency_key: str) -> PublishedPost: ...

    async def find_post_by_idempotency_key(self, key: str) -> PublishedPost | None:
        """The post created with `key`, if any: how a caller settles an `OutcomeUnknown` before retrying."""
        ...

    async def get_account_stats(self) -> AccountStats: ...

    async def get_post_metrics(self, external_post_id: str) -> PostMetrics: ...

    async def list_fans(self, cursor: str | None, limit: int) -> Page[Fan]: ...

    async def list_subscriptions(self, cursor: str | None, limit: int) -> Page[Subscription]: ...

    async def list_subscription_history(self, cursor: str | None, limit: int) -> Page[SubscriptionHistoryEvent]:
        """Every lifecycle event of the account's subscriptions, oldest first per subscription;
        append-only (new events are added at the end)."""
        ...

    async def list_transactions(self, cursor: str | None, limit: int) -> Page[Transaction]: ...

    async def list_messages(self, cursor: str | None, limit: int) -> Page[Message]: ...

    async def send_message(self, fan_id: str, text: str, *, idempotency_key: str) -> SentMessage: ...
