"""Incremental refresh: re-evaluate only the fans whose result can have changed since the last evaluation.

Those fans (docs/segments.md, "Incremental refresh") are the union of
- the fans fan_segment_input_changes logged (migration 0030's triggers) for a table the rule reads, by
  a transaction the last evaluation may not have seen (xact_id at or above its snapshot xmin), and
- per time-relative condition of the compiled rule (`column >= now() - N days`), the fans whose
  timestamp lies between the last evaluation's now() and this one's, each less N: time alone moved
  them across the window's edge.

Any other fan's every input is as the last evaluation read it, and so is its result. The changed set
and the snapshot xmin recorded for the next refresh come from one statement (`CHANGED`), so a
transaction that commits after it is either seen by it or at or above that xmin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from geniehelper.segments.compiler import CompiledRule

# Above this many changed fans, the share of the creator's fans is checked against
# INCREMENTAL_MAX_SHARE (counting fans costs more than re-evaluating a thousand).
INCREMENTAL_SMALL = 1000
# Beyond this share of the creator's fans changed, one full pass is cheaper than per-fan lookups.
INCREMENTAL_MAX_SHARE = 0.10

# The creator's fans, counted up to $2 only: `worth_it` needs to know whether there are at least
# changed / INCREMENTAL_MAX_SHARE of them, not how many (6,000 changed fans count 60,000 profiles, not
# all 1,000,000).
COUNT_FANS_UP_TO = """
select count(*)::int from (select from fan_profiles where user_id = $1 and status <> 'merged' limit $2) f
"""

# Change-log entries below the oldest snapshot xmin an active segment's next refresh will read are
# never needed again. A paused or archived segment evaluated before that forgets its xmin instead
# (its next refresh is a full one), so it does not hold the log back.
FORGET_INACTIVE = """
update fan_segments set evaluated_snapshot_xmin = null
 where user_id = $1 and status <> 'active'
   and evaluated_snapshot_xmin < (select min(evaluated_snapshot_xmin) from fan_segments
                                   where user_id = $1 and status = 'active')
"""
PRUNE = """
delete from fan_segment_input_changes c
 where c.user_id = $1
   and c.xact_id < (select min(evaluated_snapshot_xmin) from fan_segments where user_id = $1)
"""


@dataclass(frozen=True)
class Changed:
    fans: list[UUID]
    snapshot_xmin: int  # pg_snapshot_xmin of the statement that found them (xid8 as an integer)


def changed_statement(compiled: CompiledRule, since_xmin: int, since: Any) -> tuple[str, list[Any]]:
    """The fans the log or a window edge names, and the snapshot's xmin, in one statement."""
    params = [*compiled.params, str(since_xmin), sorted(compiled.sources), since]
    xmin, sources, last = (f"${len(params) - 2}::text::xid8", f"${len(params) - 1}::text[]",
                           f"${len(params)}::timestamptz")  # fmt: skip
    lo, hi = f"least({last}, now())", f"greatest({last}, now())"
    parts = [f"""select c.fan_profile_id from fan_segment_input_changes c
  where c.user_id = $1 and c.xact_id >= {xmin} and c.source = any({sources})"""]
    parts += [edge.sql.format(lo=lo, hi=hi) for edge in compiled.edges]
    sql = (
        f"with typed as (select {compiled.typed_params()}, {last})  -- unread: types every parameter\n"
        "select coalesce(array_agg(distinct x.fan_profile_id), '{}')::uuid[] as fans,"
        " pg_snapshot_xmin(pg_current_snapshot())::text::bigint as snapshot_xmin\n  from (\n"
        + "\nunion all\n".join(parts)
        + "\n) x"
    )
    return sql, params


async def changed_fans(conn: Any, compiled: CompiledRule, since_xmin: int, since: Any) -> Changed:
    sql, params = changed_statement(compiled, since_xmin, since)
    row = await conn.fetchrow(sql, *params)
    return Changed(list(row["fans"]), int(row["snapshot_xmin"]))


async def worth_it(conn: Any, user_id: UUID, changed: int) -> bool:
    """Whether `changed` fans are few enough for an incremental refresh to beat a full one."""
    if changed <= INCREMENTAL_SMALL:
        return True
    # changed <= share * fans holds exactly when fans >= changed / share: counting stops there.
    enough = math.ceil(changed / INCREMENTAL_MAX_SHARE)
    fans: int = await conn.fetchval(COUNT_FANS_UP_TO, user_id, enough)
    return changed <= INCREMENTAL_MAX_SHARE * fans


def membership_difference(
    wanted_sql: str, seg: str, version: str, *, among: str | None = None, announce: str = "true"
) -> str:
    """The CTEs of a refresh by difference, shared by the full and the incremental refresh: `wanted`
    (the fans the rule selects), `gone` (members no longer wanted, only those in `among` when given),
    `joined` (wanted fans not yet members) and their segment_join / segment_leave events (docs/events.md)
    when `announce` (SQL) holds. `seg`, `version`, `among`: SQL parameter references."""
    scope = f"\n       and m.fan_profile_id = any({among})" if among else ""
    return f"""with wanted as materialized (
{wanted_sql}
), gone as (
    delete from fan_segment_members m
     where m.user_id = $1 and m.fan_segment_id = {seg}{scope}
       and not exists (select from wanted w where w.id = m.fan_profile_id)
    returning m.fan_profile_id
), joined as (
    insert into fan_segment_members (user_id, fan_segment_id, fan_profile_id)
    select $1, {seg}, w.id from wanted w
     where not exists (select from fan_segment_members m
                        where m.user_id = $1 and m.fan_segment_id = {seg} and m.fan_profile_id = w.id)
    returning fan_profile_id
), outbox as (
    insert into domain_events (user_id, event_type, fan_profile_id, source_key, occurred_at, payload)
    select $1, c.event_type, c.fan_profile_id,
           'fan_segment_members:' || {seg} || ':' || c.fan_profile_id || ':' || pg_current_xact_id(), now(),
           jsonb_build_object('segment_id', {seg}, 'rules_version', {version})
      from (select 'segment_join' as event_type, fan_profile_id from joined
            union all
            select 'segment_leave', fan_profile_id from gone) c
     where {announce}
)"""


def incremental_statement(
    compiled: CompiledRule, segment_id: UUID, rules_version: int, fans: list[UUID], snapshot_xmin: int
) -> tuple[str, list[Any]]:
    """The refresh by difference over the changed fans only: those of them the rule selects now
    against those of them who are members."""
    params = [*compiled.params, segment_id, rules_version, fans, str(snapshot_xmin)]
    n = len(params)
    seg, version, changed, xmin = f"${n - 3}::uuid", f"${n - 2}::int", f"${n - 1}::uuid[]", f"${n}::text::xid8"
    sql = f"""
{membership_difference(compiled.restricted_sql(changed), seg, version, among=changed)}
update fan_segments s
   -- the stored count moved by the difference; a membership leaves otherwise only with its fan's
   -- profile (a cascade), and a deleted profile is logged, so when a changed fan has no profile left
   -- the members before this statement are counted instead
   set member_count = case when (select count(*) from fan_profiles f where f.user_id = $1 and f.id = any({changed}))
                                = cardinality({changed})
                           then s.member_count
                           else (select count(*) from fan_segment_members m
                                  where m.user_id = $1 and m.fan_segment_id = {seg}) end
                      + (select count(*) from joined) - (select count(*) from gone),
       last_evaluated_at = now(), evaluated_rules_version = {version}, evaluation_claimed_at = null,
       evaluation_error = null, evaluated_snapshot_xmin = {xmin}
 where s.user_id = $1 and s.id = {seg}
returning (select count(*) from joined)::int as joined, (select count(*) from gone)::int as left_count,
          s.member_count
"""
    return sql, params


async def prune(conn: Any, user_id: UUID) -> None:
    """Drop the change-log entries no segment of the creator will read again."""
    await conn.execute(FORGET_INACTIVE, user_id)
    await conn.execute(PRUNE, user_id)
