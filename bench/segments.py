"""Segment refresh and fan scoring at scale: one creator's 1,000,000 fans, 10,000,000 transactions.

    python -m bench segments [--fans N] [--transactions N] [--python-fans N] [--data-dir DIR]

Generated in SQL (bench/segments_data.py), then scored (`score_fans`, timed), then 20 segments
created with the rule language and fully evaluated (`evaluation.refresh`, timed per segment). Then 1 %
of the fans change and every segment is refreshed again, incrementally (ours), beside, in the same
run and on the same changed data, three baselines, each rolled back: the full refresh by difference
(every fan re-evaluated), delete-all + insert-all per segment, and fetching the fans' rows to
evaluate the rules in Python (on the first --python-fans fans, with the figure scaled linearly to
all fans and labelled so).

Correctness, checked (exit 1 if not): after each evaluation (the incremental refresh included) a
segment's membership is exactly what its compiled query selects over every fan; a refresh writes
exactly the symmetric difference between the old and the new membership (counted before it, in its
transaction); the Python baseline selects the same fans as the SQL.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path
from typing import Any
from uuid import UUID

from bench.common import (
    Stopwatch,
    fmt,
    fresh_database,
    make_creator,
    print_header,
    print_table,
    servers,
    write_results,
)  # fmt: skip
from bench.segments_data import CHANGES, GENERATE, SEGMENTS
from bench.segments_python import PythonEvaluator, fetch_fans
from geniehelper.db import Database, connect_owner
from geniehelper.segments import evaluation, scoring_parts
from geniehelper.segments.rules import Rule, parse_rules

NAME = "segments"

# Membership against the compiled query: (members not selected) + (selected fans not members).
DIFFERENCE = """
select (select count(*) from fan_segment_members m where m.user_id = $1 and m.fan_segment_id = {seg}
           and not exists (select from wanted w where w.id = m.fan_profile_id))
     + (select count(*) from wanted w where not exists (select from fan_segment_members m
           where m.user_id = $1 and m.fan_segment_id = {seg} and m.fan_profile_id = w.id))
"""


def load_of_machine() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


# A table's indexes that no constraint owns: dropped before its bulk load and built after it (one
# sort each instead of 10,000,000 random btree inserts), as a bulk load into an empty table would.
SECONDARY_INDEXES = """
select i.indexname, i.indexdef from pg_indexes i
 where i.schemaname = 'public' and i.tablename = $1
   and not exists (select from pg_constraint c where c.conindid = (quote_ident(i.indexname))::regclass)
"""


async def generate(owner: Any, creator: UUID, fans: int, transactions: int) -> dict[str, float]:
    """Every table in one statement each; foreign-key triggers off (the ids are consistent by
    construction), secondary indexes built after the load."""
    timings: dict[str, float] = {}
    await owner.execute("set session_replication_role = replica")
    await owner.execute("set maintenance_work_mem = '256MB'")
    await owner.execute("select setseed(0.42)")
    for table, sql in GENERATE:
        with Stopwatch() as sw:
            indexes = await owner.fetch(SECONDARY_INDEXES, table)
            for index in indexes:
                await owner.execute(f'drop index "{index["indexname"]}"')  # names from the catalog
            args = (creator, fans, transactions) if "$3" in sql else (creator, fans)
            await owner.execute(sql, *args)
            for index in indexes:
                await owner.execute(index["indexdef"])
        timings[table] = round(sw.seconds, 1)
    await owner.execute("set session_replication_role = origin")
    await owner.execute("reset maintenance_work_mem")
    with Stopwatch() as sw:
        await owner.execute("vacuum analyze")
    timings["vacuum analyze"] = round(sw.seconds, 1)
    return timings


async def difference(conn: Any, segment_id: UUID, rule: Rule, user_id: UUID) -> int:
    """How many memberships the stored members and the compiled query disagree on."""
    compiled = await evaluation.compile_for(conn, user_id, rule, own_id=segment_id)
    seg = f"${len(compiled.params) + 1}::uuid"
    sql = f"with wanted as materialized ({compiled.sql})\n" + DIFFERENCE.format(seg=seg)
    found: int = await conn.fetchval(sql, *compiled.params, segment_id)
    return found


async def refresh_all(db: Database, user_id: UUID, segments: dict[str, UUID], rules: dict[UUID, Rule],
                      when: str) -> tuple[dict[str, dict[str, Any]], bool]:  # fmt: skip
    """Each segment refreshed in its own creator transaction, as the job does; in the same transaction
    (so at the same now(): a rule's day window cannot move in between) the difference between members
    and selection is counted before the refresh (what it must write) and after it (must be 0). Timed:
    the refresh alone."""
    out, ok = {}, True
    for name, segment_id in segments.items():
        async with db.creator_tx(user_id) as conn:
            expected = await difference(conn, segment_id, rules[segment_id], user_id)
            with Stopwatch() as sw:
                done = await evaluation.refresh(conn, user_id, segment_id)
            off = await difference(conn, segment_id, rules[segment_id], user_id)
        assert done is not None
        written = done.joined + done.left
        if off or written != expected:
            print(f"WRONG in {when}: {name} wrote {written} rows, the difference was {expected}; off after: {off}")
            ok = False
        out[name] = {"seconds": sw.seconds, "joined": done.joined, "left": done.left, "members": done.member_count,
                     "expected_written": expected, "mode": done.mode, "evaluated": done.evaluated,
                     "why": done.why}  # fmt: skip
    return out, ok


async def full_by_difference(db: Database, user_id: UUID, segments: dict[str, UUID]) -> dict[str, dict[str, Any]]:
    """Baseline: the refresh before the incremental one, every fan re-evaluated and only the difference
    written (`refresh(full=True)`), on the same data, after ours (so it writes nothing; rolled back)."""
    out = {}
    for name, segment_id in segments.items():
        with Stopwatch() as sw:
            try:
                async with db.creator_tx(user_id) as conn:
                    done = await evaluation.refresh(conn, user_id, segment_id, full=True)
                    raise Rollback
            except Rollback:
                pass
        assert done is not None
        out[name] = {"seconds": sw.seconds, "written": done.joined + done.left}
    return out


class Rollback(Exception):
    pass


async def delete_insert_all(db: Database, user_id: UUID, segments: dict[str, UUID],
                            rules: dict[UUID, Rule]) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Naive 1: per segment, delete every member and insert the compiled query's fans (rolled back)."""
    out = {}
    for name, segment_id in segments.items():
        with Stopwatch() as sw:
            try:
                async with db.creator_tx(user_id) as conn:
                    compiled = await evaluation.compile_for(conn, user_id, rules[segment_id], own_id=segment_id)
                    seg = f"${len(compiled.params) + 1}::uuid"
                    deleted = await conn.execute("delete from fan_segment_members where user_id = $1"
                                                 " and fan_segment_id = $2", user_id, segment_id)  # fmt: skip
                    inserted = await conn.execute(
                        f"insert into fan_segment_members (user_id, fan_segment_id, fan_profile_id)"
                        f" select $1, {seg}, w.id from ({compiled.sql}) w", *compiled.params, segment_id)  # fmt: skip
                    raise Rollback
            except Rollback:
                pass
        out[name] = {"seconds": sw.seconds, "written": int(deleted.split()[-1]) + int(inserted.split()[-1])}
    return out


async def python_baseline(db: Database, user_id: UUID, segments: dict[str, UUID], rules: dict[UUID, Rule],
                          python_fans: int, total_fans: int) -> tuple[dict[str, Any], bool]:  # fmt: skip
    """Naive 2: fetch the rows of the first `python_fans` fans, evaluate each rule in Python; compared
    with the compiled SQL over the same fans."""
    first, last = _fan_id(1), _fan_id(python_fans)
    async with db.creator_tx(user_id) as conn:
        with Stopwatch() as fetch:
            fans = await fetch_fans(conn, user_id, first, last)
        now = await conn.fetchval("select now()")
        evaluator = PythonEvaluator(now, rules)
        per_segment: dict[str, float] = {}
        agree = True
        for name, segment_id in segments.items():
            with Stopwatch() as sw:
                members = evaluator.members(rules[segment_id], fans)
            per_segment[name] = sw.seconds
            compiled = await evaluation.compile_for(conn, user_id, rules[segment_id], own_id=segment_id)
            n = len(compiled.params)
            rows = await conn.fetch(f"select id from ({compiled.sql}) w where w.id between ${n + 1} and ${n + 2}",
                                    *compiled.params, first, last)  # fmt: skip
            if {row["id"] for row in rows} != members:
                print(f"MISMATCH: Python baseline and SQL disagree on {name}")
                agree = False
    scale = total_fans / max(1, len(fans))
    return {"fans": len(fans), "fetch_s": fetch.seconds, "per_segment_s": per_segment,
            "scaled_total_s": (fetch.seconds + sum(per_segment.values())) * scale, "scale": scale}, agree  # fmt: skip


def _fan_id(i: int) -> UUID:
    return UUID(f"00000000-0000-4000-8000-{i:012x}")


async def run(args: argparse.Namespace) -> int:
    ok = True
    with servers(args.data_dir) as srv:
        print_header("segments: refresh by difference and scoring", srv, {
            "data": f"{args.fans:,} fans, {args.transactions:,} transactions, one creator; {len(SEGMENTS)} segments",
            "before": load_of_machine(),
        })  # fmt: skip
        async with fresh_database(srv, NAME) as (database_url, owner_url):
            owner = await connect_owner(owner_url)
            db = await Database.open(database_url, min_size=1, max_size=2, system=False)
            try:
                creator = await make_creator(owner, tier="pro")
                gen = await generate(owner, creator, args.fans, args.transactions)
                print(f"generated in {sum(gen.values()):.1f} s: " + ", ".join(f"{k} {v} s" for k, v in gen.items()))

                with Stopwatch() as sw:
                    scored = await scoring_parts.score_in_parts(lambda: db.creator_tx(creator), creator)
                score_seconds = sw.seconds
                print(f"score_fans: {scored.scored:,} fans in {sw.seconds:.1f} s (target <= 60 s at 1,000,000;"
                      f" includes the profile figures: {scored.profiles_updated:,} profiles updated)")  # fmt: skip
                await owner.execute("analyze")

                segments: dict[str, UUID] = {}
                rules: dict[UUID, Rule] = {}
                async with db.creator_tx(creator) as conn:
                    for name, raw in SEGMENTS:
                        raw = _resolve(raw, segments)
                        segment = await evaluation.create_segment(conn, creator, name, raw)
                        segments[name], rules[segment.id] = segment.id, parse_rules(raw)

                full, full_ok = await refresh_all(db, creator, segments, rules, "the full evaluation")
                ok &= full_ok

                with Stopwatch() as change_sw:
                    for _, sql in CHANGES:
                        await owner.execute(sql, creator, args.fans)
                await owner.execute("analyze")
                changed = len(range(100, args.fans + 1, 100))
                print(f"changed {changed:,} fans (1 %) in {change_sw.seconds:.1f} s: "
                      + ", ".join(name for name, _ in CHANGES))  # fmt: skip
                during = load_of_machine()
                # Ours first (its fans' pages not warmed by a baseline), then the baselines on the same
                # data, rolled back. refresh_all's check compares ours with the compiled query over every
                # fan: the incremental refresh against a full evaluation.
                ours, ours_ok = await refresh_all(db, creator, segments, rules, "the refresh")
                ok &= ours_ok
                previous = await full_by_difference(db, creator, segments)
                naive = await delete_insert_all(db, creator, segments, rules)
                python, agree = await python_baseline(db, creator, segments, rules, min(args.python_fans, args.fans),
                                                      args.fans)  # fmt: skip
                ok &= agree

                # Scoring again, as the periodic job does once every fan has a score: updates, no inserts.
                with Stopwatch() as rescore_sw:
                    rescored = await scoring_parts.score_in_parts(lambda: db.creator_tx(creator), creator)
            finally:
                await db.close()
                await owner.close()

        rows = []
        for name in segments:
            o, n, p = ours[name], naive[name], previous[name]
            rows.append([name, fmt(full[name]["members"]), fmt(full[name]["seconds"], 2), fmt(o["seconds"], 2),
                         fmt(o["evaluated"]) if o["mode"] == "incremental" else f"full ({o['why']})",
                         fmt(o["joined"] + o["left"]), fmt(p["seconds"], 2), fmt(n["seconds"], 2), fmt(n["written"]),
                         fmt(python["per_segment_s"][name], 3)])  # fmt: skip
        totals = {"full_s": sum(f["seconds"] for f in full.values()),
                  "ours_s": sum(o["seconds"] for o in ours.values()),
                  "ours_written": sum(o["joined"] + o["left"] for o in ours.values()),
                  "ours_evaluated": sum(o["evaluated"] or 0 for o in ours.values()),
                  "ours_full": sum(o["mode"] == "full" for o in ours.values()),
                  "full_by_difference_s": sum(p["seconds"] for p in previous.values()),
                  "naive_s": sum(n["seconds"] for n in naive.values()),
                  "naive_written": sum(n["written"] for n in naive.values()),
                  "python_eval_s": sum(python["per_segment_s"].values())}  # fmt: skip
        rows.append(["all 20", "", fmt(totals["full_s"], 2), fmt(totals["ours_s"], 2), fmt(totals["ours_evaluated"]),
                     fmt(totals["ours_written"]), fmt(totals["full_by_difference_s"], 2), fmt(totals["naive_s"], 2),
                     fmt(totals["naive_written"]), fmt(totals["python_eval_s"], 3)])  # fmt: skip
        print()
        print_table(["segment", "members", "full s", "refresh s", "fans evaluated", "refresh rows", "full diff s",
                     "del+ins s", "del+ins rows", f"python s ({python['fans']:,} fans)"], rows)  # fmt: skip
        print(f"\nrefresh (ours, incremental) of all 20: {totals['ours_s']:.2f} s (target <= 10 s),"
              f" {totals['ours_evaluated']:,} fans evaluated, {totals['ours_full']} segments fell back to a full pass,"
              f" {totals['ours_written']:,} rows written = the changed memberships; every fan re-evaluated by"
              f" difference (the previous refresh): {totals['full_by_difference_s']:.2f} s;"
              f" delete-all + insert-all: {totals['naive_s']:.2f} s, {totals['naive_written']:,} rows")  # fmt: skip
        print(f"python baseline: fetched {python['fans']:,} fans' rows in {python['fetch_s']:.2f} s, evaluated in"
              f" {totals['python_eval_s']:.2f} s; scaled linearly to {args.fans:,} fans (an estimate, not measured):"
              f" {python['scaled_total_s']:.1f} s, before writing anything")  # fmt: skip
        print(f"score_fans again (every fan already scored: updates only): {rescored.scored:,} fans in"
              f" {rescore_sw.seconds:.1f} s; {rescored.profiles_updated:,} profiles' figures and"
              f" {rescored.engagement_updated:,} engagement scores changed")  # fmt: skip
        print(f"machine during the refresh: {during}; after: {load_of_machine()}")
        print("correctness: " + ("ok" if ok else "FAILED"))
        path = write_results(NAME, {
            "fans": args.fans, "transactions": args.transactions, "generate_s": gen, "score_s": score_seconds,
            "rescore_s": rescore_sw.seconds,
            "scored": scored.scored, "changed_fans": changed, "full": full, "refresh": ours,
            "full_by_difference": previous, "delete_insert_all": naive, "python": python, "totals": totals,
            "load_during_refresh": during, "ok": ok,
        })  # fmt: skip
        print(f"results: {path}")
    return 0 if ok else 1


def _resolve(raw: dict[str, Any], segments: dict[str, UUID]) -> dict[str, Any]:
    """The bench's segment references by name, as the ids they were created with."""
    if set(raw) == {"segment"}:
        return {"segment": {"id": str(segments[raw["segment"]["id"]])}}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key in ("all", "any"):
            out[key] = [_resolve(child, segments) for child in value]
        elif key == "not":
            out[key] = _resolve(value, segments)
        else:
            out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench segments", description=__doc__.splitlines()[0])
    parser.add_argument("--fans", type=int, default=1_000_000)
    parser.add_argument("--transactions", type=int, default=10_000_000)
    parser.add_argument("--python-fans", type=int, default=50_000)
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.fans < 100 or args.transactions < 0:
        parser.error("--fans must be at least 100 (1 % of them change), --transactions at least 0")
    return asyncio.run(run(args))
