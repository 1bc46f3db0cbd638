"""The naive baseline of `bench segments`: fetch the fans' rows and evaluate the rules in Python.

It reads every table a rule can look at for a range of fans (profiles, transactions, subscriptions,
subscription events, messages, tags, scores, platform accounts) into per-fan lists, then walks each
segment's rule tree for every fan, with the same meaning as the compiler's SQL (docs/segments.md).
Written for the benchmark only; it checks itself against the compiled SQL's membership.
"""

from __future__ import annotations

import operator
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

from geniehelper.segments import rules as r

OPS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq, "ne": operator.ne, "lt": operator.lt, "lte": operator.le, "gt": operator.gt, "gte": operator.ge,
}  # fmt: skip


@dataclass
class Fan:
    profile: dict[str, Any]
    transactions: list[tuple[str, Decimal, datetime]] = field(default_factory=list)  # completed only
    subscriptions: list[tuple[str, str | None, str]] = field(default_factory=list)  # status, tier, platform
    events: list[tuple[str, datetime]] = field(default_factory=list)
    messages: list[tuple[str, str, datetime]] = field(default_factory=list)  # direction, status, at
    tags: dict[str, str | None] = field(default_factory=dict)
    scores: dict[str, Any] | None = None
    platforms: set[str] = field(default_factory=set)


FETCHES: dict[str, str] = {
    "profiles": """select id, status, lifecycle_stage, engagement_score, lifetime_spend, message_count, currency,
                          display_name, first_seen_at, last_seen_at, last_message_at, last_purchase_at
                     from fan_profiles where user_id = $1 and id between $2 and $3 and status <> 'merged'""",
    "transactions": """select fan_profile_id, kind, amount, occurred_at from fan_transactions
                        where user_id = $1 and fan_profile_id between $2 and $3 and status = 'completed'""",
    "subscriptions": """select fan_profile_id, status, tier, platform from fan_subscriptions
                         where user_id = $1 and fan_profile_id between $2 and $3""",
    "events": """select a.fan_profile_id, e.event_type, e.occurred_at
                   from fan_platform_accounts a join fan_subscription_events e
                     on e.user_id = a.user_id and e.fan_platform_account_id = a.id
                  where a.user_id = $1 and a.fan_profile_id between $2 and $3""",
    "messages": """select fan_profile_id, direction, status, coalesce(occurred_at, created_at) as at from fan_messages
                    where user_id = $1 and fan_profile_id between $2 and $3""",
    "tags": """select fan_profile_id, tag, value from fan_tag_values
                where user_id = $1 and fan_profile_id between $2 and $3""",
    "scores": """select fan_profile_id, churn_risk, predicted_ltv, upsell_readiness, loyalty from fan_scores
                  where user_id = $1 and fan_profile_id between $2 and $3""",
    "platforms": """select fan_profile_id, platform from fan_platform_accounts
                     where user_id = $1 and fan_profile_id between $2 and $3""",
}


async def fetch_fans(conn: Any, user_id: UUID, first: UUID, last: UUID) -> dict[UUID, Fan]:
    """Every row a rule may read, for the creator's fans with ids in [first, last]."""
    fans = {row["id"]: Fan(dict(row)) for row in await conn.fetch(FETCHES["profiles"], user_id, first, last)}
    sink: dict[UUID, Fan] = defaultdict(lambda: Fan({}))  # rows of fans not selected (merged) land here
    for row in await conn.fetch(FETCHES["transactions"], user_id, first, last):
        fans.get(row[0], sink[row[0]]).transactions.append((row[1], row[2], row[3]))
    for row in await conn.fetch(FETCHES["subscriptions"], user_id, first, last):
        fans.get(row[0], sink[row[0]]).subscriptions.append((row[1], row[2], row[3]))
    for row in await conn.fetch(FETCHES["events"], user_id, first, last):
        fans.get(row[0], sink[row[0]]).events.append((row[1], row[2]))
    for row in await conn.fetch(FETCHES["messages"], user_id, first, last):
        fans.get(row[0], sink[row[0]]).messages.append((row[1], row[2], row[3]))
    for row in await conn.fetch(FETCHES["tags"], user_id, first, last):
        fans.get(row[0], sink[row[0]]).tags[row[1]] = row[2]
    for row in await conn.fetch(FETCHES["scores"], user_id, first, last):
        fans.get(row[0], sink[row[0]]).scores = dict(row)
    for row in await conn.fetch(FETCHES["platforms"], user_id, first, last):
        fans.get(row[0], sink[row[0]]).platforms.add(row[1])
    return fans


class PythonEvaluator:
    def __init__(self, now: datetime, segments: dict[UUID, r.Rule]) -> None:
        self.now = now
        self.segments = segments

    def _within(self, at: datetime | None, days: int) -> bool:
        return at is not None and at >= self.now - timedelta(days=days)

    def matches(self, rule: r.Rule, fan: Fan) -> bool:
        if isinstance(rule, r.AllRule):
            return all(self.matches(child, fan) for child in rule.all)
        if isinstance(rule, r.AnyRule):
            return any(self.matches(child, fan) for child in rule.any)
        if isinstance(rule, r.NotRule):
            return not self.matches(rule.not_, fan)
        p = fan.profile
        if isinstance(rule, r.LifecycleRule):
            return p["lifecycle_stage"] in rule.lifecycle.in_
        if isinstance(rule, r.LastActivityRule):
            times = [t for t in (p["last_seen_at"], p["last_message_at"], p["last_purchase_at"]) if t is not None]
            body = rule.last_activity
            if body.within_days is not None:
                return bool(times) and self._within(max(times), body.within_days)
            assert body.not_within_days is not None
            return not (bool(times) and self._within(max(times), body.not_within_days))
        if isinstance(rule, r.SpendRule):
            s = rule.spend
            rows = [(k, a) for k, a, at in fan.transactions
                    if (s.days is None or self._within(at, s.days)) and (s.kinds is None or k in s.kinds)]  # fmt: skip
            measure = sum((a for _, a in rows), Decimal(0)) if s.measure == "sum" else Decimal(len(rows))
            return OPS[s.op](measure, Decimal(s.value))
        if isinstance(rule, r.MessagesRule):
            m = rule.messages
            count = sum(1 for d, st, at in fan.messages
                        if (m.direction in ("any", d)) and (d == "inbound" or st in ("sent", "delivered"))
                        and (m.days is None or self._within(at, m.days)))  # fmt: skip
            return OPS[m.op](Decimal(count), Decimal(m.value))
        if isinstance(rule, r.SubscriptionRule):
            sub = rule.subscription
            return any((sub.status is None or st in sub.status) and (sub.tier is None or tier in sub.tier)
                       and (sub.platform is None or pl in sub.platform)
                       for st, tier, pl in fan.subscriptions)  # fmt: skip
        if isinstance(rule, r.SubscriptionEventRule):
            ev = rule.subscription_event
            return any(t in ev.types and (ev.days is None or self._within(at, ev.days)) for t, at in fan.events)
        if isinstance(rule, r.TagRule):
            if rule.tag.name not in fan.tags:
                return False
            return rule.tag.values is None or fan.tags[rule.tag.name] in rule.tag.values
        if isinstance(rule, r.PlatformRule):
            return bool(fan.platforms & set(rule.platform.in_))
        if isinstance(rule, r.ScoreRule):
            value = fan.scores.get(rule.score.name) if fan.scores else None
            return value is not None and OPS[rule.score.op](value, Decimal(rule.score.value))
        if isinstance(rule, r.AttributeRule) and isinstance(rule.attribute, r.NumberAttribute):
            a = rule.attribute
            value = p[a.field]
            return value is not None and OPS[a.op](value, Decimal(a.value))
        if isinstance(rule, r.SegmentRule):
            return self.matches(self.segments[rule.segment.id], fan)
        raise NotImplementedError(f"the Python baseline does not evaluate {type(rule).__name__}")

    def members(self, rule: r.Rule, fans: dict[UUID, Fan]) -> set[UUID]:
        return {fan_id for fan_id, fan in fans.items() if self.matches(rule, fan)}
