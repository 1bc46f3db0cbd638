"""Admission by a memory budget, with real media worker processes (`geniehelper worker media`) and
real ffmpeg: overlap and order are read from the start and finish times the records hold."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from typing import Any

import asyncpg
import pytest
from arq.connections import ArqRedis

from geniehelper.db import Database
from geniehelper.media.admission import DEFAULTS, SAFETY, UNKNOWN_MEGAPIXELS, Measurement, estimate_mb
from geniehelper.runtime.queue import JobQueue
from tests.conftest import make_creator
from tests.helpers import BIN, ProcessOutput, spawn
from tests.media_harness import JOBS, Media, upload
from tests.media_samples import video_with_metadata

# Two unprobed videos count as 1080p each (UNKNOWN_MEGAPIXELS) before anything is measured.
VIDEO_DEFAULT_MB = SAFETY * (DEFAULTS["video"][0] + DEFAULTS["video"][1] * UNKNOWN_MEGAPIXELS["video"])


def test_estimates_come_from_the_default_then_from_measurements_scaled_to_the_input() -> None:
    default, basis = estimate_mb([], "video", 2.0)
    assert basis == "default" and default == SAFETY * (200 + 250 * 2.0)
    measured = [Measurement(1.0, 300.0), Measurement(2.0, 500.0)]  # fixed 300 MB, then (500 - 300) / 2 MB per MP
    within, basis = estimate_mb(measured, "video", 2.0)
    assert basis.startswith("measured (n=2") and within == pytest.approx(SAFETY * (300 + 100 * 2.0))
    # Far beyond what was measured, the (larger) default is taken instead of extrapolating.
    beyond, basis = estimate_mb([Measurement(0.1, 60.0)], "video", 2.0)
    assert basis.startswith("default (input 2.00 MP is beyond") and beyond == default


async def _run_two_transcodes(
    db: Database, owner: asyncpg.Connection, arq_redis: ArqRedis, database_url: str, project_env: dict[str, str],
    m: Media, *, budget_mb: float, wait_s: float = 60.0, jobs: int = 2,
) -> tuple[list[dict[str, Any]], ProcessOutput]:  # fmt: skip
    """`jobs` transcodes enqueued, then one worker (up to 2 at once) runs them all: their records and its output."""
    await owner.execute("delete from media_job_measurements")  # estimates from the default alone
    creator = await make_creator(owner)
    clip = video_with_metadata(m.samples / f"{uuid.uuid4().hex}.mp4", seconds=3, width=320, height=240)
    asset = await upload(db, m, creator, clip, "video", "video/mp4")
    queue = JobQueue(db, arq_redis, JOBS)
    ids = [
        (await queue.enqueue("media_video_transcode", {"asset_id": str(asset.id), "crf": 30 + n}, user_id=creator)).id
        for n in range(jobs)
    ]
    env = dict(
        project_env, DATABASE_URL=database_url, MEDIA_ROOT=str(m.root), MEDIA_TMP_DIR=str(m.tmp), LOG_FORMAT="json",
        QUEUES=json.dumps({"media": {"concurrency": 2}}), MEDIA_MEMORY_BUDGET_MB=str(budget_mb),
        MEDIA_ADMISSION_WAIT_S=str(wait_s),
    )  # fmt: skip
    worker = spawn([str(BIN / "geniehelper"), "worker", "media"], env)
    try:
        deadline = time.monotonic() + 120
        while await owner.fetchval(
            "select count(*) from media_jobs where id = any($1) and status in ('completed', 'failed')", ids
        ) < jobs:  # fmt: skip
            assert time.monotonic() < deadline and worker.proc.poll() is None, worker.text()
            await asyncio.sleep(0.1)
    finally:
        worker.proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(worker.proc.wait, 30)
    rows = await owner.fetch("select * from media_jobs where id = any($1) order by started_at", ids)
    return [dict(r) for r in rows], worker


def _overlap(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return bool(a["started_at"] < b["finished_at"] and b["started_at"] < a["finished_at"])


def _log_events(worker: ProcessOutput, event: str) -> list[dict[str, Any]]:
    events = []
    for line in worker.lines:
        if line.startswith("{") and f'"{event}"' in line:
            events.append(json.loads(line))
    return events


@pytest.mark.parametrize("wait_s", [60.0, 0.0], ids=["waits-in-process", "handed-back-to-the-queue"])
async def test_with_a_small_budget_two_big_jobs_never_overlap_and_the_deferred_one_uses_no_attempt(
    db: Database, owner: asyncpg.Connection, arq_redis: ArqRedis, database_url: str, redis_url: str,
    project_env: dict[str, str], media_dirs: Media, wait_s: float,
) -> None:  # fmt: skip
    budget = VIDEO_DEFAULT_MB * 1.5  # one fits, two do not
    rows, worker = await _run_two_transcodes(
        db, owner, arq_redis, database_url, project_env, media_dirs, budget_mb=budget, wait_s=wait_s
    )
    first, second = rows
    assert [r["status"] for r in rows] == ["completed", "completed"], [r["error"] for r in rows]
    assert first["finished_at"] <= second["started_at"]  # one after the other
    assert [r["attempts"] for r in rows] == [1, 1]  # the deferred one's wait used no attempt
    deferred = _log_events(worker, "memory_admission.deferred")
    assert deferred and deferred[0]["record_id"] == str(second["id"]), worker.text()
    assert deferred[0]["reason"] == "in-flight + estimate over the budget"
    assert deferred[0]["estimate_mb"] == round(VIDEO_DEFAULT_MB, 1) and deferred[0]["in_flight_mb"] > 0
    assert deferred[0]["budget_mb"] == budget and deferred[0]["operation"] == "media_video_transcode:video"
    if wait_s == 0:
        assert _log_events(worker, "memory_admission.handed_back"), worker.text()
    else:
        freed = [e for e in _log_events(worker, "memory_admission.admitted") if e["reason"] == "memory freed"]
        assert [e["record_id"] for e in freed] == [str(second["id"])]


async def test_with_a_big_budget_two_big_jobs_overlap_and_each_records_its_measured_peak(
    db: Database, owner: asyncpg.Connection, arq_redis: ArqRedis, database_url: str, redis_url: str,
    project_env: dict[str, str], media_dirs: Media,
) -> None:  # fmt: skip
    rows, worker = await _run_two_transcodes(
        db, owner, arq_redis, database_url, project_env, media_dirs, budget_mb=VIDEO_DEFAULT_MB * 3
    )
    assert [r["status"] for r in rows] == ["completed", "completed"], [r["error"] for r in rows]
    assert _overlap(rows[0], rows[1])
    assert not _log_events(worker, "memory_admission.deferred")
    measured = await owner.fetch(
        "select * from media_job_measurements where job_id = any($1)", [r["id"] for r in rows]
    )  # fmt: skip
    assert len(measured) == 2
    for row in measured:
        assert row["operation"] == "media_video_transcode:video" and row["input_bytes"] > 0
        assert row["tool_peak_rss_mb"] > 5  # ffmpeg's own peak, from wait4
        assert row["peak_rss_mb"] == pytest.approx(row["tool_peak_rss_mb"] + row["process_growth_mb"])


async def test_an_oversized_job_still_runs_alone(
    db: Database, owner: asyncpg.Connection, arq_redis: ArqRedis, database_url: str, redis_url: str,
    project_env: dict[str, str], media_dirs: Media,
) -> None:  # fmt: skip
    rows, worker = await _run_two_transcodes(
        db, owner, arq_redis, database_url, project_env, media_dirs, budget_mb=10.0
    )
    assert [r["status"] for r in rows] == ["completed", "completed"], [r["error"] for r in rows]
    assert not _overlap(rows[0], rows[1]) and [r["attempts"] for r in rows] == [1, 1]
    admitted = _log_events(worker, "memory_admission.admitted")
    # The first as nothing ran; the second waited, and was admitted once the first had finished.
    assert [(e["reason"], e["running"]) for e in admitted] == [("nothing running", 0), ("memory freed", 0)]
    assert all(e["estimate_mb"] > e["budget_mb"] for e in admitted), worker.text()
