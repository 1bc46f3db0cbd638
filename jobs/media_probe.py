"""media_probe: read an asset's stored bytes and record what they are.

Images are read with Pillow (format, size as shown after EXIF orientation, which metadata the file
carries), video and audio with ffmpeg (container, duration, streams, tags, chapters). The asset's
size, SHA-256, dimensions and duration are updated, and the probe kept in `metadata.probe`. An
asset whose recorded checksum no longer matches its bytes fails the job, saying so.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from geniehelper.domain import media
from geniehelper.media import images
from geniehelper.media.operation import load_source, media_job, probe_video
from geniehelper.media.tools import MEDIA, run_blocking
from geniehelper.runtime.context import JobContext
from geniehelper.runtime.definition import JobPayload
from geniehelper.runtime.retry import PermanentJobError


class MediaProbePayload(JobPayload):
    asset_id: UUID


async def media_probe(ctx: JobContext, payload: MediaProbePayload) -> dict[str, Any]:
    assert ctx.user_id is not None
    tools = ctx.resource(MEDIA)
    asset = await load_source(ctx, payload.asset_id, ("image", "video", "audio"))
    async with tools.work_dir(ctx.record_id, ctx.attempt) as work:
        path = await tools.store.fetch(asset.storage_key, work)
        stored = await tools.store.stat(asset.storage_key)
        assert stored is not None
        if asset.checksum_sha256 and asset.checksum_sha256 != stored.sha256:
            raise PermanentJobError(
                f"the stored bytes of asset {asset.id} no longer match its recorded SHA-256 "
                f"({asset.checksum_sha256[:12]}... recorded, {stored.sha256[:12]}... stored)"
            )
        await ctx.progress(30)
        width: int | None
        height: int | None
        duration_ms: int | None = None
        if asset.kind == "image":
            found = await run_blocking(lambda: images.probe(path, tools.max_image_pixels))
            probe, width, height = found.as_dict(), found.width, found.height
            mime = images.MIME.get(found.our_format or "", asset.mime_type)
        else:
            video = await probe_video(tools, path)
            probe = video.as_dict()
            main = video.video
            width, height = (main.width, main.height) if main else (None, None)
            duration_ms = round(video.duration_s * 1000) if video.duration_s is not None else None
            mime = asset.mime_type
    async with ctx.creator_tx() as conn:
        updated = await media.set_asset_probe(
            conn, ctx.user_id, asset.id, mime_type=mime, byte_size=stored.byte_size, checksum_sha256=stored.sha256,
            width=width, height=height, duration_ms=duration_ms, probe=probe,
        )  # fmt: skip
    if updated is None:
        raise PermanentJobError(f"media asset {asset.id} was deleted while it was probed")
    return {"asset_id": str(asset.id), "sha256": stored.sha256, "byte_size": stored.byte_size, "probe": probe}


MEDIA_PROBE = media_job(
    "media_probe",
    MediaProbePayload,
    media_probe,
    asset_of=lambda p: p.asset_id,
    timeout_s=180.0,
)
