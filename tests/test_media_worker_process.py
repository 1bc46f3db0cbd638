"""The media worker as a real process (`geniehelper worker media`), killed with SIGKILL mid-job:
its ffmpeg dies with it, and the re-run leaves no temp files and exactly one output asset."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from pathlib import Path

import asyncpg
import psutil
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix

from geniehelper.db import Database
from geniehelper.runtime.delivery import redrive_expired_leases, relay_unpushed
from geniehelper.runtime.queue import JobQueue
from geniehelper.runtime.transport import arq_job_id
from tests.conftest import make_creator
from tests.helpers import BIN, spawn, wait_until
from tests.media_harness import (
    JOBS,
    Media,
    job_record,
    output_of,
    run_media_jobs,
    settings_for,
    upload,
)
from tests.media_samples import video_with_metadata


def _dead(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def wait_for(owner: asyncpg.Connection, sql: str, *args: object, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while await owner.fetchrow(sql, *args) is None:
        assert time.monotonic() < deadline, f"timed out waiting for: {sql}"
        await asyncio.sleep(0.05)


async def test_a_media_worker_killed_mid_job_leaves_no_temp_files_after_the_rerun_and_one_output(
    db: Database, owner: asyncpg.Connection, arq_redis: ArqRedis, database_url: str, redis_url: str,
    project_env: dict[str, str], media_dirs: Media, tmp_path: Path,
) -> None:  # fmt: skip
    m = media_dirs
    settings = settings_for(database_url, redis_url, m)
    creator = await make_creator(owner)
    long_clip = video_with_metadata(m.samples / "long.mp4", seconds=40, width=640, height=360)
    asset = await upload(db, m, creator, long_clip, "video", "video/mp4")
    job = await JobQueue(db, arq_redis, JOBS).enqueue(
        "media_video_trim", {"asset_id": str(asset.id), "duration_ms": 40_000}, user_id=creator
    )
    env = dict(
        project_env, DATABASE_URL=database_url, MEDIA_ROOT=str(m.root), MEDIA_TMP_DIR=str(m.tmp), LOG_FORMAT="json",
        JOB_LEASE_S="2", JOB_HEARTBEAT_INTERVAL_S="0.5",
    )  # fmt: skip
    worker = spawn([str(BIN / "geniehelper"), "worker", "media"], env)
    try:
        # Under way: its progress is in the record, its ffmpeg is writing into the attempt's work dir.
        await wait_for(owner, "select 1 from media_jobs where id = $1 and status = 'processing' and progress > 10",
                       job.id)  # fmt: skip
        tools = [p for p in psutil.Process(worker.proc.pid).children(recursive=True) if "ffmpeg" in p.name()]
        assert len(tools) == 1, worker.text()
        work = m.tmp / f"job-{job.id}" / "a1"
        assert [p.name for p in work.iterdir()] == ["clip.mp4"]
        worker.proc.send_signal(signal.SIGKILL)
        worker.proc.wait(10)
    finally:
        if worker.proc.poll() is None:
            worker.proc.kill()
    assert await asyncio.to_thread(wait_until, lambda: _dead(tools[0].pid), 10.0)  # died with its worker
    assert work.exists()  # nobody could clean up after a SIGKILL: the re-run must
    before = await job_record(owner, job.id)
    assert before["status"] == "processing" and 10 < before["progress"] < 100

    await wait_for(owner, "select 1 from media_jobs where id = $1 and lease_expires_at < now()", job.id)
    assert await redrive_expired_leases(db) == 1
    assert (await relay_unpushed(db, arq_redis, grace_s=0, ttl_s=settings.job_dispatch_ttl_s))[0] == 1
    assert await arq_redis.delete(in_progress_key_prefix + arq_job_id(job.id, 1)) == 1
    await run_media_jobs(database_url, redis_url, m)

    after = await job_record(owner, job.id)
    assert after["status"] == "completed" and after["attempts"] == 2
    row, data = await output_of(owner, m, job.id)
    assert await owner.fetchval("select count(*) from media_assets where produced_by_job_id = $1", job.id) == 1
    assert list(m.tmp.iterdir()) == []  # the killed attempt's work dir went with the re-run
    output_dir = m.store.path_for(row["storage_key"]).parent
    assert [p.name for p in output_dir.iterdir()] == ["clip.mp4"]  # no partial file in the store either
    (tmp_path / "out.mp4").write_bytes(data)
    assert await m.tools.count_frames(tmp_path / "out.mp4") == 1000  # 40 s at 25 fps, whole
    assert uuid.UUID(after["result"]["asset_id"]) == row["id"]
