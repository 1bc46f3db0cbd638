"""media_strip_metadata: a copy of an image or video asset with its metadata removed.

Images: re-encoded from pixels only (EXIF orientation applied first), in the source's format:
no EXIF (GPS included), XMP, IPTC/Photoshop blocks, comments or PNG text chunks (the ICC colour
profile is kept unless keep_icc_profile is false). Video: the video and audio streams copied as
they are, without container or stream tags, chapters, creation dates, encoder tags, data streams
(e.g. GPS telemetry), subtitles, cover art or H.264/HEVC SEI units. The source is untouched: the
copy is a new asset derived from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import UUID

from geniehelper.domain.media import MediaAsset
from geniehelper.media import images, video
from geniehelper.media.operation import Made, Progress, media_job, probe_video, run_operation
from geniehelper.media.tools import MediaTools, run_blocking
from geniehelper.runtime.context import JobContext
from geniehelper.runtime.definition import JobPayload


class MediaStripMetadataPayload(JobPayload):
    asset_id: UUID
    keep_icc_profile: bool = True


async def media_strip_metadata(ctx: JobContext, payload: MediaStripMetadataPayload) -> dict[str, Any]:
    async def make(tools: MediaTools, asset: MediaAsset, source: Path, work: Path, progress: Progress) -> Made:
        if asset.kind == "image":
            found = await run_blocking(lambda: images.probe(source, tools.max_image_pixels))
            out = await run_blocking(lambda: images.convert(
                source, work, max_pixels=tools.max_image_pixels, target=found.our_format or "png",
                quality=95, keep_icc_profile=payload.keep_icc_profile, name="stripped",
            ))  # fmt: skip
            return Made(out.path, "image", out.mime_type, out.width, out.height, details={"removed": found.metadata})
        probe = await probe_video(tools, source)
        clip = await video.strip_metadata(tools, source, work, probe, on_progress=progress)
        kept = (probe.video, probe.audio)
        removed = {  # names only: the values (a GPS position, say) are not copied anywhere
            "tag_keys": {where: sorted(tags) for where, tags in probe.descriptive_tags().items()},
            "chapters": len(probe.chapters),
            "streams_dropped": [s.index for s in probe.streams if all(s is not k for k in kept)],
        }
        return Made(clip.path, "video", clip.mime_type, clip.width, clip.height, clip.duration_s, {"removed": removed})

    params = payload.model_dump(mode="json", exclude={"asset_id"})
    return await run_operation(ctx, payload.asset_id, "stripped", ("image", "video"), make, params=params)


MEDIA_STRIP_METADATA = media_job(
    "media_strip_metadata",
    MediaStripMetadataPayload,
    media_strip_metadata,
    asset_of=lambda p: p.asset_id,
    timeout_s=900.0,
)
