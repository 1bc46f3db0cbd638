"""The rule language of `fan_segments.rules`: a tree of single-key JSON objects.

Groups: `{"all": [rule, ...]}` (every one; `[]` is true), `{"any": [rule, ...]}` (at least one; `[]`
is false), `{"not": rule}`. Conditions (docs/segments.md has each one's fields and SQL):
`attribute`, `lifecycle`, `last_activity`, `spend`, `messages`, `subscription`,
`subscription_event`, `tag`, `platform`, `score`, `segment`.

Everything is validated before it is stored or compiled: unknown kinds, fields and operators are
refused, and each error carries its path (`all[2].spend.days`) and the reason (`RuleErrors`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainSerializer,
    Tag,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from geniehelper.domain.fan_crm import LifecycleStage, SubscriptionEventType, TransactionKind

MAX_DEPTH = 12  # groups and conditions nested at most this deep
MAX_NODES = 500  # conditions and groups in one rule tree
MAX_LIST = 100  # items in any list (a group's rules, a condition's values)
MAX_DAYS = 36_500

Comparison = Literal["eq", "ne", "lt", "lte", "gt", "gte"]
SubscriptionStatus = Literal["trial", "active", "paused", "cancelled", "expired"]
ScoreName = Literal["churn_risk", "predicted_ltv", "upsell_readiness", "loyalty"]
NumberField = Literal["lifetime_spend", "message_count", "engagement_score"]
TextField = Literal["status", "currency", "display_name"]
TimeField = Literal["first_seen_at", "last_seen_at", "last_message_at", "last_purchase_at"]

NUMBER_FIELDS: tuple[str, ...] = NumberField.__args__  # type: ignore[attr-defined]
TEXT_FIELDS: tuple[str, ...] = TextField.__args__  # type: ignore[attr-defined]
TIME_FIELDS: tuple[str, ...] = TimeField.__args__  # type: ignore[attr-defined]

Days = Annotated[int, Field(ge=1, le=MAX_DAYS)]
Text = Annotated[str, Field(min_length=1, max_length=200)]
TextList = Annotated[list[Text], Field(min_length=1, max_length=MAX_LIST)]


def _json_number_only(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise ValueError("expected a number")
    return Decimal(str(value)) if isinstance(value, float) else Decimal(value)


def _as_json_number(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)


_NUMBER = (BeforeValidator(_json_number_only), PlainSerializer(_as_json_number, when_used="json"))
Amount = Annotated[Decimal, Field(ge=0, le=Decimal("1e12"), allow_inf_nan=False), *_NUMBER]
Number = Annotated[Decimal, Field(ge=Decimal("-1e12"), le=Decimal("1e12"), allow_inf_nan=False), *_NUMBER]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=True)


def _unique(values: list[Any] | None, what: str) -> None:
    if values is not None and len(set(values)) != len(values):
        raise ValueError(f"{what} lists a value twice")


# --- conditions ---------------------------------------------------------------------------------


class NumberAttribute(_Strict):
    field: NumberField
    op: Comparison
    value: Number


class TextAttribute(_Strict):
    field: TextField
    op: Literal["eq", "ne", "in", "not_in"]
    value: Text | TextList

    @model_validator(mode="after")
    def _value_fits_op(self) -> TextAttribute:
        wants_list = self.op in ("in", "not_in")
        if wants_list != isinstance(self.value, list):
            raise ValueError(f"op {self.op} takes {'a list of values' if wants_list else 'one value (a string)'}")
        if isinstance(self.value, list):
            _unique(self.value, "value")
        return self


class TimeAttribute(_Strict):
    field: TimeField
    op: Literal["within_days", "not_within_days"]
    value: Days


def _attribute_kind(raw: Any) -> str | None:
    field = raw.get("field") if isinstance(raw, dict) else getattr(raw, "field", None)
    for kind, fields in (("attr:number", NUMBER_FIELDS), ("attr:text", TEXT_FIELDS), ("attr:time", TIME_FIELDS)):
        if field in fields:
            return kind
    return None


AttributeBody = Annotated[
    (
        Annotated[NumberAttribute, Tag("attr:number")]
        | Annotated[TextAttribute, Tag("attr:text")]
        | Annotated[TimeAttribute, Tag("attr:time")]
    ),
    Discriminator(_attribute_kind, custom_error_type="unknown_field", custom_error_message="unknown attribute field"),
]


class AttributeRule(_Strict):
    attribute: AttributeBody


class LifecycleBody(_Strict):
    in_: Annotated[list[LifecycleStage], Field(min_length=1, max_length=MAX_LIST)] = Field(alias="in")

    @model_validator(mode="after")
    def _distinct(self) -> LifecycleBody:
        _unique(self.in_, "in")
        return self


class LifecycleRule(_Strict):
    lifecycle: LifecycleBody


class LastActivityBody(_Strict):
    within_days: Days | None = None
    not_within_days: Days | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> LastActivityBody:
        if (self.within_days is None) == (self.not_within_days is None):
            raise ValueError("give exactly one of within_days and not_within_days")
        return self


class LastActivityRule(_Strict):
    last_activity: LastActivityBody


class SpendBody(_Strict):
    measure: Literal["sum", "count"] = "sum"
    days: Days | None = None  # None: all time
    kinds: Annotated[list[TransactionKind], Field(min_length=1, max_length=MAX_LIST)] | None = None  # None: every kind
    op: Comparison
    value: Amount

    @model_validator(mode="after")
    def _distinct(self) -> SpendBody:
        _unique(self.kinds, "kinds")
        return self


class SpendRule(_Strict):
    spend: SpendBody


class MessagesBody(_Strict):
    direction: Literal["inbound", "outbound", "any"] = "any"
    days: Days | None = None
    op: Comparison = "gte"
    value: Annotated[int, Field(ge=0, le=10**9)] = 1


class MessagesRule(_Strict):
    messages: MessagesBody


class SubscriptionBody(_Strict):
    status: Annotated[list[SubscriptionStatus], Field(min_length=1, max_length=MAX_LIST)] | None = None
    tier: TextList | None = None
    platform: TextList | None = None

    @model_validator(mode="after")
    def _distinct(self) -> SubscriptionBody:
        for name in ("status", "tier", "platform"):
            _unique(getattr(self, name), name)
        return self


class SubscriptionRule(_Strict):
    subscription: SubscriptionBody


class SubscriptionEventBody(_Strict):
    types: Annotated[list[SubscriptionEventType], Field(min_length=1, max_length=MAX_LIST)]
    days: Days | None = None

    @model_validator(mode="after")
    def _distinct(self) -> SubscriptionEventBody:
        _unique(self.types, "types")
        return self


class SubscriptionEventRule(_Strict):
    subscription_event: SubscriptionEventBody


class TagBody(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=100)]
    values: TextList | None = None  # None: the tag with any value (or none)

    @model_validator(mode="after")
    def _distinct(self) -> TagBody:
        _unique(self.values, "values")
        return self


class TagRule(_Strict):
    tag: TagBody


class PlatformBody(_Strict):
    in_: TextList = Field(alias="in")

    @model_validator(mode="after")
    def _distinct(self) -> PlatformBody:
        _unique(self.in_, "in")
        return self


class PlatformRule(_Strict):
    platform: PlatformBody


class ScoreBody(_Strict):
    name: ScoreName
    op: Comparison
    value: Number


class ScoreRule(_Strict):
    score: ScoreBody


class SegmentBody(_Strict):
    id: UUID


class SegmentRule(_Strict):
    segment: SegmentBody


# --- groups -------------------------------------------------------------------------------------


class AllRule(_Strict):
    all: Annotated[list[Rule], Field(max_length=MAX_LIST)]


class AnyRule(_Strict):
    any: Annotated[list[Rule], Field(max_length=MAX_LIST)]


class NotRule(_Strict):
    not_: Rule = Field(alias="not")


KINDS: dict[str, type[_Strict]] = {
    "all": AllRule, "any": AnyRule, "not": NotRule, "attribute": AttributeRule, "lifecycle": LifecycleRule,
    "last_activity": LastActivityRule, "spend": SpendRule, "messages": MessagesRule,
    "subscription": SubscriptionRule, "subscription_event": SubscriptionEventRule, "tag": TagRule,
    "platform": PlatformRule, "score": ScoreRule, "segment": SegmentRule,
}  # fmt: skip
_KIND_OF_CLASS = {cls: kind for kind, cls in KINDS.items()}


def _rule_kind(raw: Any) -> str | None:
    if isinstance(raw, dict):
        return next(iter(raw)) if len(raw) == 1 and next(iter(raw)) in KINDS else None
    return _KIND_OF_CLASS.get(type(raw))


Rule = Annotated[
    (
        Annotated[AllRule, Tag("all")]
        | Annotated[AnyRule, Tag("any")]
        | Annotated[NotRule, Tag("not")]
        | Annotated[AttributeRule, Tag("attribute")]
        | Annotated[LifecycleRule, Tag("lifecycle")]
        | Annotated[LastActivityRule, Tag("last_activity")]
        | Annotated[SpendRule, Tag("spend")]
        | Annotated[MessagesRule, Tag("messages")]
        | Annotated[SubscriptionRule, Tag("subscription")]
        | Annotated[SubscriptionEventRule, Tag("subscription_event")]
        | Annotated[TagRule, Tag("tag")]
        | Annotated[PlatformRule, Tag("platform")]
        | Annotated[ScoreRule, Tag("score")]
        | Annotated[SegmentRule, Tag("segment")]
    ),
    Discriminator(_rule_kind, custom_error_type="rule_kind", custom_error_message="not a rule"),
]

for _group in (AllRule, AnyRule, NotRule):
    _group.model_rebuild()

_ADAPTER: TypeAdapter[Rule] = TypeAdapter(Rule)


# --- validation ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleError:
    path: str  # e.g. all[2].spend.days ("" for the whole rule)
    reason: str

    def __str__(self) -> str:
        return f"{self.path or '(rules)'}: {self.reason}"

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


class RuleErrors(ValueError):
    """Rules refused, with every error's path and reason."""

    def __init__(self, errors: list[RuleError]) -> None:
        self.errors = errors
        super().__init__("invalid segment rules: " + "; ".join(str(e) for e in errors))

    def as_list(self) -> list[dict[str, str]]:
        return [e.as_dict() for e in self.errors]


def path_text(parts: tuple[str | int, ...]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _clean_location(loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
    """pydantic's location without the union tags it adds (`all.all.0` → `all.0`, `attr:number`)."""
    out: list[str | int] = []
    for part in loc:
        if isinstance(part, str) and part.startswith("attr:"):
            continue
        if out and part == out[-1] and isinstance(part, str) and part in KINDS:
            continue
        out.append("not" if part == "not_" else "in" if part == "in_" else part)
    return tuple(out)


def _reason(err: Any) -> str:
    kind, given = err["type"], err.get("input")
    if kind == "rule_kind":
        if not isinstance(given, dict):
            return f"a rule is an object with one key (one of {', '.join(KINDS)}), not {type(given).__name__}"
        if len(given) == 1:
            return f"unknown rule kind {next(iter(given))!r}; known kinds: {', '.join(KINDS)}"
        keys = ", ".join(map(repr, given)) or "none"
        return f"a rule is an object with exactly one key (one of {', '.join(KINDS)}); it has {keys}"
    if kind == "unknown_field":
        field = given.get("field") if isinstance(given, dict) else None
        known = ", ".join((*NUMBER_FIELDS, *TEXT_FIELDS, *TIME_FIELDS))
        return f"unknown attribute field {field!r}; known fields: {known}" if field else f"no field given ({known})"
    if kind == "extra_forbidden":
        return "unknown field"
    message: str = err["msg"]
    return message.removeprefix("Value error, ")


def parse_rules(raw: Any) -> Rule:
    """The rule tree in `raw` (a dict as stored in jsonb), or RuleErrors listing every problem.

    Validated as the JSON it is stored as (strictly: a number is a JSON number, an id a string)."""
    try:
        rule = _ADAPTER.validate_json(json.dumps(raw))
    except ValidationError as exc:
        errors = [RuleError(path_text(_clean_location(tuple(e["loc"]))), _reason(e)) for e in exc.errors()]
        raise RuleErrors(errors) from None
    _check_size(rule)
    return rule


def parse_rules_json(text: str | bytes) -> Rule:
    """As parse_rules, from JSON text (a file given to `segments preview`)."""
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise RuleErrors([RuleError("", f"not JSON: {exc}")]) from None
    return parse_rules(raw)


def dump_rules(rule: Rule) -> dict[str, Any]:
    """The rule as it is stored: JSON types, the language's key names, defaults left out."""
    dumped: dict[str, Any] = _ADAPTER.dump_python(rule, mode="json", by_alias=True, exclude_none=True)
    return dumped


def children(rule: Rule) -> list[tuple[tuple[str | int, ...], Rule]]:
    """A rule's direct sub-rules with their path steps."""
    if isinstance(rule, AllRule):
        return [(("all", i), r) for i, r in enumerate(rule.all)]
    if isinstance(rule, AnyRule):
        return [(("any", i), r) for i, r in enumerate(rule.any)]
    if isinstance(rule, NotRule):
        return [(("not",), rule.not_)]
    return []


def walk(rule: Rule, path: tuple[str | int, ...] = ()) -> Iterator[tuple[tuple[str | int, ...], int, Rule]]:
    """Every rule in the tree, depth first: (path, depth, rule)."""
    stack: list[tuple[tuple[str | int, ...], int, Rule]] = [(path, 1, rule)]
    while stack:
        at, depth, node = stack.pop()
        yield at, depth, node
        stack.extend((at + step, depth + 1, child) for step, child in reversed(children(node)))


def _check_size(rule: Rule) -> None:
    count = 0
    for path, depth, _ in walk(rule):
        count += 1
        if depth > MAX_DEPTH:
            raise RuleErrors([RuleError(path_text(path), f"nested deeper than {MAX_DEPTH} levels")])
        if count > MAX_NODES:
            raise RuleErrors([RuleError("", f"more than {MAX_NODES} rules in one tree")])


def referenced_segments(rule: Rule) -> list[tuple[str, UUID]]:
    """The segments a rule refers to, with the path of each reference."""
    return [(path_text((*path, "segment", "id")), node.segment.id) for path, _, node in walk(rule)
            if isinstance(node, SegmentRule)]  # fmt: skip
