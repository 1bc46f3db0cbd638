"""Fan identity: confirmed links between platform accounts decide which `fan_profiles` row they share.

The rule (docs/sync.md, "Identity links"): two accounts are one person when a confirmed
`fan_identity_links` row joins them, directly or through other confirmed links. A link is confirmed by
an explicit creator link (`link_accounts`) or by a verified match the platform reports: the same
verified e-mail address reported for two accounts of the creator's fans (`link_verified_matches`,
run by the fan sync on every page of fans; an address the platform does not mark verified is not
reported and never links). An unlink
(`unlink_accounts`) marks the pair `rejected`, so a later verified match does not join it again.

After every change the accounts concerned are regrouped: each connected group of accounts shares one
profile (the oldest of its current profiles); a profile left without accounts is marked `merged` into
its group's. When an unlink splits a profile's accounts, the part holding the earliest-seen account
keeps the profile and the other part gets a new one. The rows that follow an account
(subscriptions, transactions, messages, deliveries, custom requests) move with it; append-only history
(`domain_events`, `automation_rule_actions`) keeps the profile it was written under. Then the
composite figures of every profile concerned are recomputed from its accounts' rows: lifetime spend
and last purchase (completed transactions in the profile's currency), message count and last message,
first/last seen, and `platforms`. All statements are set-based, in the caller's creator transaction
(RLS applies), and regroups of one creator run one at a time (an advisory lock).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

IDENTITY_LOCK_NAMESPACE = 0x494450  # "IDP"
LOCK_CREATOR = "select pg_advisory_xact_lock($1::int, hashtext($2::uuid::text))"

# Confirm the pair (stored once, smaller id first); an earlier suggestion or rejection is overridden.
CONFIRM_LINK = """
insert into fan_identity_links (user_id, account_a_id, account_b_id, status, source, evidence, confirmed_at)
values ($1, least($2::uuid, $3::uuid), greatest($2::uuid, $3::uuid), 'confirmed', $4, $5, now())
on conflict (user_id, account_a_id, account_b_id) do update
   set status = 'confirmed', source = excluded.source, evidence = excluded.evidence, confirmed_at = now()
returning id
"""

REJECT_LINK = """
insert into fan_identity_links (user_id, account_a_id, account_b_id, status, source)
values ($1, least($2::uuid, $3::uuid), greatest($2::uuid, $3::uuid), 'rejected', 'creator')
on conflict (user_id, account_a_id, account_b_id) do update set status = 'rejected', confirmed_at = null
returning id
"""

# Verified-match rule: the page's accounts ($2 platform, $3 fan ids) whose platform reported a verified
# e-mail, paired with every other account of the creator reporting the same one (case-insensitive),
# unless the pair is linked or rejected already. Inserts the confirmed links; returns the accounts.
LINK_VERIFIED_MATCHES = """
with seeds as (
    select a.id, lower(a.platform_metadata ->> 'verified_email') as email
      from fan_platform_accounts a
     where a.user_id = $1 and a.platform = $2 and a.platform_fan_id = any($3::text[])
       and a.platform_metadata ->> 'verified_email' <> ''
), pairs as (
    select distinct least(s.id, o.id) as a_id, greatest(s.id, o.id) as b_id, s.email
      from seeds s
      join fan_platform_accounts o
        on o.user_id = $1 and o.id <> s.id and lower(o.platform_metadata ->> 'verified_email') = s.email
), inserted as (
    insert into fan_identity_links (user_id, account_a_id, account_b_id, status, source, confidence, evidence,
                                    confirmed_at)
    select $1, p.a_id, p.b_id, 'confirmed', 'rule', 1, jsonb_build_object('verified_email', p.email), now()
      from pairs p
    on conflict (user_id, account_a_id, account_b_id) do nothing
    returning account_a_id, account_b_id
)
select array(select account_a_id from inserted union select account_b_id from inserted) as accounts
"""

# The accounts sharing a profile with any of $2, each with the smallest account id connected to it by
# confirmed links (its group's label), its current profile's age and its own.
GROUPS = """
with recursive scope as (
    select a.id, a.fan_profile_id from fan_platform_accounts a
     where a.user_id = $1
       and a.fan_profile_id in (select fan_profile_id from fan_platform_accounts
                                 where user_id = $1 and id = any($2::uuid[]))
), edges as (
    select l.account_a_id as x, l.account_b_id as y from fan_identity_links l
     where l.user_id = $1 and l.status = 'confirmed' and l.account_a_id in (select id from scope)
    union all
    select l.account_b_id, l.account_a_id from fan_identity_links l
     where l.user_id = $1 and l.status = 'confirmed' and l.account_b_id in (select id from scope)
), walk (root, id) as (
    select id, id from scope
    union
    select w.root, e.y from walk w join edges e on e.x = w.id
)
select s.id as account_id, min(w.root::text)::uuid as label, s.fan_profile_id, f.first_seen_at,
       a.first_seen_at as account_first_seen_at
  from scope s
  join walk w on w.id = s.id
  join fan_profiles f on f.user_id = $1 and f.id = s.fan_profile_id
  join fan_platform_accounts a on a.user_id = $1 and a.id = s.id
 group by s.id, s.fan_profile_id, f.first_seen_at, a.first_seen_at
"""

NEW_PROFILES = """
insert into fan_profiles (id, user_id)
select id, $1 from unnest($2::uuid[]) as id
"""

MOVE_ACCOUNTS = """
update fan_platform_accounts a
   set fan_profile_id = m.profile_id
  from unnest($2::uuid[], $3::uuid[]) as m(account_id, profile_id)
 where a.user_id = $1 and a.id = m.account_id and a.fan_profile_id <> m.profile_id
"""

# The rows that belong to an account follow it to its new profile (table names are literals here).
FOLLOWING_TABLES = (
    "fan_subscriptions", "fan_transactions", "fan_messages", "message_broadcast_deliveries", "fan_custom_requests",
)  # fmt: skip
MOVE_FOLLOWING = """
update {table} t
   set fan_profile_id = a.fan_profile_id
  from fan_platform_accounts a
 where t.user_id = $1 and a.user_id = $1 and a.id = any($2::uuid[])
   and t.fan_platform_account_id = a.id and t.fan_profile_id <> a.fan_profile_id
"""

MARK_MERGED = """
update fan_profiles f
   set status = 'merged', merged_into_id = m.into_id
  from unnest($2::uuid[], $3::uuid[]) as m(profile_id, into_id)
 where f.user_id = $1 and f.id = m.profile_id
"""

# Composite figures from the profile's own accounts and their rows (a profile without accounts: zeros).
RECOMPUTE_FIGURES = """
update fan_profiles f
   set lifetime_spend = coalesce((select sum(t.amount) from fan_transactions t
                                   where t.user_id = $1 and t.fan_profile_id = f.id and t.status = 'completed'
                                     and t.currency = f.currency), 0),
       last_purchase_at = (select max(t.occurred_at) from fan_transactions t
                            where t.user_id = $1 and t.fan_profile_id = f.id and t.status = 'completed'),
       message_count = (select count(*) from fan_messages m where m.user_id = $1 and m.fan_profile_id = f.id),
       last_message_at = (select max(m.occurred_at) from fan_messages m
                           where m.user_id = $1 and m.fan_profile_id = f.id),
       first_seen_at = (select min(a.first_seen_at) from fan_platform_accounts a
                         where a.user_id = $1 and a.fan_profile_id = f.id),
       last_seen_at = greatest((select max(a.last_seen_at) from fan_platform_accounts a
                                 where a.user_id = $1 and a.fan_profile_id = f.id),
                               (select max(t.occurred_at) from fan_transactions t
                                 where t.user_id = $1 and t.fan_profile_id = f.id),
                               (select max(m.occurred_at) from fan_messages m
                                 where m.user_id = $1 and m.fan_profile_id = f.id)),
       platforms = array(select distinct a.platform from fan_platform_accounts a
                          where a.user_id = $1 and a.fan_profile_id = f.id order by 1),
       display_name = coalesce(f.display_name,
                               (select a.username from fan_platform_accounts a
                                 where a.user_id = $1 and a.fan_profile_id = f.id
                                 order by a.first_seen_at nulls last, a.id limit 1))
 where f.user_id = $1 and f.id = any($2::uuid[])
"""


@dataclass(frozen=True)
class Regrouped:
    """What a regroup changed: accounts moved, profiles created and merged away."""

    accounts_moved: int
    profiles_created: int
    profiles_merged: int


class UnknownAccount(ValueError):
    """An account id that is not one of this creator's fan platform accounts."""


async def link_accounts(
    conn: Any, user_id: UUID, account_a: UUID, account_b: UUID, *, source: str = "creator"
) -> Regrouped:
    """Confirm that two accounts are one person and join them (and their linked accounts) under one profile."""
    if account_a == account_b:
        raise ValueError("account_b: an account cannot be linked to itself")
    await _check_accounts(conn, user_id, [account_a, account_b])
    await conn.execute(LOCK_CREATOR, IDENTITY_LOCK_NAMESPACE, user_id)
    await conn.fetchval(CONFIRM_LINK, user_id, account_a, account_b, source, {})
    return await regroup(conn, user_id, [account_a, account_b])


async def unlink_accounts(conn: Any, user_id: UUID, account_a: UUID, account_b: UUID) -> Regrouped:
    """Record that two accounts are not one person (rejected link) and split their profile where that
    disconnects them."""
    if account_a == account_b:
        raise ValueError("account_b: an account cannot be unlinked from itself")
    await _check_accounts(conn, user_id, [account_a, account_b])
    await conn.execute(LOCK_CREATOR, IDENTITY_LOCK_NAMESPACE, user_id)
    await conn.fetchval(REJECT_LINK, user_id, account_a, account_b)
    return await regroup(conn, user_id, [account_a, account_b])


async def link_verified_matches(conn: Any, user_id: UUID, platform: str, fan_ids: list[str]) -> Regrouped:
    """Apply the verified-match rule to the accounts `fan_ids` on `platform` (a synced page's fans)."""
    if not fan_ids:
        return Regrouped(0, 0, 0)
    await conn.execute(LOCK_CREATOR, IDENTITY_LOCK_NAMESPACE, user_id)
    touched: list[UUID] = await conn.fetchval(LINK_VERIFIED_MATCHES, user_id, platform, fan_ids)
    if not touched:
        return Regrouped(0, 0, 0)
    return await regroup(conn, user_id, touched)


async def regroup(conn: Any, user_id: UUID, account_ids: list[UUID]) -> Regrouped:
    """Give each connected group of accounts (around `account_ids`) one profile, and recompute figures."""
    rows = await conn.fetch(GROUPS, user_id, account_ids)
    groups: dict[UUID, list[Any]] = {}
    for r in rows:
        groups.setdefault(r["label"], []).append(r)
    taken: dict[UUID, UUID] = {}  # profile -> the group label keeping it
    target: dict[UUID, UUID] = {}  # group label -> its profile
    created: list[UUID] = []

    def seniority(label: UUID) -> tuple[bool, datetime, str]:  # earliest-seen account first
        seen = [r["account_first_seen_at"] for r in groups[label] if r["account_first_seen_at"] is not None]
        return (not seen, min(seen, default=datetime.min.replace(tzinfo=UTC)), str(label))

    for label in sorted(groups, key=seniority):
        oldest_first = sorted({(r["first_seen_at"] is None, r["first_seen_at"] or datetime.min.replace(tzinfo=UTC),
                                str(r["fan_profile_id"]), r["fan_profile_id"]) for r in groups[label]})  # fmt: skip
        keep = next((c[3] for c in oldest_first if c[3] not in taken), None)
        if keep is None:  # split off by an unlink: its profile stays with the other part
            keep = uuid.uuid4()
            created.append(keep)
        taken[keep] = label
        target[label] = keep
    moves = [(r["account_id"], target[label]) for label, rs in groups.items() for r in rs
             if r["fan_profile_id"] != target[label]]  # fmt: skip
    left = {r["fan_profile_id"]: target[label] for label, rs in groups.items() for r in rs}
    merged = [(p, into) for p, into in left.items() if p not in taken]
    if created:
        await conn.execute(NEW_PROFILES, user_id, created)
    if moves:
        moved = [a for a, _ in moves]
        await conn.execute(MOVE_ACCOUNTS, user_id, moved, [p for _, p in moves])
        for table in FOLLOWING_TABLES:
            await conn.execute(MOVE_FOLLOWING.format(table=table), user_id, moved)
    if merged:
        await conn.execute(MARK_MERGED, user_id, [p for p, _ in merged], [i for _, i in merged])
    await conn.execute(RECOMPUTE_FIGURES, user_id, list(set(target.values()) | {p for p, _ in merged}))
    return Regrouped(len(moves), len(created), len(merged))


async def _check_accounts(conn: Any, user_id: UUID, account_ids: list[UUID]) -> None:
    found = await conn.fetch(
        "select id from fan_platform_accounts where user_id = $1 and id = any($2::uuid[])", user_id, account_ids
    )
    missing = set(account_ids) - {r["id"] for r in found}
    if missing:
        raise UnknownAccount(f"account: no fan platform account {sorted(map(str, missing))} for this creator")
