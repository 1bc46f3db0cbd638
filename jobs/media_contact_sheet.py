"""media_contact_sheet: `count` frames of a video tiled into one image (a contact sheet).

The frames are those at the middle of `count` equal parts of the video, in order, left to right
and top to bottom in `columns` columns (default: the square root of `count`, rounded up); each
tile is `tile_width` wide with the video's aspect ratio, so the sheet is columns x tile_width by
rows x tile height. Encoded from pixels only (as media_video_thumbnail's frames). Counted against
the creator's `thumbnail_operations` quota when enqueued.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal
from uuid import UUID

from pydantic import Field

from geniehelper.domain.media import MediaAsset
from geniehelper.media import images, sheet, video
from geniehelper.media.operation import (
    Made,
    Progress,
    media_job,
    probe_sized_video,
    run_operation,
)
from geniehelper.media.tools import MediaTools, run_blocking
from geniehelper.runtime.context import JobContext
from geniehelper.runtime.definition import JobPayload


class MediaContactSheetPayload(JobPayload):
    asset_id: UUID
    count: int = Field(default=9, ge=2, le=36)
    columns: int | None = Field(default=None, ge=1, le=36)
    tile_width: int = Field(default=320, ge=32, le=1_024)
    format: Literal["jpeg", "png", "webp"] = "jpeg"


async def media_contact_sheet(ctx: JobContext, payload: MediaContactSheetPayload) -> dict[str, Any]:
    columns = min(payload.columns or math.ceil(math.sqrt(payload.count)), payload.count)

    async def make(tools: MediaTools, _asset: MediaAsset, source: Path, work: Path, progress: Progress) -> Made:
        probe, width, height = await probe_sized_video(tools, source)
        if not probe.duration_s:
            raise video.VideoRejected("the video's duration is unknown")
        duration = probe.duration_s
        frames = []
        for index in range(payload.count):
            at_s = duration * (index + 0.5) / payload.count
            frames.append(await video.frame_png(tools, source, work, at_s=at_s, name=f"frame-{index:02d}"))
            await progress((index + 1) / payload.count)
        size = sheet.tile_size(width, height, payload.tile_width)
        tiled = await run_blocking(lambda: sheet.tile(frames, columns, size, work / "tiled.png"))
        out = await run_blocking(lambda: images.convert(
            tiled, work, max_pixels=tools.max_image_pixels, target=payload.format, keep_icc_profile=False,
            name="contact-sheet",
        ))  # fmt: skip
        details = {"columns": columns, "rows": -(-payload.count // columns), "tile": list(size)}
        return Made(out.path, "image", out.mime_type, out.width, out.height, details=details)

    params = payload.model_dump(mode="json", exclude={"asset_id"})
    return await run_operation(ctx, payload.asset_id, "contact-sheet", ("video",), make, params=params)


MEDIA_CONTACT_SHEET = media_job(
    "media_contact_sheet",
    MediaContactSheetPayload,
    media_contact_sheet,
    asset_of=lambda p: p.asset_id,
    timeout_s=600.0,
    quota_operation="thumbnail_operations",
)
