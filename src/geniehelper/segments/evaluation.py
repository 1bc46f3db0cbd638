"""Segments in the database: rules validated on write, membership refreshed by difference, previews.

Every function here runs in the caller's creator transaction (`db.creator_tx`, a job's
`ctx.creator_tx()`): row-level security shows it that creator's fans and segments only, and the
compiled query also names the creator (`$1`).

A refresh is one statement after the segment's row is locked: the compiled rule selects the fans
that should be members, members no longer selected are deleted, selected fans not yet members are
inserted, and `member_count`, `last_evaluated_at` and the evaluated rules version are written with
them. Members who stay are not written at all.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from geniehelper.segments import incremental
from geniehelper.segments.compiler import CompiledRule, compile_rule
from geniehelper.segments.rules import Rule, RuleError, RuleErrors, dump_rules, parse_rules, referenced_segments

MAX_REFERENCED = 100  # segments one rule may reach through references
# For a refresh's transaction only: the per-fan aggregate a spend rule tests (hundreds of thousands
# of fans at 1,000,000) is kept as a hashed set in memory; at the default 4MB the planner may instead
# re-run the aggregate per fan or spill it to disk.
REFRESH_WORK_MEM = "64MB"
SAMPLE_MAX = 1000

# Serializes rule writes of one creator (first key: this lock's namespace), so two writes at once
# cannot each pass the cycle check and together make a cycle.
RULES_LOCK_NAMESPACE = 0x534547  # "SEG"
LOCK_CREATOR_RULES = "select pg_advisory_xact_lock($1, hashtext($2::uuid::text))"

SEGMENT_COLUMNS = """id, user_id, name, description, status, rules, rules_version, member_count, last_evaluated_at,
       evaluated_rules_version, evaluation_error, evaluated_snapshot_xmin::text::bigint as evaluated_snapshot_xmin,
       evaluated_references"""
GET_SEGMENT = "select " + SEGMENT_COLUMNS + " from fan_segments where user_id = $1 and id = $2"
LOCK_SEGMENT = GET_SEGMENT + " for update"
LOAD_RULES = "select id, rules, rules_version from fan_segments where user_id = $1 and id = any($2::uuid[])"
INSERT_SEGMENT = (
    "insert into fan_segments (user_id, name, description, rules, status) values ($1, $2, $3, $4, $5) returning "
    + SEGMENT_COLUMNS
)
UPDATE_RULES = "update fan_segments set rules = $3 where user_id = $1 and id = $2 returning " + SEGMENT_COLUMNS
# Refused stored rules: the reason and the version refused. The claim stays, so segment_evaluator
# tries again only after SEGMENT_REQUEUE_AFTER_S, or at once when the rules change.
RECORD_REFUSAL = """
update fan_segments set evaluation_error = $3, evaluated_rules_version = $4
 where user_id = $1 and id = $2
"""

# The rules versions of the segments an evaluation inlined (under its row lock, in its transaction).
RECORD_REFERENCES = "update fan_segments set evaluated_references = $3 where user_id = $1 and id = $2"

# --- segment_evaluator (system role) --------------------------------------------------------------

# Due: an active segment whose rules changed since its last evaluation, never evaluated, evaluated
# more than $2 s ago, or whose inputs changed: a domain event of its creator (not a segment's own
# join/leave) written by a transaction its last evaluation may not have seen (xact_id at or above the
# xmin of the snapshot it read; migration 0026), one index probe per segment (domain_events_inputs_idx).
# Claimable: not claimed, claimed more than $3 s ago (its job lost, or its rules refused), or claimed
# before its rules last changed. The claim stamps
# evaluation_claimed_at (the one column the system role may write); the evaluation clears it.
CLAIM_DUE = """
with due as (
    select id from fan_segments
     where status = 'active'
       and (evaluated_rules_version is distinct from rules_version
            or last_evaluated_at is null
            or last_evaluated_at < now() - make_interval(secs => $2)
            or evaluated_snapshot_xmin is null
            or exists (select from domain_events d
                        where d.user_id = fan_segments.user_id
                          and d.event_type not in ('segment_join', 'segment_leave')
                          and d.xact_id >= fan_segments.evaluated_snapshot_xmin))
       and (evaluation_claimed_at is null
            or evaluation_claimed_at < now() - make_interval(secs => $3)
            or evaluation_claimed_at < rules_changed_at)
     order by (evaluated_rules_version is distinct from rules_version) desc, last_evaluated_at nulls first, id
     limit $1
     for update skip locked
)
update fan_segments s set evaluation_claimed_at = now()
 where s.id = any (array(select id from due))
returning s.id, s.user_id
"""


@dataclass(frozen=True)
class Segment:
    id: UUID
    user_id: UUID
    name: str
    description: str | None
    status: str
    rules: dict[str, Any]
    rules_version: int
    member_count: int
    last_evaluated_at: datetime | None
    evaluated_rules_version: int | None
    evaluation_error: str | None
    evaluated_snapshot_xmin: int | None  # the xmin of the snapshot the last evaluation read
    evaluated_references: dict[str, int] | None  # rules_version of each segment it inlined

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> Segment:
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Refresh:
    """What one refresh did: fans that joined and left, the count after it, the rules version evaluated."""

    segment_id: UUID
    joined: int
    left: int
    member_count: int
    rules_version: int
    duration_ms: int
    # "full" (every fan evaluated) or "incremental" (only `evaluated` changed fans); `why`: the reason
    # for a full one (first, rules_changed, references_changed, no_snapshot, too_many_changes)
    mode: str = "full"
    evaluated: int | None = None
    why: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "segment_id": str(self.segment_id), "joined": self.joined, "left": self.left,
            "member_count": self.member_count, "rules_version": self.rules_version, "duration_ms": self.duration_ms,
            "mode": self.mode, "evaluated": self.evaluated, "why": self.why,
        }  # fmt: skip


@dataclass(frozen=True)
class Preview:
    count: int
    sample: list[dict[str, Any]]  # id, display_name, lifecycle_stage of up to `sample` fans, by id


async def load_references(
    conn: Any, user_id: UUID, rule: Rule, versions: dict[UUID, int] | None = None
) -> dict[UUID, Rule | RuleErrors]:
    """The parsed rules of every segment `rule` reaches through references (one query per level).

    A segment missing here does not exist for this creator; stored rules that no longer validate are
    kept as their errors, for the compiler to report where they are referenced.
    """
    found: dict[UUID, Rule | RuleErrors] = {}
    wanted = {segment_id for _, segment_id in referenced_segments(rule)}
    while wanted:
        if len(found) + len(wanted) > MAX_REFERENCED:
            raise RuleErrors([RuleError("", f"the rules reach more than {MAX_REFERENCED} segments")])
        rows = await conn.fetch(LOAD_RULES, user_id, sorted(wanted))
        wanted = set()
        for row in rows:
            if versions is not None:  # read with the rules, from the same row version
                versions[row["id"]] = row["rules_version"]
            try:
                parsed = parse_rules(row["rules"])
            except RuleErrors as exc:
                found[row["id"]] = exc
                continue
            found[row["id"]] = parsed
            wanted |= {s for _, s in referenced_segments(parsed) if s not in found}
        wanted -= set(found)
    return found


async def compile_for(
    conn: Any, user_id: UUID, rule: Rule, *, own_id: UUID | None = None, versions: dict[UUID, int] | None = None
) -> CompiledRule:
    """`rule` compiled for `user_id` with the segments it refers to resolved; RuleErrors for a reference
    to a segment that does not exist (or is another creator's), is invalid, or leads back (a cycle).
    `versions`: filled with the rules version of each segment read."""
    return compile_rule(rule, user_id, await load_references(conn, user_id, rule, versions), own_id=own_id)


async def get_segment(conn: Any, user_id: UUID, segment_id: UUID) -> Segment | None:
    row = await conn.fetchrow(GET_SEGMENT, user_id, segment_id)
    return Segment.of(row) if row else None


async def create_segment(
    conn: Any, user_id: UUID, name: str, rules: Any, *, description: str | None = None, status: str = "active"
) -> Segment:
    """A new segment; its rules validated first (RuleErrors: nothing written). Due for evaluation at once."""
    rule = parse_rules(rules)
    await conn.execute(LOCK_CREATOR_RULES, RULES_LOCK_NAMESPACE, user_id)
    await compile_for(conn, user_id, rule)
    return Segment.of(await conn.fetchrow(INSERT_SEGMENT, user_id, name, description, dump_rules(rule), status))


async def update_rules(conn: Any, user_id: UUID, segment_id: UUID, rules: Any) -> Segment | None:
    """Replace a segment's rules after validating them, cycles included (RuleErrors: nothing written).
    A change bumps its rules version, which makes it due for evaluation at once. None: no such segment."""
    rule = parse_rules(rules)
    await conn.execute(LOCK_CREATOR_RULES, RULES_LOCK_NAMESPACE, user_id)
    await compile_for(conn, user_id, rule, own_id=segment_id)
    row = await conn.fetchrow(UPDATE_RULES, user_id, segment_id, dump_rules(rule))
    return Segment.of(row) if row else None


def refresh_statement(
    compiled: CompiledRule, segment_id: UUID, rules_version: int, *, announce: bool = True
) -> tuple[str, list[Any]]:
    """The one statement of a refresh by difference, and its parameters. `announce`: write a
    segment_join / segment_leave event per change (not for a segment's first evaluation, see `refresh`)."""
    params = [*compiled.params, segment_id, rules_version, announce]
    seg, version, events = f"${len(params) - 2}::uuid", f"${len(params) - 1}::int", f"${len(params)}::boolean"
    sql = f"""
{incremental.membership_difference(compiled.sql, seg, version, announce=events)}
update fan_segments s
   set member_count = (select count(*) from wanted), last_evaluated_at = now(),
       evaluated_rules_version = {version}, evaluation_claimed_at = null, evaluation_error = null,
       evaluated_snapshot_xmin = pg_snapshot_xmin(pg_current_snapshot())
 where s.user_id = $1 and s.id = {seg}
returning (select count(*) from joined)::int as joined, (select count(*) from gone)::int as left_count,
          s.member_count
"""
    return sql, params


def _full_reason(segment: Segment, references: dict[str, int]) -> str | None:
    """Why this refresh must evaluate every fan (None: the changed fans are known)."""
    if segment.last_evaluated_at is None:
        return "first"
    if segment.evaluated_rules_version != segment.rules_version:
        return "rules_changed"
    if segment.evaluated_snapshot_xmin is None:
        return "no_snapshot"  # before migration 0030, or forgotten while paused (incremental.prune)
    if (segment.evaluated_references or {}) != references:
        return "references_changed"  # an inlined segment's rules are not the ones last evaluated
    return None


async def refresh(conn: Any, user_id: UUID, segment_id: UUID, *, full: bool = False) -> Refresh | None:
    """Refresh one segment's membership by difference, in the caller's transaction (which holds the
    segment's row lock until it ends): incrementally (only the fans whose inputs changed, or whom time
    moved across a window edge) when those are known and few, else over every fan (`full`: always).
    None: no such segment. RuleErrors: its stored rules (or a segment they refer to) cannot be
    evaluated; nothing was written (see `record_refusal`)."""
    started = time.monotonic()
    row = await conn.fetchrow(LOCK_SEGMENT, user_id, segment_id)
    if row is None:
        return None
    segment = Segment.of(row)
    await conn.execute("select set_config('work_mem', $1, true)", REFRESH_WORK_MEM)
    versions: dict[UUID, int] = {}
    compiled = await compile_for(conn, user_id, parse_rules(segment.rules), own_id=segment_id, versions=versions)
    references = {str(s): versions[s] for s in compiled.segments}
    why = "requested" if full else _full_reason(segment, references)
    evaluated: int | None = None
    if why is None:
        assert segment.evaluated_snapshot_xmin is not None
        changed = await incremental.changed_fans(conn, compiled, segment.evaluated_snapshot_xmin,
                                                 segment.last_evaluated_at)  # fmt: skip
        if await incremental.worth_it(conn, user_id, len(changed.fans)):
            evaluated = len(changed.fans)
            sql, params = incremental.incremental_statement(compiled, segment_id, segment.rules_version,
                                                            changed.fans, changed.snapshot_xmin)  # fmt: skip
        else:
            why = "too_many_changes"
    if why is not None:
        # A segment's first evaluation populates it: its fans did nothing to join it, so no join events
        # (an automation on "joined" would otherwise fire for every member of a segment just created: at
        # 1,000,000 fans, millions of events). Later evaluations announce every join and leave.
        announce = segment.last_evaluated_at is not None
        sql, params = refresh_statement(compiled, segment_id, segment.rules_version, announce=announce)
    done = await conn.fetchrow(sql, *params)
    await conn.execute(RECORD_REFERENCES, user_id, segment_id, references)
    await incremental.prune(conn, user_id)
    return Refresh(
        segment_id, done["joined"], done["left_count"], done["member_count"], segment.rules_version,
        round((time.monotonic() - started) * 1000), "full" if why is not None else "incremental", evaluated, why,
    )  # fmt: skip


async def record_refusal(conn: Any, user_id: UUID, segment_id: UUID, errors: RuleErrors) -> int | None:
    """Note on the segment why its rules were refused (for the version stored now); its rules version."""
    version: int | None = await conn.fetchval(
        "select rules_version from fan_segments where user_id = $1 and id = $2 for update", user_id, segment_id
    )
    if version is not None:
        await conn.execute(RECORD_REFUSAL, user_id, segment_id, "; ".join(str(e) for e in errors.errors), version)
    return version


def preview_statement(compiled: CompiledRule, sample: int) -> tuple[str, list[Any]]:
    params = [*compiled.params, sample]
    sql = f"""
select w.id, f.display_name, f.lifecycle_stage, count(*) over ()::int as total
  from ({compiled.sql}) w
  join fan_profiles f on f.user_id = $1 and f.id = w.id
 order by w.id
 limit ${len(params)}::int
"""
    return sql, params


async def preview(conn: Any, user_id: UUID, rules: Any, *, sample: int = 10) -> Preview:
    """How many of the creator's fans `rules` select now, and a sample of them; writes nothing.
    RuleErrors when the rules are invalid."""
    if not 0 <= sample <= SAMPLE_MAX:
        raise ValueError(f"sample must be between 0 and {SAMPLE_MAX}")
    compiled = await compile_for(conn, user_id, parse_rules(rules))
    if sample == 0:
        count = await conn.fetchval(f"select count(*)::int from ({compiled.sql}) w", *compiled.params)
        return Preview(count, [])
    sql, params = preview_statement(compiled, sample)
    rows = await conn.fetch(sql, *params)
    fans = [{"id": str(r["id"]), "display_name": r["display_name"], "lifecycle_stage": r["lifecycle_stage"]}
            for r in rows]  # fmt: skip
    return Preview(rows[0]["total"] if rows else 0, fans)
