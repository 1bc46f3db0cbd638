"""media_watermark: a copy of an image or video asset with a visible text watermark.

The style (text, corner, opacity, size, margin, colour) is the payload's `style`, else the
watermark of the preset named by `preset_id`, else that of the creator's default preset. Images are
re-encoded from pixels only (no metadata, as media_image_convert); videos are re-encoded to
H.264/AAC MP4 with the same layer over every frame, clean as media_strip_metadata's output.
Counted against the creator's `watermark_operations` quota when enqueued.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import UUID

from geniehelper.domain.media import MediaAsset
from geniehelper.media import images, video
from geniehelper.media.operation import (
    Made,
    Progress,
    media_job,
    probe_sized_video,
    run_operation,
    watermark_layer,
    watermark_style,
)
from geniehelper.media.tools import MediaTools, run_blocking
from geniehelper.media.watermark import WatermarkStyle
from geniehelper.runtime.context import JobContext
from geniehelper.runtime.definition import JobPayload


class MediaWatermarkPayload(JobPayload):
    asset_id: UUID
    style: WatermarkStyle | None = None
    preset_id: UUID | None = None  # when no style: this preset's watermark (None: the default preset's)


async def media_watermark(ctx: JobContext, payload: MediaWatermarkPayload) -> dict[str, Any]:
    style = await watermark_style(ctx, payload.style, payload.preset_id)

    async def make(tools: MediaTools, asset: MediaAsset, source: Path, work: Path, progress: Progress) -> Made:
        if asset.kind == "image":
            out = await run_blocking(lambda: images.convert(
                source, work, max_pixels=tools.max_image_pixels, quality=92, watermark=style, name="watermarked",
            ))  # fmt: skip
            return Made(out.path, "image", out.mime_type, out.width, out.height)
        probe, width, height = await probe_sized_video(tools, source)
        layer = await watermark_layer(work, video.fitted_size(width, height, None, None), style)
        clip = await video.encode(tools, source, work, probe, watermark_layer=layer, name="watermarked",
                                  on_progress=progress)  # fmt: skip
        return Made(clip.path, "video", clip.mime_type, clip.width, clip.height, clip.duration_s)

    preset = str(payload.preset_id) if payload.preset_id else None
    params = {"style": style.model_dump(mode="json"), "preset_id": preset}
    return await run_operation(ctx, payload.asset_id, "watermarked", ("image", "video"), make, params=params)


MEDIA_WATERMARK = media_job(
    "media_watermark",
    MediaWatermarkPayload,
    media_watermark,
    asset_of=lambda p: p.asset_id,
    timeout_s=1800.0,
    quota_operation="watermark_operations",
)
