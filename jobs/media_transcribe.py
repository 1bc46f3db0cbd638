"""media_transcribe: extract the audio of an audio or video asset with ffmpeg (16 kHz mono 16-bit WAV),
send it to the speech-to-text endpoint (STT_URL, OpenAI-style multipart `file`), and store the text
in `media_assets.transcription_text`.

A 5xx or 429, a timeout (AI_TIMEOUT_S) and an unreachable server are retried with backoff; an input
without audio, an unreadable one, a refused request and STT_URL unset fail the job at once with the
reason. Counted against the creator's `ai_clip_operations` quota when enqueued.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from pydantic import Field

from geniehelper.ai.client import AI
from geniehelper.domain import media
from geniehelper.media.operation import Progress, load_source, media_job, probe_video
from geniehelper.media.tools import MEDIA, run_blocking
from geniehelper.runtime.context import JobContext
from geniehelper.runtime.definition import JobPayload, Policy
from geniehelper.runtime.retry import PermanentJobError

SAMPLE_RATE = 16_000
# OpenAI's endpoint takes files up to 25 MB: about 13 minutes of 16 kHz mono 16-bit audio.
MAX_WAV_BYTES = 25 * 1024 * 1024


def _too_long(seconds: float) -> str:
    return f"the audio is {seconds:.0f} s long: at most {MAX_WAV_BYTES // (SAMPLE_RATE * 2)} s can be transcribed"


class MediaTranscribePayload(JobPayload):
    asset_id: UUID
    language: str | None = Field(default=None, pattern=r"^[a-z]{2,3}$")


async def media_transcribe(ctx: JobContext, payload: MediaTranscribePayload) -> dict[str, Any]:
    assert ctx.user_id is not None
    tools = ctx.resource(MEDIA)
    speech = ctx.resource(AI).speech()
    asset = await load_source(ctx, payload.asset_id, ("audio", "video"))
    async with tools.work_dir(ctx.record_id, ctx.attempt) as work:
        path = await tools.store.fetch(asset.storage_key, work)
        probe = await probe_video(tools, path)
        if probe.audio is None:
            raise PermanentJobError(f"media asset {asset.id} has no audio stream to transcribe")
        if probe.duration_s is not None and probe.duration_s * SAMPLE_RATE * 2 > MAX_WAV_BYTES:
            raise PermanentJobError(_too_long(probe.duration_s))
        wav = work / "audio.wav"
        await tools.ffmpeg_run(
            ["-i", str(path), "-map", "0:a:0", "-vn", "-ac", "1", "-ar", str(SAMPLE_RATE), "-c:a", "pcm_s16le",
             "-map_metadata", "-1", "-fflags", "+bitexact", "-f", "wav", str(wav)],
            duration_s=probe.duration_s, on_progress=Progress(ctx, 10, 40),
        )  # fmt: skip
        data = await run_blocking(wav.read_bytes)
    if len(data) > MAX_WAV_BYTES:
        raise PermanentJobError(_too_long(len(data) / 2 / SAMPLE_RATE))
    await ctx.progress(50)
    transcript = await speech.transcribe(data, filename=f"{asset.id}.wav", language=payload.language)
    await ctx.ensure_lease()
    async with ctx.creator_tx() as conn:
        updated = await media.set_asset_analysis(conn, ctx.user_id, asset.id, transcription_text=transcript.text)
    if updated is None:
        raise PermanentJobError(f"media asset {asset.id} was deleted while it was transcribed")
    return {
        "asset_id": str(asset.id), "model": transcript.model, "text": transcript.text,
        "audio_s": round((len(data) - 44) / 2 / SAMPLE_RATE, 3), "seconds": round(transcript.seconds, 3),
    }  # fmt: skip


MEDIA_TRANSCRIBE = media_job(
    "media_transcribe",
    MediaTranscribePayload,
    media_transcribe,
    asset_of=lambda p: p.asset_id,
    policy=Policy(max_attempts=4, timeout_s=1_800.0, backoff_base_s=2.0, backoff_max_s=120.0),
    quota_operation="ai_clip_operations",
    resources=(MEDIA, AI),
)
