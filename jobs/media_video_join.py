"""media_video_join: several video assets one after another, as one new H.264/AAC MP4 asset.

`asset_ids` in order (2-20, the creator's own, ready, distinct); the output is derived from the
first and has its size (fitted within `max_width` x `max_height`) and frame rate (unless `fps`);
clips of another size are fitted into it and letterboxed, and every clip is re-encoded so the
joint is clean (media.video.join). The recorded duration is the output's, probed after encoding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import UUID

from pydantic import Field, field_validator

from geniehelper.domain.media import MediaAsset
from geniehelper.media import video
from geniehelper.media.operation import (
    Made,
    Progress,
    load_source,
    media_job,
    probe_video,
    run_operation,
)
from geniehelper.media.probe import MediaProbe
from geniehelper.media.tools import MediaTools
from geniehelper.runtime.context import JobContext
from geniehelper.runtime.definition import JobPayload


class MediaVideoJoinPayload(JobPayload):
    asset_ids: list[UUID] = Field(min_length=2, max_length=20)
    max_width: int | None = Field(default=None, ge=16, le=8_000)
    max_height: int | None = Field(default=None, ge=16, le=8_000)
    fps: float | None = Field(default=None, gt=0, le=120)

    @field_validator("asset_ids")
    @classmethod
    def _distinct(cls, ids: list[UUID]) -> list[UUID]:
        if len(set(ids)) != len(ids):
            raise ValueError("each asset may appear once")
        return ids


async def media_video_join(ctx: JobContext, payload: MediaVideoJoinPayload) -> dict[str, Any]:
    others = [await load_source(ctx, asset_id, ("video",)) for asset_id in payload.asset_ids[1:]]

    async def make(tools: MediaTools, _asset: MediaAsset, source: Path, work: Path, progress: Progress) -> Made:
        sources: list[tuple[Path, MediaProbe]] = [(source, await probe_video(tools, source))]
        for other in others:
            path = await tools.store.fetch(other.storage_key, work)
            sources.append((path, await probe_video(tools, path)))
        joined = await video.join(tools, sources, work, max_width=payload.max_width, max_height=payload.max_height,
                                  fps=payload.fps, on_progress=progress)  # fmt: skip
        made = await probe_video(tools, joined.path)
        return Made(joined.path, "video", joined.mime_type, joined.width, joined.height, made.duration_s,
                    details={"parts": [str(a) for a in payload.asset_ids]})  # fmt: skip

    params = payload.model_dump(mode="json")
    return await run_operation(ctx, payload.asset_ids[0], "joined", ("video",), make, params=params)


MEDIA_VIDEO_JOIN = media_job(
    "media_video_join",
    MediaVideoJoinPayload,
    media_video_join,
    asset_of=lambda p: p.asset_ids[0],
    timeout_s=1800.0,
)
