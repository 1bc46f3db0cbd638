"""Fan CRM: a fan is a person (`fan_profiles`) seen through platform accounts (`fan_platform_accounts`).

The dedup key is the platform account, `(user_id, platform, platform_fan_id)`, never the profile id.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict

FanStatus = Literal["active", "merged", "blocked"]
LifecycleStage = Literal["new", "active", "at_risk", "churned", "win_back", "vip"]
LinkStatus = Literal["suggested", "confirmed", "rejected"]
LinkSource = Literal["ai", "creator", "rule", "import"]
SubscriptionEventType = Literal[
    "subscribe", "rebill", "trial_start", "trial_conversion", "cancellation", "expiration", "win_back",
    "price_change", "refund",
]  # fmt: skip
TransactionKind = Literal["subscription", "ppv", "tip", "paid_message", "custom_request", "bundle", "other"]
TransactionStatus = Literal["pending", "completed", "refunded", "chargeback", "failed"]


class FanProfile(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: UUID
    user_id: UUID
    display_name: str | None
    status: FanStatus
    merged_into_id: UUID | None
    lifecycle_stage: LifecycleStage
    engagement_score: Decimal | None
    lifetime_spend: Decimal
    currency: str
    message_count: int
    first_seen_at: datetime | None
    last_seen_at: datetime | None
    last_message_at: datetime | None
    last_purchase_at: datetime | None
    platforms: list[str]


class FanPlatformAccount(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: UUID
    user_id: UUID
    fan_profile_id: UUID
    platform: str
    platform_fan_id: str
    platform_connection_id: UUID | None
    username: str | None
    display_name: str | None
    first_seen_at: datetime | None
    last_seen_at: datetime | None


class FanSubscriptionEvent(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: UUID
    user_id: UUID
    fan_platform_account_id: UUID
    event_type: SubscriptionEventType
    occurred_at: datetime
    tier: str | None
    amount: Decimal | None
    currency: str
    external_event_id: str | None


class FanTransaction(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: UUID
    user_id: UUID
    fan_profile_id: UUID
    fan_platform_account_id: UUID | None
    platform: str
    kind: TransactionKind
    status: TransactionStatus
    amount: Decimal
    fee_amount: Decimal | None
    net_amount: Decimal | None
    currency: str
    occurred_at: datetime
    external_transaction_id: str | None
    content_post_id: UUID | None
    campaign_id: UUID | None


PROFILE_COLUMNS = """id, user_id, display_name, status, merged_into_id, lifecycle_stage, engagement_score,
       lifetime_spend, currency, message_count, first_seen_at, last_seen_at, last_message_at, last_purchase_at,
       platforms"""
ACCOUNT_COLUMNS = """id, user_id, fan_profile_id, platform, platform_fan_id, platform_connection_id, username,
       display_name, first_seen_at, last_seen_at"""
EVENT_COLUMNS = """id, user_id, fan_platform_account_id, event_type, occurred_at, tier, amount, currency,
       external_event_id"""
TRANSACTION_COLUMNS = """id, user_id, fan_profile_id, fan_platform_account_id, platform, kind, status, amount,
       fee_amount, net_amount, currency, occurred_at, external_transaction_id, content_post_id, campaign_id"""

# Serializes upserts of one platform account (first key: this lock's namespace), so two jobs seeing a
# new fan at once create one profile, not one each with an orphan left behind. Held until commit.
ACCOUNT_LOCK_NAMESPACE = 0x46414E  # "FAN"
LOCK_ACCOUNT_KEY = "select pg_advisory_xact_lock($1, hashtext($2::uuid::text || '/' || $3::text || '/' || $4::text))"

# Existing account: refresh it. New account: a new profile (a new person until linked) and the account.
UPSERT_ACCOUNT = (
    """
with updated as (
    update fan_platform_accounts
       set username = coalesce($4, username),
           display_name = coalesce($5, display_name),
           platform_connection_id = coalesce($6, platform_connection_id),
           first_seen_at = least(first_seen_at, $7),
           last_seen_at = greatest(last_seen_at, $7)
     where user_id = $1 and platform = $2 and platform_fan_id = $3
 returning """
    + ACCOUNT_COLUMNS
    + """
), new_profile as (
    insert into fan_profiles (user_id, display_name, first_seen_at, last_seen_at, platforms)
    select $1::uuid, coalesce($5::text, $4::text), $7::timestamptz, $7::timestamptz, array[$2::text]
     where not exists (select from updated)
 returning id
), inserted as (
    insert into fan_platform_accounts (user_id, fan_profile_id, platform, platform_fan_id, username, display_name,
                                       platform_connection_id, first_seen_at, last_seen_at)
    select $1::uuid, id, $2::text, $3::text, $4::text, $5::text, $6::uuid, $7::timestamptz, $7::timestamptz
      from new_profile
 returning """
    + ACCOUNT_COLUMNS
    + """
)
select * from updated
union all
select * from inserted
"""
)

GET_ACCOUNT = (
    "select "
    + ACCOUNT_COLUMNS
    + " from fan_platform_accounts where user_id = $1 and platform = $2 and platform_fan_id = $3"
)

GET_PROFILE = "select " + PROFILE_COLUMNS + " from fan_profiles where user_id = $1 and id = $2"

APPEND_SUBSCRIPTION_EVENT = (
    """
insert into fan_subscription_events (user_id, fan_platform_account_id, event_type, occurred_at, tier, amount,
                                     currency, external_event_id, payload)
values ($1, $2, $3, $4, $5, $6, $7, $8, $9)
on conflict (user_id, fan_platform_account_id, event_type, occurred_at) do nothing
returning """
    + EVENT_COLUMNS
)

# Upsert on the platform's transaction id. Only the status moves, and only forward:
# pending -> anything, completed -> refunded | chargeback. A stale re-scrape changes nothing.
RECORD_TRANSACTION = (
    """
insert into fan_transactions (user_id, fan_profile_id, fan_platform_account_id, platform, kind, status, amount,
                              fee_amount, net_amount, currency, occurred_at, external_transaction_id,
                              content_post_id, campaign_id)
values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
on conflict (user_id, platform, external_transaction_id) do update
    set status = excluded.status
  where fan_transactions.status = 'pending' and excluded.status <> 'pending'
     or fan_transactions.status = 'completed' and excluded.status in ('refunded', 'chargeback')
returning """
    + TRANSACTION_COLUMNS
)

GET_TRANSACTION = (
    "select "
    + TRANSACTION_COLUMNS
    + " from fan_transactions where user_id = $1 and platform = $2 and external_transaction_id = $3"
)


async def upsert_platform_account(
    conn: Any,
    user_id: UUID,
    platform: str,
    platform_fan_id: str,
    username: str | None = None,
    *,
    display_name: str | None = None,
    platform_connection_id: UUID | None = None,
    seen_at: datetime | None = None,
) -> FanPlatformAccount:
    """The fan's account on `platform`, created with a new profile the first time it is seen.

    Idempotent: a second call refreshes the account (non-null fields win, seen times widen) and
    creates nothing. Concurrent calls for the same account create one account and one profile.
    """
    await conn.execute(LOCK_ACCOUNT_KEY, ACCOUNT_LOCK_NAMESPACE, user_id, platform, platform_fan_id)
    row = await conn.fetchrow(
        UPSERT_ACCOUNT, user_id, platform, platform_fan_id, username, display_name, platform_connection_id, seen_at
    )
    return FanPlatformAccount.model_validate(dict(row))


async def get_platform_account(
    conn: Any, user_id: UUID, platform: str, platform_fan_id: str
) -> FanPlatformAccount | None:
    row = await conn.fetchrow(GET_ACCOUNT, user_id, platform, platform_fan_id)
    return FanPlatformAccount.model_validate(dict(row)) if row else None


async def get_fan_profile(conn: Any, user_id: UUID, fan_profile_id: UUID) -> FanProfile | None:
    row = await conn.fetchrow(GET_PROFILE, user_id, fan_profile_id)
    return FanProfile.model_validate(dict(row)) if row else None


async def append_subscription_event(
    conn: Any,
    user_id: UUID,
    fan_platform_account_id: UUID,
    event_type: SubscriptionEventType,
    occurred_at: datetime,
    *,
    tier: str | None = None,
    amount: Decimal | None = None,
    currency: str = "USD",
    external_event_id: str | None = None,
    payload: dict[str, Any] | None = None,
) -> FanSubscriptionEvent | None:
    """Append to the ledger; `None` when this event (account, type, time) is already recorded."""
    row = await conn.fetchrow(
        APPEND_SUBSCRIPTION_EVENT, user_id, fan_platform_account_id, event_type, occurred_at, tier, amount, currency,
        external_event_id, payload,
    )  # fmt: skip
    return FanSubscriptionEvent.model_validate(dict(row)) if row else None


async def record_transaction(
    conn: Any,
    user_id: UUID,
    fan_profile_id: UUID,
    platform: str,
    kind: TransactionKind,
    amount: Decimal,
    occurred_at: datetime,
    *,
    external_transaction_id: str | None = None,
    fan_platform_account_id: UUID | None = None,
    status: TransactionStatus = "completed",
    fee_amount: Decimal | None = None,
    net_amount: Decimal | None = None,
    currency: str = "USD",
    content_post_id: UUID | None = None,
    campaign_id: UUID | None = None,
) -> FanTransaction:
    """Record a purchase, upserted on the platform's transaction id; returns the row as stored.

    Re-recording a known transaction only moves its status forward (a refund after completion);
    without an external id every call is a new transaction.
    """
    row = await conn.fetchrow(
        RECORD_TRANSACTION, user_id, fan_profile_id, fan_platform_account_id, platform, kind, status, amount,
        fee_amount, net_amount, currency, occurred_at, external_transaction_id, content_post_id, campaign_id,
    )  # fmt: skip
    if row is None:  # known transaction, status not moved
        row = await conn.fetchrow(GET_TRANSACTION, user_id, platform, external_transaction_id)
    return FanTransaction.model_validate(dict(row))
