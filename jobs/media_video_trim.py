"""media_video_trim: a clip of a video, from start_ms for duration_ms, cut on the exact frames.

Re-encoded (H.264/AAC MP4), so the clip starts and ends where asked, not at the nearest
keyframe; fitted within max_width x max_height if given; without audio if `audio` is false. The
clip carries no metadata (as media_strip_metadata's output). A teaser is a trim from the start
(start_ms 0) at a smaller size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import UUID

from pydantic import Field

from geniehelper.domain.media import MediaAsset
from geniehelper.media import video
from geniehelper.media.operation import Made, Progress, media_job, probe_video, run_operation
from geniehelper.media.tools import MediaTools
from geniehelper.runtime.context import JobContext
from geniehelper.runtime.definition import JobPayload


class MediaVideoTrimPayload(JobPayload):
    asset_id: UUID
    start_ms: int = Field(default=0, ge=0)
    duration_ms: int = Field(ge=40, le=6 * 3600 * 1000)
    max_width: int | None = Field(default=None, ge=16, le=8_000)
    max_height: int | None = Field(default=None, ge=16, le=8_000)
    audio: bool = True


async def media_video_trim(ctx: JobContext, payload: MediaVideoTrimPayload) -> dict[str, Any]:
    async def make(tools: MediaTools, _asset: MediaAsset, source: Path, work: Path, progress: Progress) -> Made:
        probe = await probe_video(tools, source)
        clip = await video.encode(
            tools, source, work, probe, start_s=payload.start_ms / 1000, duration_s=payload.duration_ms / 1000,
            max_width=payload.max_width, max_height=payload.max_height, audio=payload.audio, name="clip",
            on_progress=progress,
        )  # fmt: skip
        return Made(clip.path, "video", clip.mime_type, clip.width, clip.height, clip.duration_s)

    params = payload.model_dump(mode="json", exclude={"asset_id"})
    return await run_operation(ctx, payload.asset_id, "clip", ("video",), make, params=params)


MEDIA_VIDEO_TRIM = media_job(
    "media_video_trim",
    MediaVideoTrimPayload,
    media_video_trim,
    asset_of=lambda p: p.asset_id,
    timeout_s=1800.0,
)
