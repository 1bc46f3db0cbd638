"""media_video_teaser: a preset's teaser of a video: its first seconds, at its size, watermarked.

From `start_ms` for the preset's `clip_duration_ms` (10 s if it has none), fitted within its
`output_width` x `output_height`, with its watermark if it has one (the preset named by
`preset_id`, else the creator's default). Re-encoded, frame-accurate, no metadata (as
media_video_trim's output).
Counted against the creator's `ai_clip_operations` quota when enqueued: a teaser is the tier's
clip-making operation (the tier file has no separate teaser allowance; docs/quotas.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import UUID

from pydantic import Field

from geniehelper.domain import media
from geniehelper.domain.media import MediaAsset
from geniehelper.media import video
from geniehelper.media.operation import (
    Made,
    Progress,
    media_job,
    probe_sized_video,
    run_operation,
    watermark_layer,
    watermark_style,
)
from geniehelper.media.tools import MediaTools
from geniehelper.runtime.context import JobContext
from geniehelper.runtime.definition import JobPayload
from geniehelper.runtime.retry import PermanentJobError

DEFAULT_TEASER_MS = 10_000


class MediaVideoTeaserPayload(JobPayload):
    asset_id: UUID
    preset_id: UUID | None = None  # None: the creator's default preset
    start_ms: int = Field(default=0, ge=0)


async def media_video_teaser(ctx: JobContext, payload: MediaVideoTeaserPayload) -> dict[str, Any]:
    assert ctx.user_id is not None
    async with ctx.creator_tx() as conn:
        preset = await media.get_preset(conn, ctx.user_id, payload.preset_id)
    if preset is None:
        raise PermanentJobError(
            f"media preset {payload.preset_id} does not exist" if payload.preset_id else "no default media preset"
        )
    style = await watermark_style(ctx, None, preset.id) if preset.watermark else None
    duration_ms = preset.clip_duration_ms or DEFAULT_TEASER_MS

    async def make(tools: MediaTools, _asset: MediaAsset, source: Path, work: Path, progress: Progress) -> Made:
        probe, width, height = await probe_sized_video(tools, source)
        size = video.output_size(width, height, preset.output_width, preset.output_height)
        layer = await watermark_layer(work, size, style)
        clip = await video.encode(
            tools, source, work, probe, start_s=payload.start_ms / 1000, duration_s=duration_ms / 1000,
            max_width=preset.output_width, max_height=preset.output_height, watermark_layer=layer, name="teaser",
            on_progress=progress,
        )  # fmt: skip
        return Made(clip.path, "video", clip.mime_type, clip.width, clip.height, clip.duration_s)

    params = {"preset_id": str(preset.id), "preset": preset.name, "start_ms": payload.start_ms,
              "duration_ms": duration_ms}  # fmt: skip
    return await run_operation(ctx, payload.asset_id, "teaser", ("video",), make, params=params)


MEDIA_VIDEO_TEASER = media_job(
    "media_video_teaser",
    MediaVideoTeaserPayload,
    media_video_teaser,
    asset_of=lambda p: p.asset_id,
    timeout_s=1800.0,
    quota_operation="ai_clip_operations",
)
