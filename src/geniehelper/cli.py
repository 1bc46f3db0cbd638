"""The ops CLI. `geniehelper --help` lists the commands; each says what it does."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import os
import shlex
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geniehelper import __version__
from geniehelper.ops import cli as ops_cli  # argparse only: the commands import what they use
from geniehelper.ops import cli_queues as ops_cli_queues
from geniehelper.segments import cli as segments_cli
from geniehelper.settings import Settings, load_settings, mask_url
from geniehelper.sync import cli as fans_cli

if TYPE_CHECKING:
    from geniehelper.embedded import StackUrls


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

    given = settings.migrate_database_url or settings.database_url
    if given:  # migrations need PostgreSQL only: a server named is the one migrated, nothing embedded starts
        _run_migrations(given)
        return 0
    urls, stack = start_stack(settings)
    try:
        _run_migrations(urls.owner_url)
    finally:
        if stack is not None:
            stack.stop()
    return 0


def _print_urls(urls: Any) -> None:
    _say("servers:")
    for name, value in urls.as_env().items():  # passwords masked
        print(f"  export {name}={mask_url(value)}", file=sys.stderr, flush=True)


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
        _run_migrations(urls.owner_url)
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
    from geniehelper.embedded import free_port, port_is_free
    from geniehelper.stack import start_stack
    from geniehelper.supervisor import ProcfileEntry, Supervisor, child_env, parse_procfile

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
            _run_migrations(urls.owner_url)
            _print_urls(urls)
            env = child_env(urls.as_env())
            if any(entry.name == "web" for entry in entries):
                if "WEB_PORT" not in os.environ:  # the default port, unless something else holds it
                    env["WEB_PORT"] = str(settings.web_port if port_is_free(settings.web_port) else free_port())
                auth = "tokens from WEB_TOKENS" if settings.web_tokens else "no WEB_TOKENS: every call answers 401"
                if settings.web_tokens is None and stack is not None:  # the embedded stack: a dev admin token
                    from geniehelper.demo import development_web_token

                    token = development_web_token(settings.data_dir)
                    env["WEB_TOKENS"] = json.dumps({"dev-admin": {"token": token, "role": "admin"}})
                    auth = f"admin token in {settings.data_dir / 'web-admin.token'}"
                base = f"http://{settings.web_host}:{env['WEB_PORT']}"
                _say(f"web: the dashboard at {base}/ and the HTTP API at {base}/api ({auth})")
            if stack is not None and settings.ollama_url is None and any(e.name == "media_worker" for e in entries):
                entries.append(_local_ai_entry(settings, env))
            demo = stack is not None and not args.no_demo
            if not demo:
                given = "the servers were given (DATABASE_URL, REDIS_URL): it writes a demo creator, so it runs on the "
                why = "--no-demo" if args.no_demo else given + "embedded stack only"
                _say(f"demo: not started ({why})")
            if demo:
                from geniehelper.demo import development_key

                if settings.credentials_enc_key_b64 is None:
                    env["CREDENTIALS_ENC_KEY_B64"] = development_key(settings.data_dir)
                    _say(f"using the development credentials key in {settings.data_dir / 'credentials.key'}")
                sandbox_url = f"http://127.0.0.1:{free_port()}"
                # Register the sandbox as a platform: tokens go only to registered addresses.
                env["PLATFORM_API_URLS"] = json.dumps({**settings.platform_api_urls, "sandbox": sandbox_url})
                entries.append(ProcfileEntry("sandbox_platform", f"geniehelper sandbox-platform --port "
                                                                 f"{sandbox_url.rsplit(':', 1)[1]}"))  # fmt: skip
            supervisor = Supervisor(entries, env, say=_say)
            _say(f"starting {len(entries)} processes: {', '.join(e.name for e in entries)} "
                 f"(servers ready in {time.monotonic() - started:.1f}s); Ctrl-C stops everything")  # fmt: skip

            async def run() -> None:
                seeding = None
                if demo:
                    seeding = asyncio.create_task(
                        _seed_demo(urls, settings, sandbox_url, env["CREDENTIALS_ENC_KEY_B64"],
                                   media=any(e.name == "media_worker" for e in entries))
                    )
                await supervisor.run()
                if seeding is not None:
                    seeding.cancel()

            asyncio.run(run())
            if supervisor.deaths:
                _say("processes that died while running: "
                     + ", ".join(f"{name} x{count}" for name, count in sorted(supervisor.deaths.items())))  # fmt: skip
        finally:
            if stack is not None:
                _say("stopping the embedded servers")
                stack.stop()
        _say("stopped")
    return 0


async def _seed_demo(urls: StackUrls, settings: Settings, sandbox_url: str, key_b64: str, *, media: bool) -> None:
    from geniehelper.crypto import CredentialCipher
    from geniehelper.demo import DEMO_MEDIA_JOBS, seed_demo, seed_demo_media

    try:
        cipher = CredentialCipher.from_settings_values(key_b64, "k1", None)
        user_id = await seed_demo(urls.database_url, urls.owner_url, sandbox_url, cipher)
    except Exception as exc:  # the demo is a convenience: never take the system down with it
        _say(f"demo: could not set up the demo creator: {type(exc).__name__}: {exc}")
        return
    _say(f"demo: creator {user_id} is connected to the sandbox platform at {sandbox_url}; 3 posts are due in "
         "15, 30 and 45 s: watch post_scheduler dispatch them and worker publish them")  # fmt: skip
    if not media:
        return
    try:
        await seed_demo_media(urls.database_url, urls.redis_url, settings, user_id)
    except Exception as exc:
        _say(f"demo: could not set up the demo image: {type(exc).__name__}: {exc}")
        return
    _say(f"demo: one image stored for the demo creator; media_worker runs {', '.join(n for n, _ in DEMO_MEDIA_JOBS)} "
         "on it")


def _local_ai_entry(settings: Settings, env: dict[str, str]) -> Any:
    """The local Ollama-compatible server as a process of `up`, its URLs given to the others (on the
    embedded stack, when OLLAMA_URL is unset: a real Ollama is used by setting it)."""
    from geniehelper.embedded import free_port
    from geniehelper.supervisor import ProcfileEntry

    port = free_port()
    env["OLLAMA_URL"] = f"http://127.0.0.1:{port}"
    if settings.stt_url is None:
        env["STT_URL"] = f"{env['OLLAMA_URL']}/v1/audio/transcriptions"
    _say(f"ai: the local Ollama-compatible server at {env['OLLAMA_URL']} (deterministic answers, not a model; "
         f"set OLLAMA_URL for a real Ollama), speech to text at {env.get('STT_URL', settings.stt_url)}")  # fmt: skip
    return ProcfileEntry("local_ai", f"geniehelper local-ai --port {port} --model {shlex.quote(settings.ollama_model)}")


def cmd_local_ai(args: argparse.Namespace, settings: Settings) -> int:
    from geniehelper.ai.local_server import serve_local_ai

    serve_local_ai(port=args.port, models=args.model or [settings.ollama_model])
    return 0


def cmd_sandbox_platform(args: argparse.Namespace, _settings: Settings) -> int:
    from geniehelper.platforms.sandbox import SandboxPlatform, serve_sandbox

    serve_sandbox(port=args.port, platform=SandboxPlatform(max_page_size=args.max_page_size))
    return 0


def cmd_keys(args: argparse.Namespace, settings: Settings) -> int:
    from geniehelper.crypto import CredentialError
    from geniehelper.db import Database
    from geniehelper.domain import platform as connections
    from geniehelper.stack import resolve_urls

    async def each_creator(db: Database) -> list[Any]:
        async with db.system_tx() as conn:
            return [r["id"] for r in await conn.fetch("select id from creators order by id")]

    async def rotate() -> int:
        try:
            cipher = settings.credential_cipher()
        except CredentialError as exc:
            _say(f"cannot rotate: {exc}")
            return 2
        db = await Database.open(resolve_urls(settings).database_url, min_size=1, max_size=2)
        counts = {"rotated": 0, "current": 0, "changed_meanwhile": 0, "unreadable": 0}
        try:
            for user_id in await each_creator(db):  # as each creator in turn: RLS applies to the rewrite too
                async with db.creator_tx(user_id) as conn:
                    for row in await conn.fetch(connections.ALL_WITH_TOKENS):
                        try:
                            counts[await connections.rotate_tokens(conn, cipher, row)] += 1
                        except CredentialError as exc:
                            counts["unreadable"] += 1
                            _say(f"connection {row['id']}: cannot re-encrypt ({exc}); "
                                 "is its old key in CREDENTIALS_OLD_KEYS?")  # fmt: skip
        finally:
            await db.close()
        _say(f"re-encrypted {counts['rotated']} connections' tokens with key {cipher.active_key_id!r}; "
             f"{counts['current']} already current, {counts['changed_meanwhile']} reconnected meanwhile (left as "
             f"stored), {counts['unreadable']} could not be read")  # fmt: skip
        return 1 if counts["unreadable"] else 0

    async def status() -> int:
        db = await Database.open(resolve_urls(settings).database_url, min_size=1, max_size=2)
        by_key: dict[str, int] = {}
        try:
            for user_id in await each_creator(db):
                async with db.creator_tx(user_id) as conn:
                    for row in await conn.fetch(connections.TOKENS_BY_KEY):
                        by_key[row["key_id"]] = by_key.get(row["key_id"], 0) + row["connections"]
        finally:
            await db.close()
        if args.json:
            print(json.dumps({"connections_by_key": by_key}))
        else:
            for key_id, count in sorted(by_key.items()):
                print(f"{key_id}\t{count}")
        return 0

    return asyncio.run(rotate() if args.keys_command == "rotate" else status())


def cmd_health(args: argparse.Namespace, settings: Settings) -> int:
    from redis.exceptions import RedisError

    from geniehelper.health import read_health
    from geniehelper.runtime.transport import create_arq_redis
    from geniehelper.settings import mask_url
    from geniehelper.stack import resolve_urls

    async def check() -> int:
        redis_url = settings.redis_url or resolve_urls(settings).redis_url  # it reads Redis only
        try:
            redis = await create_arq_redis(redis_url)
            try:
                processes = await read_health(redis)
            finally:
                await redis.aclose()
        except (OSError, RedisError) as exc:  # no health to read: every role counts as missing
            _say(f"health: cannot read health keys from {mask_url(redis_url)}: {type(exc).__name__}: {exc}")
            return 1
        stale = settings.health_stale_after_s
        roles_seen = {p.role for p in processes if p.age_s <= stale}
        missing = sorted(set(args.role) - roles_seen)
        # Alive but its last round failed (e.g. PostgreSQL unreachable): shown, yet not a missing role.
        failing = sorted({p.role for p in processes if p.age_s <= stale and p.details.get("failing")})
        if args.json:
            print(json.dumps({
                "processes": [p.__dict__ for p in processes], "missing_roles": missing, "failing_roles": failing,
            }, default=str))  # fmt: skip
        else:
            for p in processes:
                state = "STALE" if p.age_s > stale else "FAILING" if p.details.get("failing") else "ok"
                print(f"{p.role:<20} {state:<7} {p.host}:{p.pid:<8} last beat {p.age_s:5.1f}s ago  {p.details}")
            for role in missing:
                print(f"{role:<20} MISSING")
            if not processes:
                print("no live processes (none has refreshed its health key recently)")
        return 1 if missing or not processes else 0

    return asyncio.run(check())


def cmd_web(args: argparse.Namespace, settings: Settings) -> int:
    from geniehelper.web.server import run_web

    return run_web(settings)


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from geniehelper.runtime.worker import run_worker
    from workers import settings_for_queue

    if args.queue not in settings.queues:
        _say(f"worker: unknown queue {args.queue!r}; configured queues (QUEUES): {', '.join(sorted(settings.queues))}")
        return 2

    asyncio.run(run_worker(settings_for_queue(args.queue, settings)))
    return 0


def cmd_scheduler(args: argparse.Namespace, settings: Settings) -> int:
    from geniehelper.stack import resolve_urls
    from schedulers import SCHEDULERS
    from schedulers.host import run_schedulers

    urls = resolve_urls(settings)
    names = _scheduler_selection(args.name)
    role = _scheduler_role(args)
    run_schedulers([SCHEDULERS[name]() for name in names], settings, urls.database_url, urls.redis_url,
                   role=None if role in names else role)  # fmt: skip
    return 0


def _scheduler_selection(names: list[str]) -> list[str]:
    """`all` means every scheduler; each named once, in a stable order."""
    return _scheduler_names() if "all" in names else sorted(set(names))


def _scheduler_role(args: argparse.Namespace) -> str:
    """One scheduler runs as its own role; several in one process run as `scheduler`."""
    names = _scheduler_selection(args.name)
    return names[0] if len(names) == 1 else "scheduler"


def cmd_enqueue(args: argparse.Namespace, settings: Settings) -> int:
    import asyncpg

    from geniehelper.db import Database
    from geniehelper.runtime.definition import InvalidPayload, UnknownJob
    from geniehelper.runtime.queue import JobQueue
    from geniehelper.runtime.quotas import QuotaExceeded
    from geniehelper.runtime.registry import discover
    from geniehelper.runtime.transport import create_arq_redis
    from geniehelper.stack import resolve_urls

    async def enqueue() -> int:
        urls = resolve_urls(settings)
        db = await Database.open(urls.database_url, min_size=1, max_size=2)
        redis = await create_arq_redis(urls.redis_url)
        try:
            registry = discover(settings.job_packages)
            queue = JobQueue(db, redis, registry, fair_queues=settings.fair_queues)
            job = await queue.enqueue(args.job, args.payload, user_id=args.user, key=args.key)
        except (InvalidPayload, UnknownJob, QuotaExceeded, LookupError, ValueError) as exc:
            _say(f"refused: {exc}")
            return 2
        except asyncpg.ForeignKeyViolationError:
            _say(f"refused: no creator {args.user}")
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
    "sandbox-platform": cmd_sandbox_platform,
    "local-ai": cmd_local_ai,
    "keys": cmd_keys,
    "web": cmd_web,
    "jobs": ops_cli.cmd_jobs,
    "queues": ops_cli_queues.cmd_queues,
    "alerts": ops_cli_queues.cmd_alerts,
    "segments": segments_cli.cmd_segments,
    "fans": fans_cli.cmd_fans,
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
    up.add_argument("--no-demo", action="store_true", help="on the embedded stack, skip the sandbox platform demo")
    health = sub.add_parser("health", help="list live processes; exit 1 if a --role is missing or stale")
    health.add_argument("--role", action="append", default=[], help="a role that must be alive (repeatable)")
    health.add_argument("--json", action="store_true")
    worker = sub.add_parser("worker", help="run an arq worker for one queue")
    worker.add_argument("queue", help="a configured queue (QUEUES): default, bulk, media, ...")
    scheduler = sub.add_parser(
        "scheduler", help="run schedulers in one process, each leader-elected (copies are safe); `all`: every one"
    )
    scheduler.add_argument("name", nargs="+", choices=["all", *_scheduler_names()])
    enqueue = sub.add_parser("enqueue", help="enqueue a job for a creator, as services do")
    enqueue.add_argument("job")
    enqueue.add_argument("--payload", required=True, help="the payload as a JSON object")
    enqueue.add_argument("--user", required=True, type=_creator_id, help="the creator's uuid")
    enqueue.add_argument("--key", help="a logical key: enqueueing the same key again creates nothing")
    sub.add_parser("web", help="serve the dashboard and the HTTP API (WEB_HOST:WEB_PORT, tokens from WEB_TOKENS)")
    sandbox = sub.add_parser("sandbox-platform", help="serve the sandbox creator platform (development and tests)")
    sandbox.add_argument("--port", type=int, default=8765)
    sandbox.add_argument("--max-page-size", type=int, default=200, help="the largest page a listing serves")
    local_ai = sub.add_parser(
        "local-ai", help="serve the local Ollama-compatible vision and speech-to-text server (development and tests)"
    )
    local_ai.add_argument("--port", type=int, default=11434, help="default: 11434, Ollama's own")
    local_ai.add_argument("--model", action="append", help="a model name it serves (repeatable; default OLLAMA_MODEL)")
    keys = sub.add_parser("keys", help="credential keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    keys_sub.add_parser("rotate", help="re-encrypt every stored token (both columns) with the active key "
                        "(CREDENTIALS_ENC_KEY_ID); safe to rerun: it resumes")  # fmt: skip
    status = keys_sub.add_parser("status", help="connections with stored tokens, per key id")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    ops_cli.add_parsers(sub)
    ops_cli_queues.add_parsers(sub)
    segments_cli.add_parsers(sub)
    fans_cli.add_parsers(sub)
    return parser


def _creator_id(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a creator uuid") from None


def _scheduler_names() -> list[str]:
    from schedulers import SCHEDULERS

    return sorted(SCHEDULERS)


ROLE_OF_COMMAND: dict[str, Callable[[argparse.Namespace], str]] = {
    "worker": lambda a: "worker" if a.queue == "default" else f"{a.queue}_worker",
    "scheduler": _scheduler_role,
    "sandbox-platform": lambda a: "sandbox_platform",
    "local-ai": lambda a: "local_ai",
    "web": lambda a: "web",
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = load_settings()
    from geniehelper.db import LoginLacksRole, PrivilegedLogin
    from geniehelper.logs import configure_logging
    from geniehelper.migrations import MigrationError
    from geniehelper.stack import NoServers
    from geniehelper.web import WebConfigError

    role_of = ROLE_OF_COMMAND.get(args.command)
    configure_logging(settings, role_of(args) if role_of else args.command)
    try:
        return COMMANDS[args.command](args, settings)
    # One line that says what to do, no traceback.
    except (NoServers, MigrationError, PrivilegedLogin, LoginLacksRole, WebConfigError) as exc:
        _say(str(exc))
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
