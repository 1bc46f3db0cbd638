"""The on-call commands `geniehelper queues [pause|resume NAME]` and `geniehelper alerts list|ack|resolve`.

Conventions as in ops/cli.py (tables, `--json`, exit codes 0/1/2). `queues pause` and `queues
resume` are idempotent for scripts: exit 0 when the queue ends as asked (saying when nothing changed),
2 for a queue that is not configured.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from geniehelper.ops.cli import _actor, _database, _json, _Parser, _positive, _run, _say, _table, _uuid_of
from geniehelper.ops.format import age as _age
from geniehelper.ops.format import cut as _cut
from geniehelper.ops.format import when as _when
from geniehelper.settings import Settings


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    queues = sub.add_parser("queues", help="per queue: paused, Redis depth, queued/processing/failed (24 h), "
                            "oldest due age; pause or resume one")  # fmt: skip
    queues.add_argument("--json", action="store_true")
    queues_sub = queues.add_subparsers(dest="queues_command", metavar="ACTION", parser_class=_Parser)
    pause = queues_sub.add_parser("pause", help="its workers start no new job (running ones finish); no queue-age "
                                  "alert while paused")  # fmt: skip
    resume = queues_sub.add_parser("resume", help="its workers start jobs again (within about a second)")
    for action in (pause, resume):
        action.add_argument("name", metavar="NAME", help="a configured queue (QUEUES)")
        action.add_argument("--actor", help="recorded in ops_actions (default: $USER, else cli)")
    pause.add_argument("--reason", help="why, shown with the queue (e.g. 'platform outage, INC-42')")

    alerts = sub.add_parser("alerts", help="on-call: incidents job_monitor opened; acknowledge or resolve them")
    alerts_sub = alerts.add_subparsers(dest="alerts_command", required=True, metavar="ACTION", parser_class=_Parser)
    alert_list = alerts_sub.add_parser("list", help="incidents, newest first (default: not resolved; exit 1: none)")
    alert_list.add_argument("--status", action="append", choices=["open", "acknowledged", "resolved"],
                            help="repeatable (default: open and acknowledged)")  # fmt: skip
    alert_list.add_argument("--limit", type=_positive, default=100)
    alert_list.add_argument("--json", action="store_true")
    for name, help_text in (("ack", "acknowledge an open incident (exit 1: no such open alert)"),
                            ("resolve", "resolve an incident by hand (exit 1: no such unresolved alert)")):  # fmt: skip
        alert = alerts_sub.add_parser(name, help=help_text)
        alert.add_argument("id", metavar="ID", type=_uuid_of("an alert id"))
        alert.add_argument("--actor", help="recorded on the alert and in ops_actions (default: $USER, else cli)")
        alert.add_argument("--json", action="store_true")


def cmd_queues(args: argparse.Namespace, settings: Settings) -> int:
    if args.queues_command is not None:
        return _run(_pause_or_resume(args, settings))

    async def show() -> int:
        from redis.exceptions import RedisError

        from geniehelper.ops.queues import add_redis_depths, queue_stats
        from geniehelper.runtime.transport import create_arq_redis
        from geniehelper.stack import resolve_urls

        async with _database(settings) as db, db.system_tx() as conn:
            stats = await queue_stats(conn, settings)
        try:
            redis = await create_arq_redis(resolve_urls(settings).redis_url)
            try:
                await add_redis_depths(redis, stats)
            finally:
                await redis.aclose()
        except (OSError, RedisError) as exc:  # the records still say a lot: show them
            _say(f"queues: cannot read Redis ({type(exc).__name__}: {exc}): depth shown as ?")
        if args.json:
            _json(stats)
            return 0
        headers = ["QUEUE", "STATE", "FAIR", "REDIS", "QUEUED", "DUE", "UNPUSHED", "PROCESSING", "FAILED 24H",
                   "OLDEST DUE"]  # fmt: skip
        print(_table(headers, [
            [s["queue"] + ("" if s["configured"] else " (not configured)"),
             f"paused by {s['paused_by']}" if s["paused"] else "running", "yes" if s["fair"] else "no",
             "?" if s["redis_depth"] is None else str(s["redis_depth"]), str(s["queued"]), str(s["due"]),
             str(s["unpushed"]), str(s["processing"]), str(s["failed_24h"]), _age(s["oldest_due_age_s"])]
            for s in stats
        ]))  # fmt: skip
        return 0

    return _run(show())


async def _pause_or_resume(args: argparse.Namespace, settings: Settings) -> int:
    from geniehelper.ops import queues

    actor, name = _actor(args), args.name
    try:
        async with _database(settings) as db, db.system_tx() as conn:
            if args.queues_command == "pause":
                changed = await queues.pause(conn, settings, name, actor, args.reason)
                held = (await queues.paused_queues(conn))[name]
            else:
                changed = await queues.resume(conn, settings, name, actor)
    except queues.UnknownQueue as exc:
        _say(str(exc))
        return 2
    if args.queues_command == "pause":
        print(f"paused queue {name}: its workers start no new job within about a second (running jobs finish)"
              if changed else f"queue {name} was already paused by {held['paused_by']} "
              f"since {_when(held['paused_at'])}: nothing changed")  # fmt: skip
    else:
        print(f"resumed queue {name}: its workers start jobs again within about a second" if changed
              else f"queue {name} was not paused: nothing changed")  # fmt: skip
    return 0


def cmd_alerts(args: argparse.Namespace, settings: Settings) -> int:
    async def act() -> int:
        from geniehelper.ops import alerts

        command = args.alerts_command
        async with _database(settings) as db, db.system_tx() as conn:
            if command == "list":
                found = await alerts.list_alerts(conn, args.status or ["open", "acknowledged"], args.limit)
            else:
                done = await (alerts.acknowledge if command == "ack" else alerts.resolve)(conn, args.id, _actor(args))
        if command == "list":
            if args.json:
                _json(found)
            elif found:
                now = datetime.now(UTC)
                print(_table(["ID", "SEVERITY", "STATUS", "INCIDENT", "SEEN", "OPENED", "SUMMARY"], [
                    [str(a["id"]), a["severity"], a["status"], a["dedup_key"], str(a["seen_count"]),
                     _age((now - a["opened_at"]).total_seconds()) + " ago", _cut(a["summary"], 80)] for a in found
                ]))  # fmt: skip
            if not found:
                _say("no alerts match")
            return 0 if found else 1
        verb = "acknowledged" if command == "ack" else "resolved"
        if args.json:
            _json({"id": str(args.id), verb: done})
        elif done:
            print(f"{verb} alert {args.id}")
        if not done:
            _say(f"no {'open' if command == 'ack' else 'unresolved'} alert {args.id}")
        return 0 if done else 1

    return _run(act())
