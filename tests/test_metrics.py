"""A worker's /metrics, scraped over real HTTP and read with prometheus-client's own parser."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import asyncpg
import httpx
from arq.connections import ArqRedis
from prometheus_client.parser import text_string_to_metric_families

from geniehelper.db import Database
from geniehelper.runtime.queue import JobQueue
from tests import jobs_for_tests
from tests.conftest import make_creator
from tests.helpers import BIN, spawn

ROOT = Path(__file__).resolve().parent.parent


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }  # fmt: skip


async def test_a_worker_serves_its_job_outcomes_and_durations_at_metrics(
    db: Database, owner: asyncpg.Connection, arq_redis: ArqRedis, project_env: dict[str, str], database_url: str,
    redis_url: str,
) -> None:
    queue = JobQueue(db, arq_redis, jobs_for_tests.REGISTRY)
    creator = await make_creator(owner)
    jobs = [await queue.enqueue("t_echo", {"text": f"m{i}"}, user_id=creator) for i in range(3)]
    jobs.append(await queue.enqueue("t_permanent", {"counter": "m"}, user_id=creator))
    env = dict(
        project_env, DATABASE_URL=database_url, REDIS_URL=redis_url, LOG_FORMAT="json", PYTHONPATH=str(ROOT),
        JOB_PACKAGES=json.dumps(["tests.jobs_for_tests"]), WORKER_METRICS_PORT="0",
    )  # fmt: skip
    worker = spawn([str(BIN / "geniehelper"), "worker", "default"], env)
    try:
        (line,) = await asyncio.to_thread(worker.wait_for, r'"event": "metrics.serving"', 60)
        url = json.loads(line.string)["url"]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")

        async def finished() -> bool:
            return bool(await owner.fetchval(
                "select count(*) = 4 from media_jobs where id = any($1) and status in ('completed', 'failed')",
                [j.id for j in jobs],
            ))  # fmt: skip

        async with asyncio.timeout(60):
            while not await finished():
                await asyncio.sleep(0.1)
        async with httpx.AsyncClient() as http:
            response = await http.get(url)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
        found = samples(response.text)
        assert found[("geniehelper_job_attempts_total", (("job", "t_echo"), ("outcome", "completed")))] == 3
        assert found[("geniehelper_job_attempts_total", (("job", "t_permanent"), ("outcome", "failed")))] == 1
        assert found[("geniehelper_job_duration_seconds_count", (("job", "t_echo"), ("outcome", "completed")))] == 3
        assert found[("geniehelper_jobs_running", (("job", "t_echo"),))] == 0
    finally:
        worker.proc.send_signal(signal.SIGTERM)
        assert worker.proc.wait(30) == 0, worker.text()
