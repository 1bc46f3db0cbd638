"""media_preset_apply: a media_presets row's whole combination applied to one asset, one output.

Images: fitted within the preset's output_width x output_height (never enlarged), its watermark
if it has one, the invisible fingerprint of `fan_profile_id` if given (media_fingerprint; videos
too), encoded
as its output_format when that is jpeg/png/webp (else the source's format). Videos: from `start_ms`
for its clip_duration_ms (the whole video when unset), fitted in the box, its watermark over every
frame, always H.264/AAC MP4. An output_format other than jpeg, png, webp or mp4 fails the job.
Every output is written from pixels/streams only, so it carries none of the source's metadata: a
superset of the preset's strip_metadata_fields, which the output records.
Counted against the creator's `watermark_operations` quota when enqueued, whatever the preset holds:
a preset is the creator's branded-copy recipe (its watermark, size, fingerprint), and the quota is
charged before the preset is read (docs/quotas.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast
from uuid import UUID

from pydantic import Field

from geniehelper.domain import fan_crm, media
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
from geniehelper.runtime.context import JobContext
from geniehelper.runtime.definition import JobPayload
from geniehelper.runtime.retry import PermanentJobError

_IMAGE_FORMATS = ("jpeg", "png", "webp")


class MediaPresetApplyPayload(JobPayload):
    asset_id: UUID
    preset_id: UUID | None = None  # None: the creator's default preset
    start_ms: int = Field(default=0, ge=0)  # videos: where the clip starts
    fan_profile_id: UUID | None = None  # also fingerprint the copy for this recipient
    media_collection_id: UUID | None = None  # the output also becomes this collection's last member


async def media_preset_apply(ctx: JobContext, payload: MediaPresetApplyPayload) -> dict[str, Any]:
    assert ctx.user_id is not None
    async with ctx.creator_tx() as conn:
        preset = await media.get_preset(conn, ctx.user_id, payload.preset_id)
        fan_id = payload.fan_profile_id
        fan = await fan_crm.get_fan_profile(conn, ctx.user_id, fan_id) if fan_id else None
    if preset is None:
        raise PermanentJobError(
            f"preset_id: media preset {payload.preset_id} does not exist" if payload.preset_id
            else "preset_id: none given and no default media preset"
        )  # fmt: skip
    if payload.fan_profile_id is not None and fan is None:
        raise PermanentJobError(f"fan_profile_id: fan profile {payload.fan_profile_id} does not exist")
    if preset.output_format not in (None, "mp4", *_IMAGE_FORMATS):
        raise PermanentJobError(f"media preset {preset.name!r}: output_format {preset.output_format!r} is not one of "
                                f"{', '.join((*_IMAGE_FORMATS, 'mp4'))}")  # fmt: skip
    image_format = cast(images.ImageFormat, preset.output_format) if preset.output_format in _IMAGE_FORMATS else None
    style = await watermark_style(ctx, None, preset.id) if preset.watermark else None

    async def make(tools: MediaTools, asset: MediaAsset, source: Path, work: Path, progress: Progress) -> Made:
        if asset.kind == "image":
            out = await run_blocking(lambda: images.convert(
                source, work, max_pixels=tools.max_image_pixels,
                target=image_format, max_width=preset.output_width,
                max_height=preset.output_height, watermark=style, fingerprint_for=payload.fan_profile_id,
                name="preset",
            ))  # fmt: skip
            return Made(out.path, "image", out.mime_type, out.width, out.height)
        probe, width, height = await probe_sized_video(tools, source)
        size = video.output_size(width, height, preset.output_width, preset.output_height)
        layer = await watermark_layer(work, size, style)
        duration_s = preset.clip_duration_ms / 1000 if preset.clip_duration_ms else None
        clip = await video.encode(
            tools, source, work, probe, start_s=payload.start_ms / 1000, duration_s=duration_s,
            max_width=preset.output_width, max_height=preset.output_height, watermark_layer=layer,
            fingerprint_for=payload.fan_profile_id, name="preset", on_progress=progress,
        )  # fmt: skip
        return Made(clip.path, "video", clip.mime_type, clip.width, clip.height, clip.duration_s)

    params = {
        "preset_id": str(preset.id), "preset": preset.name, "start_ms": payload.start_ms,
        "fan_profile_id": str(payload.fan_profile_id) if payload.fan_profile_id else None,
        "strip_metadata_fields": preset.strip_metadata_fields,
    }  # fmt: skip
    return await run_operation(ctx, payload.asset_id, "preset", ("image", "video"), make, params=params,
                               collection_id=payload.media_collection_id, for_fan=payload.fan_profile_id)  # fmt: skip


MEDIA_PRESET_APPLY = media_job(
    "media_preset_apply",
    MediaPresetApplyPayload,
    media_preset_apply,
    asset_of=lambda p: p.asset_id,
    timeout_s=1800.0,
    quota_operation="watermark_operations",
)
