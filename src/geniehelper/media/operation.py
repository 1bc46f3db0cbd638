"""One media operation as a job runs it: source asset in, a new asset out, progress on the way.

`run_operation` loads the source asset (the creator's own, through RLS), runs `make` in a work
directory of the attempt's (removed however it ends), stores the file it made under a key of this
job's own (`<creator>/derived/<job record>/<file>`) and records it as a new `media_assets` row
derived from the source and produced by the job. The source's bytes are only ever read.

A job that runs again after its output was recorded returns that output and makes nothing; one
whose earlier attempt stored a file but died before recording it replaces that file (no asset
refers to it: the key belongs to this job alone).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import structlog
from pydantic import ValidationError

from geniehelper.domain import media
from geniehelper.media.admission import estimate_media_memory, record_measurement
from geniehelper.media.fingerprint import FingerprintRejected
from geniehelper.media.images import ImageRejected
from geniehelper.media.memory import measuring
from geniehelper.media.probe import MediaProbe, NotMedia, parse_description
from geniehelper.media.store import ObjectMissing, StorageConflict, UnsafeStorageKey
from geniehelper.media.tools import MEDIA, MediaTools, ToolFailed, run_blocking
from geniehelper.media.video import VideoRejected
from geniehelper.media.watermark import WatermarkStyle, render_layer
from geniehelper.runtime.context import JobContext
from geniehelper.runtime.definition import ErrorClass, JobDefinition, JobPayload, JobResult, Policy, Subject
from geniehelper.runtime.resources import ResourceKey
from geniehelper.runtime.retry import PermanentJobError

log = structlog.get_logger("geniehelper.media")

P = TypeVar("P", bound=JobPayload)

# Retrying these will not help: the input, the request or the stored bytes are wrong.
_PERMANENT = (
    FingerprintRejected, UnsafeStorageKey, ObjectMissing, StorageConflict, ImageRejected, VideoRejected, NotMedia,
    ToolFailed,
)  # fmt: skip


def classify_media_error(exc: BaseException) -> ErrorClass | None:
    """For JobDefinition.classify: media input errors are permanent; the rest as usual."""
    return "permanent" if isinstance(exc, _PERMANENT) else None


def payload_key(job_name: str, payload: JobPayload, asset_id: UUID) -> str:
    """The same request for the same asset while one is active is the same job."""
    digest = hashlib.sha256(payload.model_dump_json().encode()).hexdigest()[:16]
    return f"{job_name}:{asset_id}:{digest}"


@dataclass(frozen=True)
class Made:
    """What an operation made, in its work directory."""

    path: Path
    kind: media.AssetKind
    mime_type: str
    width: int | None = None
    height: int | None = None
    duration_s: float | None = None
    details: dict[str, Any] = field(default_factory=dict)


class Progress:
    """Progress of one attempt into media_jobs.progress, mapped into [low, high], at most every 0.5 s."""

    def __init__(self, ctx: JobContext, low: int = 10, high: int = 90) -> None:
        self.ctx, self.low, self.high = ctx, low, high
        self.last_percent = -1
        self.last_at = 0.0

    async def __call__(self, fraction: float) -> None:
        percent = self.low + round((self.high - self.low) * fraction)
        now = time.monotonic()
        if percent > self.last_percent and (now - self.last_at >= 0.5 or percent >= self.high):
            self.last_percent, self.last_at = percent, now
            await self.ctx.progress(percent)


async def load_source(ctx: JobContext, asset_id: UUID, kinds: Collection[str]) -> media.MediaAsset:
    assert ctx.user_id is not None
    async with ctx.creator_tx() as conn:
        asset = await media.get_asset(conn, ctx.user_id, asset_id)
    if asset is None:
        raise PermanentJobError(f"media asset {asset_id} does not exist")
    if asset.kind not in kinds:
        raise PermanentJobError(f"{ctx.job.name} takes {' or '.join(sorted(kinds))} assets; {asset_id} is {asset.kind}")
    if asset.status != "ready":
        raise PermanentJobError(f"media asset {asset_id} is {asset.status}, not ready")
    return asset


async def probe_video(tools: MediaTools, path: Path) -> MediaProbe:
    return parse_description(await tools.ffmpeg_describe(path))


async def probe_sized_video(tools: MediaTools, path: Path) -> tuple[MediaProbe, int, int]:
    """The probe and the frame size (width, height) of a video; VideoRejected when it has none."""
    probe = await probe_video(tools, path)
    main = probe.video
    if main is None or not main.width or not main.height:
        raise VideoRejected("the input has no video stream with a known size")
    return probe, main.width, main.height


async def watermark_layer(work: Path, size: tuple[int, int], style: WatermarkStyle | None) -> Path | None:
    """The visible watermark as a PNG of the output frame's `size`, for video.encode (None: no style)."""
    if style is None:
        return None
    layer = work / "watermark.png"
    await run_blocking(lambda: render_layer(*size, style).save(layer, "PNG"))
    return layer


def media_job(
    name: str,
    payload: type[P],
    run: Callable[[JobContext, P], Awaitable[JobResult]],
    *,
    asset_of: Callable[[P], UUID],
    timeout_s: float = 600.0,
    policy: Policy | None = None,
    quota_operation: str | None = None,
    resources: tuple[ResourceKey[Any], ...] = (MEDIA,),
) -> JobDefinition[P]:
    """A job of the media queue about the asset `asset_of(payload)`: one job per request and asset
    while active (payload_key), media errors permanent, admitted by its memory estimate."""
    return JobDefinition(
        name, payload, run, queue="media",
        policy=policy or Policy(max_attempts=3, timeout_s=timeout_s, backoff_base_s=5.0),
        classify=classify_media_error, quota_operation=quota_operation,
        key=lambda p: payload_key(name, p, asset_of(p)), subject=lambda p: Subject("media_asset", asset_of(p)),
        resources=resources, memory_estimate=estimate_media_memory,
    )  # fmt: skip


def _result(asset: media.MediaAsset, outcome: str) -> dict[str, Any]:
    return {
        "outcome": outcome, "asset_id": str(asset.id), "storage_key": asset.storage_key,
        "sha256": asset.checksum_sha256, "byte_size": asset.byte_size, "mime_type": asset.mime_type,
        "width": asset.width, "height": asset.height, "duration_ms": asset.duration_ms,
    }  # fmt: skip


async def run_operation(
    ctx: JobContext,
    asset_id: UUID,
    operation: str,
    kinds: Collection[str],
    make: Callable[[MediaTools, media.MediaAsset, Path, Path, Progress], Awaitable[Made]],
    *,
    params: dict[str, Any] | None = None,
    collection_id: UUID | None = None,
    for_fan: UUID | None = None,
) -> dict[str, Any]:
    """Run `make(tools, source asset, source file, work dir, progress)` and record what it made, in
    one transaction with: its usage as the last member of `collection_id`, and its usage as the copy
    made for the fan `for_fan` (media_asset_usages.fan_profile_id), each when given."""
    assert ctx.user_id is not None
    tools = ctx.resource(MEDIA)
    source = await load_source(ctx, asset_id, kinds)
    async with ctx.creator_tx() as conn:
        if collection_id is not None and not await media.collection_exists(conn, ctx.user_id, collection_id):
            raise PermanentJobError(f"media_collection_id: media collection {collection_id} does not exist")
        done = await media.find_job_output(conn, ctx.user_id, ctx.record_id)
    if done is not None:
        log.info("media.output_already_recorded", asset_id=str(done.id))
        return _result(done, "already_done")
    progress = Progress(ctx)
    async with tools.work_dir(ctx.record_id, ctx.attempt) as work:
        source_file = await tools.store.fetch(source.storage_key, work)
        await ctx.progress(progress.low)
        async with measuring() as meter:  # its peak memory, recorded with its output (media.admission)
            made = await make(tools, source, source_file, work, progress)
        key = f"{ctx.user_id}/derived/{ctx.record_id}/{made.path.name}"
        await ctx.ensure_lease()  # a stale attempt stores nothing
        await tools.store.discard(key)  # an earlier attempt's unrecorded file, if any (no asset refers to it)
        stored = await tools.store.put(made.path, key)
    stem = Path(source.original_filename or "asset").stem[:100]
    async with ctx.creator_tx() as conn:
        asset = await media.create_asset(
            conn, ctx.user_id, made.kind, stored.key, source="generated",
            original_filename=f"{stem}-{operation}{made.path.suffix}", mime_type=made.mime_type,
            byte_size=stored.byte_size, checksum_sha256=stored.sha256, width=made.width, height=made.height,
            duration_ms=round(made.duration_s * 1000) if made.duration_s is not None else None,
            derived_from_asset_id=source.id, produced_by_job_id=ctx.record_id, tags=source.tags,
            metadata={"operation": operation, "params": params or {}, **made.details},
        )  # fmt: skip
        if collection_id is not None:
            await media.add_to_collection(conn, ctx.user_id, asset.id, collection_id)
        if for_fan is not None:
            await media.record_asset_usage(conn, ctx.user_id, asset.id, fan_profile_id=for_fan)
        await record_measurement(conn, ctx.job.name, ctx.record_id, source, meter)
    log.info("media.output_recorded", operation=operation, source_asset_id=str(source.id), asset_id=str(asset.id),
             byte_size=stored.byte_size, peak_rss_mb=round(meter.peak_mb, 1),
             tool_peak_rss_mb=round(meter.tool_peak_mb, 1),
             process_growth_mb=round(meter.process_growth_mb, 1))  # fmt: skip
    return _result(asset, "created")


async def watermark_style(ctx: JobContext, style: WatermarkStyle | None, preset_id: UUID | None) -> WatermarkStyle:
    """The payload's style, or the watermark of the named (else the default) preset."""
    if style is not None:
        return style
    assert ctx.user_id is not None
    async with ctx.creator_tx() as conn:
        preset = await media.get_preset(conn, ctx.user_id, preset_id)
    if preset is None:
        raise PermanentJobError(
            f"media preset {preset_id} does not exist" if preset_id else "no style given and no default media preset"
        )
    if not preset.watermark:
        raise PermanentJobError(f"media preset {preset.name!r} has no watermark")
    try:
        return WatermarkStyle.model_validate(preset.watermark)
    except ValidationError as exc:
        reasons = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False))
        raise PermanentJobError(f"media preset {preset.name!r} has an invalid watermark: {reasons}") from None
