"""Outages with real processes: PostgreSQL stopped, valkey killed, a worker paused past its lease.

Each test starts a throw-away embedded stack of its own (durable: fsync on, valkey AOF), a sandbox
platform process, two `geniehelper worker default`, one `geniehelper scheduler outbox_relay job_monitor` and
one `geniehelper scheduler post_scheduler`, with no supervisor: a process that exits stays dead,
so "no process exits" is checked for real. The servers are stopped and started one at a time with
the same command line (same port, same data folder) they were started with.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import pwd
import signal
import socket
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import asyncpg
import httpx
import psutil
import pytest
import redis.asyncio
from arq.constants import in_progress_key_prefix, job_key_prefix

from geniehelper.crypto import CredentialCipher
from geniehelper.db import Database, connect_owner
from geniehelper.domain import platform as connections
from geniehelper.embedded import EmbeddedStack, StackUrls, free_port
from geniehelper.migrations import apply_migrations
from tests.helpers import BIN, ProcessOutput, base_env, spawn

KEY_B64 = base64.b64encode(os.urandom(32)).decode()
# The wire contract (docs/jobs.md): arq job id `<record id>:<dispatch n>` on this sorted set.
DEFAULT_QUEUE = "geniehelper:queue:default"

# Short settings, so leases expire, relays re-drive and schedulers poll within seconds. POST_REQUEUE_AFTER_S is
# post_scheduler's safety net for a post it claimed but whose job it could not record (PostgreSQL went away
# between the two transactions): such a post is claimed again after this long (default 300 s).
FAST = {
    "POST_REQUEUE_AFTER_S": "10",
    "JOB_LEASE_S": "6",
    "JOB_HEARTBEAT_INTERVAL_S": "1",
    "OUTBOX_RELAY_INTERVAL_S": "1",
    "JOB_MONITOR_INTERVAL_S": "1",
    "OUTBOX_RELAY_GRACE_S": "2",
    "POST_SCHEDULER_INTERVAL_S": "2",
    "HEALTH_INTERVAL_S": "1",
    "SCHEDULER_JITTER_S": "0",
    "WORKER_SHUTDOWN_GRACE_S": "2",
    "PLATFORM_TIMEOUT_S": "10",
    "LOG_FORMAT": "json",
    "CREDENTIALS_ENC_KEY_B64": KEY_B64,
}


# --- waiting --------------------------------------------------------------------------------------


async def until(check: Callable[[], Awaitable[bool]], timeout_s: float, what: str, *, every_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")
        await asyncio.sleep(every_s)


def events(output: ProcessOutput, name: str) -> list[dict[str, Any]]:
    """The JSON log lines of one event."""
    found = []
    for line in list(output.lines):
        if f'"{name}"' not in line:
            continue
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and entry.get("event") == name:
                found.append(entry)
    return found


def event_counts(output: ProcessOutput) -> Counter[str]:
    counts: Counter[str] = Counter()
    for line in list(output.lines):
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and isinstance(entry.get("event"), str):
                counts[entry["event"]] += 1
    return counts


# --- the servers, one at a time -------------------------------------------------------------------


@dataclass
class _Command:
    """How a server process was started, to start it again exactly so (same port, data, config)."""

    cmdline: list[str]
    cwd: str
    username: str

    @classmethod
    def of(cls, pid: int) -> _Command:
        proc = psutil.Process(pid)
        return cls(proc.cmdline(), proc.cwd(), proc.username())

    def popen(self, out: IO[bytes] | int) -> subprocess.Popen[bytes]:
        as_user: dict[str, Any] = {}
        if self.username != pwd.getpwuid(os.geteuid()).pw_name:  # PostgreSQL refuses root: it runs as its own user
            as_user = {"user": self.username, "group": self.username, "extra_groups": []}
        return subprocess.Popen(
            self.cmdline, cwd=self.cwd, stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True,
            **as_user,
        )  # fmt: skip


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _valkey_pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class Servers:
    """A test's own EmbeddedStack (durable), whose PostgreSQL and valkey can be stopped and restarted apart."""

    def __init__(self, root: Path) -> None:
        self.stack = EmbeddedStack(root, durable=True)
        self._commands: dict[str, _Command] = {}
        self._started: list[subprocess.Popen[bytes]] = []
        self.pg_port = self.valkey_port = 0

    def start(self) -> StackUrls:
        urls = self.stack.start()
        assert self.stack.is_owner, "the test stack must be this test's own"
        pg, valkey = self.stack.postgres.running_pid_and_port(), self.stack.valkey.running_pid_and_port()
        assert pg and valkey
        (pg_pid, self.pg_port), (valkey_pid, self.valkey_port) = pg, valkey
        # valkey rewrites its process title, so its command is rebuilt as EmbeddedValkey gave it: binary + config.
        valkey_proc = psutil.Process(valkey_pid)
        self._commands = {
            "postgres": _Command.of(pg_pid),
            "valkey": _Command(
                [valkey_proc.exe(), str(self.stack.valkey.conf)], valkey_proc.cwd(), valkey_proc.username()
            ),
        }
        return urls

    def stop_postgres(self) -> None:
        """Fast shutdown (what `pg_ctl stop -m fast` sends: SIGINT), waiting until the postmaster is gone."""
        running = self.stack.postgres.running_pid_and_port()
        assert running is not None, "PostgreSQL is not running"
        os.kill(running[0], signal.SIGINT)
        psutil.Process(running[0]).wait(30)
        assert self.stack.postgres.running_pid_and_port() is None

    def start_postgres(self) -> None:
        with open(self.stack.postgres.log, "ab") as log:
            proc = self._commands["postgres"].popen(log)
        self._started.append(proc)
        deadline = time.monotonic() + 60
        while self.stack.postgres.running_pid_and_port() is None or not _listening(self.pg_port):
            assert proc.poll() is None, f"postgres exited with {proc.returncode}; see {self.stack.postgres.log}"
            assert time.monotonic() < deadline, "postgres did not come back"
            time.sleep(0.1)
        while not self._postgres_ready():
            assert time.monotonic() < deadline, "postgres did not become ready"
            time.sleep(0.1)

    def _postgres_ready(self) -> bool:
        with contextlib.suppress(OSError):
            lines = (self.stack.postgres.pgdata / "postmaster.pid").read_text().splitlines()
            return len(lines) >= 8 and lines[7].strip() == "ready"
        return False

    def kill_valkey(self) -> None:
        running = self.stack.valkey.running_pid_and_port()
        assert running is not None, "valkey is not running"
        os.kill(running[0], signal.SIGKILL)
        psutil.Process(running[0]).wait(10)
        assert not _listening(self.valkey_port)

    def start_valkey(self) -> None:
        """The same binary and config file: same port, same data folder, so its append-only file is reloaded."""
        proc = self._commands["valkey"].popen(subprocess.DEVNULL)
        self._started.append(proc)
        deadline = time.monotonic() + 60
        while not _valkey_pong(self.valkey_port):
            assert proc.poll() is None, f"valkey exited with {proc.returncode}; see {self.stack.valkey.log}"
            assert time.monotonic() < deadline, "valkey did not come back"
            time.sleep(0.1)

    def close(self) -> None:
        self.stack.stop()
        for proc in self._started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)


# --- the rig: servers, sandbox platform and our processes -------------------------------------------


@dataclass
class Creator:
    user_id: uuid.UUID
    account_id: str
    connection_id: uuid.UUID


@dataclass
class Rig:
    servers: Servers
    urls: StackUrls
    env: dict[str, str]
    sandbox_url: str
    http: httpx.AsyncClient
    sandbox: ProcessOutput
    workers: list[ProcessOutput] = field(default_factory=list)
    relay: ProcessOutput | None = None
    post_scheduler: ProcessOutput | None = None

    @property
    def processes(self) -> dict[str, ProcessOutput]:
        named = {"sandbox": self.sandbox, **{f"worker{i + 1}": w for i, w in enumerate(self.workers)}}
        if self.relay is not None:
            named["outbox_relay"] = self.relay
        if self.post_scheduler is not None:
            named["post_scheduler"] = self.post_scheduler
        return named

    def spawn(self, *args: str) -> ProcessOutput:
        return spawn([str(BIN / "geniehelper"), *args], self.env)

    def exited(self) -> dict[str, int]:
        return {name: p.proc.returncode for name, p in self.processes.items() if p.proc.poll() is not None}

    def logs(self) -> str:
        """The tail of every process's log, for failure messages (the whole logs are kept under tmp_path/logs)."""
        parts = [
            f"--- {name} (last 15 lines)\n" + "\n".join(line[:400] for line in p.lines[-15:])
            for name, p in self.processes.items()
        ]
        return "\n".join(parts)

    async def start_processes(self) -> None:
        self.workers = [self.spawn("worker", "default") for _ in range(2)]
        self.relay = self.spawn("scheduler", "outbox_relay", "job_monitor")
        self.post_scheduler = self.spawn("scheduler", "post_scheduler")
        for output in [*self.workers, self.relay, self.post_scheduler]:
            await asyncio.to_thread(output.wait_for, r'"event": "process.ready"', 60)

    # Arranging and inspecting: fresh connections each time, so an outage leaves nothing broken behind.
    @contextlib.asynccontextmanager
    async def owner(self) -> AsyncIterator[asyncpg.Connection]:
        conn = await connect_owner(self.urls.owner_url)
        try:
            yield conn
        finally:
            await conn.close()

    async def add_creators(self, n: int) -> list[Creator]:
        cipher = CredentialCipher.from_settings_values(KEY_B64, "k1", None)
        creators = []
        db = await Database.open(self.urls.database_url, min_size=1, max_size=2)
        try:
            for _ in range(n):
                response = await self.http.post(f"{self.sandbox_url}/admin/accounts", json={})
                response.raise_for_status()
                account = response.json()
                async with self.owner() as owner:
                    user_id: uuid.UUID = await owner.fetchval(
                        "insert into creators (email, tier) values ($1, 'pro') returning id",
                        f"{uuid.uuid4().hex}@example.test",
                    )
                async with db.creator_tx(user_id) as conn:
                    connection_id = await connections.connect_account(
                        conn, cipher, user_id=user_id, platform="sandbox", external_account_id=account["account_id"],
                        token=account["token"],
                    )  # fmt: skip
                creators.append(Creator(user_id, account["account_id"], connection_id))
        finally:
            await db.close()
        return creators

    async def schedule_posts(self, creator: Creator, due: list[datetime]) -> list[uuid.UUID]:
        """One content post and one scheduled post per due time, as the creator (RLS applies)."""
        captions = [f"outage post {uuid.uuid4().hex[:12]}" for _ in due]
        db = await Database.open(self.urls.database_url, min_size=1, max_size=2)
        try:
            async with db.creator_tx(creator.user_id) as conn:
                rows = await conn.fetch(
                    """
                    with cp as (
                        insert into content_posts (user_id, caption, hashtags, platform_targets, status)
                        select $1, c, '{outage}', '{sandbox}', 'scheduled' from unnest($2::text[]) as c
                        returning id, caption
                    )
                    insert into scheduled_posts (user_id, content_post_id, platform_connection_id, platform,
                                                 scheduled_time)
                    select $1, cp.id, $3, 'sandbox', t.due
                      from cp join unnest($2::text[], $4::timestamptz[]) as t(caption, due) on t.caption = cp.caption
                    returning id
                    """,
                    creator.user_id, captions, creator.connection_id, due,
                )  # fmt: skip
        finally:
            await db.close()
        return [r["id"] for r in rows]

    async def sandbox_posts(self, account_id: str) -> list[dict[str, Any]]:
        response = await self.http.get(f"{self.sandbox_url}/admin/accounts/{account_id}/posts")
        response.raise_for_status()
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    async def sandbox_requests(self) -> dict[str, int]:
        response = await self.http.get(f"{self.sandbox_url}/admin/requests")
        response.raise_for_status()
        counts: dict[str, int] = response.json()["counts"]
        return counts

    async def published(self, creators: list[Creator]) -> int:
        return sum([len(await self.sandbox_posts(c.account_id)) for c in creators])

    async def post_statuses(self, ids: list[uuid.UUID]) -> Counter[str]:
        async with self.owner() as owner:
            rows = await owner.fetch("select status from scheduled_posts where id = any($1::uuid[])", ids)
        return Counter(r["status"] for r in rows)

    async def job_statuses(self) -> Counter[str]:
        async with self.owner() as owner:
            rows = await owner.fetch("select status from media_jobs")
        return Counter(r["status"] for r in rows)

    async def hold(self, seconds: float, evidence: Callable[[], bool] | None = None) -> bool:
        """Keep an outage going for `seconds`, checking all along that no process exits; whether the
        `evidence` (a log condition) showed up while it lasted."""
        deadline = time.monotonic() + seconds
        seen = False
        while (left := deadline - time.monotonic()) > 0:
            assert not self.exited(), f"processes exited during the outage: {self.exited()}\n{self.logs()}"
            seen = seen or (evidence is not None and evidence())
            await asyncio.sleep(min(0.5, left))
        return seen or (evidence is not None and evidence())

    def stop_processes(self) -> None:
        alive = [p for p in self.processes.values() if p.proc.poll() is None]
        for p in alive:
            with contextlib.suppress(ProcessLookupError):
                p.proc.send_signal(signal.SIGCONT)  # a paused worker would never see its SIGTERM
                p.proc.send_signal(signal.SIGTERM)
        for p in alive:
            try:
                p.proc.wait(30)
            except subprocess.TimeoutExpired:
                p.proc.kill()
                p.proc.wait(10)


@pytest.fixture
async def make_rig(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Rig]]]:
    """Builds a rig on a stack of this test's own; stops everything (processes, then servers) at the end."""
    rigs: list[Rig] = []
    servers = Servers(tmp_path / "stack")
    http = httpx.AsyncClient(timeout=10)

    async def build(**settings: str) -> Rig:
        urls = servers.start()
        conn = await connect_owner(urls.owner_url)
        try:
            await apply_migrations(conn)
        finally:
            await conn.close()
        port = free_port()
        registry = json.dumps({"sandbox": f"http://127.0.0.1:{port}"})  # where tokens may go
        env = base_env(**{**FAST, **settings, **urls.as_env(), "PLATFORM_API_URLS": registry})
        sandbox = spawn([str(BIN / "geniehelper"), "sandbox-platform", "--port", str(port)], env)
        rig = Rig(servers, urls, env, f"http://127.0.0.1:{port}", http, sandbox)
        rigs.append(rig)

        async def sandbox_answers() -> bool:
            assert sandbox.proc.poll() is None, f"the sandbox platform exited:\n{sandbox.text()}"
            with contextlib.suppress(httpx.HTTPError):
                return (await http.get(f"{rig.sandbox_url}/admin/requests", timeout=1)).status_code == 200
            return False

        await until(sandbox_answers, 30, "the sandbox platform to answer")
        await rig.start_processes()
        return rig

    try:
        yield build
    finally:
        for rig in rigs:
            rig.stop_processes()
            (tmp_path / "logs").mkdir(exist_ok=True)
            for name, output in rig.processes.items():  # kept by pytest under its basetemp, to read after a failure
                (tmp_path / "logs" / f"{name}.log").write_text(output.text() + "\n")
        await http.aclose()
        servers.close()


def burst_due_times(n: int) -> list[datetime]:
    """A burst: 100 posts due over the next few seconds, and the rest due already (all dispatched at once)."""
    now = datetime.now(UTC)
    soon = [now + timedelta(seconds=2 + i * 0.02) for i in range(min(n, 100))]
    already = [now - timedelta(seconds=1)] * max(0, n - 100)
    return soon + already


async def schedule_burst(rig: Rig, creators: list[Creator], n: int) -> list[uuid.UUID]:
    due = burst_due_times(n)
    ids: list[uuid.UUID] = []
    for k, creator in enumerate(creators):
        ids += await rig.schedule_posts(creator, due[k :: len(creators)])
    assert len(ids) == n
    return ids


async def unsettled(rig: Rig) -> list[dict[str, Any]]:
    """Each record not completed, with what Redis holds of its current dispatch (for a failure message)."""
    async with rig.owner() as owner:
        rows = await owner.fetch(
            "select id, status, attempts, dispatch_no, enqueued_at, run_at, error_kind, error from media_jobs"
            " where status <> 'completed' limit 20"
        )
    client = redis.asyncio.Redis.from_url(rig.urls.redis_url)
    try:
        found = []
        for row in rows:
            job_id = f"{row['id']}:{row['dispatch_no']}"
            found.append({
                **{k: str(v) for k, v in dict(row).items()},
                "job_key": bool(await client.exists(job_key_prefix + job_id)),
                "in_progress_ttl_ms": await client.pttl(in_progress_key_prefix + job_id),
                "queue_score": await client.zscore(DEFAULT_QUEUE, job_id),
            })  # fmt: skip
        return found
    finally:
        await client.aclose()


async def assert_all_published_once(rig: Rig, creators: list[Creator], post_ids: list[uuid.UUID]) -> None:
    """Every post `posted` exactly once on the platform, every job record `completed`."""

    async def settled() -> bool:
        async with rig.owner() as owner:  # a record settled for good in any other way fails the test at once
            given_up = await owner.fetch(
                "select id, status, attempts, error_kind, error from media_jobs where status not in ('queued',"
                " 'processing', 'completed')"
            )
        assert not given_up, f"job records ended without completing: {[dict(r) for r in given_up]}"
        posts_done = await rig.post_statuses(post_ids) == Counter(posted=len(post_ids))
        return posts_done and set(await rig.job_statuses()) == {"completed"}

    try:
        await until(settled, 60, "every post posted and every job record completed", every_s=1.0)
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}\nposts {await rig.post_statuses(post_ids)}, records {await rig.job_statuses()}\n"
            f"unsettled records and their dispatch in Redis: {await unsettled(rig)}\n{rig.logs()}"
        ) from None
    async with rig.owner() as owner:
        records = await owner.fetch(
            "select (payload->>'scheduled_post_id')::uuid as post_id, status from media_jobs"
            " where job_name = 'publish_post'"
        )
        posted = {
            r["id"]: r["external_post_id"]
            for r in await owner.fetch(
                "select id, external_post_id from scheduled_posts where id = any($1::uuid[])", post_ids
            )
        }
    # One job record per post, all completed.
    assert len(records) == len(post_ids) and {r["post_id"] for r in records} == set(post_ids)
    # On the platform: exactly one post per scheduled post, none twice, none missing.
    on_platform: list[dict[str, Any]] = []
    for creator in creators:
        on_platform += await rig.sandbox_posts(creator.account_id)
    keys = Counter(p["idempotency_key"] for p in on_platform)
    assert [k for k, n in keys.items() if n > 1] == []
    assert len(on_platform) == len(post_ids)
    assert {p["external_post_id"] for p in on_platform} == set(posted.values())


# --- the tests ----------------------------------------------------------------------------------------


async def start_burst(make_rig: Callable[..., Awaitable[Rig]]) -> tuple[Rig, list[Creator], list[uuid.UUID]]:
    """A rig publishing a 500-post burst, returned mid-burst: some posts are out, most are not."""
    rig = await make_rig()
    creators = await rig.add_creators(5)
    post_ids = await schedule_burst(rig, creators, 500)

    async def some_out() -> bool:
        return await rig.published(creators) >= 50

    await until(some_out, 60, "the burst to start")
    out_before = await rig.published(creators)
    assert out_before < 400, f"the burst was over before the outage ({out_before} of 500 out)"
    return rig, creators, post_ids


async def test_postgres_stopped_40s_during_a_burst_loses_nothing_and_no_process_exits(
    make_rig: Callable[..., Awaitable[Rig]],
) -> None:
    rig, creators, post_ids = await start_burst(make_rig)
    rig.servers.stop_postgres()

    def outage_noticed() -> bool:
        # Each worker had deliveries during the outage: their starts were deferred (arq Retry), not failed.
        workers_noticed = all(events(w, "job.start_deferred") for w in rig.workers)
        assert rig.relay and rig.post_scheduler
        schedulers_noticed = all(
            any(e.startswith("scheduler.") and e.endswith("_failed") for e in event_counts(s))
            for s in (rig.relay, rig.post_scheduler)
        )
        return workers_noticed and schedulers_noticed

    noticed = await rig.hold(40, outage_noticed)
    rig.servers.start_postgres()
    back_at = datetime.now(UTC)
    assert noticed, f"the outage was not noticed by every process:\n{rig.logs()}"

    await assert_all_published_once(rig, creators, post_ids)
    assert rig.exited() == {}, f"processes exited: {rig.exited()}\n{rig.logs()}"
    # The schedulers say they are back; both workers went on completing jobs once PostgreSQL was back.
    assert rig.relay and rig.post_scheduler
    for scheduler in (rig.relay, rig.post_scheduler):  # a scheduler retries every 10 s at most while failing
        await asyncio.to_thread(scheduler.wait_for, r'"event": "scheduler.recovered"', 15)
    for worker in rig.workers:
        assert any(datetime.fromisoformat(e["timestamp"]) > back_at for e in events(worker, "job.completed"))


async def test_valkey_killed_and_restarted_after_10s_loses_nothing(make_rig: Callable[..., Awaitable[Rig]]) -> None:
    rig, creators, post_ids = await start_burst(make_rig)
    rig.servers.kill_valkey()

    def workers_lost_redis() -> bool:
        return all(events(w, "worker.redis_lost") for w in rig.workers)

    noticed = await rig.hold(10, workers_lost_redis)
    rig.servers.start_valkey()
    assert noticed, f"a worker did not notice that Redis was gone:\n{rig.logs()}"

    await assert_all_published_once(rig, creators, post_ids)
    assert rig.exited() == {}, f"processes exited: {rig.exited()}\n{rig.logs()}"
    for i, worker in enumerate(rig.workers):
        assert events(worker, "worker.redis_lost"), worker.text()[-3000:]
        assert events(worker, "worker.redis_back"), f"worker{i + 1} never logged worker.redis_back"


async def test_a_paused_worker_past_its_lease_does_not_write_or_publish_again(
    make_rig: Callable[..., Awaitable[Rig]],
) -> None:
    rig = await make_rig(JOB_LEASE_S="4")
    (creator,) = await rig.add_creators(1)
    # The publish call is held 4 s by the platform: the worker that makes it is mid-call when paused.
    fault = {"kind": "slow", "delay_s": 4, "count": 1, "path_prefix": "/v1/posts", "method": "POST",
             "account_id": creator.account_id}  # fmt: skip
    (await rig.http.post(f"{rig.sandbox_url}/admin/faults", json=fault)).raise_for_status()
    (post_id,) = await rig.schedule_posts(creator, [datetime.now(UTC)])

    async def request_in_flight() -> bool:
        return (await rig.sandbox_requests()).get("POST /v1/posts", 0) >= 1

    await until(request_in_flight, 30, "the publish call to reach the platform", every_s=0.05)

    async def one_worker_started() -> bool:
        return len([w for w in rig.workers if events(w, "job.started")]) == 1

    await until(one_worker_started, 5, "the worker making the call to have logged job.started")
    (a,) = (w for w in rig.workers if events(w, "job.started"))
    (b,) = (w for w in rig.workers if w is not a)
    os.kill(a.proc.pid, signal.SIGSTOP)
    paused_at = time.monotonic()
    try:
        # A's lease runs out; job_monitor re-drives the record, outbox_relay pushes it and B takes it over.
        async def posted() -> bool:
            return (await rig.post_statuses([post_id]))["posted"] == 1

        await until(posted, 30, "worker B to publish the post while A is paused")
        assert psutil.Process(a.proc.pid).status() == psutil.STATUS_STOPPED
        assert time.monotonic() - paused_at > 4  # past A's lease
    finally:
        os.kill(a.proc.pid, signal.SIGCONT)

    # A wakes up with its HTTP answer waiting: it must find its lease lost and write nothing.
    await asyncio.to_thread(a.wait_for, r'"event": "job.lease_lost"', 30)
    async with rig.owner() as owner:
        record = await owner.fetchrow(
            "select * from media_jobs where (payload->>'scheduled_post_id')::uuid = $1", post_id
        )
        post = await owner.fetchrow("select * from scheduled_posts where id = $1", post_id)
        attempt = await owner.fetchrow("select * from publish_attempts where scheduled_post_id = $1", post_id)
    assert record is not None and post is not None and attempt is not None
    on_platform = await rig.sandbox_posts(creator.account_id)
    assert len(on_platform) == 1, on_platform
    assert post["status"] == "posted" and post["external_post_id"] == on_platform[0]["external_post_id"]
    assert record["status"] == "completed" and record["attempts"] == 2
    assert record["worker_id"] == f"{socket.gethostname()}:{b.proc.pid}"
    assert record["result"]["external_post_id"] == on_platform[0]["external_post_id"]
    assert attempt["external_post_id"] == on_platform[0]["external_post_id"]
    assert events(b, "job.completed") and not events(a, "job.completed") and not events(a, "publish.posted")
    assert rig.relay is not None and events(rig.relay, "job.lease_expired")
    # A's stale attempt changed nothing after it woke up.
    async with rig.owner() as owner:
        again = await owner.fetchrow("select * from media_jobs where id = $1", record["id"])
        post_again = await owner.fetchrow("select * from scheduled_posts where id = $1", post_id)
    assert again is not None and post_again is not None
    assert dict(again) == dict(record) and dict(post_again) == dict(post)
    assert len(await rig.sandbox_posts(creator.account_id)) == 1
    assert rig.exited() == {}, f"processes exited: {rig.exited()}\n{rig.logs()}"
