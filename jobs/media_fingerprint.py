"""media_fingerprint: a copy of an image or video asset carrying an invisible watermark naming one recipient.

The recipient is a fan_profiles id of the creator's; the mark (media.fingerprint) is in the
luminance (of every frame, for a video), survives re-encoding and resizing, and
`media_watermark_detect` reads it back. An image is encoded from pixels only (as
media_image_convert) in the source's format, JPEG at `quality`; a video is re-encoded to H.264/AAC
MP4 at its size (clean, as media_video_trim's output). The output's metadata.params records the
recipient, which is how detection knows the candidates.
With `media_collection_id` the copy is also added as that collection's last member (a PPV bundle
made for the recipient).
Counted against the creator's `watermark_operations` quota when enqueued.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import UUID

from pydantic import Field

from geniehelper.domain import fan_crm
from geniehelper.domain.media import MediaAsset
from geniehelper.media import images, video
from geniehelper.media.operation import Made, Progress, media_job, probe_sized_video, run_operation
from geniehelper.media.tools import MediaTools, run_blocking
from geniehelper.runtime.context import JobContext
from geniehelper.runtime.definition import JobPayload
from geniehelper.runtime.retry import PermanentJobError


class MediaFingerprintPayload(JobPayload):
    asset_id: UUID
    fan_profile_id: UUID  # the recipient the copy names
    quality: int = Field(default=95, ge=60, le=100)  # of a JPEG output
    media_collection_id: UUID | None = None  # the copy also becomes this bundle's last member


async def media_fingerprint(ctx: JobContext, payload: MediaFingerprintPayload) -> dict[str, Any]:
    assert ctx.user_id is not None
    async with ctx.creator_tx() as conn:
        fan = await fan_crm.get_fan_profile(conn, ctx.user_id, payload.fan_profile_id)
    if fan is None:
        raise PermanentJobError(f"fan_profile_id: fan profile {payload.fan_profile_id} does not exist")

    async def make(tools: MediaTools, asset: MediaAsset, source: Path, work: Path, progress: Progress) -> Made:
        if asset.kind == "video":
            probe, _, _ = await probe_sized_video(tools, source)
            clip = await video.encode(tools, source, work, probe, fingerprint_for=payload.fan_profile_id,
                                      name="fingerprinted", on_progress=progress)  # fmt: skip
            return Made(clip.path, "video", clip.mime_type, clip.width, clip.height, clip.duration_s)
        out = await run_blocking(lambda: images.convert(
            source, work, max_pixels=tools.max_image_pixels, quality=payload.quality,
            fingerprint_for=payload.fan_profile_id, name="fingerprinted",
        ))  # fmt: skip
        return Made(out.path, "image", out.mime_type, out.width, out.height)

    params = {"fan_profile_id": str(payload.fan_profile_id), "quality": payload.quality}
    return await run_operation(ctx, payload.asset_id, "fingerprinted", ("image", "video"), make, params=params,
                               collection_id=payload.media_collection_id, for_fan=payload.fan_profile_id)  # fmt: skip


MEDIA_FINGERPRINT = media_job(
    "media_fingerprint",
    MediaFingerprintPayload,
    media_fingerprint,
    asset_of=lambda p: p.asset_id,
    timeout_s=600.0,
    quota_operation="watermark_operations",
)
