"""Admission by a memory budget: a worker starts a job only while its running jobs' estimated
memory, with this one's, stays within the budget (README, "Admission by a memory budget").

A job that declares `memory_estimate` (the media jobs) is asked, before its attempt starts, what it
will take; the worker admits it when the estimates of the jobs it is running plus this one fit in
the budget, or when it is running nothing (an oversized job still runs, alone). Otherwise the
delivery waits here, in arrival order (a big job is not overtaken forever by small ones), and is
admitted as soon as running jobs finish and free enough. Its record is not touched while it waits:
no attempt is used and it stays `queued`. A delivery that waited `wait_s` without being admitted is
handed back to arq (`Retry`), still untouched, so arq's own timeout of the delivery never runs out
in the wait; arq delivers it again shortly. The queue's concurrency stays the upper bound (arq's
max_jobs): deliveries waiting here hold one of those slots.

Each decision is logged: `memory_admission.admitted`, `.deferred` and `.handed_back`, with the job,
its operation, the estimate and its basis, the in-flight sum and the budget.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from uuid import UUID

import structlog
from arq import Retry

from geniehelper.runtime.retry import describe

if TYPE_CHECKING:
    from geniehelper.runtime.context import Resources
    from geniehelper.runtime.definition import AnyJob

log = structlog.get_logger("geniehelper.worker")

# A delivery handed back after waiting its turn comes back after about this long.
HAND_BACK_DELAY_S = 1.0


@dataclass(frozen=True)
class MemoryEstimate:
    mb: float
    operation: str
    basis: str  # how it was made, for the log lines: "measured (n=12)", "default", ...


@dataclass(frozen=True)
class EstimateContext:
    """What a job's `memory_estimate` may use: a read in its creator's transaction, before it starts."""

    _runtime: Resources
    job: AnyJob
    user_id: UUID | None

    @contextlib.asynccontextmanager
    async def tx(self) -> AsyncIterator[Any]:
        async with self._runtime.db.scoped_tx(self.user_id) as conn:
            yield conn


@dataclass
class _Waiter:
    estimate_mb: float
    admitted: asyncio.Future[int]


class MemoryAdmission:
    """One worker's running estimates and the deliveries waiting for room."""

    def __init__(self, budget_mb: float, wait_s: float) -> None:
        self.budget_mb, self.wait_s = budget_mb, wait_s
        self.running: dict[int, float] = {}  # token -> estimate (MB)
        self._waiting: collections.deque[_Waiter] = collections.deque()
        self._tokens = itertools.count(1)

    @property
    def in_flight_mb(self) -> float:
        return sum(self.running.values())

    def _fits(self, estimate_mb: float) -> bool:
        return not self.running or self.in_flight_mb + estimate_mb <= self.budget_mb

    def _take(self, estimate_mb: float) -> int:
        token = next(self._tokens)
        self.running[token] = estimate_mb
        return token

    async def admit(self, estimate: MemoryEstimate, fields: dict[str, Any]) -> int:
        """A token once admitted (give it back with `release`); Retry when it waited `wait_s` in vain."""
        numbers = {"operation": estimate.operation, "estimate_mb": round(estimate.mb, 1), "basis": estimate.basis,
                   "budget_mb": self.budget_mb, **fields}  # fmt: skip
        if not self._waiting and self._fits(estimate.mb):
            reason = "fits the budget" if self.in_flight_mb + estimate.mb <= self.budget_mb else "nothing running"
            log.info("memory_admission.admitted", reason=reason, in_flight_mb=round(self.in_flight_mb, 1),
                     running=len(self.running), **numbers)  # fmt: skip
            return self._take(estimate.mb)
        waiter = _Waiter(estimate.mb, asyncio.get_running_loop().create_future())
        log.info("memory_admission.deferred",
                 reason="an earlier job is waiting" if self._waiting else "in-flight + estimate over the budget",
                 in_flight_mb=round(self.in_flight_mb, 1), running=len(self.running), waiting=len(self._waiting),
                 **numbers)  # fmt: skip
        self._waiting.append(waiter)
        try:
            async with asyncio.timeout(self.wait_s):
                token = await asyncio.shield(waiter.admitted)
        except BaseException as exc:
            if waiter.admitted.done() and not waiter.admitted.cancelled():
                self.release(waiter.admitted.result())  # admitted just as it gave up
            else:
                waiter.admitted.cancel()
                with contextlib.suppress(ValueError):
                    self._waiting.remove(waiter)
                self._admit_waiting()
            if isinstance(exc, TimeoutError):
                log.info("memory_admission.handed_back", waited_s=self.wait_s, in_flight_mb=round(self.in_flight_mb, 1),
                         retry_in_s=HAND_BACK_DELAY_S, **numbers)  # fmt: skip
                raise Retry(defer=HAND_BACK_DELAY_S) from None
            raise
        log.info("memory_admission.admitted", reason="memory freed",
                 in_flight_mb=round(self.in_flight_mb - estimate.mb, 1), running=len(self.running) - 1,
                 **numbers)  # fmt: skip
        return token

    def release(self, token: int) -> None:
        self.running.pop(token, None)
        self._admit_waiting()

    def _admit_waiting(self) -> None:
        """Admit waiting deliveries from the head, in order, while they fit."""
        while self._waiting and self._fits(self._waiting[0].estimate_mb):
            waiter = self._waiting.popleft()
            if not waiter.admitted.done():
                waiter.admitted.set_result(self._take(waiter.estimate_mb))


def admitting(
    job: AnyJob, deliver: Callable[..., Awaitable[Any]], admission: MemoryAdmission
) -> Callable[..., Awaitable[Any]]:
    """`deliver` (the arq function of `job`), run once `admission` lets it."""
    assert job.memory_estimate is not None

    async def run(ctx: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        resources: Resources = ctx["resources"]
        fields = {"job_name": job.name, "job_id": ctx["job_id"], "record_id": str(kwargs.get("record_id"))}
        estimate = await _estimate(resources, job, kwargs, admission)
        token = await admission.admit(estimate, fields)
        try:
            return await deliver(ctx, *args, **kwargs)
        finally:
            admission.release(token)

    run.__qualname__ = run.__name__ = job.name
    return run


async def _estimate(
    resources: Resources, job: AnyJob, kwargs: dict[str, Any], admission: MemoryAdmission
) -> MemoryEstimate:
    """The job's estimate; one it cannot make counts as the whole budget (it then runs alone)."""
    assert job.memory_estimate is not None
    try:
        user_id = UUID(str(kwargs["user_id"])) if kwargs.get("user_id") is not None else None
        payload = job.parse_payload(kwargs["payload"])
    except Exception:  # the delivery itself rejects it, naming the field: it runs nothing
        return MemoryEstimate(0.0, job.name, "unreadable envelope (rejected on delivery)")
    try:
        return await job.memory_estimate(EstimateContext(resources, job, user_id), payload)
    except Exception as exc:
        log.warning("memory_admission.estimate_failed", job_name=job.name, error=describe(exc))
        return MemoryEstimate(admission.budget_mb, job.name, f"no estimate ({type(exc).__name__}): the whole budget")
