"""media_image_convert: a new image from an image asset: converted, cropped and/or resized.

EXIF orientation is applied first, so crop coordinates are those of the picture as it is shown;
then the crop, then a fit within max_width x max_height (never enlarged). The output is encoded
from pixels only: it carries none of the source's metadata (only its ICC colour profile, unless
keep_icc_profile is false).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal
from uuid import UUID

from pydantic import Field

from geniehelper.domain.media import MediaAsset
from geniehelper.media import images
from geniehelper.media.images import CropBox
from geniehelper.media.operation import Made, Progress, media_job, run_operation
from geniehelper.media.tools import MediaTools, run_blocking
from geniehelper.runtime.context import JobContext
from geniehelper.runtime.definition import JobPayload


class MediaImageConvertPayload(JobPayload):
    asset_id: UUID
    format: Literal["jpeg", "png", "webp"] | None = None  # None: the source's (PNG if it is none of these)
    max_width: int | None = Field(default=None, ge=1, le=20_000)
    max_height: int | None = Field(default=None, ge=1, le=20_000)
    crop: CropBox | None = None
    quality: int = Field(default=90, ge=1, le=100)
    keep_icc_profile: bool = True


async def media_image_convert(ctx: JobContext, payload: MediaImageConvertPayload) -> dict[str, Any]:
    crop = images.Crop(**payload.crop.model_dump()) if payload.crop else None

    async def make(tools: MediaTools, _asset: MediaAsset, source: Path, work: Path, _progress: Progress) -> Made:
        out = await run_blocking(lambda: images.convert(
            source, work, max_pixels=tools.max_image_pixels, target=payload.format, max_width=payload.max_width,
            max_height=payload.max_height, crop=crop, quality=payload.quality,
            keep_icc_profile=payload.keep_icc_profile, name="converted",
        ))  # fmt: skip
        return Made(out.path, "image", out.mime_type, out.width, out.height)

    params = payload.model_dump(mode="json", exclude={"asset_id"})
    return await run_operation(ctx, payload.asset_id, "convert", ("image",), make, params=params)


MEDIA_IMAGE_CONVERT = media_job(
    "media_image_convert",
    MediaImageConvertPayload,
    media_image_convert,
    asset_of=lambda p: p.asset_id,
    timeout_s=180.0,
)
