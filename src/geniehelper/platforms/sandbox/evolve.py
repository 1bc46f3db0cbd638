"""An account evolving step by step: `advance` applies one step of changes, deterministic from
(the account's seed, the step's number, the sandbox clock), and says exactly what changed.

One step, in this order, each fan changed at most once per step:
- `new_fans`: fans appended after the existing ones, each with an active 30-day subscription from now;
- `cancellations`: active subscriptions become `cancelled` (their paid period unchanged);
- `rebills`: active subscriptions renew: `expires_at` 30 days later, and a `subscription` transaction;
- `win_backs`: ended subscriptions start again now for 30 days, with a `subscription` transaction:
  first the fans earlier steps cancelled (oldest first), then other cancelled or expired ones;
- `tips`, `purchases` (`post` or `message`): transactions of existing fans, now;
- `messages`: inbound messages from existing fans, now.

Each subscription change also appends its event to the subscription-history listing (`history`):
`new` and `cancellation` and `win_back` now, `rebill` at the end of the period it renews.

Fans are drawn from a generator seeded by (seed, step); when too few qualify (no active fan left to
cancel) a step does fewer, and its summary says so: it lists every fan and item it changed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from geniehelper.platforms.models import Fan, Message, Subscription, SubscriptionHistoryEvent, Transaction
from geniehelper.platforms.sandbox.accounts import Account
from geniehelper.platforms.sandbox.history import event_id
from geniehelper.platforms.sandbox.listing import (
    INCOMING_TEXTS,
    SUBSCRIPTION_PRICES_CENTS,
    TIP_AMOUNTS_CENTS,
    fan_id,
    mix,
)

PERIOD = timedelta(days=30)
_TRIES_PER_PICK = 50
_STEP = 5  # mix() kind of advance steps (the generator's kinds are 1-4)


class AdvanceSpec(BaseModel):
    """Body of POST /admin/accounts/{id}/advance: how many of each change one step makes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    new_fans: int = Field(default=0, ge=0, le=100_000)
    cancellations: int = Field(default=0, ge=0, le=100_000)
    rebills: int = Field(default=0, ge=0, le=100_000)
    win_backs: int = Field(default=0, ge=0, le=100_000)
    tips: int = Field(default=0, ge=0, le=1_000_000)
    purchases: int = Field(default=0, ge=0, le=1_000_000)
    messages: int = Field(default=0, ge=0, le=1_000_000)


@dataclass
class Advanced:
    """What one step changed: fan ids per change, and the ids of the items it appended."""

    step: int
    new_fans: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    rebilled: list[str] = field(default_factory=list)
    won_back: list[str] = field(default_factory=list)
    transactions: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    history: list[str] = field(default_factory=list)  # ids of the subscription-history events appended

    def as_dict(self) -> dict[str, Any]:
        return vars(self).copy()


def advance(account: Account, spec: AdvanceSpec, now_s: float) -> Advanced:
    account.advances += 1
    done = Advanced(step=account.advances)
    rng = random.Random(mix(account.seed, _STEP, account.advances))
    now = datetime.fromtimestamp(now_s, UTC)
    touched: set[int] = set()
    for _ in range(spec.new_fans):
        position = len(account.fans)
        account.fans.append(Fan(fan_id=fan_id(position), username=f"fan{rng.randrange(10**8):08d}", followed_at=now))
        account.subscriptions.append(Subscription(
            subscription_id=f"sub_{account.account_id}_{position + 1:06d}", fan_id=fan_id(position),
            status="active", price_cents=rng.choice(SUBSCRIPTION_PRICES_CENTS), started_at=now,
            expires_at=now + PERIOD,
        ))  # fmt: skip
        touched.add(position)
        done.new_fans.append(fan_id(position))
        done.history.append(_history(account, position, "new", now))
    for position in _pick(account, rng, touched, spec.cancellations, live=True):
        _change(account, position, status="cancelled")
        done.cancelled.append(fan_id(position))
        done.history.append(_history(account, position, "cancellation", now))
    for position in _pick(account, rng, touched, spec.rebills, live=True, exclude_cancelled=True):
        old = account.subscriptions[position]
        assert old.expires_at is not None
        _change(account, position, expires_at=old.expires_at + PERIOD)
        done.transactions.append(_transaction(account, position, "subscription", old.price_cents, now))
        done.rebilled.append(fan_id(position))
        done.history.append(_history(account, position, "rebill", old.expires_at))
    for position in _win_back_candidates(account, rng, touched, spec.win_backs):
        old = account.subscriptions[position]
        _change(account, position, status="active", started_at=now, expires_at=now + PERIOD)
        done.transactions.append(_transaction(account, position, "subscription", old.price_cents, now))
        done.won_back.append(fan_id(position))
        done.history.append(_history(account, position, "win_back", now))
    n_fans = len(account.fans)
    for i in range(spec.tips + spec.purchases):
        if not n_fans:
            break
        kind = "tip" if i < spec.tips else rng.choice(("post", "message"))
        done.transactions.append(_transaction(account, rng.randrange(n_fans), kind, rng.choice(TIP_AMOUNTS_CENTS),
                                              now))  # fmt: skip
    for _ in range(spec.messages if n_fans else 0):
        message_id = f"msg_{account.account_id}_{len(account.messages) + 1:08d}"
        account.messages.append(Message(message_id=message_id, fan_id=fan_id(rng.randrange(n_fans)), direction="in",
                                        text=rng.choice(INCOMING_TEXTS), created_at=now))  # fmt: skip
        done.messages.append(message_id)
    return done


def _pick(
    account: Account, rng: random.Random, touched: set[int], count: int, *, live: bool,
    exclude_cancelled: bool = False,
) -> list[int]:  # fmt: skip
    picked: list[int] = []
    n_fans = len(account.fans)
    for _ in range(count * _TRIES_PER_PICK if n_fans else 0):
        if len(picked) == count:
            break
        position = rng.randrange(n_fans)
        if position in touched:
            continue
        status = account.subscriptions.json_item(position)["status"]
        if (status == "active") == live and not (exclude_cancelled and status == "cancelled"):
            touched.add(position)
            picked.append(position)
    return picked


def _win_back_candidates(account: Account, rng: random.Random, touched: set[int], count: int) -> list[int]:
    picked: list[int] = []
    waiting: list[int] = []  # still cancelled, not won back in this step (cancelled in it, or beyond `count`)
    for position in account.cancelled_by_advance:
        if account.subscriptions.json_item(position)["status"] != "cancelled":
            continue
        if len(picked) < count and position not in touched:
            touched.add(position)
            picked.append(position)
        else:
            waiting.append(position)
    account.cancelled_by_advance = waiting
    return picked + _pick(account, rng, touched, count - len(picked), live=False)


def _change(account: Account, position: int, **changes: Any) -> None:
    old = account.subscriptions[position]
    account.subscriptions.replace(position, Subscription.model_validate({**old.model_dump(), **changes}))
    if changes.get("status") == "cancelled":
        account.cancelled_by_advance.append(position)


def _transaction(account: Account, position: int, kind: str, amount_cents: int, now: datetime) -> str:
    transaction_id = f"txn_{account.account_id}_{len(account.transactions) + 1:08d}"
    account.transactions.append(Transaction(transaction_id=transaction_id, fan_id=fan_id(position), kind=kind,
                                            amount_cents=amount_cents, created_at=now))  # fmt: skip
    return transaction_id


def _history(account: Account, position: int, kind: str, at: datetime) -> str:
    subscription = account.subscriptions[position]
    sequence = account.next_history_sequence(position)
    event = event_id(account.account_id, position, sequence)
    account.history.append(SubscriptionHistoryEvent(
        event_id=event, subscription_id=subscription.subscription_id, fan_id=subscription.fan_id, sequence=sequence,
        kind=kind, occurred_at=at, price_cents=None if kind == "cancellation" else subscription.price_cents,
    ))  # fmt: skip
    return event
