"""What every benchmark shares: servers, a fresh migrated database, quiet logs, tables and JSON figures.

Servers: DATABASE_URL and REDIS_URL when both are set; otherwise an embedded stack under
`.data/bench` (no fsync: throw-away data), stopped at the end if this run started it. Each benchmark
gets a database of its own, created and migrated at start and dropped at the end.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import platform
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import structlog
from arq.connections import ArqRedis

from geniehelper.db import connect_owner
from geniehelper.embedded import EmbeddedStack
from geniehelper.logs import configure_logging
from geniehelper.migrations import apply_migrations
from geniehelper.runtime.transport import create_arq_redis
from geniehelper.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
BENCH_DATA_DIR = ROOT / ".data" / "bench"


@dataclass(frozen=True)
class Servers:
    database_url: str  # the server's default database; benchmarks use their own (see fresh_database)
    redis_url: str
    embedded: bool
    owned: bool  # True: servers this run started (throw-away: Redis may be flushed)
    owner_url: str  # the same server as the schema owner (MIGRATE_DATABASE_URL)
    data_dir: Path = BENCH_DATA_DIR

    def describe(self) -> str:
        if self.embedded:
            started = "started for this run" if self.owned else "already running, reused"
            where = self.data_dir.relative_to(ROOT) if self.data_dir.is_relative_to(ROOT) else self.data_dir
            return f"embedded stack under {where}, {started} (fsync off, no Redis AOF)"
        return "DATABASE_URL / REDIS_URL from the environment"


@contextlib.contextmanager
def servers(data_dir: Path | None = None) -> Iterator[Servers]:
    """The given servers, or an embedded stack started for this run and stopped after it (under
    `data_dir`, default .data/bench: another folder lets a benchmark run beside another)."""
    given_db, given_redis = os.environ.get("DATABASE_URL"), os.environ.get("REDIS_URL")
    if given_db and given_redis:
        owner = os.environ.get("MIGRATE_DATABASE_URL") or given_db
        yield Servers(given_db, given_redis, embedded=False, owned=False, owner_url=owner)
        return
    where = (data_dir or BENCH_DATA_DIR).resolve()
    stack = EmbeddedStack(where, durable=False)
    urls = stack.start()
    try:
        yield Servers(urls.database_url, urls.redis_url, embedded=True, owned=stack.is_owner, owner_url=urls.owner_url,
                      data_dir=where)  # fmt: skip
    finally:
        stack.stop()


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


@contextlib.asynccontextmanager
async def fresh_database(srv: Servers, name: str) -> AsyncIterator[tuple[str, str]]:
    """A new database with every migration applied; yields its URLs (processes', the owner's), drops it on exit."""
    db_name = f"gh_bench_{name}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = await asyncpg.connect(with_database(srv.owner_url, "postgres"))
    try:
        await admin.execute(f'create database "{db_name}"')
        url = with_database(srv.owner_url, db_name)
        owner = await connect_owner(url)
        try:
            await apply_migrations(owner)
        finally:
            await owner.close()
        try:
            yield with_database(srv.database_url, db_name), url
        finally:
            await admin.execute(f'drop database if exists "{db_name}" with (force)')
    finally:
        await admin.close()


async def prepare_redis(srv: Servers, keys_that_must_be_empty: Sequence[str]) -> ArqRedis:
    """Our JSON-serialising arq pool; Redis we started is flushed, any other must not hold our queues."""
    redis = await create_arq_redis(srv.redis_url)
    if srv.owned:
        await redis.flushdb()
    else:
        for key in keys_that_must_be_empty:
            if await redis.exists(key):
                await redis.aclose()
                raise SystemExit(f"bench: {key} is not empty on REDIS_URL: another system uses this Redis")
    return redis


def bench_settings(database_url: str, redis_url: str, **overrides: Any) -> Settings:
    """Settings as deployed (environment and defaults), pointed at the benchmark servers, logs quiet."""
    values: dict[str, Any] = {"database_url": database_url, "redis_url": redis_url, "log_level": "WARNING"}
    values["credentials_enc_key_b64"] = base64.b64encode(os.urandom(32)).decode()  # a fresh key per run
    values.update(overrides)
    return Settings(**values)


@dataclass
class LogTally:
    """Warnings and errors logged during a run, counted by event name with the first message of each."""

    counts: Counter[str] = field(default_factory=Counter)
    samples: dict[str, str] = field(default_factory=dict)

    def __call__(self, _logger: Any, _method: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
        name = str(event.get("event"))
        self.counts[name] += 1
        if name not in self.samples:
            detail = event.get("error") or event.get("problem") or event.get("reason") or ""
            self.samples[name] = str(detail)[:160]
        raise structlog.DropEvent

    def summary(self) -> dict[str, Any]:
        return {name: {"count": n, "first": self.samples[name]} for name, n in self.counts.most_common()}

    def line(self) -> str:
        if not self.counts:
            return "warnings/errors logged: none"
        parts = [f"{name} x{n}" + (f" ({self.samples[name]})" if self.samples[name] else "")
                 for name, n in self.counts.most_common()]  # fmt: skip
        return "warnings/errors logged (kept off the terminal): " + "; ".join(parts)


def quiet_logs(settings: Settings, role: str) -> LogTally:
    """Our structlog warnings and errors are counted, not printed; INFO is off (per-job lines would
    measure the terminal). Library logs (arq, uvicorn) still print at WARNING and above."""
    current = structlog.get_config()["processors"]
    if current and isinstance(current[0], LogTally):
        # A second benchmark in this process: loggers already used keep the chain they cached, so
        # keep that chain (and its tally) rather than configure a new one they would never see.
        current[0].counts.clear()
        current[0].samples.clear()
        return current[0]
    configure_logging(settings, role)
    tally = LogTally()
    structlog.configure(processors=[tally, *structlog.get_config()["processors"]])
    return tally


async def make_creator(owner: asyncpg.Connection, *, tier: str) -> uuid.UUID:
    creator_id: uuid.UUID = await owner.fetchval(
        "insert into creators (email, tier) values ($1, $2) returning id", f"{uuid.uuid4().hex}@bench.test", tier
    )
    return creator_id


# --- figures ------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    return {
        "cpu_cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def print_header(title: str, srv: Servers, details: dict[str, Any]) -> None:
    info = machine()
    print(f"== {title} ==")
    print(f"machine: {info['cpu_cores']} CPU cores, Python {info['python']}, {info['platform']}")
    print(f"servers: {srv.describe()}")
    for key, value in details.items():
        print(f"{key}: {value}")
    sys.stdout.flush()


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    """p50 / p99 / max by the nearest-rank method (no interpolation)."""
    if not values:
        return {"p50": None, "p99": None, "max": None, "n": 0}
    ordered = sorted(values)

    def rank(p: float) -> float:
        return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]

    return {"p50": rank(50), "p99": rank(99), "max": ordered[-1], "n": len(ordered)}


def fmt(value: float | int | str | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(
        f"{h:<{w}}" if i == 0 else f"{h:>{w}}" for i, (h, w) in enumerate(zip(headers, widths, strict=True))
    )
    print(line)
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(
            "  ".join(f"{c:<{w}}" if i == 0 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        )
    sys.stdout.flush()


def write_results(name: str, figures: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    payload = {"benchmark": name, "machine": machine(), **figures}
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


class Stopwatch:
    """Wall time of a block, in seconds (`with Stopwatch() as sw: ...; sw.seconds`)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._start = 0.0

    def __enter__(self) -> Stopwatch:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.seconds = time.perf_counter() - self._start


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("nan")
