"""Fan scores: transparent formulas over a creator's ledgers, computed for every fan in one statement
(or one statement per range of fan ids, `scoring_parts`, for a large creator).

docs/scoring.md writes the model down; the numbers here are the model. Features per fan (as of the
transaction's now()): recency (days since the last completed purchase, inbound message, subscription
renewal or sighting, capped at 365), purchases and spend in the last 30 and 90 days (completed
transactions only), inbound messages in the last 30 days, an active auto-renewing subscription, a
cancel signal (cancelled or expiring subscription, or a cancellation or expiration event in 90
days), tenure (days since first seen, capped at 730) and the months of the last 12 with a purchase.

- churn_risk = logistic(CHURN intercept + sum of coefficient * feature term)
- predicted_ltv = monthly spend (90-day spend / 3) * expected remaining months, where a fan who
  leaves each month with probability p = max(churn_risk, 0.02) stays (1 - p) / p more months on
  average (geometric), at most 24
- upsell_readiness = logistic(UPSELL intercept + sum of coefficient * feature term)
- loyalty = 0.5 * tenure / 730 + 0.5 * purchase months / 12
- engagement (fan_profiles.engagement_score) = 0.4 * e^(-recency / 30) + 0.3 * min(1, ln(1 + inbound
  messages in 30 days) / ln(11)) + 0.3 * min(1, ln(1 + purchases in 30 days) / ln(6))

Each score row keeps `model_version` and an `explanation`: the features, every term's
contribution, and the three largest contributions (by size) of each logistic score, stored as one
flat array of numbers (`EXPLANATION` names the positions, `explain` gives the names back). A fan
whose values are what is stored is not rewritten. Scoring 1,000,000 fans is `bench segments`' figure.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any
from uuid import UUID

MODEL_VERSION = "rfm-logistic-v2"  # v2: engagement_score added (churn, LTV, upsell, loyalty as v1)

# Logistic churn model: z = intercept + sum of coefficient * term. Terms: recency = days / 30;
# frequency = ln(1 + purchases in 90 days); messages = ln(1 + inbound messages in 30 days);
# active_subscription and cancel_signal are 0 or 1.
CHURN: dict[str, float] = {
    "intercept": -1.0, "recency": 0.9, "frequency": -0.6, "messages": -0.5, "active_subscription": -1.2,
    "cancel_signal": 1.5,
}  # fmt: skip
# Upsell readiness: recent_purchases = ln(1 + purchases in 30 days); messages as above;
# recency = days / 30.
UPSELL: dict[str, float] = {
    "intercept": -2.0, "recent_purchases": 0.8, "messages": 0.5, "active_subscription": 0.6, "cancel_signal": -1.0,
    "recency": -0.5,
}  # fmt: skip
# Engagement: weight of each part; a part is full (1) at `*_full` (messages, purchases in 30 days) or,
# for recency, decays as e^(-days / recency_days).
ENGAGEMENT: dict[str, float] = {
    "recency": 0.4, "messages": 0.3, "purchases": 0.3, "recency_days": 30.0, "messages_full": 10.0,
    "purchases_full": 5.0,
}  # fmt: skip
SCORE_WORK_MEM = "64MB"
LTV_MIN_CHURN = 0.02  # the monthly leaving probability never assumed lower
LTV_MAX_MONTHS = 24.0
RECENCY_CAP_DAYS = 365.0
TENURE_CAP_DAYS = 730.0

_PARAMS: list[tuple[str, float]] = [
    *((f"churn_{k}", v) for k, v in CHURN.items()),
    *((f"upsell_{k}", v) for k, v in UPSELL.items()),
    *((f"engagement_{k}", v) for k, v in ENGAGEMENT.items()),
    ("ltv_min_churn", LTV_MIN_CHURN), ("ltv_max_months", LTV_MAX_MONTHS),
    ("recency_cap", RECENCY_CAP_DAYS), ("tenure_cap", TENURE_CAP_DAYS),
]  # fmt: skip
_P = {name: f"${i}::float8" for i, (name, _) in enumerate(_PARAMS, start=3)}  # $1 creator, $2 model version
# Then the part's fans: ids from _LO (inclusive) up to _HI (exclusive; null: no upper bound).
_LO, _HI = f"${len(_PARAMS) + 3}::uuid", f"${len(_PARAMS) + 4}::uuid"


def _in_part(column: str) -> str:
    return f"{column} >= {_LO} and ({column} < {_HI} or {_HI} is null)"


# The logistic terms of each score, by name (the explanation's keys) and column; listed in name order,
# which is how ties of size are broken (as `order by abs(c) desc, k` would).
CHURN_TERMS = sorted(["recency", "frequency", "messages", "active_subscription", "cancel_signal"])
UPSELL_TERMS = sorted(["recent_purchases", "messages", "active_subscription", "cancel_signal", "recency"])
TOP_TERMS = 3


def _ranks(score: str, terms: list[str]) -> str:
    """A column `<score>_<term>_rank` per term: how many terms are larger (by absolute contribution),
    or as large and earlier by name. Scalar comparisons, not a sorted subquery per fan."""
    cols = []
    for i, term in enumerate(terms):
        mine = f"abs(v.{score}_{term})"
        beaten = [f"(abs(v.{score}_{other}) {'>=' if j < i else '>'} {mine})::int"
                  for j, other in enumerate(terms) if j != i]  # fmt: skip
        cols.append(f"{' + '.join(beaten)} as {score}_{term}_rank")
    return ",\n           ".join(cols)


def _top_positions(score: str, terms: list[str]) -> list[str]:
    """The TOP_TERMS largest terms, largest first, each as its position in `terms` (0-based)."""
    return [f"case {' '.join(f'when v.{score}_{t}_rank = {rank} then {i}' for i, t in enumerate(terms))} end"
            for rank in range(TOP_TERMS)]  # fmt: skip


def _r(expr: str, places: int) -> str:
    """Rounded as a float (round of float8 is several times cheaper than a numeric round per value)."""
    return f"round(({expr}) * {10**places}) / {10**places}"


# The explanation's compact form (docs/scoring.md, "Explanation"): {"layout": EXPLANATION_LAYOUT,
# "values": [...]}, one number per entry below, in this order; `explain` turns it back into names.
# A flat float array costs a fifth of a nested jsonb object per fan (bench/README.md, "segments").
EXPLANATION_LAYOUT = "compact-v1"
EXPLANATION: list[tuple[str, str, str]] = [
    ("features", "recency_days", _r("v.recency_days", 1)), ("features", "purchases_90d", "v.purchases_90d"),
    ("features", "spend_90d", _r("v.spend_90d", 2)), ("features", "purchases_30d", "v.purchases_30d"),
    ("features", "inbound_messages_30d", "v.messages_30d"),
    ("features", "active_subscription", "v.active_subscription"), ("features", "cancel_signal", "v.cancel_signal"),
    ("features", "tenure_days", _r("v.tenure_days", 1)), ("features", "purchase_months_12", "v.purchase_months_12"),
    ("churn_risk", "intercept", _P["churn_intercept"]),
    *(("churn_risk", t, _r(f"v.churn_{t}", 3)) for t in CHURN_TERMS),
    *(("churn_risk", f"top_{i}", sql) for i, sql in enumerate(_top_positions("churn", CHURN_TERMS))),
    ("upsell_readiness", "intercept", _P["upsell_intercept"]),
    *(("upsell_readiness", t, _r(f"v.upsell_{t}", 3)) for t in UPSELL_TERMS),
    *(("upsell_readiness", f"top_{i}", sql) for i, sql in enumerate(_top_positions("upsell", UPSELL_TERMS))),
    ("predicted_ltv", "monthly_spend", _r("v.monthly_spend", 2)),
    ("predicted_ltv", "expected_months", _r("v.expected_months", 2)),
    ("loyalty", "tenure", _r(f"0.5 * v.tenure_days / {_P['tenure_cap']}", 3)),
    ("loyalty", "purchase_months", _r("0.5 * v.purchase_months_12 / 12", 3)),
    ("engagement_score", "value", "v.engagement::float8"),
    ("engagement_score", "recency", _r("v.engagement_recency", 3)),
    ("engagement_score", "messages", _r("v.engagement_messages", 3)),
    ("engagement_score", "purchases", _r("v.engagement_purchases", 3)),
]  # fmt: skip
_EXPLANATION_SQL = (f"jsonb_build_object('layout', '{EXPLANATION_LAYOUT}', 'values', to_jsonb(array["
                    + ", ".join(sql for _, _, sql in EXPLANATION) + "]::float8[]))")  # fmt: skip
_TERMS = {"churn_risk": CHURN_TERMS, "upsell_readiness": UPSELL_TERMS}


def explain(explanation: dict[str, Any]) -> dict[str, Any]:
    """A stored explanation with its names: features, each logistic score's intercept, contributions
    and top three ([{feature, contribution}], largest first), the LTV, loyalty and engagement parts."""
    if explanation.get("layout") != EXPLANATION_LAYOUT:
        raise ValueError(f"explanation: unknown layout {explanation.get('layout')!r}")
    values = explanation["values"]
    if len(values) != len(EXPLANATION):
        raise ValueError(f"explanation: {len(values)} values, the layout has {len(EXPLANATION)}")
    out: dict[str, dict[str, Any]] = {}
    for (part, name, _), value in zip(EXPLANATION, values, strict=True):
        out.setdefault(part, {})[name] = value
    for score, terms in _TERMS.items():
        flat = out[score]
        contributions = {t: flat[t] for t in terms}
        top = [terms[int(flat[f"top_{i}"])] for i in range(TOP_TERMS)]
        out[score] = {"intercept": flat["intercept"], "contributions": contributions,
                      "top": [{"feature": t, "contribution": contributions[t]} for t in top]}  # fmt: skip
    return out


# Purchases, messages and renewals as the features count them.
# Each window's start, computed once per statement (an uncorrelated subquery: an init plan), not per
# row (subtracting days from a timestamptz converts it to local time and back).
_SINCE = {w: f"(select now() - interval '{w}')" for w in ("30 days", "90 days", "365 days")}
# The starts of the months from 12 back to the next one (14, ascending), in the session's time zone.
_MONTH_STARTS = (
    "(select array_agg(date_trunc('month', now()) + make_interval(months => k) order by k)"
    " from generate_series(-12, 1) k)"
)
_RENEWALS = "('subscribe', 'rebill', 'trial_start', 'trial_conversion', 'win_back')"

SCORE_FANS = f"""
with fans as (
    select f.id, coalesce(f.first_seen_at, f.created_at) as first_seen_at, f.last_seen_at,
           f.engagement_score as stored_engagement,
           f.lifetime_spend as stored_lifetime_spend, f.last_purchase_at as stored_last_purchase_at,
           f.message_count as stored_message_count, f.last_message_at as stored_last_message_at
      from fan_profiles f
     where f.user_id = $1 and f.status <> 'merged' and {_in_part("f.id")}
), tx as (
    select t.fan_profile_id,
           count(*) filter (where t.occurred_at >= {_SINCE["90 days"]}) as purchases_90d,
           coalesce(sum(t.amount) filter (where t.occurred_at >= {_SINCE["90 days"]}), 0) as spend_90d,
           count(*) filter (where t.occurred_at >= {_SINCE["30 days"]}) as purchases_30d,
           -- calendar months with a purchase: one bit per month back from this one (0..12), so the
           -- aggregate stays one hashed pass (a count(distinct) would sort every transaction); the
           -- month found by binary search among the month starts (bucket 1: 12 months back, 13: this
           -- month, 14: a later one, whose bit the bit(13) cast drops), no time-zone arithmetic per row
           bit_count(bit_or(1 << (width_bucket(t.occurred_at, {_MONTH_STARTS}) - 1))
                         filter (where t.occurred_at >= {_SINCE["365 days"]})::bit(13)) as purchase_months_12,
           max(t.occurred_at) as last_purchase_at,
           sum(t.amount) as lifetime_spend
      from fan_transactions t
     where t.user_id = $1 and t.status = 'completed' and {_in_part("t.fan_profile_id")}
     group by 1
), inbound as (  -- the messages that count for the profile's figures; the features read the inbound ones
    select m.fan_profile_id,
           count(*) filter (where m.direction = 'inbound'
                              and coalesce(m.occurred_at, m.created_at) >= {_SINCE["30 days"]}) as messages_30d,
           max(coalesce(m.occurred_at, m.created_at)) filter (where m.direction = 'inbound') as last_inbound_at,
           count(*)::int as message_count,
           max(coalesce(m.occurred_at, m.created_at)) as last_message_at
      from fan_messages m
     where m.user_id = $1 and (m.direction = 'inbound' or m.status in ('sent', 'delivered'))
       and {_in_part("m.fan_profile_id")}
     group by 1
), subs as (
    select s.fan_profile_id,
           bool_or(s.status in ('active', 'trial') and s.auto_renew) as active_subscription,
           bool_or(s.status in ('cancelled', 'expired') or (s.status in ('active', 'trial') and not s.auto_renew))
               as lapsing
      from fan_subscriptions s
     where s.user_id = $1 and {_in_part("s.fan_profile_id")}
     group by 1
), events as (
    select a.fan_profile_id,
           bool_or(e.event_type in ('cancellation', 'expiration') and e.occurred_at >= {_SINCE["90 days"]})
               as cancelled_90d,
           max(e.occurred_at) filter (where e.event_type in {_RENEWALS}) as last_renewal_at
      from fan_subscription_events e
      join fan_platform_accounts a on a.user_id = e.user_id and a.id = e.fan_platform_account_id
     where e.user_id = $1 and {_in_part("a.fan_profile_id")}
     group by 1
), features as materialized (  -- materialized: every term below reads these columns, not their expressions again
    select fans.id,
           least({_P["recency_cap"]}, greatest(0, date_part('epoch', now() - coalesce(
               greatest(tx.last_purchase_at, inbound.last_inbound_at, events.last_renewal_at, fans.last_seen_at),
               fans.first_seen_at)) / 86400))::float8 as recency_days,
           coalesce(tx.purchases_90d, 0)::float8 as purchases_90d,
           coalesce(tx.spend_90d, 0)::float8 as spend_90d,
           coalesce(tx.purchases_30d, 0)::float8 as purchases_30d,
           coalesce(inbound.messages_30d, 0)::float8 as messages_30d,
           coalesce(subs.active_subscription, false)::int::float8 as active_subscription,
           (coalesce(subs.lapsing, false) or coalesce(events.cancelled_90d, false))::int::float8 as cancel_signal,
           least({_P["tenure_cap"]}, greatest(0, date_part('epoch', now() - fans.first_seen_at) / 86400))::float8
               as tenure_days,
           least(12, coalesce(tx.purchase_months_12, 0))::float8 as purchase_months_12,
           fans.stored_engagement,
           (coalesce(tx.lifetime_spend, 0), tx.last_purchase_at, coalesce(inbound.message_count, 0),
            inbound.last_message_at) is distinct from (fans.stored_lifetime_spend, fans.stored_last_purchase_at,
                                                        fans.stored_message_count, fans.stored_last_message_at)
               as figures_changed,
           coalesce(tx.lifetime_spend, 0) as lifetime_spend, tx.last_purchase_at,
           coalesce(inbound.message_count, 0) as message_count, inbound.last_message_at
      from fans
      left join tx on tx.fan_profile_id = fans.id
      left join inbound on inbound.fan_profile_id = fans.id
      left join subs on subs.fan_profile_id = fans.id
      left join events on events.fan_profile_id = fans.id
), terms as (  -- each term's contribution (coefficient x term), a column each
    select ft.*,
           {_P["churn_recency"]} * ft.recency_days / 30 as churn_recency,
           {_P["churn_frequency"]} * ln(1 + ft.purchases_90d) as churn_frequency,
           {_P["churn_messages"]} * ln(1 + ft.messages_30d) as churn_messages,
           {_P["churn_active_subscription"]} * ft.active_subscription as churn_active_subscription,
           {_P["churn_cancel_signal"]} * ft.cancel_signal as churn_cancel_signal,
           {_P["upsell_recent_purchases"]} * ln(1 + ft.purchases_30d) as upsell_recent_purchases,
           {_P["upsell_messages"]} * ln(1 + ft.messages_30d) as upsell_messages,
           {_P["upsell_active_subscription"]} * ft.active_subscription as upsell_active_subscription,
           {_P["upsell_cancel_signal"]} * ft.cancel_signal as upsell_cancel_signal,
           {_P["upsell_recency"]} * ft.recency_days / 30 as upsell_recency
      from features ft
), scored as (
    select t.*,
           1 / (1 + exp(-({_P["churn_intercept"]}
                          + t.churn_recency + t.churn_frequency + t.churn_messages + t.churn_active_subscription
                          + t.churn_cancel_signal))) as churn,
           1 / (1 + exp(-({_P["upsell_intercept"]}
                          + t.upsell_recent_purchases + t.upsell_messages + t.upsell_active_subscription
                          + t.upsell_cancel_signal + t.upsell_recency))) as upsell,
           0.5 * t.tenure_days / {_P["tenure_cap"]} + 0.5 * t.purchase_months_12 / 12 as loyalty,
           {_P["engagement_recency"]} * exp(-t.recency_days / {_P["engagement_recency_days"]}) as engagement_recency,
           {_P["engagement_messages"]} * least(1, ln(1 + t.messages_30d) / ln(1 + {_P["engagement_messages_full"]}))
               as engagement_messages,
           {_P["engagement_purchases"]} * least(1, ln(1 + t.purchases_30d) / ln(1 + {_P["engagement_purchases_full"]}))
               as engagement_purchases
      from terms t
), valued as materialized (  -- computed once per fan: the explanation and the ranks read the stored columns
    select s.*,
           s.spend_90d / 3 as monthly_spend,
           least({_P["ltv_max_months"]}, (1 - greatest(s.churn, {_P["ltv_min_churn"]}))
                                          / greatest(s.churn, {_P["ltv_min_churn"]})) as expected_months,
           round(least(1, greatest(0, s.engagement_recency + s.engagement_messages + s.engagement_purchases))::numeric,
                 3) as engagement
      from scored s
), ranked as (  -- each logistic term's place by size (0 = largest), for the explanation's top three
    select v.*, v.stored_engagement is distinct from v.engagement as engagement_changed,
           {_ranks("churn", CHURN_TERMS)},
           {_ranks("upsell", UPSELL_TERMS)}
      from valued v
), profiled as (  -- engagement_score and the composite figures, one write per profile that changed
    update fan_profiles f
       set engagement_score = v.engagement, lifetime_spend = v.lifetime_spend, last_purchase_at = v.last_purchase_at,
           message_count = v.message_count, last_message_at = v.last_message_at
      from ranked v
     where f.user_id = $1 and f.id = v.id and (v.engagement_changed or v.figures_changed)
    returning v.engagement_changed, v.figures_changed
), upserted as (
    insert into fan_scores (user_id, fan_profile_id, churn_risk, predicted_ltv, upsell_readiness, loyalty,
                            model_version, explanation, computed_at)
    select $1, v.id, round(v.churn::numeric, 3), round((v.monthly_spend * v.expected_months)::numeric, 2),
           round(v.upsell::numeric, 3), round(v.loyalty::numeric, 3), $2,
           {_EXPLANATION_SQL},
           now()
      from ranked v
    on conflict (user_id, fan_profile_id) do update
       set churn_risk = excluded.churn_risk, predicted_ltv = excluded.predicted_ltv,
           upsell_readiness = excluded.upsell_readiness, loyalty = excluded.loyalty,
           model_version = excluded.model_version, explanation = excluded.explanation,
           computed_at = excluded.computed_at
     -- a fan whose scores and explanation are what is stored is not written (computed_at: when its
     -- values last changed; fan_scoring.last_scored_at: the run)
     where (fan_scores.churn_risk, fan_scores.predicted_ltv, fan_scores.upsell_readiness, fan_scores.loyalty,
            fan_scores.model_version, fan_scores.explanation)
           is distinct from (excluded.churn_risk, excluded.predicted_ltv, excluded.upsell_readiness, excluded.loyalty,
                             excluded.model_version, excluded.explanation)
    returning 1
)
select (select count(*) from ranked)::int as scored, (select count(*) from upserted)::int as written,
       (select count(*) filter (where engagement_changed) from profiled)::int as engagement_updated,
       (select count(*) filter (where figures_changed) from profiled)::int as profiles_updated
"""

# score_fans, as the creator: the run recorded, the claim cleared.
RECORD_RUN = """
insert into fan_scoring (user_id, last_scored_at, fans_scored, model_version, claimed_at)
values ($1, now(), $2, $3, null)
on conflict (user_id) do update
   set last_scored_at = excluded.last_scored_at, fans_scored = excluded.fans_scored,
       model_version = excluded.model_version, claimed_at = null
"""

# fan_scorer (system role): creators whose fans were never scored or scored more than $2 s ago, not
# claimed in the last $3 s; each claimed (a row made for a creator without one).
CLAIM_DUE = """
with due as (
    select c.id as user_id
      from creators c
      left join fan_scoring s on s.user_id = c.id
     where (s.last_scored_at is null or s.last_scored_at < now() - make_interval(secs => $2))
       and (s.claimed_at is null or s.claimed_at < now() - make_interval(secs => $3))
     order by s.last_scored_at nulls first, c.id
     limit $1
)
insert into fan_scoring (user_id, claimed_at)
select user_id, now() from due
on conflict (user_id) do update set claimed_at = excluded.claimed_at
returning user_id
"""


@dataclass(frozen=True)
class ScoreRun:
    scored: int
    profiles_updated: int  # composite figures (lifetime spend, messages, last purchase / message) changed
    engagement_updated: int  # engagement_score changed
    model_version: str
    duration_ms: int
    written: int = 0  # score rows inserted or changed (a fan whose values are as stored is not written)

    def as_dict(self) -> dict[str, Any]:
        return {"scored": self.scored, "written": self.written, "profiles_updated": self.profiles_updated,
                "engagement_updated": self.engagement_updated, "model_version": self.model_version,
                "duration_ms": self.duration_ms}  # fmt: skip


NIL = UUID(int=0)  # the lowest fan id: the first part's lower bound


def score_parameters(user_id: UUID, lo: UUID = NIL, hi: UUID | None = None) -> list[Any]:
    """SCORE_FANS' parameters for the fans with ids in [lo, hi) (hi None: no upper bound)."""
    return [user_id, MODEL_VERSION, *(value for _, value in _PARAMS), lo, hi]


async def score_part(conn: Any, user_id: UUID, lo: UUID = NIL, hi: UUID | None = None) -> ScoreRun:
    """Score the creator's fans with ids in [lo, hi) in the caller's creator transaction (one statement);
    the run is not recorded (`record_run`)."""
    started = time.monotonic()
    # For this transaction only: the per-fan aggregates hash their groups without spilling to disk.
    await conn.execute("select set_config('work_mem', $1, true)", SCORE_WORK_MEM)
    done = await conn.fetchrow(SCORE_FANS, *score_parameters(user_id, lo, hi))
    return ScoreRun(done["scored"], done["profiles_updated"], done["engagement_updated"], MODEL_VERSION,
                    round((time.monotonic() - started) * 1000), done["written"])  # fmt: skip


async def record_run(conn: Any, user_id: UUID, scored: int) -> None:
    await conn.execute(RECORD_RUN, user_id, scored, MODEL_VERSION)


async def score_fans(conn: Any, user_id: UUID) -> ScoreRun:
    """Score every fan of the creator and refresh their profiles' figures, in the caller's creator
    transaction: one set-based statement, whatever the number of fans (and the run noted in fan_scoring)."""
    started = time.monotonic()
    run = await score_part(conn, user_id)
    await record_run(conn, user_id, run.scored)
    return replace(run, duration_ms=round((time.monotonic() - started) * 1000))
