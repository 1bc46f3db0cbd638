"""The sandbox's subscription-history listing: every lifecycle event of an account's subscriptions.

Each seeded fan has `history_per_fan` events (fan at position f holds positions f*H .. f*H+H-1 of
the listing), drawn from (seed, fan) and ending in the fan's current subscription: the first is `new`
(`trial_start` for one fan in ten), then `rebill`s, now and then a `cancellation`, `expiry`,
`win_back` run of three; an expired subscription ends with its `expiry` at its `expires_at`, a live
one's last period starts at its `started_at`. Periods last 30 days; a cancellation falls 10 days
into its period, a win-back 1-20 days after the expiry. Computed per fan when its page is read, so a
lazy 100,000-fan account costs nothing until read.

`advance` appends the events of what it changes (`new`, `cancellation`, `rebill`, `win_back`) after
the seeded ones, numbered on from each fan's last sequence.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from geniehelper.platforms.sandbox.listing import DAY_S, JsonItem, iso, mix

_HISTORY = 6  # mix() kind (the generator's are 1-4, advance's 5)
PERIOD_S = 30 * DAY_S
KINDS = ("new", "rebill", "cancellation", "trial_start", "expiry", "win_back")
MIN_PER_FAN, MAX_PER_FAN = 2, 24


def event_id(account_id: str, fan: int, sequence: int) -> str:
    return f"sev_{account_id}_{fan + 1:06d}_{sequence:03d}"


def _epoch(value: Any) -> int:
    if isinstance(value, datetime):
        return int(value.timestamp())
    return int(datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp())


def fan_history(account_id: str, seed: int, fan: int, subscription: JsonItem, n_events: int) -> list[JsonItem]:
    """The `n_events` seeded history events of the fan at position `fan`, oldest first."""
    assert MIN_PER_FAN <= n_events <= MAX_PER_FAN
    expired = subscription["status"] == "expired"
    kinds = ["trial_start" if mix(seed, _HISTORY, fan * 64) % 10 == 0 else "new"]
    end = n_events - 1 if expired else n_events
    while len(kinds) < end:
        if end - len(kinds) >= 3 and mix(seed, _HISTORY, fan * 64 + len(kinds)) % 5 == 0:
            kinds += ["cancellation", "expiry", "win_back"]
        else:
            kinds.append("rebill")
    if expired:
        kinds.append("expiry")
    # Times from 0, forward; then shifted so the history ends in the current subscription.
    times: list[int] = []
    period_start = 0
    for i, kind in enumerate(kinds):
        if kind == "rebill":
            period_start += PERIOD_S
            times.append(period_start)
        elif kind == "cancellation":
            times.append(period_start + 10 * DAY_S)
        elif kind == "expiry":
            times.append(period_start + PERIOD_S)
        elif kind == "win_back":
            period_start = times[-1] + (1 + mix(seed, _HISTORY, fan * 64 + 32 + i) % 20) * DAY_S
            times.append(period_start)
        else:
            times.append(0)
    if expired:
        shift = _epoch(subscription["expires_at"]) - times[-1]
    else:
        shift = _epoch(subscription["started_at"]) - period_start
    price = subscription["price_cents"]
    return [
        {"event_id": event_id(account_id, fan, n + 1), "subscription_id": subscription["subscription_id"],
         "fan_id": subscription["fan_id"], "sequence": n + 1, "kind": kind, "occurred_at": iso(t + shift),
         "price_cents": price if kind in ("new", "rebill", "win_back") else (0 if kind == "trial_start" else None)}
        for n, (kind, t) in enumerate(zip(kinds, times, strict=True))
    ]  # fmt: skip


class HistoryGenerator:
    """Position -> event of a lazy account's seeded history; the last fan's events are kept, so a
    page computes each fan's history once."""

    def __init__(self, account_id: str, seed: int, n_events: int, subscription: Any) -> None:
        self._account_id = account_id
        self._seed = seed
        self._n = n_events
        self._subscription = subscription  # position -> the fan's seeded subscription (JSON)
        self._last: tuple[int, list[JsonItem]] = (-1, [])

    def __call__(self, position: int) -> JsonItem:
        fan, index = divmod(position, self._n)
        if self._last[0] != fan:
            self._last = (fan, fan_history(self._account_id, self._seed, fan, self._subscription(fan), self._n))
        return self._last[1][index]
