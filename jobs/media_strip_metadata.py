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
from geniehelper.media.admission import estimate_media_memory
from geniehelper.media.operation import Made, Progress, classify_media_error, payload_key, probe_video, run_operation
from geniehelper.media.tools import MEDIA, MediaTools, run_blocking
from geniehelper.runtime.context import JobContext
from geniehelper.runtime.definition import JobDefinition, JobPayload, Policy, Subject


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


MEDIA_STRIP_METADATA = JobDefinition(
    "media_strip_metadata",
    MediaStripMetadataPayload,
    media_strip_metadata,
    queue="media",
    policy=Policy(max_attempts=3, timeout_s=900.0, backoff_base_s=5.0),
    classify=classify_media_error,
    key=lambda p: payload_key("media_strip_metadata", p, p.asset_id),
    subject=lambda p: Subject("media_asset", p.asset_id),
    resources=(MEDIA,),
    memory_estimate=estimate_media_memory,
)
