"""The sandbox's listings: items by position, generated on demand for large accounts.

A `Listing` is what one /v1 listing serves, position by position: first `base_len` items generated
from the position alone (a pure function: a 1,000,000-transaction account costs no memory until a
page is read, and a page costs only its own items), then the items appended since (`extras`), with
items changed in place kept in `replaced`. Items are held as JSON-ready dicts, served as they are;
reading one from Python (`listing[i]`, iteration) gives the platform model.

`Generator` is a seeded account's base: fans, their subscriptions, transactions and messages drawn
from a counter-based hash of (seed, kind, position), so any position is computed directly and the
same seed gives the same data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar, overload

from geniehelper.platforms.models import PlatformModel

ItemT = TypeVar("ItemT", bound=PlatformModel)
JsonItem = dict[str, Any]

SUBSCRIPTION_PRICES_CENTS = (499, 999, 1_499, 1_999)
TRANSACTION_KINDS = ("subscription", "tip", "message", "post")
TIP_AMOUNTS_CENTS = (300, 500, 1_000, 2_000, 5_000)
INCOMING_TEXTS = ("hey!", "love your posts", "when is the next drop?", "thank you <3", "hi from Lisbon")
OUTGOING_TEXTS = ("thanks for subscribing!", "glad you like it", "soon, stay tuned", "xo")

DAY_S = 86_400
_MASK = (1 << 64) - 1


class Listing(Sequence[ItemT], Generic[ItemT]):
    def __init__(self, model: type[ItemT], base_len: int = 0, base_item: Callable[[int], JsonItem] | None = None):
        self._model = model
        self._base_len = base_len
        self._base_item = base_item
        self.extras: list[JsonItem] = []
        self.replaced: dict[int, JsonItem] = {}

    def __len__(self) -> int:
        return self._base_len + len(self.extras)

    def json_item(self, position: int) -> JsonItem:
        if position < 0:
            position += len(self)
        if position in self.replaced:
            return self.replaced[position]
        if position < self._base_len:
            assert self._base_item is not None
            return self._base_item(position)
        return self.extras[position - self._base_len]

    def json_slice(self, start: int, stop: int) -> list[JsonItem]:
        return [self.json_item(i) for i in range(max(0, start), min(stop, len(self)))]

    def iter_json(self) -> Iterator[JsonItem]:
        return (self.json_item(i) for i in range(len(self)))

    @overload
    def __getitem__(self, index: int) -> ItemT: ...
    @overload
    def __getitem__(self, index: slice) -> list[ItemT]: ...
    def __getitem__(self, index: int | slice) -> ItemT | list[ItemT]:
        if isinstance(index, slice):
            return [self._model.model_validate(self.json_item(i)) for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        return self._model.model_validate(self.json_item(index))

    def append(self, item: ItemT) -> None:
        self.extras.append(item.model_dump(mode="json"))

    def replace(self, position: int, item: ItemT) -> None:
        self.replaced[position] = item.model_dump(mode="json")


def fan_id(position: int) -> str:
    return f"fan_{position + 1:06d}"


def fan_position(fan: str) -> int:
    """The position of `fan_000123` in the fans and subscriptions listings (-1: not a sandbox fan id)."""
    number = fan.removeprefix("fan_")
    return int(number) - 1 if number.isdigit() and number != fan else -1


def iso(epoch_s: int) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat().replace("+00:00", "Z")


def mix(seed: int, kind: int, position: int) -> int:
    """splitmix64 of (seed, kind, position): 64 well-mixed bits, the same for the same arguments."""
    z = (seed * 0x9E3779B97F4A7C15 + kind * 0xD1B54A32D192ED03 + position * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


_FAN, _SUBSCRIPTION, _TRANSACTION, _MESSAGE = 1, 2, 3, 4


@dataclass(frozen=True)
class Generator:
    """The base items of a generated account. Times count back from `origin_s` (the account's creation).

    Transaction j belongs to fan j mod n_fans (so each fan's are found without a scan: its spend is
    the sum of positions f, f + n_fans, ...), message j likewise; 70 % of subscriptions are active.
    """

    account_id: str
    seed: int
    origin_s: int
    n_fans: int
    n_transactions: int
    n_messages: int

    def followed_at_s(self, fan: int) -> int:
        return self.origin_s - 3_600 - mix(self.seed, _FAN, fan) % (365 * DAY_S)

    def fan(self, position: int) -> JsonItem:
        h = mix(self.seed, _FAN, position)
        spent = sum(self._amount(j) for j in range(position, self.n_transactions, self.n_fans))
        return {"fan_id": fan_id(position), "username": f"fan{(h >> 20) % 10**8:08d}",
                "followed_at": iso(self.followed_at_s(position)), "total_spent_cents": spent,
                "verified_email": None}  # fmt: skip

    def price_cents(self, fan: int) -> int:
        return SUBSCRIPTION_PRICES_CENTS[mix(self.seed, _SUBSCRIPTION, fan) % len(SUBSCRIPTION_PRICES_CENTS)]

    def subscription(self, position: int) -> JsonItem:
        h = mix(self.seed, _SUBSCRIPTION, position) >> 8
        if h % 10 < 7:
            status, expires_s = "active", self.origin_s + 3_600 + (h >> 4) % (30 * DAY_S)
        else:
            status, expires_s = "expired", self.origin_s - (h >> 4) % (30 * DAY_S)
        return {"subscription_id": f"sub_{self.account_id}_{position + 1:06d}", "fan_id": fan_id(position),
                "status": status, "price_cents": self.price_cents(position),
                "started_at": iso(min(self.followed_at_s(position), expires_s - 30 * DAY_S)),
                "expires_at": iso(expires_s)}  # fmt: skip

    def _kind(self, position: int) -> str:
        return TRANSACTION_KINDS[mix(self.seed, _TRANSACTION, position) % len(TRANSACTION_KINDS)]

    def _amount(self, position: int) -> int:
        if self._kind(position) == "subscription":
            return self.price_cents(position % self.n_fans)
        return TIP_AMOUNTS_CENTS[(mix(self.seed, _TRANSACTION, position) >> 8) % len(TIP_AMOUNTS_CENTS)]

    def _within_window(self, fan: int, h: int) -> int:
        followed_s = self.followed_at_s(fan)
        return followed_s + h % max(1, self.origin_s - followed_s)

    def transaction(self, position: int) -> JsonItem:
        fan = position % self.n_fans
        h = mix(self.seed, _TRANSACTION, position) >> 16
        return {"transaction_id": f"txn_{self.account_id}_{position + 1:08d}", "fan_id": fan_id(fan),
                "kind": self._kind(position), "amount_cents": self._amount(position), "currency": "USD",
                "created_at": iso(self._within_window(fan, h))}  # fmt: skip

    def message(self, position: int) -> JsonItem:
        fan = position % self.n_fans
        h = mix(self.seed, _MESSAGE, position)
        incoming = (position // self.n_fans) % 2 == 0
        texts = INCOMING_TEXTS if incoming else OUTGOING_TEXTS
        return {"message_id": f"msg_{self.account_id}_{position + 1:08d}", "fan_id": fan_id(fan),
                "direction": "in" if incoming else "out", "text": texts[h % len(texts)],
                "created_at": iso(self._within_window(fan, h >> 8))}  # fmt: skip
