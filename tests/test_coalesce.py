"""Group commit (`runtime.coalesce.Coalescer`): what callers share, and what one bad request cannot spoil."""

from __future__ import annotations

import asyncio

from geniehelper.runtime.coalesce import Coalescer


async def test_requests_made_together_share_one_flush_and_a_bad_one_fails_alone() -> None:
    flushed: list[list[int]] = []

    async def flush(batch: list[int]) -> list[int]:
        flushed.append(batch)
        if 13 in batch:  # like a statement that fails because of one row
            raise ValueError("row 13 is refused")
        return [n * 10 for n in batch]

    coalescer: Coalescer[int, int] = Coalescer(flush)
    results = await asyncio.gather(*(coalescer.submit(n) for n in (1, 2, 13, 4)), return_exceptions=True)
    assert results[:2] == [10, 20] and results[3] == 40
    assert isinstance(results[2], ValueError)
    assert flushed[0] == [1, 2, 13, 4]  # one statement for all four, then each again on its own
    assert sorted(map(tuple, flushed[1:])) == [(1,), (2,), (4,), (13,)]


async def test_a_linger_ends_as_soon_as_the_expected_requests_are_waiting() -> None:
    flushed: list[list[int]] = []

    async def flush(batch: list[int]) -> list[int]:
        flushed.append(batch)
        return batch

    coalescer: Coalescer[int, int] = Coalescer(flush, linger_s=5.0, expected=lambda: 2)
    first = asyncio.ensure_future(coalescer.submit(1))
    await asyncio.sleep(0)  # the first waits for a companion ...
    assert not first.done()
    assert await coalescer.submit(2) == 2  # ... and goes with it at once, not after 5 s
    assert await first == 1 and flushed == [[1, 2]]
