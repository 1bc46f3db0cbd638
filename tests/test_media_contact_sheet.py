"""media_contact_sheet through the real worker machinery (real PostgreSQL, valkey, ffmpeg, Pillow)."""

from __future__ import annotations

import io
import itertools

import asyncpg
from PIL import Image, ImageChops, ImageStat

from geniehelper.db import Database
from geniehelper.runtime.queue import JobQueue
from tests.conftest import make_creator
from tests.media_harness import Media, no_work_dirs_left, output_of, run_media_jobs, upload
from tests.media_samples import jpeg_segments, video_with_metadata


def cells(im: Image.Image, columns: int, rows: int) -> list[Image.Image]:
    w, h = im.width // columns, im.height // rows
    return [im.crop((c * w, r * h, (c + 1) * w, (r + 1) * h)) for r in range(rows) for c in range(columns)]


def mean_level(im: Image.Image) -> float:
    return float(ImageStat.Stat(im.convert("L")).mean[0])


async def test_a_contact_sheet_tiles_frames_from_across_the_video_at_the_expected_size(
    db: Database, owner: asyncpg.Connection, media_queue: JobQueue, database_url: str, redis_url: str, media_dirs: Media
) -> None:
    m = media_dirs
    creator = await make_creator(owner, tier="creator")  # thumbnails are not in the starter tier
    clip = await upload(db, m, creator, video_with_metadata(m.samples / "clip.mp4", seconds=2), "video", "video/mp4")
    six = await media_queue.enqueue("media_contact_sheet", {"asset_id": str(clip.id), "count": 6, "columns": 3,
                              "tile_width": 160}, user_id=creator)  # fmt: skip
    five = await media_queue.enqueue("media_contact_sheet", {"asset_id": str(clip.id), "count": 5, "format": "png"},
                               user_id=creator)  # fmt: skip
    await run_media_jobs(database_url, redis_url, m)

    row, data = await output_of(owner, m, six.id)
    sheet = Image.open(io.BytesIO(data))
    assert (sheet.format, sheet.size, row["width"], row["height"]) == ("JPEG", (480, 240), 480, 240)
    assert row["derived_from_asset_id"] == clip.id and row["metadata"]["rows"] == 2
    assert "APP1" not in jpeg_segments(data)  # pixels only: no EXIF
    tiles = cells(sheet, 3, 2)
    assert all(mean_level(t) > 20 for t in tiles)  # every cell holds a frame
    # testsrc moves over time: frames from across the video differ from one another
    assert all(ImageChops.difference(a.convert("L"), b.convert("L")).getbbox() for a, b in itertools.pairwise(tiles))

    row, data = await output_of(owner, m, five.id)
    sheet = Image.open(io.BytesIO(data))
    assert (sheet.format, sheet.size) == ("PNG", (3 * 320, 2 * 240))  # 5 frames: 3 columns, 2 rows, 320 px tiles
    assert mean_level(cells(sheet, 3, 2)[5]) == 0  # the sixth cell stays empty
    assert no_work_dirs_left(m)
