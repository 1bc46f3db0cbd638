"""media_video_thumbnail: a JPEG (or PNG/WebP) of the frame a video shows at `at_ms`.

The frame is taken by ffmpeg and encoded from pixels only (no metadata), fitted within
max_width x max_height. Without `at_ms`: one second in, or the middle of a shorter video.
Counted against the creator's `thumbnail_operations` quota when enqueued.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal
from uuid import UUID

from pydantic import Field

from geniehelper.domain.media import MediaAsset
from geniehelper.media import images, video
from geniehelper.media.operation import Made, Progress, media_job, probe_video, run_operation
from geniehelper.media.tools import MediaTools, run_blocking
from geniehelper.runtime.context import JobContext
from geniehelper.runtime.definition import JobPayload


class MediaVideoThumbnailPayload(JobPayload):
    asset_id: UUID
    at_ms: int | None = Field(default=None, ge=0)
    format: Literal["jpeg", "png", "webp"] = "jpeg"
    max_width: int | None = Field(default=None, ge=16, le=8_000)
    max_height: int | None = Field(default=None, ge=16, le=8_000)


async def media_video_thumbnail(ctx: JobContext, payload: MediaVideoThumbnailPayload) -> dict[str, Any]:
    async def make(tools: MediaTools, _asset: MediaAsset, source: Path, work: Path, _progress: Progress) -> Made:
        probe = await probe_video(tools, source)
        if probe.video is None:
            raise video.VideoRejected("the input has no video stream")
        duration = probe.duration_s or 0.0
        at_s = payload.at_ms / 1000 if payload.at_ms is not None else min(1.0, duration / 2)
        if probe.duration_s is not None and at_s >= probe.duration_s:
            raise video.VideoRejected(f"at_ms {payload.at_ms} is past the end of the {probe.duration_s:g}s video")
        frame = await video.frame_png(tools, source, work, at_s=at_s)
        out = await run_blocking(lambda: images.convert(
            frame, work, max_pixels=tools.max_image_pixels, target=payload.format, max_width=payload.max_width,
            max_height=payload.max_height, keep_icc_profile=False, name="thumbnail",
        ))  # fmt: skip
        return Made(out.path, "image", out.mime_type, out.width, out.height, details={"at_ms": round(at_s * 1000)})

    params = payload.model_dump(mode="json", exclude={"asset_id"})
    return await run_operation(ctx, payload.asset_id, "thumbnail", ("video",), make, params=params)


MEDIA_VIDEO_THUMBNAIL = media_job(
    "media_video_thumbnail",
    MediaVideoThumbnailPayload,
    media_video_thumbnail,
    asset_of=lambda p: p.asset_id,
    timeout_s=300.0,
    quota_operation="thumbnail_operations",
)
