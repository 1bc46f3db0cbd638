"""`bench segments`' data: one creator's fans and ledgers generated in SQL, the 1 % change, 20 segments.

Everything is generated set-based (generate_series, one statement per table) with `setseed`, so a run
is repeatable. Ids are sequential uuids (`fan_uuid`): btree inserts append, which keeps generation
fast; fan index i (1..N) is the fan, and its account id shares the index. Transactions pick their
fan through a skewed draw (a few fans buy a lot), spread over the ids by a multiplier coprime to N.
The draws are made in a subquery's select list, where a volatile function runs once per row (in an
uncorrelated lateral it would run once).
"""

from __future__ import annotations

from typing import Any

# Sequential uuids per table: a different prefix each, the index in the last 12 hex digits.
FAN_UUID = "('00000000-0000-4000-8000-' || lpad(to_hex({i}), 12, '0'))::uuid"
ACCOUNT_UUID = "('00000000-0001-4000-8000-' || lpad(to_hex({i}), 12, '0'))::uuid"


def fan_uuid_sql(expr: str) -> str:
    return FAN_UUID.format(i=expr)


def account_uuid_sql(expr: str) -> str:
    return ACCOUNT_UUID.format(i=expr)


# $1 creator, $2 fans. Platform: fansly for 1 in 5.
PROFILES = f"""
insert into fan_profiles (id, user_id, display_name, lifecycle_stage, first_seen_at, last_seen_at)
select {fan_uuid_sql("i")}, $1, 'fan ' || i,
       (array['new', 'active', 'active', 'active', 'at_risk', 'churned', 'win_back', 'vip'])
           [1 + floor(random() * 8)::int],
       seen - random() * interval '700 days', seen
  from (select i, now() - power(random(), 2) * interval '400 days' as seen from generate_series(1, $2::int) i) s
"""
ACCOUNTS = f"""
insert into fan_platform_accounts (id, user_id, fan_profile_id, platform, platform_fan_id, display_name, first_seen_at,
                                   last_seen_at)
select {account_uuid_sql("i")}, $1, {fan_uuid_sql("i")}, case when i % 5 = 0 then 'fansly' else 'onlyfans' end,
       i::text, 'fan ' || i, now() - interval '700 days', now()
  from generate_series(1, $2::int) i
"""
# $3 transactions. The fan: a skewed draw (power 3: low draws are common), spread by 7919 (coprime to N
# unless N is a multiple of 7919).
TRANSACTIONS = f"""
insert into fan_transactions (id, user_id, fan_profile_id, fan_platform_account_id, platform, kind, status, amount,
                              occurred_at)
select ('00000000-0002-4000-8000-' || lpad(to_hex(t), 12, '0'))::uuid, $1, {fan_uuid_sql("f")},
       {account_uuid_sql("f")}, 'onlyfans',
       (array['subscription', 'subscription', 'ppv', 'ppv', 'tip', 'tip', 'paid_message', 'bundle', 'custom_request',
              'other'])[1 + floor(random() * 10)::int],
       case when random() < 0.97 then 'completed' when random() < 0.5 then 'refunded' else 'pending' end,
       round((1 + random() * random() * 120)::numeric, 2),
       now() - random() * interval '730 days'
  from (select t, 1 + (floor(power(random(), 3) * $2::int)::bigint * 7919) % $2::int as f
          from generate_series(1, $3::int) t) pick
"""
# 70 % of fans hold a subscription; its status and tier by draw.
SUBSCRIPTIONS = f"""
insert into fan_subscriptions (user_id, fan_profile_id, fan_platform_account_id, platform, tier, status, price,
                               auto_renew, started_at, renews_at)
select $1, {fan_uuid_sql("i")}, {account_uuid_sql("i")}, case when i % 5 = 0 then 'fansly' else 'onlyfans' end,
       (array['basic', 'basic', 'premium', 'vip'])[1 + floor(random() * 4)::int],
       (array['active', 'active', 'active', 'active', 'trial', 'paused', 'cancelled', 'expired'])[1 + i % 8],
       9.99, random() < 0.8, now() - (i % 400) * interval '1 day', now() + (i % 30) * interval '1 day'
  from generate_series(1, $2::int) i
 where i % 10 < 7
"""
# One to three events per subscribed fan: a subscribe, then rebills 30 days apart; a cancellation for
# the cancelled and expired ones.
SUBSCRIPTION_EVENTS = f"""
insert into fan_subscription_events (user_id, fan_platform_account_id, event_type, occurred_at, tier, amount)
select $1, {account_uuid_sql("i")},
       case when k = 1 then 'subscribe' when k = 3 and i % 8 in (6, 7) then 'cancellation' else 'rebill' end,
       now() - ((i % 97) + (3 - k) * 30) * interval '1 day' - (i % 86400) * interval '1 second', 'basic', 9.99
  from generate_series(1, $2::int) i, generate_series(1, 1 + i % 3) k
 where i % 10 < 7
"""
# About one message per fan: 70 % inbound.
MESSAGES = f"""
insert into fan_messages (user_id, fan_profile_id, fan_platform_account_id, direction, status, body, occurred_at)
select $1, {fan_uuid_sql("f")}, {account_uuid_sql("f")}, direction,
       case when direction = 'inbound' then 'received' else 'sent' end, 'hi', now() - random() * interval '180 days'
  from (select 1 + floor(random() * $2::int)::int as f,
               case when random() < 0.7 then 'inbound' else 'outbound' end as direction
          from generate_series(1, $2::int) m) pick
"""
TAGS = f"""
insert into fan_tag_values (user_id, fan_profile_id, tag, value)
select $1::uuid, {fan_uuid_sql("i")}, 'whale', null from generate_series(1, $2::int) i where i % 10 = 3
union all
select $1::uuid, {fan_uuid_sql("i")}, 'city', (array['london', 'paris', 'nyc'])[1 + i % 3]
  from generate_series(1, $2::int) i where i % 4 = 1
"""
GENERATE: list[tuple[str, str]] = [
    ("fan_profiles", PROFILES), ("fan_platform_accounts", ACCOUNTS), ("fan_transactions", TRANSACTIONS),
    ("fan_subscriptions", SUBSCRIPTIONS), ("fan_subscription_events", SUBSCRIPTION_EVENTS),
    ("fan_messages", MESSAGES), ("fan_tag_values", TAGS),
]  # fmt: skip

# The 1 % change: fans whose index is a multiple of 100, five kinds of change in turn (by (i / 100) % 5).
# As the sync would write them: a purchase (with the profile's last purchase), a lifecycle move, a
# tag added, a tag removed, a fresh sighting.
CHANGES: list[tuple[str, str]] = [
    ("purchase", f"""
insert into fan_transactions (user_id, fan_profile_id, fan_platform_account_id, platform, kind, status, amount,
                              occurred_at)
select $1, {fan_uuid_sql("i")}, {account_uuid_sql("i")}, 'onlyfans', 'tip', 'completed', 600, now()
  from generate_series(100, $2::int, 100) i where (i / 100) % 5 = 0
"""),
    ("purchase_profile", f"""
update fan_profiles set last_purchase_at = now(), lifetime_spend = lifetime_spend + 600
 where user_id = $1 and id = any(array(select {fan_uuid_sql("i")}
                                        from generate_series(100, $2::int, 100) i where (i / 100) % 5 = 0))
"""),
    ("lifecycle", f"""
update fan_profiles set lifecycle_stage = case lifecycle_stage when 'vip' then 'at_risk' else 'vip' end
 where user_id = $1 and id = any(array(select {fan_uuid_sql("i")}
                                        from generate_series(100, $2::int, 100) i where (i / 100) % 5 = 1))
"""),
    ("tag_added", f"""
insert into fan_tag_values (user_id, fan_profile_id, tag, value)
select $1, {fan_uuid_sql("i")}, 'city', 'london' from generate_series(100, $2::int, 100) i where (i / 100) % 5 = 2
on conflict (user_id, fan_profile_id, tag) do update set value = excluded.value
"""),
    ("tag_removed", f"""
delete from fan_tag_values
 where user_id = $1 and tag in ('whale', 'city')
   and fan_profile_id = any(array(select {fan_uuid_sql("i")}
                                   from generate_series(100, $2::int, 100) i where (i / 100) % 5 = 3))
"""),
    ("seen", f"""
update fan_profiles set last_seen_at = now()
 where user_id = $1 and id = any(array(select {fan_uuid_sql("i")}
                                        from generate_series(100, $2::int, 100) i where (i / 100) % 5 = 4))
"""),
]


# 20 segments a creator would build. "win_back_targets" refers to "lapsed" (created before it).
SEGMENTS: list[tuple[str, dict[str, Any]]] = [
    ("whales_90d", {"spend": {"op": "gte", "value": 500, "days": 90}}),
    ("big_tippers_30d", {"spend": {"op": "gte", "value": 150, "days": 30, "kinds": ["tip"]}}),
    ("frequent_buyers", {"spend": {"measure": "count", "op": "gte", "value": 8, "days": 90}}),
    ("new_subscribers_7d", {"subscription_event": {"types": ["subscribe"], "days": 7}}),
    ("cancelled_30d", {"subscription_event": {"types": ["cancellation"], "days": 30}}),
    ("lapsed", {"last_activity": {"not_within_days": 60}}),
    ("active_this_week", {"last_activity": {"within_days": 7}}),
    ("vip_stage", {"lifecycle": {"in": ["vip"]}}),
    ("at_risk_spenders", {"all": [{"lifecycle": {"in": ["at_risk"]}},
                                  {"spend": {"op": "gte", "value": 100, "days": 365}}]}),
    ("high_churn_risk", {"score": {"name": "churn_risk", "op": "gte", "value": 0.7}}),
    ("high_ltv", {"score": {"name": "predicted_ltv", "op": "gte", "value": 100}}),
    ("upsell_ready", {"all": [{"score": {"name": "upsell_readiness", "op": "gte", "value": 0.3}},
                              {"subscription": {"status": ["active"]}}]}),
    ("loyal", {"score": {"name": "loyalty", "op": "gte", "value": 0.5}}),
    ("premium_subscribers", {"subscription": {"status": ["active", "trial"], "tier": ["premium", "vip"]}}),
    ("fansly_fans", {"platform": {"in": ["fansly"]}}),
    ("london", {"tag": {"name": "city", "values": ["london"]}}),
    ("quiet_whales", {"all": [{"tag": {"name": "whale"}},
                              {"not": {"messages": {"direction": "inbound", "days": 30}}}]}),
    ("engaged", {"attribute": {"field": "engagement_score", "op": "gte", "value": 0.5}}),
    ("ppv_not_tippers", {"all": [{"spend": {"measure": "count", "op": "gte", "value": 1, "days": 180,
                                            "kinds": ["ppv"]}},
                                 {"not": {"spend": {"measure": "count", "op": "gte", "value": 1, "days": 180,
                                                    "kinds": ["tip"]}}}]}),
    ("win_back_targets", {"any": [{"all": [{"segment": {"id": "lapsed"}},
                                           {"spend": {"op": "gte", "value": 300}}]},
                                  {"lifecycle": {"in": ["churned", "win_back"]}}]}),
]  # fmt: skip
