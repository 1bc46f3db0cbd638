"""The claiming worker: arq's checks for each id, made for a whole poll in one Lua script."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.exceptions
from arq import func
from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import in_progress_key_prefix

from geniehelper.runtime.claiming import CLAIM_SCRIPT, ClaimingWorker, release_claims

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


class ReplyDroppingProxy:
    """A TCP proxy on loopback to Redis that, once armed, relays the next command and then drops the
    client's connection instead of relaying the reply: the script ran, its caller never hears."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.armed = False
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}"

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(*self.target)

        async def upstream() -> None:
            while data := await client_r.read(65536):
                server_w.write(data)
                await server_w.drain()

        async def downstream() -> None:
            while data := await server_r.read(65536):
                if self.armed:
                    self.armed = False
                    return  # the reply is dropped with the connection
                client_w.write(data)
                await client_w.drain()

        tasks = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        client_w.close()
        server_w.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def test_a_claim_whose_reply_was_lost_is_released_by_its_worker_and_runs_elsewhere(
    plain_redis: ArqRedis, redis_url: str
) -> None:
    ran: list[str] = []

    async def note(ctx: dict[str, Any], name: str) -> None:
        ran.append(name)

    await plain_redis.script_load(CLAIM_SCRIPT)  # so the armed command is the claim itself
    assert await plain_redis.enqueue_job("note", "lost", _job_id="lost", _queue_name=QUEUE)
    target = RedisSettings.from_dsn(redis_url)
    proxy = ReplyDroppingProxy(target.host, target.port)
    through_proxy = await create_pool(RedisSettings.from_dsn(await proxy.start()))
    unlucky = worker_on(through_proxy, [func(note, name="note")], max_jobs=5)
    try:
        proxy.armed = True
        with pytest.raises(redis.exceptions.ConnectionError):
            await unlucky.start_jobs([b"lost"])
        marker = in_progress_key_prefix + "lost"
        assert await plain_redis.get(marker) == unlucky.claim_token.encode()  # claimed in Redis, never run
        assert unlucky.unconfirmed_claims == ["lost"] and unlucky.job_counter == 0 and not unlucky.tasks

        # Another worker's marker is never released by this token.
        await plain_redis.set(in_progress_key_prefix + "theirs", b"another-token")
        assert await release_claims(plain_redis, unlucky.claim_token, ["lost", "theirs"]) == 1
        assert not await plain_redis.exists(marker)
        assert await plain_redis.get(in_progress_key_prefix + "theirs") == b"another-token"

        other = worker_on(plain_redis, [func(note, name="note")], max_jobs=5)
        await other.start_jobs([b"lost"])
        await asyncio.gather(*other.tasks.values())
        assert ran == ["lost"]
        await other.close()
    finally:
        await through_proxy.aclose()
        await proxy.close()
        await plain_redis.delete(in_progress_key_prefix + "theirs")
