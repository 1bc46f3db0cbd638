"""A worker's writes to its job records, many attempts per statement.

Every delivery starts an attempt and every attempt records an outcome and beats its lease. Done one
transaction each, those round trips cost more than the jobs they record. Here the starts (and the
outcomes) that a worker's concurrently running deliveries ask for while a statement is in flight
join the next one (group commit): one `unnest` statement for all of them, fenced per row exactly as
a single write would be. Leases are beaten by one loop for every attempt the worker holds.

These are runtime bookkeeping writes on `media_jobs` across creators: they run as
geniehelper_runtime, which may call the record functions (migration 0015) and touch no table itself.
A start matches the record's creator against the delivery's, so a delivery cannot start another
creator's record. A job's own work never runs here: it runs in `JobContext.creator_tx`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

import asyncpg
import structlog

from geniehelper.runtime import store
from geniehelper.runtime.coalesce import Coalescer
from geniehelper.runtime.retry import describe

log = structlog.get_logger("geniehelper.runtime")

@dataclass(frozen=True)
class StartRequest:
    record_id: UUID
    user_id: UUID | None
    dispatch_no: int
    concurrency_key: str | None = None
    concurrency_limit: int | None = None


@dataclass(frozen=True)
class StartAnswer:
    """An attempt started (`attempt` set), or the record's state as the delivery found it."""

    attempt: int | None
    max_attempts: int | None
    status: str | None  # None: no such record for this creator
    dispatch_no: int | None
    starts_in_s: float
    quota_charged: str | None = None  # the quota operation the record was charged for, if any


OutcomeStatus = Literal["completed", "failed", "queued"]


@dataclass(frozen=True)
class Finish:
    """An attempt's outcome: completed with a result, failed, or queued again after `delay_s`."""

    record_id: UUID
    user_id: UUID | None
    attempt: int
    status: OutcomeStatus
    result: Any = None
    error: str | None = None
    error_kind: str | None = None
    delay_s: float = 0.0


@dataclass(frozen=True)
class _Check:
    record_id: UUID
    user_id: UUID | None
    attempt: int


@dataclass
class _Held:
    user_id: UUID | None
    attempt: int
    on_lost: Callable[[], None]


class RecordWriter:
    def __init__(
        self, pool: asyncpg.Pool, worker_id: str, *, lease_s: float, heartbeat_interval_s: float,
        batch_wait_s: float = 0.0,
    ) -> None:  # fmt: skip
        self.pool = pool  # geniehelper_runtime's, for the record functions only (Database.records_pool)
        self.worker_id = worker_id
        self.lease_s = lease_s
        self.heartbeat_interval_s = heartbeat_interval_s
        # Starts and outcomes wait up to batch_wait_s for the worker's other deliveries to join.
        self.deliveries = 0
        self._starts: Coalescer[StartRequest, StartAnswer] = Coalescer(
            self._start_many, linger_s=batch_wait_s, expected=lambda: self.deliveries
        )
        self._finishes: Coalescer[Finish, bool] = Coalescer(
            self._finish_many, linger_s=batch_wait_s, expected=lambda: self.deliveries
        )
        self._holds: Coalescer[_Check, bool] = Coalescer(self._hold_many)
        self._held: dict[UUID, _Held] = {}
        self._beating: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def delivering(self) -> Iterator[None]:
        """Counts the deliveries in progress: a batch all of them wait on goes at once."""
        self.deliveries += 1
        try:
            yield
        finally:
            self.deliveries -= 1

    async def start(self, request: StartRequest) -> StartAnswer:
        """Start an attempt for the record's current dispatch, unless another attempt holds a fresh lease."""
        if request.concurrency_key is None:
            return await self._starts.submit(request)
        # Starts of one key run one at a time (an advisory lock), so the running count they read is exact.
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(store.LOCK_CONCURRENCY_KEY, request.concurrency_key)
            (answer,) = await self._fetch_starts(conn, [request])
        return answer

    async def holds(self, record_id: UUID, user_id: UUID | None, attempt: int) -> bool:
        """Whether the attempt still owns the record (asked with the worker's other checks at the time)."""
        return await self._holds.submit(_Check(record_id, user_id, attempt))

    async def _hold_many(self, checks: list[_Check]) -> list[bool]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                store.ATTEMPTS_HOLD, [c.record_id for c in checks], [c.user_id for c in checks],
                [c.attempt for c in checks],
            )  # fmt: skip
        holding = {row["id"] for row in rows}
        return [c.record_id in holding for c in checks]

    async def finish(self, outcome: Finish) -> bool:
        """Record an outcome; False when the attempt no longer owns the record (nothing written)."""
        return await self._finishes.submit(outcome)

    @contextlib.contextmanager
    def holding(
        self, record_id: UUID, user_id: UUID | None, attempt: int, on_lost: Callable[[], None]
    ) -> Iterator[None]:
        """Keep the attempt's lease fresh while the block runs; `on_lost` is called if it is found lost."""
        self._held[record_id] = _Held(user_id, attempt, on_lost)
        if self._beating is None or self._beating.done():
            self._beating = asyncio.create_task(self._beat_forever())
        try:
            yield
        finally:
            held = self._held.get(record_id)
            if held is not None and held.attempt == attempt:
                del self._held[record_id]

    async def close(self) -> None:
        if self._beating is not None:
            self._beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beating

    async def _start_many(self, requests: list[StartRequest]) -> list[StartAnswer]:
        # A record twice in one statement would be matched twice: later duplicates go in their own.
        first: list[StartRequest] = []
        seen: set[UUID] = set()
        for request in requests:
            if request.record_id not in seen:
                seen.add(request.record_id)
                first.append(request)
        async with self.pool.acquire() as conn:
            answers = dict(zip(map(id, first), await self._fetch_starts(conn, first), strict=True))
            for request in requests:
                if id(request) not in answers:
                    (answers[id(request)],) = await self._fetch_starts(conn, [request])
        return [answers[id(request)] for request in requests]

    async def _fetch_starts(self, conn: Any, requests: list[StartRequest]) -> list[StartAnswer]:
        started = {
            row["id"]: row
            for row in await conn.fetch(
                store.START_ATTEMPTS, [r.record_id for r in requests], [r.user_id for r in requests],
                [r.dispatch_no for r in requests], self.worker_id, self.lease_s,
                [r.concurrency_key for r in requests], [r.concurrency_limit for r in requests],
            )
        }
        refused_requests = [r for r in requests if r.record_id not in started]
        refused = {}
        if refused_requests:
            rows = await conn.fetch(
                store.START_REFUSED, [r.record_id for r in refused_requests], [r.user_id for r in refused_requests]
            )
            refused = {row["id"]: row for row in rows}
        answers = []
        for r in requests:
            if (row := started.get(r.record_id)) is not None:
                answers.append(StartAnswer(
                    row["attempts"], row["max_attempts"], "processing", r.dispatch_no, 0.0, row["quota_charged"]
                ))
            elif (row := refused.get(r.record_id)) is not None:
                answers.append(StartAnswer(None, None, row["status"], row["dispatch_no"], row["starts_in_s"]))
            else:
                answers.append(StartAnswer(None, None, None, None, 0.0))
        return answers

    async def _finish_many(self, outcomes: list[Finish]) -> list[bool]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                store.FINISH_ATTEMPTS, [o.record_id for o in outcomes], [o.user_id for o in outcomes],
                [o.attempt for o in outcomes], [o.status for o in outcomes], [o.result for o in outcomes],
                [o.error for o in outcomes], [o.error_kind for o in outcomes], [o.delay_s for o in outcomes],
            )  # fmt: skip
        landed = {(row["id"], row["attempts"]) for row in rows}
        return [(o.record_id, o.attempt) in landed for o in outcomes]

    async def _beat_forever(self) -> None:
        while self._held:
            await asyncio.sleep(self.heartbeat_interval_s)
            held = dict(self._held)
            if not held:
                return
            try:
                async with self.pool.acquire() as conn:
                    rows = await conn.fetch(
                        store.HEARTBEATS, list(held), [h.user_id for h in held.values()],
                        [h.attempt for h in held.values()], self.lease_s,
                    )  # fmt: skip
            except Exception as exc:  # a missed beat is not worth failing jobs over: the lease has slack
                log.warning("job.heartbeat_failed", attempts=len(held), error=describe(exc))
                continue
            alive = {row["id"] for row in rows}
            for record_id, h in held.items():
                current = self._held.get(record_id)
                if record_id not in alive and current is h:  # not finished meanwhile: really lost
                    del self._held[record_id]
                    h.on_lost()
