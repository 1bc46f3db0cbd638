"""Fan sync at scale: one creator's 100,000 fans and 1,000,000 transactions from the sandbox over HTTP.

    python -m bench sync [--fans N] [--transactions-per-fan N] [--messages-per-fan N] [--history-per-fan N]
                         [--no-history] [--page-size N] [--data-dir DIR]

The sandbox platform runs as its own process (`geniehelper sandbox-platform`, real HTTP on loopback)
with a lazy account (generated per page from its seed), `--history-per-fan` (3) subscription events
per fan in its history listing, which the sync reads (`history`; `--no-history`: the events are
derived from the current subscriptions instead, at most two per fan). The fan sync service
(`geniehelper.sync.fans.sync_connection`, what the `sync_fans` job runs) is timed three times: the
initial sync; a re-sync with no change; a re-sync after one `advance` step changed 1 % (new fans,
cancellations, rebills and win-backs, 0.25 % of the fans each; tips and purchases, 1 % of the
transactions). Beside it, in the same run, the ceiling: a bare binary `COPY` of the very rows the
initial sync wrote into the same tables (with their indexes, constraints and foreign keys), after
deleting them (the deletes are not timed).

Figures: rows/s (rows written in all the synced tables, domain events included), peak RSS of this
process and of the sandbox's (VmHWM, reset before each phase), where the time went (waiting on the
platform: serving, HTTP and parsing its JSON; merging: our SQL), and the machine's load.

Correctness, checked (exit 1 if not): after each sync the row counts equal the platform's; the
no-change re-sync writes no row; the 1 % re-sync appends exactly one event per change the step reports.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import httpx

from bench.common import (
    Stopwatch,
    bench_settings,
    fmt,
    fresh_database,
    make_creator,
    print_header,
    print_table,
    quiet_logs,
    rate,
    servers,
    write_results,
)  # fmt: skip
from bench.segments import load_of_machine
from geniehelper.db import Database, connect_owner
from geniehelper.domain import platform as connections
from geniehelper.platforms import HttpPlatformClient, Page
from geniehelper.sync import fans as fan_sync

NAME = "sync"
# What the sync writes, in foreign-key order (the COPY ceiling loads them in this order).
TABLES = ("fan_profiles", "fan_platform_accounts", "fan_subscriptions", "fan_subscription_events", "fan_transactions",
          "fan_messages", "domain_events")  # fmt: skip

# The columns a COPY can load (not an identity generated always, like domain_events.id: it is drawn again).
COLUMNS = """
select column_name from information_schema.columns
 where table_schema = 'public' and table_name = $1 and is_generated = 'NEVER'
   and not (is_identity = 'YES' and identity_generation = 'ALWAYS')
 order by ordinal_position
"""


class TimedClient:
    """The platform client, with the time spent waiting on each listing (serving, HTTP, JSON parsing)."""

    def __init__(self, client: HttpPlatformClient) -> None:
        self._client = client
        self.waited_s = 0.0
        self.requests = 0

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Page[Any]]]:
        listing = getattr(self._client, name)

        async def timed(*args: Any) -> Page[Any]:
            started = time.perf_counter()
            try:
                page: Page[Any] = await listing(*args)
                return page
            finally:
                self.waited_s += time.perf_counter() - started
                self.requests += 1

        return timed


class Peak:
    """Peak RSS of a process, reset at the start of each phase (Linux: /proc/PID/clear_refs)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def reset(self) -> bool:
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    def mb(self) -> float | None:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return None

    def cpu_s(self) -> float:
        if self.pid == os.getpid():
            usage = resource.getrusage(resource.RUSAGE_SELF)
            return usage.ru_utime + usage.ru_stime
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def start_sandbox(http: httpx.AsyncClient, max_page_size: int) -> tuple[asyncio.subprocess.Process, str]:
    port = free_port()
    command = [str(Path(sys.executable).parent / "geniehelper"), "sandbox-platform", "--port", str(port),
               "--max-page-size", str(max_page_size)]  # fmt: skip
    process = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            (await http.get(f"{url}/admin/requests")).raise_for_status()
            return process, url
        except httpx.TransportError:
            if process.returncode is not None or time.monotonic() > deadline:
                raise SystemExit("bench: the sandbox platform did not start") from None
            await asyncio.sleep(0.1)


async def table_counts(owner: asyncpg.Connection, user_id: UUID) -> dict[str, int]:
    return {t: await owner.fetchval(f"select count(*) from {t} where user_id = $1", user_id) for t in TABLES}


async def event_counts(owner: asyncpg.Connection, user_id: UUID) -> dict[str, int]:
    rows = await owner.fetch(
        "select event_type, count(*) from fan_subscription_events where user_id = $1 group by 1", user_id
    )
    return {r[0]: r[1] for r in rows}


def as_platform(found: dict[str, int], history: bool) -> dict[str, int]:
    mapped = {"fans": found["fan_platform_accounts"], "subscriptions": found["fan_subscriptions"],
              "transactions": found["fan_transactions"], "messages": found["fan_messages"]}  # fmt: skip
    if history:  # each event of the platform's history once
        mapped["subscription_history"] = found["fan_subscription_events"]
    return mapped


async def copy_ceiling(owner: asyncpg.Connection, user_id: UUID, work_dir: Path, me: Peak) -> dict[str, Any]:
    """The rows the initial sync wrote, dumped, deleted and loaded again by a bare COPY (only the COPY timed)."""
    files = {t: work_dir / f"{t}.copy" for t in TABLES}
    columns = {t: [r[0] for r in await owner.fetch(COLUMNS, t)] for t in TABLES}
    for table, path in files.items():  # table and column names from TABLES and the catalog, never from input
        await owner.copy_from_query(f"select {', '.join(columns[table])} from {table} where user_id = $1", user_id,
                                    output=str(path), format="binary")  # fmt: skip
    per_table: dict[str, float] = {}
    async with owner.transaction():
        # The append-only tables refuse DELETE by trigger: off for the delete only (replica role).
        await owner.execute("set local session_replication_role = replica")
        for table in reversed(TABLES):
            await owner.execute(f"delete from {table} where user_id = $1", user_id)
        await owner.execute("set local session_replication_role = origin")
        me.reset()
        with Stopwatch() as sw:
            for table, path in files.items():
                with Stopwatch() as one:
                    await owner.copy_to_table(table, source=str(path), columns=columns[table], format="binary")
                per_table[table] = one.seconds
    for path in files.values():
        path.unlink()
    return {"seconds": sw.seconds, "per_table_s": per_table, "peak_rss_mb": me.mb()}


async def timed_sync(
    db: Database, owner: asyncpg.Connection, client: HttpPlatformClient, connection: Any, page_size: int,
    me: Peak, sandbox: Peak, history: bool,
) -> dict[str, Any]:  # fmt: skip
    timed = TimedClient(client)
    before = await table_counts(owner, connection.user_id)
    me.reset()
    sandbox.reset()
    cpu = (me.cpu_s(), sandbox.cpu_s())
    with Stopwatch() as sw:
        result = await fan_sync.sync_connection(
            lambda: db.creator_tx(connection.user_id),
            timed,
            connection,
            page_size=page_size,  # type: ignore[arg-type]
            history=history,
        )
    after = await table_counts(owner, connection.user_id)
    written = {t: after[t] - before[t] for t in TABLES}
    return {
        "seconds": sw.seconds, "rows_written": sum(written.values()), "written": written,
        "items_read": sum(r.items for r in result.resources.values()), "requests": timed.requests,
        "waiting_on_platform_s": timed.waited_s, "merging_s": sw.seconds - timed.waited_s,
        "cpu_s": {"bench": me.cpu_s() - cpu[0], "sandbox": sandbox.cpu_s() - cpu[1]},
        "peak_rss_mb": {"bench": me.mb(), "sandbox": sandbox.mb()}, "result": result.as_dict(), "after": after,
    }  # fmt: skip


async def run(args: argparse.Namespace) -> int:
    problems: list[str] = []
    n_transactions, n_messages = args.fans * args.transactions_per_fan, args.fans * args.messages_per_fan
    history = not args.no_history
    n_history = args.fans * args.history_per_fan if history else 0
    with servers(args.data_dir) as srv:
        print_header("sync: the fan sync of one large account over HTTP, beside a bare COPY", srv, {
            "data": f"{args.fans:,} fans, {n_transactions:,} transactions, {n_messages:,} messages, "
                    + (f"{n_history:,} subscription-history events" if history else "no history listing")
                    + f"; pages of {args.page_size}",
            "before": load_of_machine(),
        })  # fmt: skip
        async with fresh_database(srv, NAME) as (database_url, owner_url), httpx.AsyncClient(timeout=60) as http:
            process, sandbox_url = await start_sandbox(http, args.page_size)
            owner = await connect_owner(owner_url)
            db = await Database.open(database_url, min_size=1, max_size=2, system=False)
            try:
                settings = bench_settings(database_url, srv.redis_url, platform_api_urls={"sandbox": sandbox_url})
                tally = quiet_logs(settings, "bench")
                cipher = settings.credential_cipher()
                created = await http.post(f"{sandbox_url}/admin/accounts", json={
                    "seed": 42, "lazy": True, "n_fans": args.fans, "n_transactions": n_transactions,
                    "n_messages": n_messages, "n_history_per_fan": args.history_per_fan})  # fmt: skip
                created.raise_for_status()
                account_id, token = created.json()["account_id"], created.json()["token"]
                creator = await make_creator(owner, tier="pro")
                async with db.creator_tx(creator) as conn:
                    connection_id = await connections.connect_account(
                        conn, cipher, user_id=creator, platform="sandbox", external_account_id=account_id, token=token
                    )
                    connection = await connections.get(conn, connection_id)
                assert connection is not None
                client = HttpPlatformClient(sandbox_url, token, http, timeout_s=60)
                me, sandbox = Peak(os.getpid()), Peak(process.pid)

                async def platform_counts() -> dict[str, int]:
                    found = dict((await http.get(f"{sandbox_url}/admin/accounts/{account_id}/counts")).json())
                    if not history:
                        found.pop("subscription_history")
                    return found

                async def sync(label: str) -> dict[str, Any]:
                    print(f"{label} ...", flush=True)
                    figures = await timed_sync(db, owner, client, connection, args.page_size, me, sandbox, history)
                    figures["load"] = load_of_machine()
                    if (mine := as_platform(figures["after"], history)) != (expected := await platform_counts()):
                        problems.append(f"{label}: rows {mine} != platform's {expected}")
                    return figures

                initial = await sync("initial sync")
                initial["events"] = await event_counts(owner, creator)
                await owner.execute("analyze")
                with tempfile.TemporaryDirectory(dir=args.data_dir) as work_dir:
                    ceiling = await copy_ceiling(owner, creator, Path(work_dir), me)
                if await table_counts(owner, creator) != initial["after"]:
                    problems.append("the COPY ceiling did not load back the rows it deleted")
                await owner.execute("vacuum analyze")
                unchanged = await sync("re-sync, no change")
                if unchanged["rows_written"]:
                    problems.append(f"the no-change re-sync wrote {unchanged['written']}")

                quarter = max(1, args.fans // 400)
                step = (await http.post(f"{sandbox_url}/admin/accounts/{account_id}/advance", json={
                    "new_fans": quarter, "cancellations": quarter, "rebills": quarter, "win_backs": quarter,
                    "tips": max(1, n_transactions // 200), "purchases": max(1, n_transactions // 200),
                })).json()  # fmt: skip
                events_before = await event_counts(owner, creator)
                changed = await sync("re-sync after 1 % changed")
                events_after = await event_counts(owner, creator)
                appended = {k: events_after.get(k, 0) - events_before.get(k, 0) for k in events_after}
                wanted = {"subscribe": len(step["new_fans"]), "cancellation": len(step["cancelled"]),
                          "rebill": len(step["rebilled"]), "win_back": len(step["won_back"])}  # fmt: skip
                if {k: v for k, v in appended.items() if v} != {k: v for k, v in wanted.items() if v}:
                    problems.append(f"the 1 % re-sync appended events {appended}, the step made {wanted}")
                changed["step"] = {k: len(v) if isinstance(v, list) else v for k, v in step.items()}
                print(tally.line())
            finally:
                await db.close()
                await owner.close()
                process.terminate()
                await asyncio.wait_for(process.wait(), timeout=30)

    report(args, initial, ceiling, unchanged, changed, problems)
    return 0 if not problems else 1


def report(args: argparse.Namespace, initial: dict[str, Any], ceiling: dict[str, Any], unchanged: dict[str, Any],
           changed: dict[str, Any], problems: list[str]) -> None:  # fmt: skip
    rows_total = initial["rows_written"]
    ceiling_rate = rate(rows_total, ceiling["seconds"])
    lines = []
    for label, f in (("initial sync", initial), ("re-sync, no change", unchanged), ("re-sync after 1 %", changed)):
        lines.append([label, fmt(f["items_read"]), fmt(f["rows_written"]), fmt(f["seconds"], 2),
                      fmt(rate(f["rows_written"], f["seconds"]), 0), fmt(f["waiting_on_platform_s"], 1),
                      fmt(f["merging_s"], 1), fmt(f["cpu_s"]["sandbox"], 1), fmt(f["peak_rss_mb"]["bench"], 0),
                      fmt(f["peak_rss_mb"]["sandbox"], 0)])  # fmt: skip
    lines.append(["bare COPY (ceiling)", "-", fmt(rows_total), fmt(ceiling["seconds"], 2), fmt(ceiling_rate, 0),
                  "-", "-", "-", fmt(ceiling["peak_rss_mb"], 0), "-"])  # fmt: skip
    print()
    print_table(["phase", "items read", "rows written", "s", "rows/s", "platform s", "merge s", "sandbox cpu s",
                 "RSS MB", "sandbox RSS MB"], lines)  # fmt: skip
    ratio = rate(rows_total, initial["seconds"]) / ceiling_rate
    speedup = initial["seconds"] / unchanged["seconds"]
    print(f"\nrows written by the initial sync: {initial['written']}")
    print(f"subscription events of the initial sync: {initial['events']}")
    print(
        f"initial sync / COPY ceiling: {ratio:.2f}x (aim >= 0.5x); COPY per table (s): "
        + ", ".join(f"{t} {s:.2f}" for t, s in ceiling["per_table_s"].items())
    )
    print(f"no-change re-sync: {speedup:.1f}x faster than the initial (aim >= 10x)")
    print(f"1 % step: {changed['step']}")
    print(f"machine: initial {initial['load']}; no change {unchanged['load']}; 1 % {changed['load']}")
    print("correctness: " + ("ok" if not problems else "FAILED: " + "; ".join(problems)))
    path = write_results(NAME, {
        "fans": args.fans, "transactions": args.fans * args.transactions_per_fan,
        "messages": args.fans * args.messages_per_fan, "history": not args.no_history,
        "history_per_fan": None if args.no_history else args.history_per_fan, "page_size": args.page_size,
        "initial": initial,
        "copy_ceiling": ceiling, "no_change": unchanged, "one_percent": changed, "initial_vs_ceiling": ratio,
        "no_change_speedup": speedup, "problems": problems, "ok": not problems,
    })  # fmt: skip
    print(f"results: {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench sync", description=__doc__.splitlines()[0])
    parser.add_argument("--fans", type=int, default=100_000)
    parser.add_argument("--transactions-per-fan", type=int, default=10)
    parser.add_argument("--messages-per-fan", type=int, default=0)
    parser.add_argument("--history-per-fan", type=int, default=3, help="subscription events per fan (2-24)")
    parser.add_argument("--no-history", action="store_true", help="do not read the subscription-history listing")
    parser.add_argument("--page-size", type=int, default=200, help="items per page, asked and served")
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    if not 2 <= args.history_per_fan <= 24:
        parser.error("--history-per-fan must be 2-24")
    if args.fans < 400 or args.transactions_per_fan < 1 or args.messages_per_fan < 0:
        parser.error("--fans must be at least 400 (0.25 % of them change), --transactions-per-fan at least 1")
    return asyncio.run(run(args))
