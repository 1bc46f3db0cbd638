"""media_describe and media_transcribe through the real worker (real PostgreSQL, valkey, ffmpeg), against
the local Ollama-compatible server over real HTTP: what is stored comes from the pixels and the audio
that were sent, faults are retried or fail the job with the reason, quotas apply."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from arq.connections import ArqRedis
from PIL import Image

from geniehelper.ai.local_server import FaultSpec, LocalAiServer, run_local_ai
from geniehelper.db import Database
from geniehelper.media.tools import find_ffmpeg
from geniehelper.runtime.queue import JobQueue
from geniehelper.runtime.quotas import QuotaExceeded
from geniehelper.runtime.registry import JobRegistry
from jobs.media_describe import MEDIA_DESCRIBE
from jobs.media_transcribe import MEDIA_TRANSCRIBE
from tests.conftest import make_creator
from tests.helpers import drain_queue
from tests.media_harness import Media, job_record, no_work_dirs_left, settings_for, upload
from tests.media_samples import jpeg_with_metadata, video_with_metadata

JOBS = JobRegistry([MEDIA_DESCRIBE, MEDIA_TRANSCRIBE])


@pytest.fixture
def media_queue(db: Database, arq_redis: ArqRedis) -> JobQueue:
    """Overrides conftest's: the AI jobs run with their own registry."""
    return JobQueue(db, arq_redis, JOBS)


@pytest.fixture
async def ai() -> AsyncIterator[tuple[LocalAiServer, str]]:
    server = LocalAiServer(models=("llava",))
    async with run_local_ai(server=server) as url:
        yield server, url


async def run_ai_jobs(database_url: str, redis_url: str, m: Media, url: str | None, **settings: Any) -> None:
    """A burst media worker until the queue is empty (retries included), pointed at the local server."""
    base = settings_for(database_url, redis_url, m)
    ai = {"ollama_url": url, "stt_url": f"{url}/v1/audio/transcriptions" if url else None, "ai_timeout_s": 5.0}
    await drain_queue(base.model_copy(update={**ai, **settings}), JOBS, "media")


async def asset_row(owner: asyncpg.Connection, asset_id: uuid.UUID) -> dict[str, Any]:
    row = await owner.fetchrow("select * from media_assets where id = $1", asset_id)
    assert row is not None
    return dict(row)


def flat_image(path: Path, size: tuple[int, int], colour: tuple[int, int, int]) -> Path:
    Image.new("RGB", size, colour).save(path, "JPEG", quality=95)
    return path


def tone_m4a(path: Path, frequency: int, seconds: float) -> Path:
    subprocess.run(
        [find_ffmpeg(None), "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-f", "lavfi",
         "-i", f"sine=frequency={frequency}:duration={seconds}", "-c:a", "aac", str(path)],
        check=True,
    )  # fmt: skip
    return path


def silent_video(path: Path) -> Path:
    subprocess.run(
        [find_ffmpeg(None), "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-f", "lavfi",
         "-i", "testsrc=size=64x48:rate=10:duration=1", "-c:v", "libx264", "-preset", "ultrafast",
         "-pix_fmt", "yuv420p", str(path)],
        check=True,
    )  # fmt: skip
    return path


async def test_an_images_description_is_stored_and_derived_from_its_pixels_streamed_or_not_after_a_500(
    db: Database, owner: asyncpg.Connection, media_queue: JobQueue, database_url: str, redis_url: str,
    media_dirs: Media,
    ai: tuple[LocalAiServer, str],
) -> None:  # fmt: skip
    m, (server, url) = media_dirs, ai
    creator = await make_creator(owner, tier="creator")
    # Stored 80x60 with EXIF orientation 6 (and GPS): shown, and so sent, as 60x80.
    photo = await upload(db, m, creator, jpeg_with_metadata(m.samples / "p.jpg", width=80, height=60), "image",
                         "image/jpeg")  # fmt: skip
    blue = await upload(db, m, creator, flat_image(m.samples / "b.jpg", (200, 100), (20, 30, 200)), "image",
                        "image/jpeg")  # fmt: skip
    server.add_fault(FaultSpec(kind="server_error", path_prefix="/api/generate", status=500))  # retried
    streamed = await media_queue.enqueue("media_describe", {"asset_id": str(photo.id)}, user_id=creator)
    whole = await media_queue.enqueue("media_describe", {"asset_id": str(blue.id), "stream": False, "api": "generate",
                                "prompt": "What colour is it?"}, user_id=creator)  # fmt: skip
    await run_ai_jobs(database_url, redis_url, m, url)

    photo_row, blue_row = await asset_row(owner, photo.id), await asset_row(owner, blue.id)
    assert photo_row["ai_description"].startswith("The picture is 60x80 pixels, portrait, mostly ")
    assert blue_row["ai_description"] == "The picture is 200x100 pixels, landscape, mostly blue (100%); dark."
    assert photo_row["ai_description_model"] == blue_row["ai_description_model"] == "llava"
    first, second = await job_record(owner, streamed.id), await job_record(owner, whole.id)
    assert first["status"] == second["status"] == "completed" and (first["attempts"], second["attempts"]) == (1, 2)
    assert first["result"]["streamed"] is True and first["result"]["chunks"] > 3 and first["result"]["api"] == "chat"
    assert second["result"]["streamed"] is False and second["result"]["chunks"] == 1
    assert second["result"]["description"] == blue_row["ai_description"] and first["progress"] == 100
    assert server.request_counts() == {"POST /api/chat": 1, "POST /api/generate": 2}
    sent = {r["path"]: r for r in server.last}
    assert sent["/api/chat"]["stream"] is True and sent["/api/generate"]["stream"] is False
    assert sent["/api/generate"]["prompt"] == "What colour is it?" and "media library" in sent["/api/chat"]["prompt"]
    # What reached the server: a JPEG of the pixels as shown, with none of the photo's EXIF (GPS), XMP or comment.
    assert sent["/api/chat"]["received"] == [{"format": "JPEG", "width": 60, "height": 80, "metadata": [],
                                              "bytes": sent["/api/chat"]["received"][0]["bytes"]}]  # fmt: skip
    assert no_work_dirs_left(m)


async def test_a_videos_description_comes_from_keyframes_taken_across_it(
    db: Database, owner: asyncpg.Connection, media_queue: JobQueue, database_url: str, redis_url: str,
    media_dirs: Media,
    ai: tuple[LocalAiServer, str],
) -> None:  # fmt: skip
    m, (server, url) = media_dirs, ai
    creator = await make_creator(owner, tier="creator")
    red = video_with_metadata(m.samples / "red.mp4", seconds=2, width=320, height=240, pattern="color=c=red")
    clip = await upload(db, m, creator, red, "video", "video/mp4")
    job = await media_queue.enqueue("media_describe", {"asset_id": str(clip.id), "frames": 3}, user_id=creator)
    await run_ai_jobs(database_url, redis_url, m, url)

    record = await job_record(owner, job.id)
    assert record["status"] == "completed", record["error"]
    assert record["result"]["images_sent"] == 3 and record["result"]["frame_times_s"] == [0.333, 1.0, 1.667]
    description = (await asset_row(owner, clip.id))["ai_description"]
    assert description.startswith("3 images. Image 1: 320x240 pixels, landscape, mostly red")
    assert description.count("mostly red") == 3
    assert server.last[-1]["images"] == 3 and "3 images are frames of one video" in server.last[-1]["prompt"]


async def test_an_error_mid_stream_and_a_cut_stream_are_retried_and_the_third_attempt_stores_the_answer(
    db: Database, owner: asyncpg.Connection, media_queue: JobQueue, database_url: str, redis_url: str,
    media_dirs: Media,
    ai: tuple[LocalAiServer, str],
) -> None:  # fmt: skip
    m, (server, url) = media_dirs, ai
    creator = await make_creator(owner, tier="creator")
    image = await upload(db, m, creator, flat_image(m.samples / "g.jpg", (64, 64), (20, 200, 20)), "image",
                         "image/jpeg")  # fmt: skip
    server.add_fault(FaultSpec(kind="stream_error", after_chunks=2))
    server.add_fault(FaultSpec(kind="stream_cut", after_chunks=3))
    job = await media_queue.enqueue("media_describe", {"asset_id": str(image.id)}, user_id=creator)
    await run_ai_jobs(database_url, redis_url, m, url)

    record = await job_record(owner, job.id)
    assert record["status"] == "completed" and record["attempts"] == 3, record["error"]
    assert server.request_counts() == {"POST /api/chat": 3}
    assert (await asset_row(owner, image.id))["ai_description"] == (
        "The picture is 64x64 pixels, square, mostly green (100%); medium-bright."
    )
    assert no_work_dirs_left(m)


async def test_a_500_is_retried_and_a_transcription_is_stored_from_the_extracted_audio(
    db: Database, owner: asyncpg.Connection, media_queue: JobQueue, database_url: str, redis_url: str,
    media_dirs: Media,
    ai: tuple[LocalAiServer, str],
) -> None:  # fmt: skip
    m, (server, url) = media_dirs, ai
    creator = await make_creator(owner, tier="creator")
    video = await upload(db, m, creator, video_with_metadata(m.samples / "v.mp4", seconds=2), "video", "video/mp4")
    audio = await upload(db, m, creator, tone_m4a(m.samples / "a.m4a", 880, 1.5), "audio", "audio/mp4")
    server.add_fault(FaultSpec(kind="server_error", path_prefix="/v1/audio/", status=500))
    from_video = await media_queue.enqueue("media_transcribe", {"asset_id": str(video.id)}, user_id=creator)
    from_audio = await media_queue.enqueue("media_transcribe", {"asset_id": str(audio.id), "language": "en"},
                                     user_id=creator)  # fmt: skip
    await run_ai_jobs(database_url, redis_url, m, url)

    video_record, audio_record = await job_record(owner, from_video.id), await job_record(owner, from_audio.id)
    assert video_record["status"] == audio_record["status"] == "completed", (video_record, audio_record)
    assert video_record["attempts"] + audio_record["attempts"] == 3  # the first request got the 500
    assert server.request_counts() == {"POST /v1/audio/transcriptions": 3}
    assert (await asset_row(owner, video.id))["transcription_text"] == (
        "2.0 seconds of audio: a steady tone at about 440 Hz."  # the sample's 440 Hz sine, decoded from AAC
    )
    assert (await asset_row(owner, audio.id))["transcription_text"] == (
        "1.5 seconds of audio: a steady tone at about 880 Hz."
    )
    assert audio_record["result"]["model"] == "whisper-1" and 1.4 < audio_record["result"]["audio_s"] < 1.6
    assert all(r["bytes"] < 16_000 * 2 * 2.1 + 100 for r in server.last)  # 16 kHz mono 16-bit, not the source's
    assert no_work_dirs_left(m)


async def test_the_quota_refuses_a_tier_without_ai_clip_operations_at_enqueue(
    owner: asyncpg.Connection, media_queue: JobQueue
) -> None:
    starter = await make_creator(owner)  # ai_clip_operations: 0
    for job in ("media_describe", "media_transcribe"):
        with pytest.raises(QuotaExceeded, match="ai_clip_operations"):
            await media_queue.enqueue(job, {"asset_id": str(uuid.uuid4())}, user_id=starter)
    assert await owner.fetchval("select count(*) from media_jobs where user_id = $1", starter) == 0
    creator = await make_creator(owner, tier="creator")  # 30 a month: each enqueue is charged one
    jobs = [await media_queue.enqueue(job, {"asset_id": str(uuid.uuid4())}, user_id=creator)
            for job in ("media_describe", "media_transcribe")]  # fmt: skip
    used = await owner.fetchval(
        "select used from user_usage_counts where user_id = $1 and operation = 'ai_clip_operations'", creator
    )
    charged = await owner.fetch("select quota_charged from media_jobs where id = any($1)", [j.id for j in jobs])
    assert used == 2 and [r["quota_charged"] for r in charged] == ["ai_clip_operations"] * 2


async def test_wrong_inputs_an_unknown_model_and_no_server_fail_at_once_with_the_reason(
    db: Database, owner: asyncpg.Connection, media_queue: JobQueue, database_url: str, redis_url: str,
    media_dirs: Media,
    ai: tuple[LocalAiServer, str],
) -> None:  # fmt: skip
    m, (server, url) = media_dirs, ai
    creator = await make_creator(owner, tier="creator")
    image = await upload(db, m, creator, flat_image(m.samples / "i.jpg", (32, 32), (0, 0, 0)), "image", "image/jpeg")
    no_audio = await upload(db, m, creator, silent_video(m.samples / "silent.mp4"), "video", "video/mp4")
    junk_path = m.samples / "junk.jpg"
    junk_path.write_bytes(b"no image here")
    junk = await upload(db, m, creator, junk_path, "image", "image/jpeg")
    reasons = {
        (await media_queue.enqueue("media_describe", {"asset_id": str(image.id)}, user_id=creator)).id:
            'answered 404: model "llava-missing" not found',
        (await media_queue.enqueue("media_transcribe", {"asset_id": str(no_audio.id)}, user_id=creator)).id:
            "has no audio stream to transcribe",
        (await media_queue.enqueue("media_transcribe", {"asset_id": str(image.id)}, user_id=creator)).id:
            "takes audio or video assets",
        (await media_queue.enqueue("media_describe", {"asset_id": str(junk.id)}, user_id=creator)).id:
            "not a readable image",
    }  # fmt: skip
    await run_ai_jobs(database_url, redis_url, m, url, ollama_model="llava-missing")
    unset = await media_queue.enqueue("media_describe", {"asset_id": str(image.id), "api": "generate"}, user_id=creator)
    await run_ai_jobs(database_url, redis_url, m, None)
    reasons[unset.id] = "OLLAMA_URL is not set"

    for job_id, reason in reasons.items():
        record = await job_record(owner, job_id)
        assert record["status"] == "failed" and record["attempts"] == 1, record
        assert reason in record["error"], record["error"]
    assert server.request_counts() == {"POST /api/chat": 1}  # only the unknown model reached the server
    assert (await asset_row(owner, image.id))["ai_description"] is None
    assert no_work_dirs_left(m)


async def test_a_server_that_stays_silent_fails_the_job_after_its_attempts_saying_so(
    db: Database, owner: asyncpg.Connection, media_queue: JobQueue, database_url: str, redis_url: str,
    media_dirs: Media,
    ai: tuple[LocalAiServer, str],
) -> None:  # fmt: skip
    m, (server, url) = media_dirs, ai
    creator = await make_creator(owner, tier="creator")
    image = await upload(db, m, creator, flat_image(m.samples / "s.jpg", (32, 32), (9, 9, 9)), "image", "image/jpeg")
    server.add_fault(FaultSpec(kind="stall", after_chunks=1, delay_s=5, count=100))
    job = await media_queue.enqueue("media_describe", {"asset_id": str(image.id)}, user_id=creator)
    await run_ai_jobs(database_url, redis_url, m, url, ai_timeout_s=0.3)

    record = await job_record(owner, job.id)
    assert record["status"] == "failed" and record["attempts"] == MEDIA_DESCRIBE.policy.max_attempts
    assert "sent nothing for 0.3s (AI_TIMEOUT_S): ReadTimeout" in record["error"]
    assert server.request_counts() == {"POST /api/chat": MEDIA_DESCRIBE.policy.max_attempts}
    assert (await asset_row(owner, image.id))["ai_description"] is None
