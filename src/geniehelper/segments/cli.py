"""`geniehelper segments evaluate ID` and `geniehelper segments preview --rules FILE --user ID`.

`evaluate` refreshes one segment's membership now, in this process, by difference (exactly what an
evaluate_segment job does) and prints joined, left and the member count. `preview` validates a rule
file and counts the creator's fans it selects now, with a sample, in a read-only transaction:
nothing is written. Invalid rules print one line per error, `path: reason`. Exit codes: 0 done; 1 no
such segment; 2 invalid rules or a usage error (one line, no traceback). Importing this module is
cheap: the database and segment modules are imported inside the commands.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geniehelper.ops.cli import _database, _json, _Parser, _run, _say, _table, _uuid_of

if TYPE_CHECKING:
    from geniehelper.segments.rules import RuleErrors
    from geniehelper.settings import Settings

SEGMENT_CREATOR = "select user_id, name from fan_segments where id = $1"


def _sample_size(text: str) -> int:
    if not text.isdigit() or int(text) > 1000:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 0 to 1000")
    return int(text)


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    segments = sub.add_parser("segments", help="fan segments: evaluate one now, or preview a rule file")
    actions = segments.add_subparsers(dest="segments_command", required=True, metavar="ACTION", parser_class=_Parser)
    evaluate = actions.add_parser("evaluate", help="refresh a segment's membership now, by difference "
                                  "(exit 1: no such segment; 2: its stored rules are refused)")  # fmt: skip
    evaluate.add_argument("id", metavar="ID", type=_uuid_of("a segment id"))
    evaluate.add_argument("--json", action="store_true")
    preview = actions.add_parser("preview", help="count (and sample) a creator's fans a rule file selects now; "
                                 "writes nothing (exit 2: invalid rules, each error's path and reason)")  # fmt: skip
    preview.add_argument("--rules", required=True, metavar="FILE", help="a JSON rule file ('-': standard input)")
    preview.add_argument("--user", required=True, type=_uuid_of("a creator id"), help="the creator's uuid")
    preview.add_argument("--sample", type=_sample_size, default=10, help="fans listed (default 10, at most 1000)")
    preview.add_argument("--json", action="store_true")


def _print_refusal(errors: RuleErrors) -> None:
    _say(f"invalid rules ({len(errors.errors)} error{'s' if len(errors.errors) != 1 else ''}):")
    for error in errors.errors:
        print(f"  {error.path or '(rules)'}: {error.reason}", file=sys.stderr)


def cmd_segments(args: argparse.Namespace, settings: Settings) -> int:
    if args.segments_command == "evaluate":
        return _run(_evaluate(args.id, args.json, settings))
    try:
        text = sys.stdin.read() if args.rules == "-" else Path(args.rules).read_text(encoding="utf-8")
    except OSError as exc:
        _say(f"cannot read the rules file: {exc}")
        return 2
    from geniehelper.segments.rules import RuleErrors, parse_rules_json

    try:
        rule = parse_rules_json(text)
    except RuleErrors as exc:
        _print_refusal(exc)
        return 2
    return _run(_preview(rule, args.user, args.sample, args.json, settings))


async def _evaluate(segment_id: uuid.UUID, as_json: bool, settings: Settings) -> int:
    from geniehelper.segments import evaluation
    from geniehelper.segments.rules import RuleErrors

    async with _database(settings) as db:
        async with db.system_tx() as conn:
            found = await conn.fetchrow(SEGMENT_CREATOR, segment_id)
        if found is None:
            _say(f"no segment {segment_id}")
            return 1
        user_id = found["user_id"]
        try:
            async with db.creator_tx(user_id) as conn:
                done = await evaluation.refresh(conn, user_id, segment_id)
        except RuleErrors as exc:
            async with db.creator_tx(user_id) as conn:
                await evaluation.record_refusal(conn, user_id, segment_id, exc)
            _print_refusal(exc)
            return 2
    if done is None:  # deleted meanwhile
        _say(f"no segment {segment_id}")
        return 1
    if as_json:
        _json({"name": found["name"], "user_id": str(user_id), **done.as_dict()})
    else:
        print(f"segment {found['name']!r} ({segment_id}): {done.member_count} members, {done.joined} joined, "
              f"{done.left} left (rules version {done.rules_version}, {done.duration_ms} ms)")  # fmt: skip
    return 0


async def _preview(rule: Any, user_id: uuid.UUID, sample: int, as_json: bool, settings: Settings) -> int:
    from geniehelper.segments import evaluation
    from geniehelper.segments.rules import RuleErrors, dump_rules

    async with _database(settings) as db, db.creator_tx(user_id) as conn:
        await conn.execute("set transaction read only")  # a preview writes nothing, whatever it runs
        try:
            found = await evaluation.preview(conn, user_id, dump_rules(rule), sample=sample)
        except RuleErrors as exc:  # a referenced segment missing, invalid, or a cycle
            _print_refusal(exc)
            return 2
    if as_json:
        _json({"count": found.count, "sample": found.sample})
        return 0
    print(f"{found.count} fan{'s' if found.count != 1 else ''} match")
    if found.sample:
        print(_table(["FAN", "NAME", "LIFECYCLE"],
                     [[f["id"], f["display_name"] or "-", f["lifecycle_stage"]] for f in found.sample]))  # fmt: skip
    return 0
