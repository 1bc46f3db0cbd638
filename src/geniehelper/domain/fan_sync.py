"""Fan sync: pages of fans, subscriptions, transactions and messages merged set-based, and the cursors.

JSON values are passed as Python objects (the pools' codec encodes them). Each page is merged by a
few statements whatever its size (arrays through `unnest`, never a round
trip per fan), in the caller's transaction, which also advances the resource's cursor
(`platform_sync_cursors`): a page is merged and its cursor moved together, or neither.

Fans are keyed on the platform account `(user_id, platform, platform_fan_id)`, never on the profile:
an account seen again is refreshed, a new one gets a new `fan_profiles` row (a new person until
linked). New accounts are first locked with fan_crm's per-account advisory lock (all of a page's, in
one statement, in sorted order), so a concurrent upsert of the same fan never makes two profiles.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from geniehelper.domain.fan_crm import ACCOUNT_LOCK_NAMESPACE

# --- cursors ----------------------------------------------------------------------------------------

GET_CURSOR = """
select cursor, pages_read, items_read, pass_started_at, last_pass_completed_at
  from platform_sync_cursors
 where user_id = $1 and platform_connection_id = $2 and resource = $3
"""

# Compare-and-set: the cursor moves only from the one the page was read at ($4), so a stale writer
# (its lease lost, another attempt ahead of it) changes nothing. $6: this page ended a pass.
ADVANCE_CURSOR = """
insert into platform_sync_cursors as c (user_id, platform_connection_id, resource, cursor, pages_read,
                                        items_read, pass_started_at, last_pass_completed_at)
select $1, $2, $3, $5, 1, $7, now(), case when $6 then now() end
on conflict (user_id, platform_connection_id, resource) do update
   set cursor = excluded.cursor,
       pages_read = c.pages_read + 1,
       items_read = c.items_read + $7,
       pass_started_at = case when c.pass_started_at is null or c.last_pass_completed_at >= c.pass_started_at
                              then now() else c.pass_started_at end,
       last_pass_completed_at = case when $6 then now() else c.last_pass_completed_at end
 where c.cursor is not distinct from $4::text
returning cursor
"""

# The tables a sync writes analysed where they grew by half since the planner last looked
# (migration 0039); returns their names.
REFRESH_STATISTICS = "select refresh_sync_statistics()"

# --- accounts -------------------------------------------------------------------------------------

# Locks the page's fan ids that have no account yet (fan_crm's key: namespace, user/platform/fan);
# returns how many.
LOCK_NEW_ACCOUNTS = """
select count(pg_advisory_xact_lock($1::int, hashtext($2::uuid::text || '/' || $3::text || '/' || s.fan_id)))
  from (select distinct f as fan_id from unnest($4::text[]) as f
         where not exists (select from fan_platform_accounts a
                            where a.user_id = $2 and a.platform = $3 and a.platform_fan_id = f)
         order by 1) s
"""

# Accounts for a page's fans: existing ones refreshed where something changed (username, platform
# metadata, seen times widen) unless $8 is false, new ones created each with a new profile. Returns
# (created, updated).
ENSURE_ACCOUNTS = """
with page as (
    select fan_id, max(username) as username, min(seen_at) as first_at, max(seen_at) as last_at,
           coalesce(jsonb_object_agg(k, v) filter (where k is not null), '{}'::jsonb) as metadata
      from unnest($4::text[], $5::text[], $6::timestamptz[], $7::jsonb[]) as p(fan_id, username, seen_at, metadata)
      left join lateral jsonb_each(coalesce(p.metadata, '{}'::jsonb)) as m(k, v) on true
     group by fan_id
), known as (
    select a.id, a.platform_fan_id from fan_platform_accounts a
     where a.user_id = $1 and a.platform = $2 and a.platform_fan_id = any($4::text[])
), updated as (
    update fan_platform_accounts a
       set username = coalesce(p.username, a.username),
           platform_connection_id = coalesce(a.platform_connection_id, $3),
           platform_metadata = a.platform_metadata || p.metadata,
           first_seen_at = least(a.first_seen_at, p.first_at),
           last_seen_at = greatest(a.last_seen_at, p.last_at)
      from page p
     where $8 and a.user_id = $1 and a.platform = $2 and a.platform_fan_id = p.fan_id
       and (a.username is distinct from coalesce(p.username, a.username)
            or a.platform_connection_id is null
            or a.platform_metadata is distinct from a.platform_metadata || p.metadata
            or a.first_seen_at is distinct from least(a.first_seen_at, p.first_at)
            or a.last_seen_at is distinct from greatest(a.last_seen_at, p.last_at))
    returning a.id
), new_fans as materialized (
    select gen_random_uuid() as profile_id, p.* from page p
     where not exists (select from known k where k.platform_fan_id = p.fan_id)
), profiles as (
    insert into fan_profiles (id, user_id, display_name, first_seen_at, last_seen_at, platforms)
    select profile_id, $1, username, first_at, last_at, array[$2::text] from new_fans
    returning id
), created as (
    insert into fan_platform_accounts (user_id, fan_profile_id, platform, platform_fan_id, platform_connection_id,
                                       username, platform_metadata, first_seen_at, last_seen_at)
    select $1, n.profile_id, $2, n.fan_id, $3, n.username, n.metadata, n.first_at, n.last_at
      from new_fans n join profiles p on p.id = n.profile_id
    returning id
)
select (select count(*) from created) as created, (select count(*) from updated) as updated
"""

# --- transactions and messages --------------------------------------------------------------------

# Purchases, idempotent on the platform's transaction id; each new one notes its profile, whose
# figures (lifetime spend, last purchase) the end of the pass recomputes. Returns (new, unmatched):
# how many were inserted, and how many of the page's transactions had no fan account to join (none
# inserted for them; the caller creates the accounts and merges the page again).
MERGE_TRANSACTIONS = """
with page as (
    select distinct on (external_id) *
      from unnest($3::text[], $4::text[], $5::text[], $6::numeric[], $7::text[], $8::timestamptz[])
           as p(external_id, fan_id, kind, amount, currency, occurred_at)
     order by external_id
), matched as materialized (
    select p.*, a.id as account_id, a.fan_profile_id
      from page p
      join fan_platform_accounts a on a.user_id = $1 and a.platform = $2 and a.platform_fan_id = p.fan_id
), inserted as (
    insert into fan_transactions (user_id, fan_profile_id, fan_platform_account_id, platform, kind, status, amount,
                                  currency, occurred_at, external_transaction_id)
    select $1, m.fan_profile_id, m.account_id, $2, m.kind, 'completed', m.amount, m.currency, m.occurred_at,
           m.external_id
      from matched m
    on conflict (user_id, platform, external_transaction_id) do nothing
    returning id, fan_profile_id, fan_platform_account_id, kind, amount, currency, occurred_at, external_transaction_id
), outbox as (  -- a tip or a purchase event for each new transaction, written with it (0022)
    insert into domain_events (user_id, event_type, fan_profile_id, fan_platform_account_id, source_key, occurred_at,
                               payload)
    select $1, case when i.kind = 'tip' then 'tip' else 'purchase' end, i.fan_profile_id, i.fan_platform_account_id,
           'fan_transactions:' || i.id, i.occurred_at,
           jsonb_build_object('platform', $2::text, 'kind', i.kind, 'amount', i.amount, 'currency', i.currency,
                              'external_id', i.external_transaction_id)
      from inserted i
     order by i.occurred_at, i.id
    on conflict (user_id, source_key) do nothing
), pending as (  -- the profiles whose figures the end of the pass recomputes (0036: FLUSH_PROFILE_FIGURES)
    insert into fan_sync_pending_figures (user_id, fan_profile_id)
    select distinct $1::uuid, i.fan_profile_id from inserted i
    on conflict do nothing
)
select (select count(*) from inserted) as new, (select count(*) from page) - (select count(*) from matched) as unmatched
"""

# The end of a pass over transactions: the noted profiles' figures from their completed transactions
# (lifetime spend in the profile's currency, last purchase; last seen widened to it), as fan_identity's
# RECOMPUTE_FIGURES counts them, in one statement; the notes cleared. Returns how many were noted.
FLUSH_PROFILE_FIGURES = """
with noted as (
    delete from fan_sync_pending_figures where user_id = $1 returning fan_profile_id
), figures as (
    select f.id, coalesce(sum(t.amount) filter (where t.currency = f.currency), 0) as spent,
           max(t.occurred_at) as last_at
      from noted n
      join fan_profiles f on f.user_id = $1 and f.id = n.fan_profile_id
      left join fan_transactions t on t.user_id = $1 and t.fan_profile_id = n.fan_profile_id and t.status = 'completed'
     group by f.id
), updated as (
    update fan_profiles f
       set lifetime_spend = s.spent, last_purchase_at = s.last_at,
           last_seen_at = greatest(f.last_seen_at, s.last_at)
      from figures s
     where f.user_id = $1 and f.id = s.id
       and (f.lifetime_spend, f.last_purchase_at, f.last_seen_at)
           is distinct from (s.spent, s.last_at, greatest(f.last_seen_at, s.last_at))
    returning 1
)
select count(*) from noted
"""

# Messages, idempotent on the platform's message id per account; each new one counts on its
# profile (message_count, last_message_at). Returns (new, unmatched), as MERGE_TRANSACTIONS.
MERGE_MESSAGES = """
with page as (
    select distinct on (fan_id, external_id) *
      from unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::timestamptz[])
           as p(external_id, fan_id, direction, body, occurred_at)
     order by fan_id, external_id
), matched as materialized (
    select p.*, a.id as account_id, a.fan_profile_id
      from page p
      join fan_platform_accounts a on a.user_id = $1 and a.platform = $2 and a.platform_fan_id = p.fan_id
), inserted as (
    insert into fan_messages (user_id, fan_profile_id, fan_platform_account_id, direction, status, body,
                              external_message_id, occurred_at)
    select $1, m.fan_profile_id, m.account_id, m.direction,
           case when m.direction = 'inbound' then 'received' else 'sent' end, m.body, m.external_id, m.occurred_at
      from matched m
    on conflict (user_id, fan_platform_account_id, external_message_id) do nothing
    returning id, fan_profile_id, fan_platform_account_id, direction, occurred_at, external_message_id
), outbox as (  -- a message_received event for each new inbound message, written with it (0022)
    insert into domain_events (user_id, event_type, fan_profile_id, fan_platform_account_id, source_key, occurred_at,
                               payload)
    select $1, 'message_received', i.fan_profile_id, i.fan_platform_account_id, 'fan_messages:' || i.id, i.occurred_at,
           jsonb_build_object('platform', $2::text, 'external_id', i.external_message_id)
      from inserted i
     where i.direction = 'inbound'
     order by i.occurred_at, i.id
    on conflict (user_id, source_key) do nothing
), profile_counts as (
    update fan_profiles f
       set message_count = f.message_count + s.n,
           last_message_at = greatest(f.last_message_at, s.last_at),
           last_seen_at = greatest(f.last_seen_at, s.last_at)
      from (select fan_profile_id, count(*) as n, max(occurred_at) as last_at from inserted group by 1) s
     where f.user_id = $1 and f.id = s.fan_profile_id
    returning f.id
)
select (select count(*) from inserted) as new, (select count(*) from page) - (select count(*) from matched) as unmatched
"""

# --- subscriptions --------------------------------------------------------------------------------

# Subscription merges of one connection run one at a time (read state, derive events, write).
SUBSCRIPTION_LOCK_NAMESPACE = 0x535542  # "SUB"
LOCK_SUBSCRIPTIONS = "select pg_advisory_xact_lock($1::int, hashtext($2::uuid::text))"

# The current state of the page's fans' subscriptions to connection $4 (accounts without one: NULL
# state; fans without an account: no row). One probe of the key per account, whatever the
# statistics say: the lateral LIMIT keeps the planner from a hash join over every recorded
# subscription of the creator, and migration 0038 left no index but the key to probe.
CURRENT_SUBSCRIPTIONS = """
select a.platform_fan_id, a.id as account_id, a.fan_profile_id, s.status, s.price, s.currency, s.started_at,
       s.expires_at, s.cancelled_at
  from fan_platform_accounts a
  left join lateral (
      select s.status, s.price, s.currency, s.started_at, s.expires_at, s.cancelled_at
        from fan_subscriptions s
       where s.user_id = a.user_id and s.platform_connection_id = $4 and s.fan_platform_account_id = a.id
       limit 1
  ) s on true
 where a.user_id = $1 and a.platform = $2 and a.platform_fan_id = any($3::text[])
"""

# Changed states upserted and lifecycle events appended, in one statement; events go in in time order
# (and ON CONFLICT DO NOTHING on the ledger's key). Returns (states written, events appended).
WRITE_SUBSCRIPTIONS = """
with states as (
    insert into fan_subscriptions as s (user_id, fan_profile_id, fan_platform_account_id, platform_connection_id,
                                        platform, status, price, currency, auto_renew, started_at, renews_at,
                                        cancelled_at, expires_at)
    select $1, p.fan_profile_id, p.account_id, $17, $2, p.status, p.price, p.currency, p.status in ('active', 'trial'),
           p.started_at, case when p.status in ('active', 'trial') then p.expires_at end, p.cancelled_at, p.expires_at
      from unnest($3::uuid[], $4::uuid[], $5::text[], $6::numeric[], $7::text[], $8::timestamptz[],
                  $9::timestamptz[], $10::timestamptz[])
           as p(account_id, fan_profile_id, status, price, currency, started_at, expires_at, cancelled_at)
    on conflict (user_id, fan_platform_account_id, platform_connection_id) do update
       set status = excluded.status, price = excluded.price, currency = excluded.currency,
           auto_renew = excluded.auto_renew, started_at = excluded.started_at, renews_at = excluded.renews_at,
           cancelled_at = excluded.cancelled_at, expires_at = excluded.expires_at
    returning 1
), events as (
    insert into fan_subscription_events (user_id, fan_platform_account_id, event_type, occurred_at, amount, currency,
                                         payload)
    select $1, e.account_id, e.event_type, e.occurred_at, e.amount, e.currency, e.payload
      from unnest($11::uuid[], $12::text[], $13::timestamptz[], $14::numeric[], $15::text[], $16::jsonb[])
           with ordinality as e(account_id, event_type, occurred_at, amount, currency, payload, n)
     order by e.occurred_at, e.n
    on conflict (user_id, fan_platform_account_id, event_type, occurred_at) do nothing
    returning id, fan_platform_account_id, event_type, occurred_at, amount, currency
), outbox as (  -- the lifecycle events automation triggers on, written with the ledger's rows (0022)
    insert into domain_events (user_id, event_type, fan_profile_id, fan_platform_account_id, source_key, occurred_at,
                               payload)
    select $1, case e.event_type when 'subscribe' then 'new_subscriber' else e.event_type end, a.fan_profile_id,
           e.fan_platform_account_id, 'fan_subscription_events:' || e.id, e.occurred_at,
           jsonb_build_object('platform', $2::text, 'connection_id', $17::uuid, 'amount', e.amount,
                              'currency', e.currency)
      from events e
      join fan_platform_accounts a on a.user_id = $1 and a.id = e.fan_platform_account_id
     where e.event_type in ('subscribe', 'rebill', 'cancellation', 'win_back')
     order by e.occurred_at, e.id
    on conflict (user_id, source_key) do nothing
)
select (select count(*) from states) as states, (select count(*) from events) as events
"""


# --- typed rows -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyncCursor:
    cursor: str | None
    pages_read: int
    items_read: int
    pass_started_at: datetime | None
    last_pass_completed_at: datetime | None


@dataclass(frozen=True)
class AccountRow:
    """A fan as a page shows it: enough to find or create its platform account."""

    fan_id: str
    username: str | None = None
    seen_at: datetime | None = None
    metadata: dict[str, Any] | None = None


@dataclass(frozen=True)
class TransactionRow:
    external_id: str
    fan_id: str
    kind: str
    amount: Decimal
    currency: str
    occurred_at: datetime


@dataclass(frozen=True)
class MessageRow:
    external_id: str
    fan_id: str
    direction: str  # inbound | outbound
    body: str
    occurred_at: datetime


@dataclass(frozen=True)
class SubscriptionState:
    status: str
    price: Decimal | None
    currency: str
    started_at: datetime | None
    expires_at: datetime | None
    cancelled_at: datetime | None


@dataclass(frozen=True)
class CurrentSubscription:
    account_id: UUID
    fan_profile_id: UUID
    state: SubscriptionState | None  # None: no subscription recorded yet


@dataclass(frozen=True)
class SubscriptionEvent:
    account_id: UUID
    event_type: str
    occurred_at: datetime
    amount: Decimal | None
    currency: str
    payload: dict[str, Any]


# --- statements -----------------------------------------------------------------------------------


async def get_cursor(conn: Any, user_id: UUID, connection_id: UUID, resource: str) -> SyncCursor | None:
    row = await conn.fetchrow(GET_CURSOR, user_id, connection_id, resource)
    return SyncCursor(**dict(row)) if row else None


class CursorMoved(RuntimeError):
    """The stored cursor is not the one this page was read at: another run moved it meanwhile."""


async def advance_cursor(
    conn: Any, user_id: UUID, connection_id: UUID, resource: str, *, read_at: str | None, next_cursor: str | None,
    pass_done: bool, items: int,
) -> None:  # fmt: skip
    row = await conn.fetchrow(
        ADVANCE_CURSOR, user_id, connection_id, resource, read_at, next_cursor, pass_done, items
    )
    if row is None:
        raise CursorMoved(f"{resource} cursor of connection {connection_id} moved since its page was read")


async def refresh_statistics(conn: Any) -> list[str]:
    """Analyse the sync's tables that grew by half since their last analyse (one another session
    holds is skipped); which ones were found grown."""
    analysed: list[str] = await conn.fetchval(REFRESH_STATISTICS)
    return analysed


async def ensure_accounts(
    conn: Any, user_id: UUID, platform: str, connection_id: UUID, rows: list[AccountRow], *, refresh: bool = True
) -> tuple[int, int]:
    """Find or create the accounts of a page's fans, refreshing known ones unless `refresh` is false;
    (created, updated)."""
    if not rows:
        return 0, 0
    fan_ids = [r.fan_id for r in rows]
    unknown = await conn.fetchval(LOCK_NEW_ACCOUNTS, ACCOUNT_LOCK_NAMESPACE, user_id, platform, fan_ids)
    if not refresh and unknown == 0:  # every account exists and none is to be refreshed: nothing to write
        return 0, 0
    row = await conn.fetchrow(
        ENSURE_ACCOUNTS, user_id, platform, connection_id, fan_ids, [r.username for r in rows],
        [r.seen_at for r in rows], [r.metadata or None for r in rows], refresh,
    )  # fmt: skip
    return int(row["created"]), int(row["updated"])


async def merge_transactions(
    conn: Any, user_id: UUID, platform: str, rows: list[TransactionRow]
) -> tuple[int, int]:
    """Insert the page's new transactions whose fans have accounts; (new, without an account)."""
    if not rows:
        return 0, 0
    row = await conn.fetchrow(
        MERGE_TRANSACTIONS, user_id, platform, [r.external_id for r in rows], [r.fan_id for r in rows],
        [r.kind for r in rows], [r.amount for r in rows], [r.currency for r in rows], [r.occurred_at for r in rows],
    )  # fmt: skip
    return int(row["new"]), int(row["unmatched"])


async def flush_profile_figures(conn: Any, user_id: UUID) -> int:
    """Recompute the figures of the profiles the pass's transaction pages noted; how many."""
    flushed: int = await conn.fetchval(FLUSH_PROFILE_FIGURES, user_id)
    return flushed


async def merge_messages(conn: Any, user_id: UUID, platform: str, rows: list[MessageRow]) -> tuple[int, int]:
    """Insert the page's new messages whose fans have accounts; (new, without an account)."""
    if not rows:
        return 0, 0
    row = await conn.fetchrow(
        MERGE_MESSAGES, user_id, platform, [r.external_id for r in rows], [r.fan_id for r in rows],
        [r.direction for r in rows], [r.body for r in rows], [r.occurred_at for r in rows],
    )  # fmt: skip
    return int(row["new"]), int(row["unmatched"])


async def current_subscriptions(
    conn: Any, user_id: UUID, platform: str, connection_id: UUID, fan_ids: list[str]
) -> dict[str, CurrentSubscription]:
    """The recorded state per fan id that has an account, on this connection, its subscription merges
    held off meanwhile (until commit)."""
    await conn.execute(LOCK_SUBSCRIPTIONS, SUBSCRIPTION_LOCK_NAMESPACE, connection_id)
    rows = await conn.fetch(CURRENT_SUBSCRIPTIONS, user_id, platform, fan_ids, connection_id)
    found = {}
    for r in rows:
        state = None
        if r["status"] is not None:
            state = SubscriptionState(
                r["status"], r["price"], r["currency"].strip(), r["started_at"], r["expires_at"], r["cancelled_at"]
            )
        found[r["platform_fan_id"]] = CurrentSubscription(r["account_id"], r["fan_profile_id"], state)
    return found


async def write_subscriptions(
    conn: Any, user_id: UUID, platform: str, connection_id: UUID,
    states: list[tuple[CurrentSubscription, SubscriptionState]], events: list[SubscriptionEvent],
) -> tuple[int, int]:  # fmt: skip
    """Upsert changed states and append their events in one statement; (states, events) written."""
    if not states and not events:
        return 0, 0
    row = await conn.fetchrow(
        WRITE_SUBSCRIPTIONS, user_id, platform,
        [c.account_id for c, _ in states], [c.fan_profile_id for c, _ in states], [s.status for _, s in states],
        [s.price for _, s in states], [s.currency for _, s in states], [s.started_at for _, s in states],
        [s.expires_at for _, s in states], [s.cancelled_at for _, s in states],
        [e.account_id for e in events], [e.event_type for e in events], [e.occurred_at for e in events],
        [e.amount for e in events], [e.currency for e in events], [e.payload for e in events],
        connection_id,
    )  # fmt: skip
    return int(row["states"]), int(row["events"])
