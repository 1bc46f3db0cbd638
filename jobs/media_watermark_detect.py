"""media_watermark_detect: which recipient's invisible watermark (media_fingerprint) an image or video carries.

The suspect is any image or video asset of the creator's (a leaked copy uploaded back, re-encoded
or resized; a video's frames are averaged, media.video.read_fingerprint).
The candidates are the recipients of the creator's fingerprinted copies of `source_asset_id`, or of
all the creator's fingerprinted copies when it is not given. No new asset: the result names the
recipient (`fan_profile_id`, null when none is found) with the correlation scores.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from geniehelper.domain import media
from geniehelper.media import fingerprint, images, video
from geniehelper.media.operation import load_source, media_job, probe_video
from geniehelper.media.tools import MEDIA, run_blocking
from geniehelper.runtime.context import JobContext
from geniehelper.runtime.definition import JobPayload


class MediaWatermarkDetectPayload(JobPayload):
    asset_id: UUID  # the suspect image or video
    source_asset_id: UUID | None = None  # only recipients of copies of this asset (None: of any)


async def media_watermark_detect(ctx: JobContext, payload: MediaWatermarkDetectPayload) -> dict[str, Any]:
    assert ctx.user_id is not None
    tools = ctx.resource(MEDIA)
    suspect = await load_source(ctx, payload.asset_id, ("image", "video"))
    async with ctx.creator_tx() as conn:
        candidates = await media.fingerprint_recipients(conn, ctx.user_id, payload.source_asset_id)
    async with tools.work_dir(ctx.record_id, ctx.attempt) as work:
        path = await tools.store.fetch(suspect.storage_key, work)
        await ctx.progress(20)
        if suspect.kind == "video":
            found = await video.read_fingerprint(tools, path, work, await probe_video(tools, path), candidates)
        else:
            found = await run_blocking(
                lambda: fingerprint.detect(images.load_shown(path, tools.max_image_pixels), candidates)
            )
    return {
        "fan_profile_id": str(found.recipient) if found.recipient else None,
        "score": round(found.score, 4), "threshold": fingerprint.THRESHOLD, "candidates": len(candidates),
        "scores": {str(c): round(s, 4) for c, s in sorted(found.scores.items(), key=lambda kv: -kv[1])[:10]},
    }  # fmt: skip


MEDIA_WATERMARK_DETECT = media_job(
    "media_watermark_detect",
    MediaWatermarkDetectPayload,
    media_watermark_detect,
    asset_of=lambda p: p.asset_id,
    timeout_s=600.0,
)
