"""Rules compiled to one parameterised SQL query (docs/segments.md shows what each rule becomes).

The SQL text is built only from this module's constants: identifiers come from fixed whitelists
(the rule model admits only their names), and every value a rule carries travels as a `$n`
parameter with an explicit cast. A rule referring to another segment is compiled with that
segment's rules inlined, so the query reads the live data, never another segment's stored
membership; a reference back to a segment already being compiled is refused (a cycle).

Every condition is a boolean that is never NULL (a missing value satisfies no comparison), so `not`
selects exactly the fans its rule does not.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from uuid import UUID

from geniehelper.segments import rules as r

# Fans a segment can hold: every profile of the creator except merged ones (a merged profile is the
# same person as its survivor, who is the one counted).
BASE = "select f.id from fan_profiles f where f.user_id = $1 and f.status <> 'merged'"

COMPARISONS: dict[str, str] = {"eq": "=", "ne": "<>", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}
_PYTHON_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq, "ne": operator.ne, "lt": operator.lt, "lte": operator.le, "gt": operator.gt, "gte": operator.ge,
}  # fmt: skip

# Column whitelists: rule names to SQL, nothing else ever reaches the text.
PROFILE_COLUMNS: dict[str, str] = {
    "lifetime_spend": "f.lifetime_spend", "message_count": "f.message_count",
    "engagement_score": "f.engagement_score", "status": "f.status", "currency": "f.currency",
    "display_name": "f.display_name", "first_seen_at": "f.first_seen_at", "last_seen_at": "f.last_seen_at",
    "last_message_at": "f.last_message_at", "last_purchase_at": "f.last_purchase_at",
}  # fmt: skip
SCORE_COLUMNS: dict[str, str] = {
    "churn_risk": "sc.churn_risk", "predicted_ltv": "sc.predicted_ltv",
    "upsell_readiness": "sc.upsell_readiness", "loyalty": "sc.loyalty",
}  # fmt: skip
LAST_ACTIVITY = "greatest(f.last_seen_at, f.last_message_at, f.last_purchase_at)"
# Messages that count: every inbound one (received), outbound ones once sent.
MESSAGE_DIRECTIONS: dict[str, str] = {
    "inbound": "m.direction = 'inbound'",
    "outbound": "m.direction = 'outbound' and m.status in ('sent', 'delivered')",
    "any": "(m.direction = 'inbound' or m.status in ('sent', 'delivered'))",
}
MEASURES: dict[str, str] = {"sum": "sum(t.amount)", "count": "count(*)"}


class Params:
    """The query's parameters: `$1` is always the creator; each `add` is the next `$n`."""

    def __init__(self, user_id: UUID) -> None:
        self.values: list[Any] = [user_id]
        self.casts: list[str] = ["uuid"]

    def add(self, value: Any, cast: str) -> str:
        self.values.append(value)
        self.casts.append(cast)
        return f"${len(self.values)}::{cast}"


# Where a grouped pass (spend, messages) may be narrowed to some fans: a marker the full query drops
# and `CompiledRule.restricted_sql` replaces (an incremental refresh: only the changed fans' rows).
_NARROW = "/*narrow:{alias}*/"


@dataclass(frozen=True)
class Edge:
    """A time-window edge of a rule: `column >= now() - days` for the rows of `table` (`sql`: selects
    the fan ids whose `column` lies between `{lo}` and `{hi}`, each less the day count `days`)."""

    sql: str
    days: str  # the rule's `$n::int` parameter


@dataclass
class CompiledRule:
    """`sql` selects the matching fans' ids (`id`) with `params` (`$1` the creator).

    `sources`: the input tables the rule reads (fan_segment_input_changes.source); `edges`: its time
    windows, so an incremental refresh can find the fans that time alone moved across one."""

    predicate: str
    params: list[Any]
    segments: list[UUID] = field(default_factory=list)  # segments whose rules were inlined
    sources: set[str] = field(default_factory=set)
    edges: list[Edge] = field(default_factory=list)
    casts: list[str] = field(default_factory=list)  # each parameter's type, `$1` first

    def typed_params(self) -> str:
        """Every parameter named once with its type: for a statement that uses only some of them
        (PostgreSQL must know the type of each)."""
        return ", ".join(f"${i}::{cast}" for i, cast in enumerate(self.casts, start=1))

    @property
    def sql(self) -> str:
        return _strip_narrow(f"{BASE}\n   and {self.predicate}")

    def restricted_sql(self, fans: str) -> str:
        """The query over the fans of `fans` (a `$n::uuid[]` placeholder) only, every grouped pass
        narrowed to their rows (so an all-time spend rule reads 13,000 fans' rows, not 10,000,000)."""
        predicate = re.sub(r"/\*narrow:(\w+)\*/", lambda m: f" and {m.group(1)}.fan_profile_id = any({fans})",
                           self.predicate)  # fmt: skip
        return f"{BASE}\n   and f.id = any({fans})\n   and {predicate}"


def _strip_narrow(sql: str) -> str:
    return re.sub(r"/\*narrow:\w+\*/", "", sql)


def _within(days_param: str, column: str) -> str:
    return f"{column} >= now() - make_interval(days => {days_param})"


def _aggregate_condition(grouped: str, aggregate: str, op: str, value: Any, p: Params) -> str:
    """Fans whose `aggregate` over their rows of `grouped` compares to `value`; a fan with no rows
    has an aggregate of 0. Either way a semi- or anti-join on one grouped pass, never a subquery per fan."""
    bound = p.add(value, "numeric")
    zero_matches = _PYTHON_COMPARISONS[op](Decimal(0), Decimal(value))
    if zero_matches:  # the fans without rows match too: exclude those whose aggregate fails the test
        having = f"not ({aggregate} {COMPARISONS[op]} {bound})"
        keyword = "not exists"
    else:
        having = f"{aggregate} {COMPARISONS[op]} {bound}"
        keyword = "exists"
    return (f"{keyword} (select from ({grouped}\n group by 1 having {having}) agg"
            f" where agg.fan_profile_id = f.id)")  # fmt: skip


class Compiler:
    """Compiles a rule tree; `segments` holds the rules of every segment it may refer to."""

    def __init__(
        self, user_id: UUID, segments: Mapping[UUID, r.Rule | r.RuleErrors], *, own_id: UUID | None = None
    ) -> None:
        self.params = Params(user_id)
        self.segments = segments
        self.inlined: list[UUID] = []
        self.sources: set[str] = {"profile"}  # every rule reads the profiles (which fans, merged or not)
        self.edges: list[Edge] = []
        self._stack: list[UUID] = [own_id] if own_id is not None else []

    def compile(self, rule: r.Rule) -> CompiledRule:
        predicate = self._node(rule, ())
        return CompiledRule(predicate, self.params.values, self.inlined, self.sources, self.edges, self.params.casts)

    def _edge(self, table_sql: str, column: str, days: str) -> None:
        """Note a `column >= now() - days` test: the fans whose `column` is in [lo - days, hi - days]."""
        window = f"{column} between {{lo}} - make_interval(days => {days}) and {{hi}} - make_interval(days => {days})"
        self.edges.append(Edge(f"{table_sql} and {window}", days))

    def _profile_edge(self, column: str, days: str) -> None:
        self._edge("select f.id as fan_profile_id from fan_profiles f where f.user_id = $1", column, days)

    def _node(self, rule: r.Rule, path: tuple[str | int, ...]) -> str:
        p = self.params
        if isinstance(rule, r.AllRule):
            parts = [self._node(child, (*path, "all", i)) for i, child in enumerate(rule.all)]
            return "(" + "\n and ".join(parts) + ")" if parts else "true"
        if isinstance(rule, r.AnyRule):
            parts = [self._node(child, (*path, "any", i)) for i, child in enumerate(rule.any)]
            return "(" + "\n or ".join(parts) + ")" if parts else "false"
        if isinstance(rule, r.NotRule):
            return f"not ({self._node(rule.not_, (*path, 'not'))})"
        if isinstance(rule, r.AttributeRule):
            return self._attribute(rule.attribute)
        if isinstance(rule, r.LifecycleRule):
            return f"f.lifecycle_stage = any({p.add(list(rule.lifecycle.in_), 'text[]')})"
        if isinstance(rule, r.LastActivityRule):
            body = rule.last_activity
            days = p.add(body.within_days if body.within_days is not None else body.not_within_days, "int")
            self._profile_edge(LAST_ACTIVITY, days)
            test = f"coalesce({_within(days, LAST_ACTIVITY)}, false)"
            return test if body.within_days is not None else f"not {test}"
        if isinstance(rule, r.SpendRule):
            return self._spend(rule.spend)
        if isinstance(rule, r.MessagesRule):
            return self._messages(rule.messages)
        if isinstance(rule, r.SubscriptionRule):
            sub = rule.subscription
            self.sources.add("subscription")
            where = ["s.user_id = f.user_id", "s.fan_profile_id = f.id"]
            for name, values in (("status", sub.status), ("tier", sub.tier), ("platform", sub.platform)):
                if values is not None:
                    where.append(f"s.{name} = any({p.add(list(values), 'text[]')})")
            return "exists (select from fan_subscriptions s where " + " and ".join(where) + ")"
        if isinstance(rule, r.SubscriptionEventRule):
            ev = rule.subscription_event
            self.sources |= {"subscription_event", "account"}
            where = ["e.user_id = a.user_id", "e.fan_platform_account_id = a.id",
                     f"e.event_type = any({p.add(list(ev.types), 'text[]')})"]  # fmt: skip
            if ev.days is not None:
                days = p.add(ev.days, "int")
                where.append(_within(days, "e.occurred_at"))
                self._edge("select a.fan_profile_id from fan_subscription_events e join fan_platform_accounts a"
                           " on a.user_id = e.user_id and a.id = e.fan_platform_account_id where e.user_id = $1",
                           "e.occurred_at", days)  # fmt: skip
            return ("exists (select from fan_platform_accounts a join fan_subscription_events e on "
                    + " and ".join(where) + " where a.user_id = f.user_id and a.fan_profile_id = f.id)")  # fmt: skip
        if isinstance(rule, r.TagRule):
            self.sources.add("tag")
            where = ["tv.user_id = f.user_id", "tv.fan_profile_id = f.id", f"tv.tag = {p.add(rule.tag.name, 'text')}"]
            if rule.tag.values is not None:
                where.append(f"tv.value = any({p.add(list(rule.tag.values), 'text[]')})")
            return "exists (select from fan_tag_values tv where " + " and ".join(where) + ")"
        if isinstance(rule, r.PlatformRule):
            self.sources.add("account")
            return ("exists (select from fan_platform_accounts pa where pa.user_id = f.user_id"
                    f" and pa.fan_profile_id = f.id and pa.platform = any({p.add(list(rule.platform.in_), 'text[]')}))")
        if isinstance(rule, r.ScoreRule):
            self.sources.add("score")
            column = SCORE_COLUMNS[rule.score.name]
            bound = p.add(rule.score.value, "numeric")
            return ("exists (select from fan_scores sc where sc.user_id = f.user_id and sc.fan_profile_id = f.id"
                    f" and {column} {COMPARISONS[rule.score.op]} {bound})")
        if isinstance(rule, r.SegmentRule):
            return self._segment(rule.segment.id, path)
        raise AssertionError(f"no SQL for rule {type(rule).__name__}")  # the model admits nothing else

    def _attribute(self, body: r.NumberAttribute | r.TextAttribute | r.TimeAttribute) -> str:
        p, column = self.params, PROFILE_COLUMNS[body.field]
        if isinstance(body, r.NumberAttribute):
            return f"coalesce({column} {COMPARISONS[body.op]} {p.add(body.value, 'numeric')}, false)"
        if isinstance(body, r.TimeAttribute):
            days = p.add(body.value, "int")
            self._profile_edge(column, days)
            test = f"coalesce({_within(days, column)}, false)"
            return test if body.op == "within_days" else f"not {test}"
        if body.op in ("in", "not_in"):
            test = f"coalesce({column} = any({p.add(list(body.value), 'text[]')}), false)"
            return test if body.op == "in" else f"not {test}"
        op = "=" if body.op == "eq" else "<>"
        return f"coalesce({column} {op} {p.add(body.value, 'text')}, false)"

    def _spend(self, body: r.SpendBody) -> str:
        p = self.params
        self.sources.add("transaction")
        where = ["t.user_id = $1", "t.status = 'completed'"]
        if body.days is not None:
            days = p.add(body.days, "int")
            where.append(_within(days, "t.occurred_at"))
            self._edge("select t.fan_profile_id from fan_transactions t where t.user_id = $1"
                       " and t.status = 'completed'", "t.occurred_at", days)  # fmt: skip
        if body.kinds is not None:
            where.append(f"t.kind = any({p.add(list(body.kinds), 'text[]')})")
        grouped = "select t.fan_profile_id from fan_transactions t where " + " and ".join(where)
        grouped += _NARROW.format(alias="t")
        return _aggregate_condition(grouped, MEASURES[body.measure], body.op, body.value, p)

    def _messages(self, body: r.MessagesBody) -> str:
        p = self.params
        self.sources.add("message")
        where = ["m.user_id = $1", MESSAGE_DIRECTIONS[body.direction]]
        if body.days is not None:
            days = p.add(body.days, "int")
            where.append(_within(days, "coalesce(m.occurred_at, m.created_at)"))
            self._edge("select m.fan_profile_id from fan_messages m where m.user_id = $1",
                       "coalesce(m.occurred_at, m.created_at)", days)
        grouped = "select m.fan_profile_id from fan_messages m where " + " and ".join(where)
        grouped += _NARROW.format(alias="m")
        return _aggregate_condition(grouped, "count(*)", body.op, body.value, p)

    def _segment(self, segment_id: UUID, path: tuple[str | int, ...]) -> str:
        at = r.path_text((*path, "segment", "id"))
        if segment_id in self._stack:
            cycle = " -> ".join(str(s) for s in [*self._stack[self._stack.index(segment_id):], segment_id])
            raise r.RuleErrors([r.RuleError(at, f"segment {segment_id} refers back to itself (cycle: {cycle})")])
        rule = self.segments.get(segment_id)
        if rule is None:
            raise r.RuleErrors([r.RuleError(at, f"segment {segment_id} does not exist")])
        if isinstance(rule, r.RuleErrors):
            raise r.RuleErrors([r.RuleError(at, f"segment {segment_id} has invalid rules: {e}") for e in rule.errors])
        self._stack.append(segment_id)
        try:
            inner = self._node(rule, ())
        except r.RuleErrors as exc:  # an error inside the referenced segment: say where it was reached from
            raise r.RuleErrors([r.RuleError(at, f"in segment {segment_id}: {e}") for e in exc.errors]) from None
        finally:
            self._stack.pop()
        if segment_id not in self.inlined:
            self.inlined.append(segment_id)
        return f"({inner})"


def compile_rule(
    rule: r.Rule, user_id: UUID, segments: Mapping[UUID, r.Rule | r.RuleErrors] | None = None,
    *, own_id: UUID | None = None,
) -> CompiledRule:  # fmt: skip
    """`rule` as one query for `user_id`'s fans; `segments`: the rules of the segments it refers to
    (directly or through them); `own_id`: the segment being compiled, so a reference to it is a cycle."""
    return Compiler(user_id, segments or {}, own_id=own_id).compile(rule)
