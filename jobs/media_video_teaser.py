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
from geniehelper.media.admission import estimate_media_memory
from geniehelper.media.operation import (
    Made,
    Progress,
    classify_media_error,
    payload_key,
    probe_video,
    run_operation,
    watermark_style,
)
from geniehelper.media.tools import MEDIA, MediaTools, run_blocking
from geniehelper.media.watermark import render_layer
from geniehelper.runtime.context import JobContext
from geniehelper.runtime.definition import JobDefinition, JobPayload, Policy, Subject
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
        probe = await probe_video(tools, source)
        main = probe.video
        if main is None or not main.width or not main.height:
            raise video.VideoRejected("the input has no video stream with a known size")
        layer = None
        if style is not None:
            width, height = video.output_size(main.width, main.height, preset.output_width, preset.output_height)
            layer = work / "watermark.png"
            await run_blocking(lambda: render_layer(width, height, style).save(layer, "PNG"))
        clip = await video.encode(
            tools, source, work, probe, start_s=payload.start_ms / 1000, duration_s=duration_ms / 1000,
            max_width=preset.output_width, max_height=preset.output_height, watermark_layer=layer, name="teaser",
            on_progress=progress,
        )  # fmt: skip
        return Made(clip.path, "video", clip.mime_type, clip.width, clip.height, clip.duration_s)

    params = {"preset_id": str(preset.id), "preset": preset.name, "start_ms": payload.start_ms,
              "duration_ms": duration_ms}  # fmt: skip
    return await run_operation(ctx, payload.asset_id, "teaser", ("video",), make, params=params)


MEDIA_VIDEO_TEASER = JobDefinition(
    "media_video_teaser",
    MediaVideoTeaserPayload,
    media_video_teaser,
    queue="media",
    policy=Policy(max_attempts=3, timeout_s=1800.0, backoff_base_s=5.0),
    classify=classify_media_error,
    quota_operation="ai_clip_operations",
    key=lambda p: payload_key("media_video_teaser", p, p.asset_id),
    subject=lambda p: Subject("media_asset", p.asset_id),
    resources=(MEDIA,),
    memory_estimate=estimate_media_memory,
)
