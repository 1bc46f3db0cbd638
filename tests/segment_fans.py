"""Hand-built fans for the segment and score tests, written as the app writes them (the creator's
own transaction, row-level security on): profiles with their platform accounts, transactions,
subscriptions and their events, messages, tags and scores, each placed relative to now()."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from geniehelper.db import Database
from geniehelper.domain import fan_crm


def ago(days: float) -> datetime:
    return datetime.now(UTC) - timedelta(days=days)


@dataclass
class Fans:
    user_id: uuid.UUID
    ids: dict[str, uuid.UUID] = field(default_factory=dict)  # display name -> profile id
    accounts: dict[str, uuid.UUID] = field(default_factory=dict)  # display name -> first platform account

    def names(self, ids: Any) -> set[str]:
        by_id = {v: k for k, v in self.ids.items()}
        return {by_id[uuid.UUID(str(i))] for i in ids}


async def add_fan(
    conn: Any, fans: Fans, name: str, *, platforms: tuple[str, ...] = ("onlyfans",), **profile: Any
) -> uuid.UUID:
    account = None
    for platform in platforms:
        found = await fan_crm.upsert_platform_account(
            conn, fans.user_id, platform, f"{name}-{platform}", display_name=name
        )
        if account is None:
            account = found
        else:  # the same person on a second platform: one profile
            await conn.execute(
                "update fan_platform_accounts set fan_profile_id = $2 where id = $1", found.id, account.fan_profile_id
            )
            await conn.execute("delete from fan_profiles where id = $1", found.fan_profile_id)
    assert account is not None
    fans.ids[name], fans.accounts[name] = account.fan_profile_id, account.id
    if profile:
        await set_profile(conn, fans, name, **profile)
    return account.fan_profile_id


PROFILE_FIELDS = {
    "lifecycle_stage", "lifetime_spend", "engagement_score", "message_count", "status", "merged_into_id",
    "first_seen_at", "last_seen_at", "last_message_at", "last_purchase_at", "currency",
}  # fmt: skip


async def set_profile(conn: Any, fans: Fans, name: str, **values: Any) -> None:
    assert set(values) <= PROFILE_FIELDS, values  # test-only whitelist: the column names below are ours
    sets = ", ".join(f"{column} = ${i}" for i, column in enumerate(values, start=2))
    await conn.execute(f"update fan_profiles set {sets} where id = $1", fans.ids[name], *values.values())


async def buy(conn: Any, fans: Fans, name: str, kind: str, amount: str, days_ago: float,
              status: str = "completed") -> None:  # fmt: skip
    await fan_crm.record_transaction(
        conn, fans.user_id, fans.ids[name], "onlyfans", kind, Decimal(amount), ago(days_ago),  # type: ignore[arg-type]
        status=status, fan_platform_account_id=fans.accounts[name],  # type: ignore[arg-type]
    )  # fmt: skip


async def subscribe(conn: Any, fans: Fans, name: str, status: str, tier: str | None, platform: str = "onlyfans",
                    *, auto_renew: bool = True) -> None:  # fmt: skip
    account = await conn.fetchval(
        "select id from fan_platform_accounts where fan_profile_id = $1 and platform = $2", fans.ids[name], platform
    )
    await conn.execute(
        "insert into fan_subscriptions (user_id, fan_profile_id, fan_platform_account_id, platform, tier, status,"
        " price, auto_renew, started_at) values ($1, $2, $3, $4, $5, $6, 9.99, $7, now() - interval '100 days')",
        fans.user_id, fans.ids[name], account, platform, tier, status, auto_renew,
    )  # fmt: skip


async def sub_event(conn: Any, fans: Fans, name: str, event_type: str, days_ago: float) -> None:
    await fan_crm.append_subscription_event(conn, fans.user_id, fans.accounts[name], event_type, ago(days_ago))  # type: ignore[arg-type]


async def message(conn: Any, fans: Fans, name: str, direction: str, status: str, days_ago: float) -> None:
    await conn.execute(
        "insert into fan_messages (user_id, fan_profile_id, fan_platform_account_id, direction, status, body,"
        " occurred_at) values ($1, $2, $3, $4, $5, 'hi', $6)",
        fans.user_id, fans.ids[name], fans.accounts[name], direction, status, ago(days_ago),
    )  # fmt: skip


async def tag(conn: Any, fans: Fans, name: str, tag_name: str, value: str | None = None) -> None:
    await conn.execute(
        "insert into fan_tag_values (user_id, fan_profile_id, tag, value) values ($1, $2, $3, $4)"
        " on conflict (user_id, fan_profile_id, tag) do update set value = excluded.value",
        fans.user_id, fans.ids[name], tag_name, value,
    )  # fmt: skip


async def score(conn: Any, fans: Fans, name: str, **scores: Any) -> None:
    await conn.execute(
        "insert into fan_scores (user_id, fan_profile_id, churn_risk, predicted_ltv, upsell_readiness, loyalty)"
        " values ($1, $2, $3, $4, $5, $6)",
        fans.user_id, fans.ids[name], scores.get("churn_risk"), scores.get("predicted_ltv"),
        scores.get("upsell_readiness"), scores.get("loyalty"),
    )  # fmt: skip


async def build_cast(db: Database, user_id: uuid.UUID) -> Fans:
    """Five fans, each known by name:

    - alice: vip, lifetime 500, engagement 0.9, seen yesterday; 3 tips of 50 in the last 10 days and a
      ppv of 20 100 days ago; active gold subscription; tag whale; inbound message 2 days ago; churn 0.1.
    - bob (on fansly): active, lifetime 40, seen 20 days ago; a tip of 10 5 days ago and a ppv of 100
      refunded 3 days ago; cancelled silver subscription, cancelled 10 days ago; tag city=Berlin; an
      outbound message sent 3 days ago; churn 0.8.
    - cara: at_risk, seen 200 days ago; expired subscription (no tier); tag city=Paris; an inbound
      message 60 days ago; no scores.
    - dan (on fansly and onlyfans): new, nothing known (no times, no engagement); an unsent draft.
    - eve: merged into alice (never a member of anything).
    """
    fans = Fans(user_id)
    async with db.creator_tx(user_id) as conn:
        await add_fan(conn, fans, "alice", lifecycle_stage="vip", lifetime_spend=Decimal(500),
                      engagement_score=Decimal("0.9"), last_seen_at=ago(1), first_seen_at=ago(400))  # fmt: skip
        await add_fan(conn, fans, "bob", platforms=("fansly",), lifecycle_stage="active", lifetime_spend=Decimal(40),
                      last_seen_at=ago(20), first_seen_at=ago(30), engagement_score=Decimal("0.3"))  # fmt: skip
        await add_fan(conn, fans, "cara", lifecycle_stage="at_risk", last_seen_at=ago(200), first_seen_at=ago(300))
        await add_fan(conn, fans, "dan", platforms=("fansly", "onlyfans"))
        await conn.execute("update fan_profiles set first_seen_at = null, last_seen_at = null where id = $1",
                           fans.ids["dan"])  # fmt: skip
        await add_fan(conn, fans, "eve", status="merged", merged_into_id=fans.ids["alice"], lifecycle_stage="vip")
        for days in (1, 4, 9):
            await buy(conn, fans, "alice", "tip", "50", days)
        await buy(conn, fans, "alice", "ppv", "20", 100)
        await buy(conn, fans, "bob", "tip", "10", 5)
        await buy(conn, fans, "bob", "ppv", "100", 3, status="refunded")
        await subscribe(conn, fans, "alice", "active", "gold")
        await subscribe(conn, fans, "bob", "cancelled", "silver", "fansly", auto_renew=False)
        await subscribe(conn, fans, "cara", "expired", None)
        await sub_event(conn, fans, "alice", "subscribe", 100)
        await sub_event(conn, fans, "bob", "subscribe", 30)
        await sub_event(conn, fans, "bob", "cancellation", 10)
        await tag(conn, fans, "alice", "whale")
        await tag(conn, fans, "bob", "city", "Berlin")
        await tag(conn, fans, "cara", "city", "Paris")
        await message(conn, fans, "alice", "inbound", "received", 2)
        await message(conn, fans, "bob", "outbound", "sent", 3)
        await message(conn, fans, "cara", "inbound", "received", 60)
        await message(conn, fans, "dan", "outbound", "draft", 1)
        await score(conn, fans, "alice", churn_risk=Decimal("0.1"), predicted_ltv=Decimal(900), loyalty=Decimal("0.8"))
        await score(conn, fans, "bob", churn_risk=Decimal("0.8"), predicted_ltv=Decimal(15))
    return fans
