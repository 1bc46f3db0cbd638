"""The subscription-history merge: a page of a platform's lifecycle events appended to
`fan_subscription_events`, with their domain events, in one statement (arrays through `unnest`).

Idempotent on the platform's event id per fan account (migration 0034) and on the ledger's key
(account, type, time): ON CONFLICT DO NOTHING, so a page read again appends nothing. Rows go in in
the page's order (the platform lists each subscription's events in sequence), and each new event of
a type automation follows gets its `domain_events` row in the same statement (the outbox, 0022).
Runs in the caller's transaction, the one that also advances the resource's cursor.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

MERGE_HISTORY = """
with page as (
    select *
      from unnest($3::text[], $4::text[], $5::text[], $6::timestamptz[], $7::numeric[], $8::jsonb[])
           with ordinality as p(external_id, fan_id, event_type, occurred_at, amount, payload, n)
), matched as materialized (
    select p.*, a.id as account_id
      from page p
      join fan_platform_accounts a on a.user_id = $1 and a.platform = $2 and a.platform_fan_id = p.fan_id
), inserted as (
    insert into fan_subscription_events (user_id, fan_platform_account_id, event_type, occurred_at, amount, currency,
                                         external_event_id, payload)
    select $1, m.account_id, m.event_type, m.occurred_at, m.amount, 'USD', m.external_id, m.payload
      from matched m
     order by m.n
    on conflict do nothing
    returning id, fan_platform_account_id, event_type, occurred_at, amount, currency
), outbox as (
    insert into domain_events (user_id, event_type, fan_profile_id, fan_platform_account_id, source_key, occurred_at,
                               payload)
    select $1, case i.event_type when 'subscribe' then 'new_subscriber' else i.event_type end, a.fan_profile_id,
           i.fan_platform_account_id, 'fan_subscription_events:' || i.id, i.occurred_at,
           jsonb_build_object('platform', $2::text, 'connection_id', $9::uuid, 'amount', i.amount,
                              'currency', i.currency)
      from inserted i
      join fan_platform_accounts a on a.user_id = $1 and a.id = i.fan_platform_account_id
     where i.event_type in ('subscribe', 'rebill', 'cancellation', 'win_back')
     order by i.occurred_at, i.id
    on conflict (user_id, source_key) do nothing
)
select (select count(*) from inserted) as new, (select count(*) from page) - (select count(*) from matched) as unmatched
"""


@dataclass(frozen=True)
class HistoryRow:
    external_id: str
    fan_id: str
    event_type: str  # ours: subscribe, rebill, trial_start, cancellation, expiration, win_back, ...
    occurred_at: datetime
    amount: Decimal | None
    payload: dict[str, Any]


async def merge_history(
    conn: Any, user_id: UUID, platform: str, connection_id: UUID, rows: list[HistoryRow]
) -> tuple[int, int]:
    """Append a page's lifecycle events whose fans have accounts; (new, without an account: not
    appended, the caller creates the accounts and merges the page again)."""
    if not rows:
        return 0, 0
    row = await conn.fetchrow(
        MERGE_HISTORY, user_id, platform, [r.external_id for r in rows], [r.fan_id for r in rows],
        [r.event_type for r in rows], [r.occurred_at for r in rows], [r.amount for r in rows],
        [r.payload for r in rows], connection_id,
    )  # fmt: skip
    return int(row["new"]), int(row["unmatched"])
