"""The on-call commands `geniehelper jobs list|show|retry|cancel`, and what every on-call command shares
(ops/cli_queues.py has `queues` and `alerts`).

Tables by default, `--json` for scripts. Exit codes: 0 done; 1 nothing matched, not found, or refused
(declined, or nothing could be done); 2 a usage or configuration error (one line, no traceback). A
retry or cancel by filters matching more than one job asks first on a terminal; without one it is
refused unless `--yes` is given. Importing this module is cheap (`geniehelper.cli` does it for every
command): the database and runtime modules are imported inside the commands.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, NoReturn

from geniehelper.ops.format import age as _age
from geniehelper.ops.format import cut as _cut
from geniehelper.ops.format import when as _when

if TYPE_CHECKING:
    from geniehelper.db import Database
    from geniehelper.ops.jobs import CancelReport, JobFilter, RetryReport
    from geniehelper.settings import Settings

Row = dict[str, Any]
ERROR_WIDTH = 60  # the error column of `jobs list`
PREVIEW = 10  # jobs shown before asking to confirm
JOB_STATUSES = ("queued", "processing", "completed", "failed", "cancelled")
DONE = {"retry": "retried", "cancel": "cancelled"}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3_600, "d": 86_400, "w": 604_800}


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line naming the argument (no usage block), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _say(message: str) -> None:
    print(f"geniehelper: {message}", file=sys.stderr, flush=True)


def parse_duration(text: str) -> float:
    """`30s`, `10m`, `2h`, `3d`, `1w`, or a combination (`1h30m`), in seconds."""
    value = text.strip().lower()
    if not value or _DURATION.sub("", value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 30s, 10m, 2h, 3d)")
    return float(sum(float(n) * _UNIT_S[unit] for n, unit in _DURATION.findall(value)))


def _uuid_of(what: str) -> Callable[[str], uuid.UUID]:
    def parse(text: str) -> uuid.UUID:
        try:
            return uuid.UUID(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what} (a uuid)") from None

    return parse


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    jobs = sub.add_parser("jobs", help="on-call: find job records, show one, retry or cancel them")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True, metavar="ACTION", parser_class=_Parser)
    listing = jobs_sub.add_parser("list", help="job records matching the filters, newest first (exit 1: none)")
    _add_filters(listing, "")
    listing.add_argument("--limit", type=_positive, default=50, help="at most this many (default 50)")
    listing.add_argument("--json", action="store_true", help="a JSON list")
    show = jobs_sub.add_parser("show", help="one job record: payload, attempt history, result, error")
    show.add_argument("id", metavar="ID", type=_uuid_of("a job id"))
    show.add_argument("--json", action="store_true")
    for name, help_text, statuses in (
        ("retry", "run failed or cancelled jobs again, each as a new record (the old one keeps its history); "
                  "by filter, only each key's latest record (jobs run again since are left out)", "failed, cancelled"),
        ("cancel", "cancel queued or processing jobs (a running attempt is stopped and its outcome discarded)",
         "queued, processing"),
    ):  # fmt: skip
        action = jobs_sub.add_parser(name, help=help_text)
        action.add_argument("id", nargs="?", metavar="ID", type=_uuid_of("a job id"), help="one job, or use filters")
        _add_filters(action, f" (default: {statuses})")
        action.add_argument("--limit", type=_positive, default=1000, help="at most this many per run (default 1000)")
        action.add_argument("--yes", "-y", action="store_true", help="no confirmation (needed without a terminal)")
        action.add_argument("--actor", help="who is acting, recorded in ops_actions (default: $USER, else cli)")
        action.add_argument("--json", action="store_true")


def _add_filters(parser: argparse.ArgumentParser, status_default: str) -> None:
    parser.add_argument("--status", action="append", choices=JOB_STATUSES, help=f"repeatable{status_default}")
    parser.add_argument("--job", help="job name")
    parser.add_argument("--queue")
    parser.add_argument("--creator", type=_uuid_of("a creator id"), help="the creator's uuid")
    parser.add_argument("--error", help="text the error contains (any case)")
    parser.add_argument("--older-than", type=parse_duration, metavar="DURATION", help="created before (30s, 2h, 3d)")
    parser.add_argument("--newer-than", type=parse_duration, metavar="DURATION", help="created within")


def _filter_of(args: argparse.Namespace) -> JobFilter:
    from geniehelper.ops.jobs import JobFilter

    return JobFilter(tuple(dict.fromkeys(args.status or ())), args.job, args.queue, args.creator, args.error,
                     args.older_than, args.newer_than)  # fmt: skip


def _actor(args: argparse.Namespace) -> str:
    return str(args.actor or os.environ.get("USER") or "cli").strip() or "cli"


# --- rendering --------------------------------------------------------------------------------------


def _plain(value: object) -> object:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _json(value: object) -> None:
    print(json.dumps(value, default=_plain))


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = [headers, *rows]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines)


def _jobs_table(jobs: list[Row]) -> str:
    return _table(["ID", "JOB", "QUEUE", "STATUS", "TRIES", "AGE", "ERROR"], [
        [str(j["id"]), j["job_name"], j["queue"], j["status"], f"{j['attempts']}/{j['max_attempts']}",
         _age(j["age_s"]), _cut(j["error"], ERROR_WIDTH)] for j in jobs
    ])  # fmt: skip


def _job_text(job: Row) -> str:
    fields = [
        ("job", str(job["id"])), ("name", job["job_name"]), ("queue", job["queue"]),
        ("creator", str(job["user_id"]) if job["user_id"] else "- (system job)"), ("key", job["job_key"]),
        ("status", f"{job['status']} (attempt {job['attempts']} of {job['max_attempts']}, "
                   f"progress {job['progress']}%)"),
        ("created", f"{_when(job['created_at'])} ({_age(job['age_s'])} ago)"), ("run at", _when(job["run_at"])),
        ("started", _when(job["started_at"])), ("finished", _when(job["finished_at"])),
        ("worker", job["worker_id"] or "-"),
        ("dispatch", f"{job['dispatch_no']}, " + (f"in Redis since {_when(job['enqueued_at'])}" if job["enqueued_at"]
                                                    else "not pushed")
         + (f" (push failed: {job['dispatch_error']})" if job["dispatch_error"] else "")),
        ("subject", f"{job['subject_type']} {job['subject_id']}" if job["subject_type"] else "-"),
        ("error", f"[{job['error_kind'] or '-'}] {job['error']}" if job["error"] else "-"),
        ("payload", json.dumps(job["payload"], default=_plain)),
        ("result", json.dumps(job["result"], default=_plain) if job["result"] is not None else "-"),
    ]  # fmt: skip
    lines = [f"{name:<9} {value}" for name, value in fields]
    lines.append("history:" if job["history"] else "history:  (none: no retries, failures, re-drives or ops actions)")
    for e in job["history"]:
        parts = [e.get("at", "?"), e.get("event", "?")]
        parts += [f"attempt {e['attempt']}"] if "attempt" in e else []
        parts += [f"worker {e['worker']}"] if "worker" in e else []
        parts += [f"by {e['by']}"] if "by" in e else []
        parts += [f"[{e.get('error_kind', '-')}] {e['error']}"] if "error" in e else []
        lines.append("  " + "  ".join(str(p) for p in parts))
    if job["key_runs"]:
        lines.append("other records of this key:")
        lines += [f"  {r['id']}  {r['status']:<10} created {_when(r['created_at'])}  finished {_when(r['finished_at'])}"
                  for r in job["key_runs"]]  # fmt: skip
    return "\n".join(lines)


# --- running ----------------------------------------------------------------------------------------


@asynccontextmanager
async def _database(settings: Settings) -> AsyncIterator[Database]:
    from geniehelper.db import Database
    from geniehelper.stack import resolve_urls

    db = await Database.open(resolve_urls(settings).database_url, min_size=1, max_size=2)
    try:
        yield db
    finally:
        await db.close()


def _run(work: Coroutine[Any, Any, int]) -> int:
    """Run a command; a server that cannot be reached is one line, exit 2."""
    import asyncpg
    from redis.exceptions import ConnectionError as RedisConnectionError

    try:
        return asyncio.run(work)
    except (OSError, RedisConnectionError, asyncpg.InvalidAuthorizationSpecificationError,
            asyncpg.InvalidCatalogNameError) as exc:  # fmt: skip
        _say(f"cannot reach the servers: {type(exc).__name__}: {exc}")
        return 2


def cmd_jobs(args: argparse.Namespace, settings: Settings) -> int:
    if args.jobs_command in ("retry", "cancel"):
        where = _filter_of(args)
        if (args.id is None) == where.is_empty():
            _say(f"jobs {args.jobs_command}: give a job ID or filters (--status, --job, --queue, --creator, --error, "
                 "--older-than, --newer-than), not both" if args.id else
                 f"jobs {args.jobs_command}: give a job ID or at least one filter")  # fmt: skip
            return 2
    commands = {"list": _read, "show": _read, "retry": _act, "cancel": _act}
    return _run(commands[args.jobs_command](args, settings))


async def _read(args: argparse.Namespace, settings: Settings) -> int:
    """`jobs list` and `jobs show`."""
    from geniehelper.ops.jobs import get_job, list_jobs

    listing = args.jobs_command == "list"
    async with _database(settings) as db, db.system_tx() as conn:
        if listing:
            jobs = await list_jobs(conn, _filter_of(args), args.limit)
        else:
            job = await get_job(conn, args.id)
            jobs = [job] if job is not None else []
    if not jobs:
        _say("no jobs match" if listing else f"no job {args.id}")
    if args.json and (listing or jobs):
        _json(jobs if listing else jobs[0])  # a list matching nothing is [] still
    elif jobs and not args.json:
        print(_jobs_table(jobs) if listing else _job_text(jobs[0]))
    return 0 if jobs else 1


async def _refusal(args: argparse.Namespace, verb: str, jobs: list[Row]) -> int | None:
    """None to go on; else the exit code: 1 declined, 2 no terminal to ask and no --yes. A single job
    (by ID, or the only match) needs no confirmation."""
    if args.id is not None or len(jobs) == 1 or args.yes:
        return None
    if not sys.stdin.isatty():
        _say(f"refusing to {verb} {len(jobs)} jobs without confirmation (not a terminal): add --yes")
        return 2
    more = f"\n... and {len(jobs) - PREVIEW} more" if len(jobs) > PREVIEW else ""
    print(_jobs_table(jobs[:PREVIEW]) + more, file=sys.stderr)
    print(f"{verb} {len(jobs)} jobs? [y/N] ", end="", file=sys.stderr, flush=True)
    if (await asyncio.to_thread(sys.stdin.readline)).strip().lower() in ("y", "yes"):
        return None
    _say(f"nothing {DONE[verb]}")
    return 1


async def _act(args: argparse.Namespace, settings: Settings) -> int:
    """`jobs retry` and `jobs cancel`: select, report what is skipped, confirm, act, record, report."""
    from geniehelper.ops import jobs as ops

    verb = args.jobs_command
    statuses = ops.RETRYABLE if verb == "retry" else ops.CANCELLABLE
    where = _filter_of(args)
    actor = _actor(args)
    target = {"id": str(args.id)} if args.id is not None else {"filter": where.as_target()}
    async with _database(settings) as db:
        async with db.system_tx() as conn:
            matched = await ops.select_jobs(conn, args.id, where, statuses, args.limit, latest_of_key=verb == "retry")
        if not matched:
            _say(f"no job {args.id}" if args.id else "no jobs match")
            return 1
        chosen, skipped = ops.partition(matched, statuses)
        for job in skipped:
            _say(f"skipped {job['id']}: it is {job['status']} (only {' or '.join(statuses)} jobs are {DONE[verb]})")
        if args.id is None and len(matched) >= args.limit:
            _say(f"--limit {args.limit} reached: more jobs may match (run again, or raise --limit)")
        refused = 1 if not chosen else await _refusal(args, verb, chosen)
        if refused is not None:
            return refused
        if verb == "cancel":
            async with db.system_tx() as conn:
                cancelled = await ops.cancel_jobs(conn, [j["id"] for j in chosen], actor, target)
            return _cancelled(args, cancelled, skipped)
        from geniehelper.runtime.queue import JobQueue
        from geniehelper.runtime.registry import discover
        from geniehelper.runtime.transport import create_arq_redis
        from geniehelper.stack import resolve_urls

        redis = await create_arq_redis(resolve_urls(settings).redis_url)
        try:
            queue = JobQueue(db, redis, discover(settings.job_packages), fair_queues=settings.fair_queues)
            return _retried(args, await ops.retry_jobs(queue, chosen, actor, target), skipped)
        finally:
            await redis.aclose()


def _retried(args: argparse.Namespace, report: RetryReport, skipped: list[Row]) -> int:
    if args.json:
        _json({"retried": report.retried, "failed": report.failed,
               "skipped": [{"id": j["id"], "status": j["status"]} for j in skipped]})  # fmt: skip
    else:
        made = [r for r in report.retried if not r["duplicate"]]
        print(f"retried {len(made)} job{'s' if len(made) != 1 else ''}" + (":" if report.retried else ""))
        for r in report.retried:  # a key with an active record: that record is the retry
            print(f"  {r['id']} -> {r['new_id']}" + ("  (already active under its key: nothing new made)"
                                                      if r["duplicate"] else ""))  # fmt: skip
    for r in report.failed:
        _say(f"not retried {r['id']}: {r['error']}")
    return 0 if report.retried and not report.failed else 1


def _cancelled(args: argparse.Namespace, report: CancelReport, skipped: list[Row]) -> int:
    if args.json:
        _json({"cancelled": report.cancelled,
               "skipped": [{"id": j["id"], "status": j["status"]} for j in skipped] + report.skipped})  # fmt: skip
    else:
        n = len(report.cancelled)
        print(f"cancelled {n} job{'s' if n != 1 else ''}" + (":" if n else ""))
        for c in report.cancelled:
            print(f"  {c['id']}  (was {c['was']})")
    for s in report.skipped:
        _say(f"skipped {s['id']}: it is {s['status']} now (finished meanwhile)")
    return 0 if report.cancelled else 1
