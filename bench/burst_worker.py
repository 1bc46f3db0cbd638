"""One burst worker process for runtime_throughput's multi-process rows (not a benchmark itself).

`python -m bench.burst_worker ours|bare DATABASE_URL REDIS_URL RUN_ID` builds its worker (ours:
`build_worker_settings` with the benchmark's no-op job; bare: a plain arq Worker), starts it, says
it is ready once started up, waits for the go signal so that every process starts draining at the
same moment, drains the queue, and prints {"completed": n, "failed": n, "retried": n} on exit.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from arq import func
from arq.connections import RedisSettings
from arq.worker import Worker

from bench.common import bench_settings, quiet_logs
from bench.runtime_throughput import BARE_QUEUE, FAST_POLL_S, NOOP, bare_noop, go_key, ready_key
from geniehelper.runtime.claiming import create_worker
from geniehelper.runtime.registry import JobRegistry
from geniehelper.runtime.worker import build_worker_settings

GO_TIMEOUT_S = 120


def build(side: str, database_url: str, redis_url: str, run_id: str) -> Worker:
    settings = bench_settings(database_url, redis_url)
    quiet_logs(settings, f"bench_{side}_worker")

    async def wait_for_go(ctx: dict[str, Any]) -> None:
        await ctx["redis"].incr(ready_key(run_id))
        if await ctx["redis"].blpop([go_key(run_id)], timeout=GO_TIMEOUT_S) is None:
            raise SystemExit("burst_worker: no go signal")

    if side == "bare":
        return Worker(
            functions=[func(bare_noop, name="noop")], queue_name=BARE_QUEUE,
            redis_settings=RedisSettings.from_dsn(redis_url), burst=True,
            max_jobs=settings.queue("default").concurrency, handle_signals=False, poll_delay=FAST_POLL_S,
            on_startup=wait_for_go,
        )  # fmt: skip
    cls = build_worker_settings(
        "default", JobRegistry([NOOP]), role="bench_worker", settings=settings, database_url=database_url,
        redis_url=redis_url,
    )  # fmt: skip
    ours_startup = cls.on_startup  # type: ignore[attr-defined]

    async def startup(ctx: dict[str, Any]) -> None:
        await ours_startup(ctx)
        await wait_for_go(ctx)

    cls.on_startup = staticmethod(startup)  # type: ignore[attr-defined]
    return create_worker(cls, burst=True, handle_signals=False, poll_delay=FAST_POLL_S)


def main(argv: list[str]) -> int:
    side, database_url, redis_url, run_id = argv
    worker = build(side, database_url, redis_url, run_id)
    try:
        worker.run()
    finally:
        print(json.dumps({"completed": worker.jobs_complete, "failed": worker.jobs_failed,
                          "retried": worker.jobs_retried}))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
