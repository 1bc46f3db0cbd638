"""Media jobs' memory: recording what each took, and estimating what the next will take.

Recorded (`record_measurement`, in the transaction that records a job's output): per finished
media job, its operation (`<job name>:<asset kind>`), its input's size (pixels, duration, bytes)
and its measured peak (`media.memory`) in `media_job_measurements`.

Estimated (`estimate_media_memory`, asked by the worker before the job starts,
runtime.admission): the input's size in megapixels `mp` (of an image or of a video's frames; a
join's clips are decoded together, so their sum; an asset whose size is not recorded counts as
UNKNOWN_MEGAPIXELS) and, from the latest PROFILE_ROWS measurements of
the operation (every creator's: memory is a matter of machine and input size):
- `fixed` = the smallest measured peak (it bounds the part that does not grow with size from
  above), `per_mp` = the largest (peak - fixed) / mp measured;
- estimate = SAFETY x (fixed + per_mp x mp).
Measurements are trusted only up to EXTRAPOLATE x the largest input measured: beyond it, the
default's estimate is taken when it is larger. Before any measurement of the operation, the
default (DEFAULTS, per asset kind, set above what 1080p and 12 MP inputs measured on the
development machine: see bench/README.md, "media") applies. Durations are recorded but not used:
ffmpeg's memory grows with frame size (its frame buffers and lookahead), not with length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from geniehelper.domain.media import MediaAsset
from geniehelper.media.memory import MemoryMeter
from geniehelper.runtime.admission import EstimateContext, MemoryEstimate
from geniehelper.runtime.definition import JobPayload

SAFETY = 1.25
PROFILE_ROWS = 200
EXTRAPOLATE = 1.5
# Per asset kind: (fixed MB, MB per megapixel), before anything was measured.
DEFAULTS: dict[str, tuple[float, float]] = {"video": (200.0, 250.0), "image": (60.0, 60.0), "audio": (150.0, 0.0)}
OTHER_DEFAULT = (200.0, 250.0)
# An asset whose size is not recorded (never probed) counts as this big: a 1080p frame, a 12 MP photo.
UNKNOWN_MEGAPIXELS: dict[str, float] = {"video": 1920 * 1080 / 1e6, "image": 12.0}

RECORD_MEASUREMENT = """insert into media_job_measurements (user_id, job_id, operation, input_pixels, input_duration_s,
    input_bytes, tool_peak_rss_mb, process_growth_mb, peak_rss_mb)
values ($1, $2, $3, $4, $5, $6, $7, $8, $9)
on conflict (user_id, job_id) do nothing"""
PROFILE = """select operation, input_pixels, input_duration_s, peak_rss_mb
  from media_memory_profile($1) where operation = $2"""
INPUT_SIZES = """select kind, width, height, duration_ms, byte_size from media_assets
 where user_id = $1 and id = any($2::uuid[])"""


@dataclass(frozen=True)
class Measurement:
    megapixels: float
    peak_mb: float


def operation_of(job_name: str, kind: str) -> str:
    return f"{job_name}:{kind}"


def megapixels(kind: str, pixels: int | None) -> float:
    """An input's size; UNKNOWN_MEGAPIXELS for its kind when its size is not recorded."""
    return pixels / 1e6 if pixels else UNKNOWN_MEGAPIXELS.get(kind, 0.0)


def estimate_mb(measured: Sequence[Measurement], kind: str, mp: float) -> tuple[float, str]:
    """(estimate MB, its basis) for an input of `mp` megapixels (the module's docstring)."""
    fixed_default, per_mp_default = DEFAULTS.get(kind, OTHER_DEFAULT)
    default = SAFETY * (fixed_default + per_mp_default * mp)
    if not measured:
        return default, "default"
    fixed = min(m.peak_mb for m in measured)
    per_mp = max(((m.peak_mb - fixed) / m.megapixels for m in measured if m.megapixels > 0), default=0.0)
    estimate = SAFETY * (fixed + per_mp * mp)
    largest = max(m.megapixels for m in measured)
    if mp > EXTRAPOLATE * largest and default > estimate:
        return default, f"default (input {mp:.2f} MP is beyond the {largest:.2f} MP measured, n={len(measured)})"
    return estimate, f"measured (n={len(measured)}, fixed {fixed:.0f} MB, {per_mp:.0f} MB/MP)"


async def estimate_media_memory(ctx: EstimateContext, payload: JobPayload) -> MemoryEstimate:
    """JobDefinition.memory_estimate of the media jobs (`asset_id`, or a join's `asset_ids`)."""
    asset_ids: list[UUID] = list(getattr(payload, "asset_ids", None) or [payload.asset_id])  # type: ignore[attr-defined]
    async with ctx.tx() as conn:
        rows = await conn.fetch(INPUT_SIZES, ctx.user_id, asset_ids)
        if not rows:  # the job fails at once, naming the asset
            return MemoryEstimate(0.0, ctx.job.name, "no such asset (the job fails before any work)")
        kind = rows[0]["kind"]
        operation = operation_of(ctx.job.name, kind)
        profile = await conn.fetch(PROFILE, PROFILE_ROWS, operation)
    mp = sum(megapixels(r["kind"], r["width"] * r["height"] if r["width"] and r["height"] else None) for r in rows)
    measured = [Measurement(megapixels(kind, r["input_pixels"]), r["peak_rss_mb"]) for r in profile]
    mb, basis = estimate_mb(measured, kind, mp)
    return MemoryEstimate(mb, operation, f"{basis}, input {mp:.2f} MP")


async def record_measurement(conn: Any, job_name: str, job_id: UUID, source: MediaAsset, meter: MemoryMeter) -> None:
    """One finished job's measurement (in the transaction that records its output)."""
    pixels = source.width * source.height if source.width and source.height else None
    await conn.execute(
        RECORD_MEASUREMENT, source.user_id, job_id, operation_of(job_name, source.kind), pixels,
        source.duration_ms / 1000 if source.duration_ms is not None else None, source.byte_size,
        meter.tool_peak_mb, meter.process_growth_mb, meter.peak_mb,
    )  # fmt: skip
