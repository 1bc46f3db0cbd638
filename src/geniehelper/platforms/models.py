"""What platform clients take and return: frozen pydantic models, JSON on the wire.

Responses ignore unknown fields (a platform adding one must not break us); what we send forbids them.
Money is in integer cents; times are timezone-aware.
"""

from __future__ import annotations

from typing import Generic, Literal, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator


class PlatformModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class AccountInfo(PlatformModel):
    account_id: str
    username: str
    display_name: str | None = None


class PostToPublish(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    text: str = Field(default="", max_length=10_000)
    media_urls: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _not_empty(self) -> PostToPublish:
        if not self.text.strip() and not self.media_urls:
            raise ValueError("a post needs text or media")
        return self


class PublishedPost(PlatformModel):
    external_post_id: str
    created_at: AwareDatetime
    # The key the post was created with, when the platform reports it.
    idempotency_key: str | None = None


class AccountStats(PlatformModel):
    followers: int
    subscribers: int
    posts: int
    as_of: AwareDatetime


class PostMetrics(PlatformModel):
    external_post_id: str
    views: int
    likes: int
    comments: int
    as_of: AwareDatetime


class Fan(PlatformModel):
    fan_id: str
    username: str
    followed_at: AwareDatetime
    total_spent_cents: int = 0
    # Reported only when the platform has verified the address: the identity rule links on it.
    verified_email: str | None = None


class Subscription(PlatformModel):
    subscription_id: str
    fan_id: str
    # Platform vocabulary ("active", "expired", "cancelled", ...): kept as text, not a closed set.
    status: str
    price_cents: int
    started_at: AwareDatetime
    expires_at: AwareDatetime | None = None


class SubscriptionHistoryEvent(PlatformModel):
    """One lifecycle event of a fan's subscription, as a platform's history listing reports it."""

    event_id: str  # the platform's id of the event: unique within the account
    subscription_id: str
    fan_id: str
    sequence: int  # 1, 2, ... within the subscription, in the order the events happened
    # "new", "rebill", "cancellation", "trial_start", "expiry", "win_back", ... as the platform names them.
    kind: str
    occurred_at: AwareDatetime
    price_cents: int | None = None


class Transaction(PlatformModel):
    transaction_id: str
    fan_id: str
    # "subscription", "tip", "message", "post", ... as the platform names them.
    kind: str
    amount_cents: int
    currency: str = "USD"
    created_at: AwareDatetime


class Message(PlatformModel):
    message_id: str
    fan_id: str
    direction: Literal["in", "out"]
    text: str
    created_at: AwareDatetime


class SentMessage(PlatformModel):
    message_id: str
    fan_id: str
    created_at: AwareDatetime
    idempotency_key: str | None = None


ItemT = TypeVar("ItemT", bound=PlatformModel)


class Page(PlatformModel, Generic[ItemT]):
    """One page of a listing; pass `next_cursor` back to get the next page (None: this was the last)."""

    items: tuple[ItemT, ...]
    next_cursor: str | None = None
