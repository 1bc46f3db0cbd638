"""media_video_join through the real worker machinery (real PostgreSQL, valkey, ffmpeg, Pillow)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import asyncpg
import pytest
from PIL import Image, ImageStat

from geniehelper.db import Database
from geniehelper.media import video
from geniehelper.media.probe import parse_description
from geniehelper.media.tools import find_ffmpeg
from geniehelper.runtime.definition import InvalidPayload
from geniehelper.runtime.queue import JobQueue
from tests.conftest import make_creator
from tests.media_harness import Media, no_work_dirs_left, output_of, run_media_jobs, upload
from tests.media_samples import video_with_metadata


def silent_clip(path: Path, *, seconds: float, size: str, fps: int) -> Path:
    """A video with no audio stream at all."""
    subprocess.run(
        [find_ffmpeg(None), "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-f", "lavfi",
         "-i", f"color=c=white:size={size}:rate={fps}:duration={seconds}", "-c:v", "libx264", "-preset", "ultrafast",
         "-pix_fmt", "yuv420p", str(path)],
        check=True,
    )  # fmt: skip
    return path


async def test_clips_of_other_sizes_and_rates_join_into_one_of_the_first_ones_size_lasting_their_sum(
    db: Database, owner: asyncpg.Connection, media_queue: JobQueue, database_url: str, redis_url: str, media_dirs: Media
) -> None:
    m = media_dirs
    creator = await make_creator(owner)
    first = await upload(db, m, creator, video_with_metadata(m.samples / "a.mp4", seconds=2), "video", "video/mp4")
    square = video_with_metadata(m.samples / "b.mp4", seconds=1, width=240, height=240, fps=30)
    second = await upload(db, m, creator, square, "video", "video/mp4")
    mute = await upload(db, m, creator, silent_clip(m.samples / "c.mp4", seconds=1, size="160x120", fps=15),
                        "video", "video/mp4")  # fmt: skip
    ids = [str(first.id), str(second.id), str(mute.id)]
    job = await media_queue.enqueue("media_video_join", {"asset_ids": ids}, user_id=creator)
    with pytest.raises(InvalidPayload, match="asset_ids"):
        await media_queue.enqueue("media_video_join", {"asset_ids": [ids[0], ids[0]]}, user_id=creator)
    with pytest.raises(InvalidPayload, match="asset_ids"):
        await media_queue.enqueue("media_video_join", {"asset_ids": [ids[0]]}, user_id=creator)
    await run_media_jobs(database_url, redis_url, m)

    row, _ = await output_of(owner, m, job.id)
    assert row["derived_from_asset_id"] == first.id and row["metadata"]["parts"] == ids
    assert (row["width"], row["height"], row["mime_type"]) == (320, 240, "video/mp4")
    out = m.store.path_for(row["storage_key"])
    probe = parse_description(await m.tools.ffmpeg_describe(out))
    assert probe.video is not None and (probe.video.width, probe.video.height, probe.video.fps) == (320, 240, 25)
    assert probe.audio is not None  # kept, with silence under the clip that had none
    assert probe.duration_s is not None and abs(probe.duration_s - 4.0) < 0.15  # 2 s + 1 s + 1 s
    assert abs(row["duration_ms"] - 4000) < 150
    assert abs(await m.tools.count_frames(out) - 100) <= 1  # 4 s at the first clip's 25 fps

    frames = m.samples / "frames"
    frames.mkdir()
    square_frame = Image.open(await video.frame_png(m.tools, out, frames, at_s=2.5)).convert("L")
    white_frame = Image.open(await video.frame_png(m.tools, out, frames, at_s=3.5)).convert("L")
    left_bar = ImageStat.Stat(square_frame.crop((0, 0, 30, 240))).mean[0]
    assert left_bar < 20 and ImageStat.Stat(square_frame.crop((60, 0, 260, 240))).mean[0] > 40  # pillarboxed
    assert ImageStat.Stat(white_frame).mean[0] > 230  # the 4:3 white clip fills the frame
    assert no_work_dirs_left(m)
