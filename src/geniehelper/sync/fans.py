"""The fan sync of one connection: fans, subscriptions, transactions and messages, page by page.

Each page is fetched, then merged set-based (`geniehelper.domain.fan_sync`) in one transaction that
also advances the resource's cursor: a sync killed at any point resumes at the first page not
committed, re-reads it, and the idempotent merges write nothing twice.

Two kinds of listing:
- **append-only** (fans, transactions, messages: new items are added at the end): incremental. The
  cursor stays at the last page read, so the next sync re-reads that page (merging nothing new) and
  goes on from there with whatever was added since.
- **current state** (subscriptions: a subscription changes in place): every sync makes a full pass;
  the cursor only lets a killed pass resume. Each change against the recorded state is written to
  `fan_subscriptions` and its lifecycle events appended to `fan_subscription_events` in the same
  statement (`lifecycle_events` says which), so each event is written exactly once.

With `history` the sync also reads the platform's subscription-history listing (append-only, before
the subscriptions): its events are appended as the platform reports them (idempotent on the
platform's event id), and the current-state pass then writes only `fan_subscriptions`, deriving no
event (the history has them all).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import structlog

from geniehelper.domain import fan_history, fan_identity, fan_sync
from geniehelper.domain.fan_history import HistoryRow
from geniehelper.domain.fan_sync import (
    AccountRow,
    CurrentSubscription,
    MessageRow,
    SubscriptionEvent,
    SubscriptionState,
    TransactionRow,
)
from geniehelper.domain.platform import PlatformConnection
from geniehelper.platforms import (
    Fan,
    Message,
    Page,
    PlatformClient,
    Subscription,
    SubscriptionHistoryEvent,
    Transaction,
)

log = structlog.get_logger("geniehelper.sync.fans")

Tx = Callable[[], AbstractAsyncContextManager[Any]]

RESOURCES = ("fans", "subscriptions", "transactions", "messages")
HISTORY = "subscription_history"
# With the history listing: its events first, then the current states (written without events).
HISTORY_RESOURCES = ("fans", HISTORY, "subscriptions", "transactions", "messages")
FULL_PASS = frozenset({"subscriptions"})
# How often (in pages) a pass asks for fresh planner statistics on the tables it grows, and at its
# end: a large initial sync outgrows them within seconds (migration 0039).
STATISTICS_EVERY_PAGES = 10

# Platform vocabulary -> ours. A status or kind we do not know is counted and skipped (statuses) or
# recorded as `other` (kinds), never guessed.
STATUSES = {
    "active": "active", "trial": "trial", "trialing": "trial", "paused": "paused",
    "cancelled": "cancelled", "canceled": "cancelled", "expired": "expired",
}  # fmt: skip
TRANSACTION_KINDS = {
    "subscription": "subscription", "tip": "tip", "message": "paid_message", "paid_message": "paid_message",
    "post": "ppv", "ppv": "ppv", "custom_request": "custom_request", "bundle": "bundle",
}  # fmt: skip
LIVE = ("active", "trial")
# The history listing's event kinds -> our event types; an unknown kind is counted and skipped.
HISTORY_KINDS = {
    "new": "subscribe", "subscribe": "subscribe", "rebill": "rebill", "renewal": "rebill",
    "cancellation": "cancellation", "cancel": "cancellation", "trial_start": "trial_start",
    "trial_conversion": "trial_conversion", "expiry": "expiration", "expiration": "expiration",
    "win_back": "win_back", "price_change": "price_change",
}  # fmt: skip


@dataclass
class ResourceResult:
    pages: int = 0
    items: int = 0
    accounts_created: int = 0
    new_rows: int = 0  # transactions / messages inserted, subscription states written, fan accounts refreshed
    events: int = 0
    skipped: int = 0  # items we could not record (an unknown status, a negative amount, ...)


@dataclass
class SyncResult:
    resources: dict[str, ResourceResult] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {name: vars(r) for name, r in self.resources.items()}


async def sync_connection(
    tx: Tx, client: PlatformClient, connection: PlatformConnection, *, page_size: int,
    resources: Sequence[str] | None = None, history: bool = False,
) -> SyncResult:  # fmt: skip
    """Sync `resources` in order (default: RESOURCES, or HISTORY_RESOURCES with `history`). When the
    history listing is among them, the subscriptions pass writes states only (no derived event)."""
    chosen = resources if resources is not None else (HISTORY_RESOURCES if history else RESOURCES)
    derive = HISTORY not in chosen
    result = SyncResult()
    for resource in chosen:
        result.resources[resource] = await sync_resource(
            tx, client, connection, resource, page_size=page_size, derive_events=derive
        )
    return result


async def sync_resource(
    tx: Tx, client: PlatformClient, connection: PlatformConnection, resource: str, *, page_size: int,
    derive_events: bool = True,
) -> ResourceResult:  # fmt: skip
    if resource not in HISTORY_RESOURCES:
        raise ValueError(f"unknown resource {resource!r}; known: {', '.join(HISTORY_RESOURCES)}")
    fetch: Callable[[str | None, int], Awaitable[Page[Any]]] = getattr(client, f"list_{resource}")
    merge = _MERGES[resource] if derive_events or resource != "subscriptions" else _merge_subscription_states
    result = ResourceResult()
    async with tx() as conn:
        stored = await fan_sync.get_cursor(conn, connection.user_id, connection.id, resource)
    cursor = stored.cursor if stored else None
    while True:
        page = await fetch(cursor, page_size)
        last = page.next_cursor is None
        # At the end of an append-only listing stay at its last page: what is added next lands there.
        next_cursor = page.next_cursor if not last else (None if resource in FULL_PASS else cursor)
        async with tx() as conn:
            await merge(conn, connection, list(page.items), result)
            if last and resource == "transactions":  # the pass's profile figures, with its last page
                await fan_sync.flush_profile_figures(conn, connection.user_id)
            await fan_sync.advance_cursor(
                conn, connection.user_id, connection.id, resource, read_at=cursor, next_cursor=next_cursor,
                pass_done=last, items=len(page.items),
            )  # fmt: skip
        result.pages += 1
        result.items += len(page.items)
        if last or result.pages % STATISTICS_EVERY_PAGES == 0:
            async with tx() as conn:  # a transaction of its own: ANALYZE's lock ends with it
                analysed = await fan_sync.refresh_statistics(conn)
            if analysed:
                log.info("sync.statistics_refreshed", platform_connection_id=str(connection.id), resource=resource,
                         pages=result.pages, tables=analysed)  # fmt: skip
        if last:
            break
        cursor = page.next_cursor
    log.info("sync.resource_done", platform_connection_id=str(connection.id), resource=resource, **vars(result))
    return result


# --- merges, one per resource ------------------------------------------------------------------------


async def _merge_fans(conn: Any, connection: PlatformConnection, items: list[Fan], result: ResourceResult) -> None:
    rows = [
        AccountRow(f.fan_id, f.username, f.followed_at, _fan_metadata(f)) for f in items
    ]
    created, updated = await _ensure(conn, connection, rows)
    result.accounts_created += created
    result.new_rows += updated
    verified = [f.fan_id for f in items if f.verified_email]
    if verified:  # the identity rule (docs/sync.md): a verified e-mail shared by two accounts is one person
        await fan_identity.link_verified_matches(conn, connection.user_id, connection.platform, verified)


def _fan_metadata(fan: Fan) -> dict[str, Any]:
    metadata: dict[str, Any] = {"total_spent_cents": fan.total_spent_cents}
    if fan.verified_email:
        metadata["verified_email"] = fan.verified_email
    return metadata


async def _merge_transactions(
    conn: Any, connection: PlatformConnection, items: list[Transaction], result: ResourceResult
) -> None:
    rows = []
    for t in items:
        currency = t.currency.upper()
        if t.amount_cents < 0 or len(currency) != 3 or not currency.isalpha():
            result.skipped += 1  # refunds and odd currencies: not modelled by the platform's listing yet
            continue
        kind = TRANSACTION_KINDS.get(t.kind, "other")
        rows.append(TransactionRow(t.transaction_id, t.fan_id, kind, Decimal(t.amount_cents) / 100, currency,
                                   t.created_at))  # fmt: skip
    result.new_rows += await _merge_with_accounts(
        conn, connection, lambda: [AccountRow(r.fan_id, seen_at=r.occurred_at) for r in rows], result,
        lambda: fan_sync.merge_transactions(conn, connection.user_id, connection.platform, rows),
    )  # fmt: skip


async def _merge_messages(
    conn: Any, connection: PlatformConnection, items: list[Message], result: ResourceResult
) -> None:
    rows = [
        MessageRow(m.message_id, m.fan_id, "inbound" if m.direction == "in" else "outbound", m.text, m.created_at)
        for m in items
    ]
    result.new_rows += await _merge_with_accounts(
        conn, connection, lambda: [AccountRow(r.fan_id, seen_at=r.occurred_at) for r in rows], result,
        lambda: fan_sync.merge_messages(conn, connection.user_id, connection.platform, rows),
    )  # fmt: skip


async def _merge_history(
    conn: Any, connection: PlatformConnection, items: list[SubscriptionHistoryEvent], result: ResourceResult
) -> None:
    rows = []
    for e in items:
        event_type = HISTORY_KINDS.get(e.kind.lower())
        if event_type is None or (e.price_cents is not None and e.price_cents < 0):
            result.skipped += 1
            log.warning("sync.unknown_history_event", platform_connection_id=str(connection.id), kind=e.kind[:40])
            continue
        amount = Decimal(e.price_cents) / 100 if e.price_cents is not None else None
        rows.append(HistoryRow(e.event_id, e.fan_id, event_type, e.occurred_at, amount, {
            "source": "sync", "platform_connection_id": str(connection.id), "subscription_id": e.subscription_id,
            "sequence": e.sequence, "platform_kind": e.kind,
        }))  # fmt: skip
    appended = await _merge_with_accounts(
        conn, connection, lambda: [AccountRow(r.fan_id) for r in rows], result,
        lambda: fan_history.merge_history(conn, connection.user_id, connection.platform, connection.id, rows),
    )  # fmt: skip
    result.new_rows += appended
    result.events += appended


async def _merge_subscription_states(
    conn: Any, connection: PlatformConnection, items: list[Subscription], result: ResourceResult
) -> None:
    await _merge_subscriptions(conn, connection, items, result, derive_events=False)


async def _merge_subscriptions(
    conn: Any, connection: PlatformConnection, items: list[Subscription], result: ResourceResult,
    derive_events: bool = True,
) -> None:  # fmt: skip
    observed_at = datetime.now(UTC)
    known = []
    for s in items:
        if s.status.lower() in STATUSES:
            known.append(s)
        else:
            result.skipped += 1
            log.warning("sync.unknown_subscription_status", platform_connection_id=str(connection.id),
                        status=s.status[:40])  # fmt: skip
    fan_ids = [s.fan_id for s in known]
    current = await fan_sync.current_subscriptions(conn, connection.user_id, connection.platform, connection.id,
                                                   fan_ids)  # fmt: skip
    if len(current) < len(set(fan_ids)):  # fans not seen before: their accounts first, then read again
        result.accounts_created += await _ensure_exist(conn, connection, [AccountRow(f) for f in fan_ids])
        current = await fan_sync.current_subscriptions(conn, connection.user_id, connection.platform,
                                                       connection.id, fan_ids)  # fmt: skip
    states: list[tuple[CurrentSubscription, SubscriptionState]] = []
    events: list[SubscriptionEvent] = []
    for s in {s.fan_id: s for s in known}.values():  # one state per account: the page's last word
        recorded = current[s.fan_id]
        new = _state(s, recorded.state, observed_at)
        if new == recorded.state:
            continue
        states.append((recorded, new))
        if not derive_events:
            continue
        for event_type, occurred_at, amount in lifecycle_events(recorded.state, new, observed_at):
            events.append(SubscriptionEvent(
                recorded.account_id, event_type, occurred_at, amount, new.currency,
                {"source": "sync", "platform_connection_id": str(connection.id), "platform_status": s.status,
                 "subscription_id": s.subscription_id},
            ))  # fmt: skip
    written, appended = await fan_sync.write_subscriptions(
        conn, connection.user_id, connection.platform, connection.id, states, events
    )
    result.new_rows += written
    result.events += appended


_MERGES: dict[str, Callable[[Any, PlatformConnection, Any, ResourceResult], Awaitable[None]]] = {
    "fans": _merge_fans,
    "subscriptions": _merge_subscriptions,
    HISTORY: _merge_history,
    "transactions": _merge_transactions,
    "messages": _merge_messages,
}


async def _ensure(
    conn: Any, connection: PlatformConnection, rows: list[AccountRow], *, refresh: bool = True
) -> tuple[int, int]:
    return await fan_sync.ensure_accounts(
        conn, connection.user_id, connection.platform, connection.id, rows, refresh=refresh
    )


async def _ensure_exist(conn: Any, connection: PlatformConnection, rows: list[AccountRow]) -> int:
    """Missing accounts of these fans created (locked first, `fan_sync.ensure_accounts`), known ones
    left as they are; how many were created."""
    return (await _ensure(conn, connection, rows, refresh=False))[0]


async def _merge_with_accounts(
    conn: Any, connection: PlatformConnection, accounts: Callable[[], list[AccountRow]], result: ResourceResult,
    merge: Callable[[], Awaitable[tuple[int, int]]],
) -> int:  # fmt: skip
    """An activity listing's page (transactions, messages, history) merged; how many rows were new.
    The merge joins each item to its fan's account and counts those it could not: only then are the
    missing accounts created and the page merged again (its first merge's rows conflict, so nothing
    is written twice). Known accounts are left as they are: a profile's last activity counts purchases
    and messages itself, so widening every account's seen times per page (about one update per
    transaction on an initial sync, bench/README.md "sync") would add nothing a rule or score reads,
    and on a page whose fans all have accounts (nearly every page) this is one statement."""
    new, unmatched = await merge()
    if unmatched:
        result.accounts_created += await _ensure_exist(conn, connection, accounts())
        new += (await merge())[0]
    return new


# --- subscription lifecycle --------------------------------------------------------------------------


def _state(s: Subscription, old: SubscriptionState | None, observed_at: datetime) -> SubscriptionState:
    status = STATUSES[s.status.lower()]
    cancelled_at = None
    if status == "cancelled":  # the platform does not say when: when we first saw it
        kept = old.cancelled_at if old is not None and old.status == "cancelled" else None
        cancelled_at = kept or observed_at
    # The platform's listing has no currency: its prices are USD (as its transactions default to).
    return SubscriptionState(status, Decimal(s.price_cents) / 100, "USD", s.started_at, s.expires_at, cancelled_at)


def lifecycle_events(
    old: SubscriptionState | None, new: SubscriptionState, observed_at: datetime
) -> list[tuple[str, datetime, Decimal | None]]:
    """The lifecycle events that take a subscription from `old` (None: never seen) to `new`, oldest
    first, as (event_type, occurred_at, amount). The rules:

    - first seen: `subscribe` (`trial_start` for a trial) at its start; if it is already cancelled or
      expired, that too (`cancellation` when first seen, `expiration` at its end);
    - a new period (a later start), live: if the old one had ended by then, its `expiration` (when
      not seen yet) and `win_back` at the new start; if it had not, `win_back` after a cancellation
      or expiry, else `rebill` (a new period replacing a running one);
    - cancelled or expired, then live again with the same start: `win_back` when seen;
    - trial to active: `trial_conversion`; live, still live, paid until later: `rebill` at the
      old period's end; live to cancelled: `cancellation`; to expired: `expiration` at its end;
    - the price changed on a live subscription: `price_change`.
    """
    events: list[tuple[str, datetime, Decimal | None]] = []
    if old is None:
        events.append(("trial_start" if new.status == "trial" else "subscribe", new.started_at or observed_at,
                       new.price))  # fmt: skip
        if new.status == "cancelled":
            events.append(("cancellation", new.cancelled_at or observed_at, None))
        elif new.status == "expired":
            events.append(("expiration", new.expires_at or observed_at, None))
        return _in_order(events)
    started = new.started_at
    if new.status in LIVE and started is not None and old.started_at is not None and started > old.started_at:
        ended_before = old.expires_at is not None and old.expires_at <= started
        if ended_before and old.status != "expired":  # its end was not seen
            events.append(("expiration", old.expires_at or started, None))
        if ended_before or old.status in ("cancelled", "expired"):
            events.append(("win_back", started, new.price))
        else:  # a new period replacing one still running
            events.append(("rebill", started, new.price))
        return _in_order(events)
    if new.status in LIVE and old.status in ("cancelled", "expired"):
        events.append(("win_back", observed_at, new.price))
        return _in_order(events)
    if old.status == "trial" and new.status == "active":
        events.append(("trial_conversion", old.expires_at or observed_at, new.price))
    elif (old.status == "active" and new.status == "active" and old.expires_at is not None
          and new.expires_at is not None and new.expires_at > old.expires_at):  # fmt: skip
        events.append(("rebill", old.expires_at, new.price))
    if new.status == "cancelled" and old.status != "cancelled":
        events.append(("cancellation", new.cancelled_at or observed_at, None))
    if new.status == "expired" and old.status != "expired":
        events.append(("expiration", new.expires_at or observed_at, None))
    if new.status in LIVE and old.status in LIVE and new.price != old.price:
        events.append(("price_change", observed_at, new.price))
    return _in_order(events)


def _in_order(events: list[tuple[str, datetime, Decimal | None]]) -> list[tuple[str, datetime, Decimal | None]]:
    return sorted(events, key=lambda e: e[1])
