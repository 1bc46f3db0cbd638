"""media_video_transcode: a video re-encoded smaller: cropped, resized and/or compressed.

H.264/AAC MP4: `crop` (in the source's pixels) first, then fitted within max_width x
max_height (never enlarged), at quality `crf` (18 near-lossless ... 35 small; 23 default). The
output carries no metadata (as media_strip_metadata's).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import UUID

from pydantic import Field

from geniehelper.domain.media import MediaAsset
from geniehelper.media import video
from geniehelper.media.images import CropBox
from geniehelper.media.operation import Made, Progress, media_job, probe_video, run_operation
from geniehelper.media.tools import MediaTools
from geniehelper.runtime.context import JobContext
from geniehelper.runtime.definition import JobPayload


class MediaVideoTranscodePayload(JobPayload):
    asset_id: UUID
    max_width: int | None = Field(default=None, ge=16, le=8_000)
    max_height: int | None = Field(default=None, ge=16, le=8_000)
    crop: CropBox | None = None
    crf: int = Field(default=23, ge=0, le=51)
    audio: bool = True


async def media_video_transcode(ctx: JobContext, payload: MediaVideoTranscodePayload) -> dict[str, Any]:
    crop = (payload.crop.left, payload.crop.top, payload.crop.width, payload.crop.height) if payload.crop else None

    async def make(tools: MediaTools, _asset: MediaAsset, source: Path, work: Path, progress: Progress) -> Made:
        probe = await probe_video(tools, source)
        clip = await video.encode(
            tools, source, work, probe, max_width=payload.max_width, max_height=payload.max_height, crop=crop,
            crf=payload.crf, audio=payload.audio, name="transcoded", on_progress=progress,
        )  # fmt: skip
        return Made(clip.path, "video", clip.mime_type, clip.width, clip.height, clip.duration_s)

    params = payload.model_dump(mode="json", exclude={"asset_id"})
    return await run_operation(ctx, payload.asset_id, "transcoded", ("video",), make, params=params)


MEDIA_VIDEO_TRANSCODE = media_job(
    "media_video_transcode",
    MediaVideoTranscodePayload,
    media_video_transcode,
    asset_of=lambda p: p.asset_id,
    timeout_s=3600.0,
)
