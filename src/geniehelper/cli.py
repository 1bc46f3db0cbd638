"""The ops CLI. `geniehelper --help` lists the commands; each says what it does."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from geniehelper import __version__
from geniehelper.settings import Settings, load_settings


def _say(message: str) -> None:
    print(f"geniehelper: {message}", file=sys.stderr, flush=True)


def cmd_version(_args: argparse.Namespace, _settings: Settings) -> int:
    print(__version__)
    return 0


async def _migrate(database_url: str) -> list[str]:
    from geniehelper.db import connect_owner
    from geniehelper.migrations import apply_migrations

    conn = await connect_owner(database_url)
    try:
        return await apply_migrations(conn)
    finally:
        await conn.close()


def _run_migrations(database_url: str) -> None:
    applied = asyncio.run(_migrate(database_url))
    _say(f"migrations applied: {', '.join(applied)}" if applied else "migrations: up to date")


def cmd_migrate(_args: argparse.Namespace, settings: Settings) -> int:
    from geniehelper.stack import start_stack

    urls, stack = start_stack(settings)
    try:
        _run_migrations(urls.database_url)
    finally:
        if stack is not None:
            stack.stop()
    return 0


def _print_urls(urls: Any) -> None:
    _say("servers:")
    for name, value in urls.as_env().items():
        print(f"  export {name}={value}", file=sys.stderr, flush=True)


def _wait_for_signal() -> None:
    import signal

    received: list[int] = []

    def handler(signum: int, _frame: Any) -> None:
        received.append(signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)
    while not received:
        signal.pause()


def cmd_services(_args: argparse.Namespace, settings: Settings) -> int:
    from geniehelper.stack import start_stack

    urls, stack = start_stack(settings)
    try:
        _run_migrations(urls.database_url)
        _print_urls(urls)
        if stack is not None and not stack.is_owner:
            _say("the embedded servers were already running; they stay up when this exits")
        _say("services ready; Ctrl-C stops them")
        _wait_for_signal()
    finally:
        if stack is not None:
            _say("stopping the embedded servers")
            stack.stop()
    return 0


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from geniehelper.stack import start_stack
    from geniehelper.supervisor import Supervisor, child_env, parse_procfile

    entries = parse_procfile(Path(args.procfile))
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with open(settings.data_dir / "up.lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            _say(f"`geniehelper up` is already running on {settings.data_dir} (pid {lock.read().strip()}); "
                 "stop it first (Ctrl-C in its terminal)")  # fmt: skip
            return 1
        lock.truncate(0)
        lock.write(str(os.getpid()))
        lock.flush()
        started = time.monotonic()
        urls, stack = start_stack(settings)
        try:
            _run_migrations(urls.database_url)
            _print_urls(urls)
            supervisor = Supervisor(entries, child_env(urls.as_env()), say=_say)
            _say(f"starting {len(entries)} processes: {', '.join(e.name for e in entries)} "
                 f"(servers ready in {time.monotonic() - started:.1f}s); Ctrl-C stops everything")  # fmt: skip
            asyncio.run(supervisor.run())
            if supervisor.deaths:
                _say("processes that died while running: "
                     + ", ".join(f"{name} x{count}" for name, count in sorted(supervisor.deaths.items())))  # fmt: skip
        finally:
            if stack is not None:
                _say("stopping the embedded servers")
                stack.stop()
        _say("stopped")
    return 0


def cmd_health(args: argparse.Namespace, settings: Settings) -> int:
    from geniehelper.health import read_health
    from geniehelper.redis_conn import create_arq_redis
    from geniehelper.stack import resolve_urls

    async def check() -> int:
        redis = await create_arq_redis(resolve_urls(settings).redis_url)
        try:
            processes = await read_health(redis)
        finally:
            await redis.aclose()
        stale = settings.health_stale_after_s
        roles_seen = {p.role for p in processes if p.age_s <= stale}
        missing = sorted(set(args.role) - roles_seen)
        if args.json:
            print(json.dumps({
                "processes": [p.__dict__ for p in processes], "missing_roles": missing,
            }, default=str))  # fmt: skip
        else:
            for p in processes:
                state = "ok" if p.age_s <= stale else "STALE"
                print(f"{p.role:<20} {state:<6} {p.host}:{p.pid:<8} last beat {p.age_s:5.1f}s ago  {p.details}")
            for role in missing:
                print(f"{role:<20} MISSING")
        return 1 if missing or not processes else 0

    return asyncio.run(check())


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from arq.worker import run_worker

    from workers import settings_for_queue

    run_worker(settings_for_queue(args.queue, settings))
    return 0


def cmd_scheduler(args: argparse.Namespace, settings: Settings) -> int:
    from geniehelper.stack import resolve_urls
    from schedulers import SCHEDULERS
    from schedulers.base import run_scheduler

    urls = resolve_urls(settings)
    run_scheduler(SCHEDULERS[args.name](), settings, urls.database_url, urls.redis_url)
    return 0


def cmd_enqueue(args: argparse.Namespace, settings: Settings) -> int:
    from geniehelper.contracts import ALL_CONTRACTS
    from geniehelper.db import Database
    from geniehelper.jobspec import InvalidPayload, JobRegistry, UnknownJob
    from geniehelper.queue import JobQueue
    from geniehelper.quotas import QuotaExceeded, load_tier_limits
    from geniehelper.redis_conn import create_arq_redis
    from geniehelper.stack import resolve_urls

    async def enqueue() -> int:
        urls = resolve_urls(settings)
        db = await Database.open(urls.database_url, min_size=1, max_size=2)
        redis = await create_arq_redis(urls.redis_url)
        try:
            queue = JobQueue(db, redis, JobRegistry(ALL_CONTRACTS), load_tier_limits())
            job = await queue.enqueue(args.job, args.payload, user_id=args.user, key=args.key)
        except (InvalidPayload, UnknownJob, QuotaExceeded, ValueError) as exc:
            _say(f"refused: {exc}")
            return 2
        finally:
            await redis.aclose()
            await db.close()
        print(json.dumps({"id": str(job.id), "job": job.job_name, "status": job.status,
                          "duplicate": job.duplicate}))  # fmt: skip
        return 0

    return asyncio.run(enqueue())


COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
    "version": cmd_version,
    "migrate": cmd_migrate,
    "services": cmd_services,
    "up": cmd_up,
    "health": cmd_health,
    "worker": cmd_worker,
    "scheduler": cmd_scheduler,
    "enqueue": cmd_enqueue,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="geniehelper", description="GenieHelper job platform: run processes, manage the stack, enqueue jobs."
    )
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("version", help="print the version")
    sub.add_parser("migrate", help="apply the database migrations (starts the embedded stack if needed)")
    sub.add_parser("services", help="run only the embedded PostgreSQL and Redis-compatible server, until Ctrl-C")
    up = sub.add_parser("up", help="run every Procfile process (with the embedded servers when URLs are unset)")
    up.add_argument("--procfile", default="Procfile", help="default: ./Procfile")
    health = sub.add_parser("health", help="list live processes; exit 1 if a --role is missing or stale")
    health.add_argument("--role", action="append", default=[], help="a role that must be alive (repeatable)")
    health.add_argument("--json", action="store_true")
    worker = sub.add_parser("worker", help="run an arq worker for one queue")
    worker.add_argument("queue", choices=["default", "media"])
    scheduler = sub.add_parser("scheduler", help="run one scheduler process (leader-elected; copies are safe)")
    scheduler.add_argument("name", choices=_scheduler_names())
    enqueue = sub.add_parser("enqueue", help="enqueue a job for a creator, as services do")
    enqueue.add_argument("job")
    enqueue.add_argument("--payload", required=True, help="the payload as a JSON object")
    enqueue.add_argument("--user", required=True, help="the creator's uuid")
    enqueue.add_argument("--key", help="a logical key: enqueueing the same key again creates nothing")
    return parser


def _scheduler_names() -> list[str]:
    from schedulers import SCHEDULERS

    return sorted(SCHEDULERS)


ROLE_OF_COMMAND: dict[str, Callable[[argparse.Namespace], str]] = {
    "worker": lambda a: "worker" if a.queue == "default" else f"{a.queue}_worker",
    "scheduler": lambda a: str(a.name),
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = load_settings()
    from geniehelper.logs import configure_logging
    from geniehelper.stack import NoServers

    role_of = ROLE_OF_COMMAND.get(args.command)
    configure_logging(settings, role_of(args) if role_of else args.command)
    try:
        return COMMANDS[args.command](args, settings)
    except NoServers as exc:
        _say(str(exc))
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
