"""media_preset_apply through the real worker machinery (real PostgreSQL, valkey, ffmpeg, Pillow)."""

from __future__ import annotations

import io
import uuid

import asyncpg
import pytest
from PIL import Image, ImageChops

from geniehelper.db import Database
from geniehelper.media import fingerprint, video
from geniehelper.media.probe import parse_description
from geniehelper.runtime.queue import JobQueue
from geniehelper.runtime.quotas import QuotaExceeded
from tests.conftest import make_creator
from tests.media_harness import (
    Media,
    in_bottom_right,
    no_work_dirs_left,
    output_of,
    run_media_jobs,
    upload,
)
from tests.media_samples import jpeg_with_metadata, photo_like, secrets_in, video_with_metadata


async def test_one_job_applies_a_presets_size_format_watermark_clip_length_and_strip(
    db: Database, owner: asyncpg.Connection, media_queue: JobQueue, database_url: str, redis_url: str, media_dirs: Media
) -> None:
    m = media_dirs
    creator = await make_creator(owner)
    fan = await owner.fetchval("insert into fan_profiles (user_id) values ($1) returning id", creator)
    async with db.creator_tx(creator) as conn:
        preset_id = await conn.fetchval(
            "insert into media_presets (user_id, name, watermark, output_format, output_width, clip_duration_ms,"
            " strip_metadata_fields, is_default) values ($1, 'ppv', $2, 'webp', 480, 1000, '{gps,exif}', true)"
            " returning id",
            creator, {"text": "@gh_creator", "position": "bottom-right", "opacity": 1.0, "size_pct": 12},
        )  # fmt: skip
    photo = await upload(db, m, creator, photo_like(m.samples / "p.jpg"), "image", "image/jpeg")
    tagged = await upload(db, m, creator, jpeg_with_metadata(m.samples / "t.jpg", width=640, height=480),
                          "image", "image/jpeg")  # fmt: skip
    clip = await upload(db, m, creator, video_with_metadata(m.samples / "c.mp4", seconds=2), "video", "video/mp4")
    marked = await media_queue.enqueue("media_preset_apply", {"asset_id": str(photo.id), "fan_profile_id": str(fan)},
                                 user_id=creator)  # fmt: skip
    plain = await media_queue.enqueue("media_preset_apply", {"asset_id": str(photo.id), "preset_id": str(preset_id)},
                                user_id=creator)  # fmt: skip
    stripped = await media_queue.enqueue("media_preset_apply", {"asset_id": str(tagged.id)}, user_id=creator)
    teaser = await media_queue.enqueue("media_preset_apply", {"asset_id": str(clip.id), "start_ms": 500},
        user_id=creator)
    video_for_fan = await media_queue.enqueue(
        "media_preset_apply", {"asset_id": str(clip.id), "fan_profile_id": str(fan)}, user_id=creator
    )
    await run_media_jobs(database_url, redis_url, m)

    row, data = await output_of(owner, m, marked.id)
    image = Image.open(io.BytesIO(data))
    assert (image.format, image.size, row["mime_type"]) == ("WEBP", (480, 360), "image/webp")
    assert row["metadata"]["params"]["strip_metadata_fields"] == ["gps", "exif"]
    found = fingerprint.detect(image, [fan])
    assert found.recipient == fan  # the recipient's fingerprint ...
    _, plain_data = await output_of(owner, m, plain.id)
    plain_image = Image.open(io.BytesIO(plain_data))
    assert fingerprint.detect(plain_image, [fan]).recipient is None  # ... only where one was asked for
    resized = Image.open(m.store.path_for(photo.storage_key)).resize((480, 360), Image.Resampling.LANCZOS)
    visible = ImageChops.difference(plain_image.convert("RGB"), resized).convert("L").point(lambda v: 255 * (v > 60))
    assert in_bottom_right(visible.getbbox(), 480, 360)  # the preset's watermark, where it says

    _, data = await output_of(owner, m, stripped.id)
    assert secrets_in(data) == []  # no EXIF, GPS, XMP, IPTC or comment left

    row, data = await output_of(owner, m, teaser.id)
    probe = parse_description(await m.tools.ffmpeg_describe(m.store.path_for(row["storage_key"])))
    assert probe.video is not None and (probe.video.width, probe.video.height) == (320, 240)  # never enlarged
    assert probe.duration_s is not None and abs(probe.duration_s - 1.0) < 0.1 and row["duration_ms"] == 1000

    row, _ = await output_of(owner, m, video_for_fan.id)
    path = m.store.path_for(row["storage_key"])
    probe = parse_description(await m.tools.ffmpeg_describe(path))
    found = await video.read_fingerprint(m.tools, path, m.samples, probe, [fan, uuid.uuid4()])
    assert found.recipient == fan, found  # a video's preset copy carries the recipient's fingerprint too
    assert no_work_dirs_left(m)


async def test_presets_charge_watermark_operations_and_teasers_ai_clip_operations_refused_over_the_quota(
    owner: asyncpg.Connection, media_queue: JobQueue
) -> None:
    starter = await make_creator(owner)  # ai_clip_operations: 0 (not in the tier); watermark_operations: -1
    with pytest.raises(QuotaExceeded, match="ai_clip_operations") as refused:
        await media_queue.enqueue("media_video_teaser", {"asset_id": str(uuid.uuid4())}, user_id=starter)
    assert refused.value.reason == "not_in_tier"
    preset = await media_queue.enqueue("media_preset_apply", {"asset_id": str(uuid.uuid4())}, user_id=starter)
    charged = await owner.fetchrow("select quota_charged from media_jobs where id = $1", preset.id)
    assert charged["quota_charged"] == "watermark_operations"
    assert await owner.fetchval("select count(*) from media_jobs where user_id = $1", starter) == 1  # the preset's

    creator = await make_creator(owner, tier="creator")  # 30 teasers a month
    await owner.execute(
        "insert into user_usage_counts (user_id, operation, period_start, used)"
        " values ($1, 'ai_clip_operations', date_trunc('month', now() at time zone 'utc')::date, 29)", creator,
    )  # fmt: skip
    last = await media_queue.enqueue("media_video_teaser", {"asset_id": str(uuid.uuid4())}, user_id=creator)
    with pytest.raises(QuotaExceeded, match="ai_clip_operations") as over:
        await media_queue.enqueue("media_video_teaser", {"asset_id": str(uuid.uuid4())}, user_id=creator)
    assert over.value.reason == "limit_reached" and over.value.limit == 30
    assert await owner.fetchval("select array_agg(id) from media_jobs where user_id = $1", creator) == [last.id]
    used = await owner.fetchval(
        "select used from user_usage_counts where user_id = $1 and operation = 'ai_clip_operations'", creator
    )
    assert used == 30
