"""media_describe: ask a vision model (Ollama-compatible, OLLAMA_URL) what an image or a video shows,
and store its answer in `media_assets.ai_description` (and the model in `ai_description_model`).

An image is sent as it is shown (EXIF orientation applied), fitted within 1024x1024 and re-encoded
as a JPEG from its pixels alone, so no EXIF, GPS or other metadata leaves the worker. A video is
sent as `frames` frames decoded by ffmpeg at evenly spaced times (the middle of each of `frames`
equal parts), in order, in one request. `stream` picks NDJSON streaming or one JSON answer; `api`
picks `/api/chat` or `/api/generate`.

An answer broken off (an error mid-stream, a dropped connection, a stall longer than AI_TIMEOUT_S),
a 5xx or 429 and an unreachable server are retried with backoff; an unknown model, a request the
server refuses, an unreadable input and OLLAMA_URL unset fail the job at once with the reason.
Counted against the creator's `ai_clip_operations` quota when enqueued.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal
from uuid import UUID

from pydantic import Field

from geniehelper.ai.client import AI
from geniehelper.domain import media
from geniehelper.media import images, video
from geniehelper.media.operation import load_source, media_job, probe_video
from geniehelper.media.tools import MEDIA, MediaTools, run_blocking
from geniehelper.runtime.context import JobContext
from geniehelper.runtime.definition import JobPayload, Policy
from geniehelper.runtime.retry import PermanentJobError

MODEL_EDGE_PX = 1024
IMAGE_PROMPT = (
    "Describe this image in one or two sentences for a creator's media library: who or what is in it, "
    "the setting, the main colours and the mood. Do not guess names."
)
VIDEO_PROMPT = (
    "These {n} images are frames of one video, in order. Describe the video in one or two sentences for a "
    "creator's media library: who or what is in it, the setting, what happens, the main colours."
)


class MediaDescribePayload(JobPayload):
    asset_id: UUID
    prompt: str | None = Field(default=None, min_length=1, max_length=2_000)
    stream: bool = True
    api: Literal["chat", "generate"] = "chat"
    frames: int = Field(default=3, ge=1, le=8)


async def _for_model(tools: MediaTools, path: Path, work: Path, name: str) -> bytes:
    out = await run_blocking(lambda: images.convert(
        path, work, max_pixels=tools.max_image_pixels, target="jpeg", max_width=MODEL_EDGE_PX,
        max_height=MODEL_EDGE_PX, keep_icc_profile=False, quality=90, name=name,
    ))  # fmt: skip
    return await run_blocking(out.path.read_bytes)


async def video_frames(tools: MediaTools, source: Path, work: Path, count: int) -> tuple[list[bytes], list[float]]:
    """`count` frames at the middle of `count` equal parts of the video, as JPEGs for the model."""
    probe = await probe_video(tools, source)
    if probe.video is None:
        raise video.VideoRejected("the input has no video stream")
    duration = probe.duration_s or 0.0
    times = [round(duration * (i + 0.5) / count, 3) for i in range(count)] if duration > 0 else [0.0]
    frames = []
    for i, at_s in enumerate(times):
        frame = await video.frame_png(tools, source, work, at_s=at_s, name=f"frame{i}")
        frames.append(await _for_model(tools, frame, work, f"frame{i}-model"))
    return frames, times


async def media_describe(ctx: JobContext, payload: MediaDescribePayload) -> dict[str, Any]:
    assert ctx.user_id is not None
    tools = ctx.resource(MEDIA)
    vision = ctx.resource(AI).vision()
    asset = await load_source(ctx, payload.asset_id, ("image", "video"))
    times: list[float] = []
    async with tools.work_dir(ctx.record_id, ctx.attempt) as work:
        path = await tools.store.fetch(asset.storage_key, work)
        await ctx.progress(10)
        if asset.kind == "image":
            sent = [await _for_model(tools, path, work, "image-model")]
            prompt = payload.prompt or IMAGE_PROMPT
        else:
            sent, times = await video_frames(tools, path, work, payload.frames)
            prompt = payload.prompt or VIDEO_PROMPT.format(n=len(sent))
    await ctx.progress(40)
    answer = await vision.describe(sent, prompt, stream=payload.stream, api=payload.api)
    await ctx.progress(90)
    await ctx.ensure_lease()  # a stale attempt stores nothing
    async with ctx.creator_tx() as conn:
        updated = await media.set_asset_analysis(
            conn, ctx.user_id, asset.id, ai_description=answer.text, ai_description_model=answer.model
        )
    if updated is None:
        raise PermanentJobError(f"media asset {asset.id} was deleted while it was described")
    return {
        "asset_id": str(asset.id), "model": answer.model, "description": answer.text, "images_sent": len(sent),
        "frame_times_s": times, "streamed": answer.streamed, "chunks": answer.chunks, "api": payload.api,
        "seconds": round(answer.seconds, 3),
    }  # fmt: skip


MEDIA_DESCRIBE = media_job(
    "media_describe",
    MediaDescribePayload,
    media_describe,
    asset_of=lambda p: p.asset_id,
    policy=Policy(max_attempts=4, timeout_s=900.0, backoff_base_s=2.0, backoff_max_s=120.0),
    quota_operation="ai_clip_operations",
    resources=(MEDIA, AI),
)
