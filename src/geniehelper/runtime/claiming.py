"""arq's worker, claiming the jobs of a poll in one Redis round trip instead of four each.

arq starts the ids a poll read one at a time: for each, WATCH its in-progress key, EXISTS, ZSCORE,
then MULTI/PSETEX/EXEC, four round trips in sequence before the next id is looked at. On a busy
worker that serial loop is where the time goes (measured by `bench runtime_throughput`: arq's own
share of a no-op job's cost), and it hands deliveries to the runtime one by one, so their record
writes rarely share a statement.

`ClaimingWorker.start_jobs` makes the same checks and the same marker for as many ids as the worker
has free slots in one Lua script (atomic in Redis, which WATCH only approximated), then starts each
claimed job exactly as arq does. When every slot is taken it waits for one to free, up to the poll
delay, instead of returning: arq's serial round trips gave earlier jobs time to finish while it
walked the ids, a single script does not, so without the wait a full worker would start only
`max_jobs` jobs per poll. Everything else is arq's.

A claim whose reply is lost (Redis went away after the script ran) would leave markers no one acts
on, holding those jobs back for the whole in-progress timeout. So each worker's markers carry its
own token, the ids of a claim that failed are kept (`unconfirmed_claims`), and once Redis answers
again `release_claims` drops those markers that are still this worker's (runtime/worker.py).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from arq.constants import in_progress_key_prefix
from arq.utils import timestamp_ms
from arq.worker import Worker, get_kwargs

# For each id: skip it if its in-progress marker exists, it left the queue, or it is not due yet
# (arq's three checks); otherwise set the marker (ARGV[2]: this worker's token) for the job's timeout.
# Returns id, score pairs.
CLAIM_SCRIPT = """
local claimed = {}
local now = tonumber(ARGV[1])
for i = 5, #ARGV do
  local id = ARGV[i]
  local marker = ARGV[3] .. id
  if redis.call('exists', marker) == 0 then
    local score = redis.call('zscore', KEYS[1], id)
    if score and tonumber(score) <= now then
      redis.call('psetex', marker, ARGV[4], ARGV[2])
      claimed[#claimed + 1] = id
      claimed[#claimed + 1] = score
    end
  end
end
return claimed
"""

# Drops the in-progress markers of the ids whose marker still holds ARGV[2] (the claiming worker's
# token); returns how many.
RELEASE_SCRIPT = """
local released = 0
for i = 3, #ARGV do
  local marker = ARGV[1] .. ARGV[i]
  if redis.call('get', marker) == ARGV[2] then
    redis.call('del', marker)
    released = released + 1
  end
end
return released
"""


class ClaimingWorker(Worker):
    """arq's Worker with a batched `start_jobs` (see the module's docstring)."""

    _claim: Any = None
    _slot_freed: asyncio.Event | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.claim_token = uuid.uuid4().hex
        self.unconfirmed_claims: list[str] = []  # ids of claims whose reply was lost

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        pending = [job_id.decode() for job_id in job_ids]
        # Waiting for slots ends with the poll delay, so aborts and the health beat keep their cadence.
        deadline = self.loop.time() + self.poll_delay_s
        while pending:
            if self.job_counter >= self.max_jobs and not await self._wait_for_slot(deadline):
                return
            await self.sem.acquire()  # a slot is free: returns at once; then take every free one
            slots = 1
            while slots < min(len(pending), self.max_jobs - self.job_counter) and not self.sem.locked():
                await self.sem.acquire()  # free: returns at once
                slots += 1
            batch, pending = pending[:slots], pending[slots:]
            self.job_counter += slots
            claimed = await self._claim_many(batch)
            for _ in range(slots - len(claimed)):  # started elsewhere, finished, or not due
                self.job_counter -= 1
                self.sem.release()
            for job_id, score in claimed:
                task = self.loop.create_task(self.run_job(job_id, score))
                task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
                self.tasks[job_id] = task

    async def _wait_for_slot(self, deadline: float) -> bool:
        if self._slot_freed is None:
            self._slot_freed = asyncio.Event()
        while self.job_counter >= self.max_jobs:
            self._slot_freed.clear()
            try:
                await asyncio.wait_for(self._slot_freed.wait(), deadline - self.loop.time())
            except TimeoutError:
                return False
        return True

    def _release_sem_dec_counter_on_complete(self) -> None:
        super()._release_sem_dec_counter_on_complete()
        if self._slot_freed is not None:
            self._slot_freed.set()

    async def _claim_many(self, job_ids: list[str]) -> list[tuple[str, int]]:
        if self._claim is None:  # arq opens its pool in main(): register the script on first use
            self._claim = self.pool.register_script(CLAIM_SCRIPT)
        timeout_ms = int(self.in_progress_timeout_s * 1000)
        try:
            raw = await self._claim(
                keys=[self.queue_name],
                args=[timestamp_ms(), self.claim_token, in_progress_key_prefix, timeout_ms, *job_ids],
            )
        except BaseException:
            self.unconfirmed_claims.extend(job_ids)  # the script may have run: release_claims decides
            self.job_counter -= len(job_ids)
            for _ in job_ids:
                self.sem.release()
            raise
        return [(raw[i].decode(), int(float(raw[i + 1]))) for i in range(0, len(raw), 2)]


async def release_claims(redis: Any, token: str, job_ids: list[str]) -> int:
    """Drop the in-progress markers `token`'s worker set on `job_ids` and never acted on (jobs it
    started, or another worker's marker, are left alone); how many were dropped."""
    released: int = await redis.eval(RELEASE_SCRIPT, 0, in_progress_key_prefix, token, *job_ids)
    return released


def create_worker(settings_cls: Any, **kwargs: Any) -> ClaimingWorker:
    """Like arq's `create_worker`, with the claiming worker."""
    return ClaimingWorker(**{**get_kwargs(settings_cls), **kwargs})
