"""Group commit: many callers' small writes in one statement."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

R = TypeVar("R")
T = TypeVar("T")

MAX_BATCH = 500


class Coalescer(Generic[R, T]):
    """Requests go together in one flush: those made while a flush is in flight, and those that come
    within `linger_s` of the first (less when `expected()` requests are already waiting).

    A flush returns one result per request; a result that is an exception is raised to that
    request's caller alone."""

    def __init__(
        self,
        flush: Callable[[list[R]], Awaitable[Sequence[T | Exception]]],
        *,
        linger_s: float = 0.0,
        expected: Callable[[], int] = lambda: 1,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._flush = flush
        self._linger_s = linger_s
        self._expected = expected
        self._max_batch = max_batch
        self._pending: list[tuple[R, asyncio.Future[T]]] = []
        self._drainer: asyncio.Task[None] | None = None
        self._full = asyncio.Event()

    async def submit(self, request: R) -> T:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append((request, future))
        if len(self._pending) >= self._expected():
            self._full.set()
        if self._drainer is None:
            # Starts on the loop's next turn: the requests made in this turn go in the same batch.
            self._drainer = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            if self._linger_s > 0 and len(self._pending) < self._expected():
                self._full.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self._linger_s)
            while self._pending:
                batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
                try:
                    results = await self._flush([request for request, _ in batch])
                except Exception as exc:
                    if len(batch) == 1:  # the caller sees the error and decides
                        _settle(batch[0][1], exc)
                        continue
                    # One bad row must not fail the others: each goes again on its own.
                    for request, future in batch:
                        try:
                            (result,) = await self._flush([request])
                        except Exception as single_exc:
                            _settle(future, single_exc)
                        else:
                            _settle(future, result)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    _settle(future, result)
        finally:
            self._drainer = None


def _settle(future: asyncio.Future[T], outcome: T | BaseException) -> None:
    if future.done():  # a caller that was cancelled no longer waits
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
