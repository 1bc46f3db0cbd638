"""The segment rule language: validation errors with path and reason, and each condition selecting
exactly the expected fans of a hand-built cast (real PostgreSQL, the creator's own transaction)."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from geniehelper.db import Database, connect_owner
from geniehelper.segments import evaluation
from geniehelper.segments.compiler import compile_rule
from geniehelper.segments.rules import RuleErrors, dump_rules, parse_rules
from tests.conftest import make_creator
from tests.segment_fans import Fans, build_cast


@pytest.fixture(scope="module")
async def cast(db: Database, owner_url: str) -> AsyncIterator[tuple[Fans, Fans]]:
    """The cast for one creator, and the same cast for another creator (whose fans must never show)."""
    owner = await connect_owner(owner_url)
    try:
        ours, theirs = await make_creator(owner), await make_creator(owner)
    finally:
        await owner.close()
    yield await build_cast(db, ours), await build_cast(db, theirs)


async def selected(db: Database, fans: Fans, rules: Any) -> set[str]:
    async with db.creator_tx(fans.user_id) as conn:
        found = await evaluation.preview(conn, fans.user_id, rules, sample=1000)
    assert found.count == len(found.sample)
    return fans.names(f["id"] for f in found.sample)


def spend(op: str, value: float, **extra: Any) -> dict[str, Any]:
    return {"spend": {"op": op, "value": value, **extra}}


def attr(field: str, op: str, value: Any) -> dict[str, Any]:
    return {"attribute": {"field": field, "op": op, "value": value}}


EVERYONE = {"alice", "bob", "cara", "dan"}  # eve is merged into alice: never selected

CASES: list[tuple[str, Any, set[str]]] = [
    ("all of nothing is everyone", {"all": []}, EVERYONE),
    ("any of nothing is no one", {"any": []}, set()),
    ("lifecycle in", {"lifecycle": {"in": ["vip", "at_risk"]}}, {"alice", "cara"}),
    ("number gte", attr("lifetime_spend", "gte", 40), {"alice", "bob"}),
    ("number lt", attr("lifetime_spend", "lt", 40), {"cara", "dan"}),
    ("number eq", attr("lifetime_spend", "eq", 500), {"alice"}),
    ("number ne", attr("lifetime_spend", "ne", 40), {"alice", "cara", "dan"}),
    ("number gt", attr("lifetime_spend", "gt", 40), {"alice"}),
    ("number lte", attr("lifetime_spend", "lte", 40), {"bob", "cara", "dan"}),
    ("a missing number satisfies no comparison", attr("engagement_score", "lt", 0.5), {"bob"}),
    ("not is the exact complement", {"not": attr("engagement_score", "gt", 0.5)}, {"bob", "cara", "dan"}),
    ("text eq", attr("status", "eq", "active"), EVERYONE),
    ("text ne", attr("display_name", "ne", "bob"), {"alice", "cara", "dan"}),
    ("text in", attr("display_name", "in", ["alice", "dan", "nobody"]), {"alice", "dan"}),
    ("text not_in", attr("display_name", "not_in", ["alice"]), {"bob", "cara", "dan"}),
    ("time within_days", attr("last_seen_at", "within_days", 30), {"alice", "bob"}),
    ("time not_within_days includes never", attr("last_seen_at", "not_within_days", 30), {"cara", "dan"}),
    ("first seen within", attr("first_seen_at", "within_days", 100), {"bob"}),
    ("last activity within", {"last_activity": {"within_days": 7}}, {"alice"}),
    ("last activity not within includes never", {"last_activity": {"not_within_days": 100}}, {"cara", "dan"}),
    ("spend sum over a window", spend("gte", 100, days=30), {"alice"}),
    ("refunded spend does not count", spend("gte", 10, days=30), {"alice", "bob"}),
    ("spend gt", spend("gt", 10, days=30), {"alice"}),
    ("spend count all time", spend("gte", 4, measure="count"), {"alice"}),
    ("spend lt includes fans who spent nothing", spend("lt", 20, days=30), {"bob", "cara", "dan"}),
    ("spend eq 0", spend("eq", 0), {"cara", "dan"}),
    ("spend ne 0", spend("ne", 0), {"alice", "bob"}),
    ("spend by kind", spend("gte", 1, kinds=["ppv"]), {"alice"}),
    ("spend by kind in a window", spend("gte", 1, kinds=["ppv"], days=30), set()),
    ("spend by kinds", spend("gte", 60, kinds=["tip", "ppv"]), {"alice"}),
    ("inbound message recency", {"messages": {"direction": "inbound", "days": 7}}, {"alice"}),
    ("any message: sent counts, drafts do not", {"messages": {"days": 7}}, {"alice", "bob"}),
    ("outbound messages ever", {"messages": {"direction": "outbound"}}, {"bob"}),
    ("no inbound message ever", {"messages": {"direction": "inbound", "op": "eq", "value": 0}}, {"bob", "dan"}),
    ("messages in 90 days", {"messages": {"days": 90, "op": "gte", "value": 1}}, {"alice", "bob", "cara"}),
    ("subscription status", {"subscription": {"status": ["active", "trial"]}}, {"alice"}),
    ("subscription tier", {"subscription": {"tier": ["silver", "platinum"]}}, {"bob"}),
    ("subscription platform", {"subscription": {"platform": ["fansly"]}}, {"bob"}),
    ("any subscription", {"subscription": {}}, {"alice", "bob", "cara"}),
    ("no subscription", {"not": {"subscription": {}}}, {"dan"}),
    ("cancelled in 30 days", {"subscription_event": {"types": ["cancellation"], "days": 30}}, {"bob"}),
    ("subscribed in 60 days", {"subscription_event": {"types": ["subscribe"], "days": 60}}, {"bob"}),
    ("subscribed ever", {"subscription_event": {"types": ["subscribe", "win_back"]}}, {"alice", "bob"}),
    ("tag", {"tag": {"name": "whale"}}, {"alice"}),
    ("tag with a value", {"tag": {"name": "city", "values": ["Berlin"]}}, {"bob"}),
    ("tag with any value", {"tag": {"name": "city"}}, {"bob", "cara"}),
    ("platform", {"platform": {"in": ["fansly"]}}, {"bob", "dan"}),
    ("platform, a fan on two", {"platform": {"in": ["onlyfans"]}}, {"alice", "cara", "dan"}),
    ("score threshold", {"score": {"name": "churn_risk", "op": "gte", "value": 0.5}}, {"bob"}),
    ("unscored fans match no score test", {"score": {"name": "churn_risk", "op": "lt", "value": 0.5}}, {"alice"}),
    ("not a score test", {"not": {"score": {"name": "churn_risk", "op": "gte", "value": 0.5}}},
     {"alice", "cara", "dan"}),
    ("ltv", {"score": {"name": "predicted_ltv", "op": "gt", "value": 100}}, {"alice"}),
    ("loyalty", {"score": {"name": "loyalty", "op": "gte", "value": 0.5}}, {"alice"}),
    (
        "nested groups",
        {"all": [{"lifecycle": {"in": ["vip", "active"]}},
                 {"any": [{"tag": {"name": "whale"}}, spend("gte", 10, days=7, kinds=["tip"])]}]},
        {"alice", "bob"},
    ),
    ("all with not", {"all": [{"platform": {"in": ["onlyfans"]}}, {"not": {"tag": {"name": "city"}}}]},
     {"alice", "dan"}),
    ("double negation", {"not": {"not": {"tag": {"name": "city"}}}}, {"bob", "cara"}),
]  # fmt: skip


@pytest.mark.parametrize(("rules", "expected"), [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
async def test_each_condition_selects_exactly_the_expected_fans(
    db: Database, cast: tuple[Fans, Fans], rules: Any, expected: set[str]
) -> None:
    ours, theirs = cast
    assert await selected(db, ours, rules) == expected
    # The other creator has the same cast: their evaluation selects their own fans, never ours.
    assert await selected(db, theirs, rules) == expected
    async with db.creator_tx(ours.user_id) as conn:
        found = await evaluation.preview(conn, ours.user_id, rules, sample=1000)
    assert {uuid.UUID(f["id"]) for f in found.sample} <= set(ours.ids.values())


async def test_preview_counts_everything_and_samples_a_few(db: Database, cast: tuple[Fans, Fans]) -> None:
    ours, _ = cast
    async with db.creator_tx(ours.user_id) as conn:
        two = await evaluation.preview(conn, ours.user_id, {"all": []}, sample=2)
        none = await evaluation.preview(conn, ours.user_id, {"all": []}, sample=0)
        nobody = await evaluation.preview(conn, ours.user_id, {"any": []}, sample=5)
    assert (two.count, len(two.sample), none.count, none.sample) == (4, 2, 4, [])
    assert (nobody.count, nobody.sample) == (0, [])
    assert {"id", "display_name", "lifecycle_stage"} == set(two.sample[0])


ERRORS: list[tuple[str, Any, list[tuple[str, str]]]] = [
    ("empty object", {}, [("", "exactly one key")]),
    ("not an object", ["all"], [("", "not list")]),
    ("unknown kind", {"all": [{"lifecycle": {"in": ["vip"]}}, {"wealth": {}}]},
     [("all[1]", "unknown rule kind 'wealth'")]),
    ("two kinds in one object", {"any": [{"tag": {"name": "a"}, "platform": {"in": ["x"]}}]},
     [("any[0]", "exactly one key")]),
    ("unknown field", {"spend": {"op": "gte", "value": 5, "window": 30}}, [("spend.window", "unknown field")]),
    ("unknown operator", {"spend": {"op": ">=", "value": 5}}, [("spend.op", "'eq', 'ne', 'lt', 'lte', 'gt' or 'gte'")]),
    ("unknown attribute field", attr("password", "eq", "x"), [("attribute", "unknown attribute field 'password'")]),
    ("operator not for the field's type", attr("lifetime_spend", "in", 1), [("attribute.op", "Input should be")]),
    ("text op needs a list", attr("status", "in", "active"), [("attribute", "takes a list of values")]),
    ("a number given as text", spend("gte", "5"), [("spend.value", "expected a number")]),  # type: ignore[arg-type]
    ("days out of range", {"not": spend("gte", 5, days=0)}, [("not.spend.days", "greater than or equal to 1")]),
    ("unknown lifecycle stage", {"lifecycle": {"in": ["vip", "gold"]}}, [("lifecycle.in[1]", "'new', 'active'")]),
    ("unknown transaction kind", spend("gte", 1, kinds=["gift"]), [("spend.kinds[0]", "'subscription', 'ppv'")]),
    ("repeated value", {"tag": {"name": "x", "values": ["a", "a"]}}, [("tag", "lists a value twice")]),
    ("both recency bounds", {"last_activity": {"within_days": 3, "not_within_days": 9}},
     [("last_activity", "exactly one")]),
    ("unknown score", {"score": {"name": "iq", "op": "gt", "value": 1}}, [("score.name", "'churn_risk'")]),
    ("bad segment id", {"segment": {"id": "seven"}}, [("segment.id", "valid UUID")]),
    ("too deep", {"not": {"not": {"not": {"not": {"not": {"not": {"not": {"not": {"not": {"not": {"not": {"not": {
        "all": []}}}}}}}}}}}}}, [("not.not.not.not.not.not.not.not.not.not.not.not", "deeper than 12")]),
    (
        "every error at once",
        {"all": [{"spend": {"op": "gte"}}, {"tag": {}}, {"messages": {"direction": "sideways"}}]},
        [("all[0].spend.value", "Field required"), ("all[1].tag.name", "Field required"),
         ("all[2].messages.direction", "'inbound', 'outbound' or 'any'")],
    ),
]  # fmt: skip


@pytest.mark.parametrize(("rules", "expected"), [(c[1], c[2]) for c in ERRORS], ids=[c[0] for c in ERRORS])
def test_invalid_rules_are_refused_with_each_errors_path_and_reason(
    rules: Any, expected: list[tuple[str, str]]
) -> None:
    with pytest.raises(RuleErrors) as refused:
        parse_rules(rules)
    errors = refused.value.errors
    assert [e.path for e in errors] == [path for path, _ in expected], errors
    for error, (_, reason) in zip(errors, expected, strict=True):
        assert reason in error.reason, error


def test_rules_round_trip_as_stored_and_numbers_stay_numbers() -> None:
    rules = {"all": [spend("gte", 50.5, days=30, kinds=["tip"]), {"not": {"lifecycle": {"in": ["churned"]}}},
                     {"score": {"name": "churn_risk", "op": "lt", "value": 0.25}}]}  # fmt: skip
    stored = dump_rules(parse_rules(rules))
    assert stored == {"all": [
        {"spend": {"measure": "sum", "days": 30, "kinds": ["tip"], "op": "gte", "value": 50.5}},
        {"not": {"lifecycle": {"in": ["churned"]}}},
        {"score": {"name": "churn_risk", "op": "lt", "value": 0.25}},
    ]}  # fmt: skip
    assert dump_rules(parse_rules(stored)) == stored


def test_no_value_from_a_rule_reaches_the_sql_text() -> None:
    hostile = "x'); drop table fan_profiles; --"
    rule = parse_rules({"any": [{"tag": {"name": hostile, "values": [hostile]}}, attr("display_name", "eq", hostile),
                                {"platform": {"in": [hostile]}}, {"subscription": {"tier": [hostile]}}]})  # fmt: skip
    compiled = compile_rule(rule, uuid.uuid4())
    assert hostile not in compiled.sql and "drop" not in compiled.sql
    assert compiled.params.count(hostile) == 2 and [hostile] in compiled.params
    used = {int(n) for n in re.findall(r"\$(\d+)", compiled.sql)}
    assert used == set(range(1, len(compiled.params) + 1))  # each value once, as a parameter


async def test_hostile_text_is_only_ever_a_value(db: Database, cast: tuple[Fans, Fans]) -> None:
    ours, _ = cast
    hostile = "x'); delete from fan_profiles; --"
    assert await selected(db, ours, {"any": [{"tag": {"name": hostile}}, attr("display_name", "eq", hostile)]}) == set()
    assert await selected(db, ours, {"all": []}) == EVERYONE
