"""Media jobs through the real worker machinery (real PostgreSQL, valkey, ffmpeg and Pillow), on
files made at test time; outputs are read back from the store and searched for what was planted."""

from __future__ import annotations

import io
import uuid

import asyncpg
import pytest
from arq.connections import ArqRedis
from PIL import Image, ImageChops, ImageOps, ImageStat

from geniehelper.db import Database
from geniehelper.domain import media
from geniehelper.media.probe import parse_description
from geniehelper.runtime.definition import InvalidPayload
from geniehelper.runtime.delivery import redrive_expired_leases, relay_unpushed
from geniehelper.runtime.queue import JobQueue
from geniehelper.runtime.quotas import QuotaExceeded
from tests.conftest import make_creator
from tests.media_harness import (
    Media,
    in_bottom_right,
    job_record,
    no_work_dirs_left,
    output_of,
    run_media_jobs,
    upload,
)
from tests.media_samples import (
    jpeg_segments,
    jpeg_with_metadata,
    mp4_boxes,
    mp4_handler_types,
    mp4_header_times,
    png_chunks,
    png_with_metadata,
    quadrant_image,
    secrets_in,
    video_with_metadata,
)


async def test_stripped_jpeg_has_no_exif_gps_xmp_iptc_or_comment_and_the_original_is_untouched(
    db: Database, owner: asyncpg.Connection, media_queue: JobQueue, database_url: str, redis_url: str, media_dirs: Media
) -> None:
    m = media_dirs
    creator = await make_creator(owner)
    source = jpeg_with_metadata(m.samples / "beach.jpg", width=80, height=60, orientation=6)
    original = source.read_bytes()
    assert len(secrets_in(original)) >= 6 and {"APP1", "APP13", "COM"} <= set(jpeg_segments(original))
    asset = await upload(db, m, creator, source, "image", "image/jpeg")
    job = await media_queue.enqueue("media_strip_metadata", {"asset_id": str(asset.id)}, user_id=creator)
    await run_media_jobs(database_url, redis_url, m)

    row, data = await output_of(owner, m, job.id)
    assert secrets_in(data) == []
    assert [s for s in jpeg_segments(data) if s.startswith("APP") or s == "COM"] == ["APP0"]  # JFIF only
    with Image.open(io.BytesIO(data)) as out:
        assert out.format == "JPEG" and len(out.getexif()) == 0
        assert not {"exif", "xmp", "comment", "photoshop"} & set(out.info)
        assert out.size == (60, 80)  # orientation 6 applied to the pixels before EXIF went
        expected = ImageOps.exif_transpose(Image.open(source)).convert("RGB")
        assert max(ImageStat.Stat(ImageChops.difference(out.convert("RGB"), expected)).mean) < 8  # JPEG noise only
    assert row["derived_from_asset_id"] == asset.id and row["produced_by_job_id"] == job.id
    assert row["kind"] == "image" and row["source"] == "generated" and row["mime_type"] == "image/jpeg"
    assert row["storage_key"].startswith(f"{creator}/derived/{job.id}/") and row["storage_key"] != asset.storage_key
    assert set(row["metadata"]["removed"]) >= {"exif", "gps", "xmp", "iptc", "comment"}
    assert m.store.path_for(asset.storage_key).read_bytes() == original  # the original, byte for byte
    record = await job_record(owner, job.id)
    assert record["progress"] == 100 and record["subject_type"] == "media_asset" and record["subject_id"] == asset.id
    assert no_work_dirs_left(m)


async def test_stripped_png_has_no_text_chunks_xmp_or_exif(
    db: Database, owner: asyncpg.Connection, media_queue: JobQueue, database_url: str, redis_url: str, media_dirs: Media
) -> None:
    m = media_dirs
    creator = await make_creator(owner)
    source = png_with_metadata(m.samples / "shot.png")
    assert {"tEXt", "zTXt", "iTXt", "eXIf"} <= set(png_chunks(source.read_bytes()))
    asset = await upload(db, m, creator, source, "image", "image/png")
    job = await media_queue.enqueue("media_strip_metadata", {"asset_id": str(asset.id)}, user_id=creator)
    await run_media_jobs(database_url, redis_url, m)

    row, data = await output_of(owner, m, job.id)
    assert set(png_chunks(data)) <= {"IHDR", "PLTE", "IDAT", "IEND"}
    assert secrets_in(data) == []
    with Image.open(io.BytesIO(data)) as out:
        assert out.format == "PNG" and out.size == (64, 48) and len(out.getexif()) == 0
        assert ImageChops.difference(out.convert("RGB"), quadrant_image(64, 48)).getbbox() is None  # lossless
    assert row["mime_type"] == "image/png" and (row["width"], row["height"]) == (64, 48)


async def test_convert_orients_then_crops_then_fits_and_writes_webp(
    db: Database, owner: asyncpg.Connection, media_queue: JobQueue, database_url: str, redis_url: str, media_dirs: Media
) -> None:
    m = media_dirs
    creator = await make_creator(owner)
    # Stored 400x300 with orientation 6: shown 300x400 (red top-right, green bottom-right, blue top-left).
    asset = await upload(db, m, creator, jpeg_with_metadata(m.samples / "big.jpg", width=400, height=300),
                         "image", "image/jpeg")  # fmt: skip
    crop = {"left": 150, "top": 0, "width": 150, "height": 200}  # the shown top-right quarter
    job = await media_queue.enqueue(
        "media_image_convert", {"asset_id": str(asset.id), "format": "webp", "crop": crop, "max_width": 60},
        user_id=creator,
    )  # fmt: skip
    resize = await media_queue.enqueue("media_image_convert", {"asset_id": str(asset.id), "max_height": 100},
        user_id=creator)
    await run_media_jobs(database_url, redis_url, m)

    row, data = await output_of(owner, m, job.id)
    with Image.open(io.BytesIO(data)) as out:
        assert out.format == "WEBP" and out.size == (60, 80)
        red, green, blue = out.convert("RGB").getpixel((30, 40))  # type: ignore[misc]
        assert red > 200 and green < 60 and blue < 60  # the shown top-right quarter is red
        assert "exif" not in out.info and "xmp" not in out.info
    assert row["mime_type"] == "image/webp" and (row["width"], row["height"]) == (60, 80)
    assert secrets_in(data) == []
    resized_row, resized = await output_of(owner, m, resize.id)
    with Image.open(io.BytesIO(resized)) as out:
        assert out.format == "JPEG" and out.size == (75, 100)
    assert resized_row["metadata"]["params"]["max_height"] == 100


async def test_probe_records_size_hash_dimensions_and_duration(
    db: Database, owner: asyncpg.Connection, media_queue: JobQueue, database_url: str, redis_url: str, media_dirs: Media
) -> None:
    m = media_dirs
    creator = await make_creator(owner)
    clip = video_with_metadata(m.samples / "clip.mp4", seconds=2, width=320, height=240)
    image = await upload(db, m, creator, jpeg_with_metadata(m.samples / "p.jpg", width=80, height=60),
                         "image", "image/jpeg")  # fmt: skip
    stored = await m.store.put(clip, f"{creator}/uploads/clip.mp4")
    async with db.creator_tx(creator) as conn:  # recorded with neither size nor hash
        vid = await media.create_asset(conn, creator, "video", stored.key, mime_type="video/mp4")
    jobs = [await media_queue.enqueue("media_probe", {"asset_id": str(a.id)}, user_id=creator) for a in (image, vid)]
    await run_media_jobs(database_url, redis_url, m)

    for job in jobs:
        assert (await job_record(owner, job.id))["status"] == "completed"
    image_row = await owner.fetchrow("select * from media_assets where id = $1", image.id)
    assert image_row is not None and (image_row["width"], image_row["height"]) == (60, 80)
    assert set(image_row["metadata"]["probe"]["metadata"]) >= {"exif", "gps", "xmp", "iptc", "comment"}
    video_row = await owner.fetchrow("select * from media_assets where id = $1", vid.id)
    assert video_row is not None
    assert (video_row["width"], video_row["height"]) == (320, 240) and abs(video_row["duration_ms"] - 2000) <= 50
    assert video_row["checksum_sha256"] == stored.sha256 and video_row["byte_size"] == stored.byte_size
    assert video_row["metadata"]["probe"]["tags"]["title"] == "GH-SECRET-TITLE"


async def test_stripped_video_has_no_tags_chapters_dates_or_extra_streams(
    db: Database, owner: asyncpg.Connection, media_queue: JobQueue, database_url: str, redis_url: str, media_dirs: Media
) -> None:
    m = media_dirs
    creator = await make_creator(owner)
    source = video_with_metadata(m.samples / "clip.mp4", seconds=2)
    original = source.read_bytes()
    assert "text" in mp4_handler_types(original)  # the chapter track
    assert any(t != (0, 0) for t in mp4_header_times(original).values())
    asset = await upload(db, m, creator, source, "video", "video/mp4")
    job = await media_queue.enqueue("media_strip_metadata", {"asset_id": str(asset.id)}, user_id=creator)
    await run_media_jobs(database_url, redis_url, m)

    row, data = await output_of(owner, m, job.id)
    assert secrets_in(data) == []
    assert b"x264 - core" not in data  # the encoder's SEI went with the other SEI units
    assert set(mp4_header_times(data).values()) == {(0, 0)}  # no creation or modification dates
    assert mp4_handler_types(data) == ["vide", "soun"]
    paths = [b.path for b in mp4_boxes(data)]
    assert not [p for p in paths if p.startswith("moov/udta/meta/ilst/") or p.endswith(("chpl", "©xyz", "loci"))]
    out = m.samples / "out.mp4"
    out.write_bytes(data)
    probe = parse_description(await m.tools.ffmpeg_describe(out))
    assert probe.descriptive_tags() == {} and probe.chapters == []
    assert probe.video is not None and (probe.video.width, probe.video.height) == (320, 240)
    assert await m.tools.count_frames(out) == 50  # streams copied: every frame still there
    assert row["mime_type"] == "video/mp4" and abs(row["duration_ms"] - 2000) <= 50
    assert set(row["metadata"]["removed"]["tag_keys"]["format"]) >= {"title", "comment", "location", "creation_time"}
    assert row["metadata"]["removed"]["chapters"] == 2
    assert m.store.path_for(asset.storage_key).read_bytes() == original
    assert no_work_dirs_left(m)


async def test_trim_is_frame_accurate_fitted_and_clean(
    db: Database, owner: asyncpg.Connection, media_queue: JobQueue, database_url: str, redis_url: str, media_dirs: Media
) -> None:
    m = media_dirs
    creator = await make_creator(owner)
    asset = await upload(db, m, creator, video_with_metadata(m.samples / "clip.mp4", seconds=3), "video", "video/mp4")
    trim = await media_queue.enqueue(
        "media_video_trim", {"asset_id": str(asset.id), "start_ms": 520, "duration_ms": 1000, "max_width": 160},
        user_id=creator,
    )  # fmt: skip
    silent = await media_queue.enqueue(
        "media_video_trim", {"asset_id": str(asset.id), "start_ms": 2000, "duration_ms": 5000, "audio": False},
        user_id=creator,
    )  # fmt: skip
    await run_media_jobs(database_url, redis_url, m)

    row, data = await output_of(owner, m, trim.id)
    clip = m.samples / "trim.mp4"
    clip.write_bytes(data)
    assert await m.tools.count_frames(clip) == 25  # 1.000 s at 25 fps, starting mid-GOP
    probe = parse_description(await m.tools.ffmpeg_describe(clip))
    assert probe.video is not None and (probe.video.width, probe.video.height) == (160, 120)
    assert probe.audio is not None and probe.descriptive_tags() == {} and probe.chapters == []
    assert secrets_in(data) == [] and set(mp4_header_times(data).values()) == {(0, 0)}
    assert (row["width"], row["height"], row["duration_ms"]) == (160, 120, 1000)
    _, tail = await output_of(owner, m, silent.id)
    (m.samples / "tail.mp4").write_bytes(tail)
    assert await m.tools.count_frames(m.samples / "tail.mp4") == 25  # what was left of the video: 1 s
    tail_probe = parse_description(await m.tools.ffmpeg_describe(m.samples / "tail.mp4"))
    assert tail_probe.audio is None


async def test_thumbnail_and_watermark_of_a_video_and_an_image(
    db: Database, owner: asyncpg.Connection, media_queue: JobQueue, database_url: str, redis_url: str, media_dirs: Media
) -> None:
    m = media_dirs
    creator = await make_creator(owner, tier="creator")  # thumbnails are not in the starter tier
    gray = video_with_metadata(m.samples / "clip.mp4", seconds=2, pattern="color=c=gray")  # text shows on flat gray
    clip = await upload(db, m, creator, gray, "video", "video/mp4")
    photo = await upload(db, m, creator, png_with_metadata(m.samples / "p.png", width=320, height=240),
                         "image", "image/png")  # fmt: skip
    async with db.creator_tx(creator) as conn:
        await conn.execute(
            "insert into media_presets (user_id, name, watermark, is_default) values ($1, 'brand', $2, true)",
            creator, {"text": "@gh_creator", "position": "bottom-right", "opacity": 1.0, "size_pct": 12},
        )  # fmt: skip
    plain = await media_queue.enqueue("media_video_thumbnail", {"asset_id": str(clip.id), "at_ms": 1000},
        user_id=creator)
    marked_clip = await media_queue.enqueue("media_watermark", {"asset_id": str(clip.id)}, user_id=creator)
    marked_photo = await media_queue.enqueue("media_watermark", {"asset_id": str(photo.id)}, user_id=creator)
    await run_media_jobs(database_url, redis_url, m)

    thumb_row, thumb = await output_of(owner, m, plain.id)
    with Image.open(io.BytesIO(thumb)) as frame:
        assert frame.format == "JPEG" and frame.size == (320, 240) and len(frame.getexif()) == 0
        plain_frame = frame.convert("RGB")
    assert thumb_row["metadata"]["at_ms"] == 1000 and [s for s in jpeg_segments(thumb) if s == "COM"] == []

    _, marked = await output_of(owner, m, marked_clip.id)
    (m.samples / "marked.mp4").write_bytes(marked)
    assert secrets_in(marked) == [] and await m.tools.count_frames(m.samples / "marked.mp4") == 50
    frame_path = m.samples / "marked-frame.png"
    await m.tools.ffmpeg_run(["-ss", "1", "-i", str(m.samples / "marked.mp4"), "-frames:v", "1", str(frame_path)])
    with Image.open(frame_path) as marked_frame:
        changed = ImageChops.difference(marked_frame.convert("RGB"), plain_frame).point(lambda v: 255 if v > 60 else 0)
        box = changed.getbbox()
    assert in_bottom_right(box, 320, 240)

    _, photo_bytes = await output_of(owner, m, marked_photo.id)
    with Image.open(io.BytesIO(photo_bytes)) as out:
        diff = ImageChops.difference(out.convert("RGB"), quadrant_image(320, 240)).getbbox()
    assert in_bottom_right(diff, 320, 240)
    assert secrets_in(photo_bytes) == []


async def test_a_storage_key_outside_the_root_fails_the_job_saying_so(
    db: Database, owner: asyncpg.Connection, media_queue: JobQueue, database_url: str, redis_url: str, media_dirs: Media
) -> None:
    m = media_dirs
    creator = await make_creator(owner)
    (m.root.parent / "outside.jpg").write_bytes(jpeg_with_metadata(m.samples / "o.jpg").read_bytes())
    (m.root / "evil").symlink_to(m.root.parent)
    async with db.creator_tx(creator) as conn:
        dotted = await media.create_asset(conn, creator, "image", "../outside.jpg")
        linked = await media.create_asset(conn, creator, "image", "evil/outside.jpg")
    jobs = [await media_queue.enqueue("media_strip_metadata", {"asset_id": str(a.id)}, user_id=creator)
            for a in (dotted, linked)]  # fmt: skip
    await run_media_jobs(database_url, redis_url, m)

    for job, reason in zip(jobs, ["each segment is letters", "outside the media root"], strict=True):
        record = await job_record(owner, job.id)
        assert record["status"] == "failed" and record["attempts"] == 1  # permanent: not retried
        assert "UnsafeStorageKey" in record["error"] and reason in record["error"]
    assert await owner.fetchval("select count(*) from media_assets where produced_by_job_id = any($1)",
                                [j.id for j in jobs]) == 0  # fmt: skip
    assert no_work_dirs_left(m)


async def test_payloads_are_checked_at_enqueue_and_wrong_inputs_fail_with_a_reason(
    db: Database, owner: asyncpg.Connection, media_queue: JobQueue, database_url: str, redis_url: str, media_dirs: Media
) -> None:
    m = media_dirs
    creator = await make_creator(owner)
    with pytest.raises(InvalidPayload, match=r"crop\.width"):
        await media_queue.enqueue("media_image_convert", {"asset_id": str(uuid.uuid4()), "crop": {"left": 0, "top": 0,
                            "width": 0, "height": 5}}, user_id=creator)  # fmt: skip
    with pytest.raises(InvalidPayload, match="duration_ms"):
        await media_queue.enqueue("media_video_trim", {"asset_id": str(uuid.uuid4())}, user_id=creator)
    with pytest.raises(QuotaExceeded, match="thumbnail_operations"):  # not in the starter tier
        await media_queue.enqueue("media_video_thumbnail", {"asset_id": str(uuid.uuid4())}, user_id=creator)
    image = await upload(db, m, creator, jpeg_with_metadata(m.samples / "p.jpg"), "image", "image/jpeg")
    junk = m.samples / "junk.mp4"
    junk.write_bytes(b"this is not a video")
    broken = await upload(db, m, creator, junk, "video", "video/mp4")
    wrong_kind = await media_queue.enqueue("media_video_trim", {"asset_id": str(image.id), "duration_ms": 500},
                                     user_id=creator)  # fmt: skip
    not_video = await media_queue.enqueue("media_strip_metadata", {"asset_id": str(broken.id)}, user_id=creator)
    no_preset = await media_queue.enqueue("media_watermark", {"asset_id": str(image.id)}, user_id=creator)
    missing = await media_queue.enqueue("media_probe", {"asset_id": str(uuid.uuid4())}, user_id=creator)
    await run_media_jobs(database_url, redis_url, m)

    reasons = {
        wrong_kind.id: "takes video assets", not_video.id: "cannot read it as media",
        no_preset.id: "no default media preset", missing.id: "does not exist",
    }  # fmt: skip
    for job_id, reason in reasons.items():
        record = await job_record(owner, job_id)
        assert record["status"] == "failed" and record["attempts"] == 1, record
        assert reason in record["error"]
    assert no_work_dirs_left(m)


async def test_a_job_run_again_after_it_recorded_its_output_makes_nothing_twice(
    db: Database, owner: asyncpg.Connection, media_queue: JobQueue, arq_redis: ArqRedis, database_url: str,
    redis_url: str,
    media_dirs: Media,
) -> None:  # fmt: skip
    m = media_dirs
    creator = await make_creator(owner)
    asset = await upload(db, m, creator, png_with_metadata(m.samples / "p.png"), "image", "image/png")
    job = await media_queue.enqueue("media_strip_metadata", {"asset_id": str(asset.id)}, user_id=creator)
    await run_media_jobs(database_url, redis_url, m)
    first, data = await output_of(owner, m, job.id)
    # As if its worker died after recording the output and before the outcome: processing, lease gone.
    await owner.execute(
        "update media_jobs set status = 'processing', finished_at = null, result = null,"
        " lease_expires_at = now() - interval '1 second' where id = $1",
        job.id,
    )
    assert await redrive_expired_leases(db) == 1
    assert (await relay_unpushed(db, arq_redis, grace_s=0, ttl_s=60))[0] == 1
    await run_media_jobs(database_url, redis_url, m)

    record = await job_record(owner, job.id)
    assert record["status"] == "completed" and record["attempts"] == 2
    assert record["result"]["outcome"] == "already_done" and record["result"]["asset_id"] == str(first["id"])
    assert await owner.fetchval("select count(*) from media_assets where produced_by_job_id = $1", job.id) == 1
    assert m.store.path_for(first["storage_key"]).read_bytes() == data


async def test_transcode_crops_fits_and_compresses_and_a_presets_teaser_is_short_small_and_marked(
    db: Database, owner: asyncpg.Connection, media_queue: JobQueue, database_url: str, redis_url: str, media_dirs: Media
) -> None:
    m = media_dirs
    creator = await make_creator(owner, tier="creator")  # teasers: ai_clip_operations, not in starter
    busy = await upload(db, m, creator, video_with_metadata(m.samples / "busy.mp4", seconds=2), "video", "video/mp4")
    gray = video_with_metadata(m.samples / "gray.mp4", seconds=3, width=640, height=480, pattern="color=c=gray")
    flat = await upload(db, m, creator, gray, "video", "video/mp4")
    async with db.creator_tx(creator) as conn:
        preset_id = await conn.fetchval(
            "insert into media_presets (user_id, name, watermark, output_width, output_height, clip_duration_ms)"
            " values ($1, 'teaser', $2, 320, 320, 1000) returning id",
            creator, {"text": "@gh_creator", "opacity": 1.0, "size_pct": 12},
        )  # fmt: skip
    crop = {"left": 0, "top": 0, "width": 160, "height": 120}
    small = await media_queue.enqueue("media_video_transcode", {"asset_id": str(busy.id), "crop": crop, "crf": 40},
                                user_id=creator)  # fmt: skip
    teaser = await media_queue.enqueue("media_video_teaser", {"asset_id": str(flat.id), "preset_id": str(preset_id),
                                 "start_ms": 500}, user_id=creator)  # fmt: skip
    await run_media_jobs(database_url, redis_url, m)

    small_row, small_bytes = await output_of(owner, m, small.id)
    (m.samples / "small.mp4").write_bytes(small_bytes)
    probe = parse_description(await m.tools.ffmpeg_describe(m.samples / "small.mp4"))
    assert probe.video is not None and (probe.video.width, probe.video.height) == (160, 120)
    assert await m.tools.count_frames(m.samples / "small.mp4") == 50
    assert small_row["byte_size"] < busy.byte_size and (small_row["width"], small_row["height"]) == (160, 120)
    assert secrets_in(small_bytes) == [] and probe.descriptive_tags() == {}

    teaser_row, teaser_bytes = await output_of(owner, m, teaser.id)
    clip = m.samples / "teaser.mp4"
    clip.write_bytes(teaser_bytes)
    assert await m.tools.count_frames(clip) == 25  # the preset's 1 s
    assert (teaser_row["width"], teaser_row["height"], teaser_row["duration_ms"]) == (320, 240, 1000)
    assert teaser_row["metadata"]["params"]["preset"] == "teaser"
    frame, plain = m.samples / "teaser-frame.png", m.samples / "plain-frame.png"
    await m.tools.ffmpeg_run(["-i", str(clip), "-frames:v", "1", str(frame)])
    await m.tools.ffmpeg_run(["-i", str(gray), "-frames:v", "1", "-vf", "scale=320:240", str(plain)])
    with Image.open(frame) as marked, Image.open(plain) as unmarked:
        changed = ImageChops.difference(marked.convert("RGB"), unmarked.convert("RGB"))
        box = changed.point(lambda v: 255 if v > 60 else 0).getbbox()
    assert in_bottom_right(box, 320, 240)
