"""The claiming worker: arq's checks for each id, made for a whole poll in one Lua script."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from arq import func
from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import in_progress_key_prefix

from geniehelper.runtime.claiming import ClaimingWorker

QUEUE = "test:claiming"


@pytest.fixture
async def plain_redis(redis_url: str) -> AsyncIterator[ArqRedis]:
    """arq's own pool (pickle), as a plain arq producer has: these jobs are arq's, not the runtime's."""
    pool = await create_pool(RedisSettings.from_dsn(redis_url))
    yield pool
    await pool.aclose()


def worker_on(redis: ArqRedis, functions: list[Any], max_jobs: int) -> ClaimingWorker:
    return ClaimingWorker(
        functions=functions, queue_name=QUEUE, redis_pool=redis, max_jobs=max_jobs, burst=True,
        handle_signals=False, poll_delay=0.01, keep_result=0,
    )  # fmt: skip


async def test_a_poll_claims_only_what_arq_would_start(plain_redis: ArqRedis) -> None:
    ran: list[str] = []

    async def note(ctx: dict[str, Any], name: str) -> None:
        ran.append(name)

    due = await plain_redis.enqueue_job("note", "due", _job_id="due", _queue_name=QUEUE)
    later = await plain_redis.enqueue_job("note", "later", _job_id="later", _queue_name=QUEUE, _defer_by=3600)
    taken = await plain_redis.enqueue_job("note", "taken", _job_id="taken", _queue_name=QUEUE)
    assert due and later and taken
    await plain_redis.set(in_progress_key_prefix + "taken", b"1")  # another worker is running it
    worker = worker_on(plain_redis, [func(note, name="note")], max_jobs=10)

    await worker.start_jobs([b"due", b"later", b"taken", b"gone"])  # "gone": no longer queued
    assert set(worker.tasks) == {"due"}
    await asyncio.gather(*worker.tasks.values())

    assert ran == ["due"]
    assert worker.job_counter == 0  # every slot given back: the skipped ids' and the finished job's
    assert await plain_redis.zscore(QUEUE, "later") is not None  # still queued for later
    assert await plain_redis.zscore(QUEUE, "taken") is not None  # left to the worker running it
    await worker.close()


async def test_never_more_jobs_at_once_than_max_jobs(plain_redis: ArqRedis) -> None:
    running = 0
    peak = 0
    finished = 0
    gate = asyncio.Event()

    async def hold(ctx: dict[str, Any]) -> None:
        nonlocal running, peak, finished
        running += 1
        peak = max(peak, running)
        await gate.wait()
        running -= 1
        finished += 1

    for i in range(20):
        await plain_redis.enqueue_job("hold", _job_id=f"job-{i}", _queue_name=QUEUE)
    worker = worker_on(plain_redis, [func(hold, name="hold")], max_jobs=3)
    main = asyncio.create_task(worker.main())
    try:
        deadline = time.monotonic() + 30
        while running < 3:  # the worker fills its slots, then waits for one to free
            assert time.monotonic() < deadline, f"only {running} of 3 slots filled"
            await asyncio.sleep(0.01)
        assert running == 3 and worker.job_counter == 3 and len([t for t in worker.tasks.values() if not t.done()]) == 3
        gate.set()  # now every job may finish; each freed slot takes the next id
        await asyncio.wait_for(main, 60)
    finally:
        main.cancel()
        await asyncio.gather(main, return_exceptions=True)
        await worker.close()

    assert finished == 20
    assert peak == 3
    assert worker.jobs_complete == 20 and worker.jobs_failed == 0
    assert await plain_redis.zcard(QUEUE) == 0


async def test_a_full_worker_waits_for_a_slot_instead_of_sleeping_out_the_poll(plain_redis: ArqRedis) -> None:
    # One script claims every free slot without an await, so the next id finds the worker full; it
    # must wait for a slot within the poll, not return and leave the rest for later polls.
    polls = 0
    ran_in_poll: list[int] = []
    all_ran = asyncio.Event()

    class CountingWorker(ClaimingWorker):
        async def _poll_iteration(self) -> None:
            nonlocal polls
            polls += 1
            await super()._poll_iteration()

    async def note(ctx: dict[str, Any]) -> None:
        ran_in_poll.append(polls)
        if len(ran_in_poll) == 12:
            all_ran.set()

    for i in range(12):
        await plain_redis.enqueue_job("note", _job_id=f"job-{i}", _queue_name=QUEUE)
    worker = CountingWorker(
        functions=[func(note, name="note")], queue_name=QUEUE, redis_pool=plain_redis, max_jobs=3,
        handle_signals=False, poll_delay=30, keep_result=0,
    )  # fmt: skip
    main = asyncio.create_task(worker.main())
    try:
        await asyncio.wait_for(all_ran.wait(), 150)  # state, not time: four polls would take 90 s
        await asyncio.gather(*worker.tasks.values())
    finally:
        main.cancel()
        await asyncio.gather(main, return_exceptions=True)
        await worker.close()

    assert ran_in_poll == [1] * 12  # all twelve through three slots, in the first poll
    assert worker.jobs_complete == 12 and worker.jobs_failed == 0
