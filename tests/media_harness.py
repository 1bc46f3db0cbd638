"""What the media tests share: the media jobs' registry, a media root and work dir per test, an
upload helper, a burst worker on the media queue, and reading a job's output back."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from geniehelper.db import Database
from geniehelper.domain import media
from geniehelper.media.store import LocalMediaStore
from geniehelper.media.tools import MediaTools, find_ffmpeg
from geniehelper.runtime import store as job_store
from geniehelper.runtime.registry import JobRegistry
from geniehelper.settings import Settings
from jobs.media_contact_sheet import MEDIA_CONTACT_SHEET
from jobs.media_fingerprint import MEDIA_FINGERPRINT
from jobs.media_image_convert import MEDIA_IMAGE_CONVERT
from jobs.media_preset_apply import MEDIA_PRESET_APPLY
from jobs.media_probe import MEDIA_PROBE
from jobs.media_strip_metadata import MEDIA_STRIP_METADATA
from jobs.media_video_join import MEDIA_VIDEO_JOIN
from jobs.media_video_teaser import MEDIA_VIDEO_TEASER
from jobs.media_video_thumbnail import MEDIA_VIDEO_THUMBNAIL
from jobs.media_video_transcode import MEDIA_VIDEO_TRANSCODE
from jobs.media_video_trim import MEDIA_VIDEO_TRIM
from jobs.media_watermark import MEDIA_WATERMARK
from jobs.media_watermark_detect import MEDIA_WATERMARK_DETECT
from tests.helpers import drain_queue

JOBS = JobRegistry(
    [MEDIA_PROBE, MEDIA_IMAGE_CONVERT, MEDIA_STRIP_METADATA, MEDIA_WATERMARK, MEDIA_VIDEO_THUMBNAIL, MEDIA_VIDEO_TRIM,
     MEDIA_VIDEO_TRANSCODE, MEDIA_VIDEO_TEASER, MEDIA_FINGERPRINT, MEDIA_WATERMARK_DETECT,
     MEDIA_CONTACT_SHEET, MEDIA_VIDEO_JOIN, MEDIA_PRESET_APPLY]
)


@dataclass
class Media:
    root: Path
    tmp: Path
    store: LocalMediaStore
    tools: MediaTools
    samples: Path


def make_media(tmp_path: Path) -> Media:
    """A media root, a work dir and a samples folder under the test's tmp_path (each test module
    wraps this in its `media_dirs` fixture)."""
    root, tmp, samples = tmp_path / "media", tmp_path / "media-tmp", tmp_path / "samples"
    samples.mkdir()
    store = LocalMediaStore(root)
    return Media(root, tmp, store, MediaTools(store, find_ffmpeg(None), tmp, 120.0, 10_000_000), samples)


def settings_for(database_url: str, redis_url: str, m: Media) -> Settings:
    return Settings(
        database_url=database_url, redis_url=redis_url, health_interval_s=1, job_heartbeat_interval_s=0.5,
        media_root=m.root, media_tmp_dir=m.tmp,
    )  # fmt: skip


async def upload(db: Database, m: Media, user_id: uuid.UUID, path: Path, kind: media.AssetKind, mime: str) -> Any:
    stored = await m.store.put(path, f"{user_id}/uploads/{uuid.uuid4().hex}-{path.name}")
    async with db.creator_tx(user_id) as conn:
        return await media.create_asset(
            conn, user_id, kind, stored.key, original_filename=path.name, mime_type=mime,
            byte_size=stored.byte_size, checksum_sha256=stored.sha256,
        )  # fmt: skip


async def run_media_jobs(database_url: str, redis_url: str, m: Media) -> None:
    await drain_queue(settings_for(database_url, redis_url, m), JOBS, "media")


async def job_record(owner: asyncpg.Connection, job_id: uuid.UUID) -> dict[str, Any]:
    row = await owner.fetchrow(job_store.GET, job_id)
    assert row is not None
    return dict(row)


async def output_of(owner: asyncpg.Connection, m: Media, job_id: uuid.UUID) -> tuple[dict[str, Any], bytes]:
    """The completed job's output asset row and its bytes, read back from the store."""
    record = await job_record(owner, job_id)
    assert record["status"] == "completed", record["error"]
    row = await owner.fetchrow("select * from media_assets where id = $1", uuid.UUID(record["result"]["asset_id"]))
    assert row is not None
    data = m.store.path_for(row["storage_key"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == row["checksum_sha256"] and len(data) == row["byte_size"]
    return dict(row), data


def in_bottom_right(box: tuple[int, int, int, int] | None, width: int, height: int) -> bool:
    """A changed region (the watermark) that hugs the bottom-right corner and stays out of the left
    third and the top half."""
    if box is None:
        return False
    left, top, right, bottom = box
    return left >= width // 3 and top >= height // 2 and right >= width * 0.9 and bottom >= height * 0.9


def no_work_dirs_left(m: Media) -> bool:
    return not m.tmp.exists() or list(m.tmp.iterdir()) == []
