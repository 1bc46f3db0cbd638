"""A sandbox account's state and how it is seeded: built item by item (small accounts the tests change
through the Python API) or generated per page from the seed (`lazy`: large accounts)."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field, model_validator

from geniehelper.platforms.models import (
    Fan,
    Message,
    PostToPublish,
    PublishedPost,
    SentMessage,
    Subscription,
    SubscriptionHistoryEvent,
    Transaction,
)
from geniehelper.platforms.sandbox.history import MAX_PER_FAN, MIN_PER_FAN, HistoryGenerator, fan_history
from geniehelper.platforms.sandbox.listing import (
    INCOMING_TEXTS,
    OUTGOING_TEXTS,
    SUBSCRIPTION_PRICES_CENTS,
    TIP_AMOUNTS_CENTS,
    TRANSACTION_KINDS,
    Generator,
    Listing,
    fan_position,
)


class NewAccount(BaseModel):
    """Body of POST /admin/accounts. The same seed gives the same fans, subscriptions and transactions.

    Built item by item (`n_transactions_per_fan`, `n_messages_per_fan`), or with `lazy` generated per
    page from the seed (`n_transactions`, `n_messages` in all, spread over the fans): large accounts.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    username: str | None = Field(default=None, min_length=1, max_length=64)
    seed: int = 0
    n_fans: int = Field(default=0, ge=0, le=1_000_000)
    n_transactions_per_fan: int = Field(default=0, ge=0, le=1_000)
    n_messages_per_fan: int = Field(default=0, ge=0, le=1_000)
    base_followers: int = Field(default=0, ge=0)
    lazy: bool = False
    n_transactions: int = Field(default=0, ge=0, le=100_000_000)
    n_messages: int = Field(default=0, ge=0, le=100_000_000)
    # Seeded lifecycle events per fan in the subscription-history listing (`history`).
    n_history_per_fan: int = Field(default=3, ge=MIN_PER_FAN, le=MAX_PER_FAN)

    @model_validator(mode="after")
    def _one_way_of_seeding(self) -> NewAccount:
        if self.lazy:
            if self.n_transactions_per_fan or self.n_messages_per_fan:
                raise ValueError("lazy: give n_transactions and n_messages (in all), not per fan")
            if (self.n_transactions or self.n_messages) and not self.n_fans:
                raise ValueError("lazy: n_transactions and n_messages need n_fans > 0")
        else:
            if self.n_transactions or self.n_messages:
                raise ValueError("n_transactions and n_messages are for lazy accounts; use the per-fan fields")
            if self.n_fans > 100_000:
                raise ValueError("n_fans: more than 100000 fans needs lazy")
        return self


class MessageToSend(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    fan_id: str = Field(min_length=1)
    text: str = Field(min_length=1, max_length=10_000)


@dataclass
class StoredPost:
    post: PublishedPost
    content: PostToPublish
    created_at_s: float


@dataclass
class StoredSend:
    sent: SentMessage
    request: MessageToSend


@dataclass
class Account:
    """One account. Fan `fan_000123` is at position 122 of both `fans` and `subscriptions`."""

    account_id: str
    username: str
    token: str
    created_at_s: float
    base_followers: int
    seed: int = 0
    fans: Listing[Fan] = field(default_factory=lambda: Listing(Fan))
    subscriptions: Listing[Subscription] = field(default_factory=lambda: Listing(Subscription))
    transactions: Listing[Transaction] = field(default_factory=lambda: Listing(Transaction))
    messages: Listing[Message] = field(default_factory=lambda: Listing(Message))
    history: Listing[SubscriptionHistoryEvent] = field(default_factory=lambda: Listing(SubscriptionHistoryEvent))
    # The last history sequence per fan position, where it is not `history_per_fan` (lazy seeded fans).
    history_seq: dict[int, int] = field(default_factory=dict)
    history_per_fan: int = 0
    history_base_fans: int = 0
    posts: list[StoredPost] = field(default_factory=list)
    posts_by_key: dict[str, StoredPost] = field(default_factory=dict)
    sends_by_key: dict[str, StoredSend] = field(default_factory=dict)
    advances: int = 0  # `advance` steps taken
    cancelled_by_advance: list[int] = field(default_factory=list)  # fan positions, oldest first

    def has_fan(self, fan: str) -> bool:
        return 0 <= fan_position(fan) < len(self.fans)

    def next_history_sequence(self, position: int) -> int:
        last = self.history_seq.get(position, self.history_per_fan if position < self.history_base_fans else 0)
        self.history_seq[position] = last + 1
        return last + 1


def generated_account(account: Account, spec: NewAccount) -> None:
    """Give a new account the listings generated from `spec.seed` (spec.lazy)."""
    generator = Generator(account.account_id, spec.seed, int(account.created_at_s), spec.n_fans,
                          spec.n_transactions, spec.n_messages)  # fmt: skip
    account.fans = Listing(Fan, spec.n_fans, generator.fan)
    account.subscriptions = Listing(Subscription, spec.n_fans, generator.subscription)
    account.transactions = Listing(Transaction, spec.n_transactions, generator.transaction)
    account.messages = Listing(Message, spec.n_messages, generator.message)
    n_history = spec.n_history_per_fan
    account.history = Listing(SubscriptionHistoryEvent, spec.n_fans * n_history,
                              HistoryGenerator(account.account_id, spec.seed, n_history, generator.subscription))
    account.history_per_fan, account.history_base_fans = n_history, spec.n_fans  # fmt: skip


def seed_items(account: Account, spec: NewAccount, *, now: datetime) -> None:
    """Fans, subscriptions, transactions and messages drawn from `spec.seed`; times are relative to now."""
    rng = random.Random(spec.seed)
    # Numbered after what the account has: seeding again appends (add_fans).
    transaction_number = itertools.count(len(account.transactions) + 1)
    message_number = itertools.count(len(account.messages) + 1)
    first = len(account.fans) + 1
    for i in range(first, first + spec.n_fans):
        fan_id = f"fan_{i:06d}"
        followed_at = now - timedelta(seconds=rng.randint(3_600, 365 * 86_400))
        price = rng.choice(SUBSCRIPTION_PRICES_CENTS)
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
        position = i - 1
        events = fan_history(account.account_id, spec.seed, position, account.subscriptions.json_item(position),
                             spec.n_history_per_fan)  # fmt: skip
        account.history.extras.extend(events)
        account.history_seq[position] = len(events)
        spent = 0
        window_s = max(1, int((now - followed_at).total_seconds()))
        for _ in range(spec.n_transactions_per_fan):
            kind = rng.choice(TRANSACTION_KINDS)
            amount = price if kind == "subscription" else rng.choice(TIP_AMOUNTS_CENTS)
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
                    text=rng.choice(INCOMING_TEXTS if incoming else OUTGOING_TEXTS),
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
