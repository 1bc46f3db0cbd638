"""Video operations with ffmpeg: metadata strip, thumbnail, trim/teaser, visible watermark.

Every output is written clean: no global, stream or chapter tags (`-map_metadata -1`,
`-map_chapters -1`, so no creation dates: the MP4 header times stay zero), no encoder tags
(`bitexact`, and an empty `encoder`), only the video and audio streams (no data streams such as GoPro GPS telemetry or a
chapter track, no subtitles, no cover art), and for H.264/HEVC no SEI units (where encoders put
their settings and some cameras their GPS track). Streams are copied when nothing else changes
(strip); trims are re-encoded, so they start and end on the exact frame (the one nearest the
asked start; as many frames as the asked duration holds at the video's frame rate).

The invisible per-recipient watermark (media.fingerprint) goes into every frame's luma as part of
an encode (ffmpeg `blend` grain-merge of a raw Y layer: y + layer - 128, chroma untouched), and
`read_fingerprint` averages a suspect video's frames' block means to name the recipient.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

from geniehelper.media import fingerprint
from geniehelper.media.probe import MediaProbe
from geniehelper.media.tools import MediaTools, run_blocking

ProgressFn = Callable[[float], Awaitable[None]]

CLEAN_OUTPUT = [
    "-map_metadata", "-1", "-map_chapters", "-1",
    "-fflags", "+bitexact", "-flags:v", "+bitexact", "-flags:a", "+bitexact",
    # An empty value keeps ffmpeg from naming its encoder in the streams (it would otherwise).
    "-metadata:s:v", "encoder=", "-metadata:s:a", "encoder=",
]  # fmt: skip
_SEI_FILTER = {"h264": "filter_units=remove_types=6", "hevc": "filter_units=remove_types=39|40"}
_MP4_VIDEO = {"h264", "hevc", "av1", "mpeg4", "vp9"}
_MP4_AUDIO = {"aac", "mp3", "opus", "ac3", "eac3", "alac", "flac"}
_WEBM_VIDEO = {"vp8", "vp9", "av1"}
_WEBM_AUDIO = {"opus", "vorbis"}


class VideoRejected(ValueError):
    """Not a video this worker can process (no video stream, an unsupported container or codec)."""


@dataclass(frozen=True)
class VideoOutput:
    path: Path
    mime_type: str
    width: int | None
    height: int | None
    duration_s: float | None


def _main_streams(probe: MediaProbe) -> tuple[str, str | None]:
    video = probe.video
    if video is None:
        raise VideoRejected("the input has no video stream")
    audio = probe.audio
    return video.codec, audio.codec if audio else None


def _copy_container(probe: MediaProbe) -> tuple[str, str, str]:
    """(muxer, extension, mime) that can hold the input's streams as they are."""
    video, audio = _main_streams(probe)
    if video in _MP4_VIDEO and (audio is None or audio in _MP4_AUDIO):
        return "mp4", "mp4", "video/mp4"
    if video in _WEBM_VIDEO and (audio is None or audio in _WEBM_AUDIO):
        return "webm", "webm", "video/webm"
    return "matroska", "mkv", "video/x-matroska"


def _map_main(has_audio: bool) -> list[str]:
    # 0:V: video streams that are not attached pictures; audio if there is some.
    return ["-map", "0:V:0", *(["-map", "0:a:0"] if has_audio else [])]


async def strip_metadata(
    tools: MediaTools, source: Path, out_dir: Path, probe: MediaProbe, *, on_progress: ProgressFn | None = None
) -> VideoOutput:
    """The same video and audio, streams copied, with nothing else."""
    muxer, extension, mime = _copy_container(probe)
    video_codec, audio_codec = _main_streams(probe)
    out = out_dir / f"stripped.{extension}"
    args = ["-i", str(source), *_map_main(audio_codec is not None), "-c", "copy", *CLEAN_OUTPUT]
    if video_codec in _SEI_FILTER:
        args += ["-bsf:v", _SEI_FILTER[video_codec]]
    if muxer == "mp4":
        args += ["-movflags", "+faststart"]
    await tools.ffmpeg_run([*args, "-f", muxer, str(out)], duration_s=probe.duration_s, on_progress=on_progress)
    video = probe.video
    return VideoOutput(out, mime, video.width if video else None, video.height if video else None, probe.duration_s)


def _scale_filter(max_width: int | None, max_height: int | None) -> str | None:
    """Fit within the box, never enlarged, even dimensions (what H.264 in yuv420p needs)."""
    if not max_width and not max_height:
        return None
    w = f"min({max_width},iw)" if max_width else "iw"
    h = f"min({max_height},ih)" if max_height else "ih"
    return f"scale=w='{w}':h='{h}':force_original_aspect_ratio=decrease:force_divisible_by=2"


def _even(value: int) -> int:
    return value - value % 2


def fitted_size(width: int, height: int, max_width: int | None, max_height: int | None) -> tuple[int, int]:
    """The size `_scale_filter` gives (for the record and the watermark layer)."""
    scale = min(1.0, (max_width or width) / width, (max_height or height) / height)
    if scale >= 1.0:
        return _even(width), _even(height)
    return max(2, _even(int(width * scale))), max(2, _even(int(height * scale)))


async def encode(
    tools: MediaTools,
    source: Path,
    out_dir: Path,
    probe: MediaProbe,
    *,
    start_s: float = 0.0,
    duration_s: float | None = None,
    max_width: int | None = None,
    max_height: int | None = None,
    audio: bool = True,
    watermark_layer: Path | None = None,
    crop: tuple[int, int, int, int] | None = None,
    crf: int = 23,
    fingerprint_for: UUID | None = None,
    name: str = "output",
    on_progress: ProgressFn | None = None,
) -> VideoOutput:
    """Re-encode to H.264/AAC MP4: from `start_s` for `duration_s` (frame-accurate: from the frame
    nearest `start_s`, round(duration_s x fps) frames; less if the video ends first), cropped to
    `crop` (left, top, width, height), fitted within max_width x max_height, with a watermark layer
    (a PNG of the output's size: `output_size`) over every frame, and the invisible fingerprint of
    `fingerprint_for` in every frame; `crf` sets the quality (lower: better, larger)."""
    _, audio_codec = _main_streams(probe)
    video = probe.video
    assert video is not None and video.width and video.height
    total = probe.duration_s
    if total is not None and start_s >= total:
        raise VideoRejected(f"start {start_s:g}s is past the end of the {total:g}s video")
    frames: int | None = None
    if video.fps:  # on the frame grid: start at the nearest frame, and so many frames, no more, no fewer
        start_s = round(start_s * video.fps) / video.fps
    length = min(duration_s, total - start_s) if duration_s is not None and total is not None else duration_s
    if video.fps and length is not None:
        frames = max(1, round(length * video.fps))
        length = frames / video.fps
    out = out_dir / f"{name}.mp4"
    args = ["-ss", f"{start_s:.6f}", "-i", str(source)]
    with_audio = audio and audio_codec is not None
    scale = _scale_filter(max_width, max_height) or "scale=w=trunc(iw/2)*2:h=trunc(ih/2)*2"
    if crop is not None:
        left, top, crop_w, crop_h = crop
        if left + crop_w > video.width or top + crop_h > video.height:
            frame = f"{video.width}x{video.height}"
            raise VideoRejected(f"crop {crop_w}x{crop_h}+{left}+{top} is outside the {frame} video")
        scale = f"crop={crop_w}:{crop_h}:{left}:{top},{scale}"
    width, height = output_size(video.width, video.height, max_width, max_height, crop)
    if watermark_layer is not None or fingerprint_for is not None:
        graph = f"[0:V:0]{scale},format=yuv420p[v0]"
        last, inputs = "v0", 1
        if watermark_layer is not None:
            args += ["-i", str(watermark_layer)]
            graph += f";[{last}][{inputs}:v]overlay=0:0:format=auto,format=yuv420p[v1]"
            last, inputs = "v1", inputs + 1
        if fingerprint_for is not None:
            fingerprint.check_frame_size(width, height)
            mark = out_dir / "fingerprint.yuv"
            await run_blocking(lambda: _write_fingerprint_layer(mark, width, height, fingerprint_for))
            args += ["-f", "rawvideo", "-pix_fmt", "yuv420p", "-video_size", f"{width}x{height}", "-i", str(mark)]
            # one layer frame, repeated under every frame (blend repeats a finished input's last frame)
            graph += f";[{last}][{inputs}:v]blend=c0_mode=grainmerge:c1_mode=normal:c2_mode=normal[v2]"
            last = "v2"
        args += ["-filter_complex", graph, "-map", f"[{last}]", *(["-map", "0:a:0"] if with_audio else [])]
    else:
        args += [*_map_main(with_audio), "-vf", f"{scale},format=yuv420p"]
    if length is not None:
        args += ["-t", f"{length:.6f}"]
    if frames is not None:
        args += ["-frames:v", str(frames)]
    args += ["-c:v", "libx264", "-preset", "veryfast", "-crf", str(crf), "-bsf:v", _SEI_FILTER["h264"]]
    args += ["-c:a", "aac", "-b:a", "128k"] if with_audio else ["-an"]
    args += [*CLEAN_OUTPUT, "-movflags", "+faststart", "-f", "mp4", str(out)]
    await tools.ffmpeg_run(args, duration_s=length or total, on_progress=on_progress)
    return VideoOutput(out, "video/mp4", width, height, length if length is not None else total)


def _write_fingerprint_layer(path: Path, width: int, height: int, recipient: UUID) -> None:
    """One raw yuv420p frame: Y = the mark (128 +- VIDEO_STRENGTH), U and V neutral (blend keeps the video's)."""
    luma = fingerprint.layer((width, height), recipient, fingerprint.VIDEO_STRENGTH).tobytes()
    path.write_bytes(luma + bytes([128]) * (width * height // 2))


FINGERPRINT_FRAMES = 750  # frames averaged when reading a fingerprint (30 s at 25 fps)


async def read_fingerprint(
    tools: MediaTools, source: Path, out_dir: Path, probe: MediaProbe, candidates: list[UUID]
) -> fingerprint.Detection:
    """Which of `candidates` the video's invisible watermark names: its first FINGERPRINT_FRAMES
    frames' luma, each reduced to GRID x GRID block means by ffmpeg (area scaling), averaged."""
    main = probe.video
    if main is None or not main.width or not main.height:
        raise VideoRejected("the input has no video stream with a known size")
    fingerprint.check_frame_size(main.width, main.height)
    grid = fingerprint.GRID
    out = out_dir / "blocks.gray"
    await tools.ffmpeg_run(
        ["-i", str(source), "-map", "0:V:0", "-frames:v", str(FINGERPRINT_FRAMES),
         "-vf", f"scale={grid}:{grid}:flags=area,format=gray", "-f", "rawvideo", str(out)]
    )  # fmt: skip

    def detect() -> fingerprint.Detection:
        data = out.read_bytes()
        cells = grid * grid
        frames = len(data) // cells
        if frames == 0:
            raise VideoRejected("the video has no frames to read a fingerprint from")
        sums = [0] * cells
        for start in range(0, frames * cells, cells):
            sums = [a + b for a, b in zip(sums, data[start : start + cells], strict=True)]
        return fingerprint.detect_in_grid([total / frames for total in sums], candidates)

    return await run_blocking(detect)


def output_size(
    width: int, height: int, max_width: int | None, max_height: int | None,
    crop: tuple[int, int, int, int] | None = None,
) -> tuple[int, int]:  # fmt: skip
    """The frame size `encode` gives for these options (the watermark layer must have it)."""
    if crop is not None:
        width, height = crop[2], crop[3]
    return fitted_size(width, height, max_width, max_height)


async def frame_png(tools: MediaTools, source: Path, out_dir: Path, *, at_s: float, name: str = "frame") -> Path:
    """The frame shown at `at_s`, as a PNG in `out_dir` (made into a clean image by `images.convert`)."""
    out = out_dir / f"{name}.png"
    await tools.ffmpeg_run(
        ["-ss", f"{at_s:.3f}", "-i", str(source), "-map", "0:V:0", "-frames:v", "1", *CLEAN_OUTPUT,
         "-f", "image2", "-c:v", "png", str(out)]
    )  # fmt: skip
    if not out.is_file():
        raise VideoRejected(f"no frame at {at_s:g}s")
    return out


async def join(
    tools: MediaTools,
    sources: list[tuple[Path, MediaProbe]],
    out_dir: Path,
    *,
    max_width: int | None = None,
    max_height: int | None = None,
    fps: float | None = None,
    name: str = "joined",
    on_progress: ProgressFn | None = None,
) -> VideoOutput:
    """The videos one after another, re-encoded to H.264/AAC MP4 at one size (the first's, fitted
    within max_width x max_height; the others fitted into it and letterboxed) and one frame rate
    (`fps`, else the first's). Audio is kept when any input has some: inputs without get silence,
    and each input's audio is cut or padded to its video's length so the clips stay in sync."""
    if len(sources) < 2:
        raise VideoRejected("a join needs at least two videos")
    for index, (_, probe) in enumerate(sources):
        main = probe.video
        if main is None or not main.width or not main.height:
            raise VideoRejected(f"input {index} has no video stream with a known size")
        if not probe.duration_s:
            raise VideoRejected(f"input {index} has no known duration")
    first = sources[0][1].video
    assert first is not None and first.width and first.height
    width, height = fitted_size(first.width, first.height, max_width, max_height)
    rate = fps or first.fps or 25.0
    with_audio = any(probe.audio is not None for _, probe in sources)
    args: list[str] = []
    parts: list[str] = []
    chain: list[str] = []
    for index, (path, probe) in enumerate(sources):
        args += ["-i", str(path)]
        length = probe.duration_s
        assert length is not None
        parts.append(
            f"[{index}:V:0]scale={width}:{height}:force_original_aspect_ratio=decrease,"
            f"pad={width}:{height}:(ow-iw)/2:(oh-ih)/2,setsar=1,fps={rate:g},format=yuv420p,"
            f"trim=duration={length:.6f},setpts=PTS-STARTPTS[v{index}]"
        )
        chain.append(f"[v{index}]")
        if with_audio:
            audio_in = f"[{index}:a:0]" if probe.audio is not None else "anullsrc=r=48000:cl=stereo,"
            parts.append(
                f"{audio_in}aformat=sample_rates=48000:channel_layouts=stereo,apad,"
                f"atrim=duration={length:.6f},asetpts=PTS-STARTPTS[a{index}]"
            )
            chain.append(f"[a{index}]")
    parts.append(f"{''.join(chain)}concat=n={len(sources)}:v=1:a={int(with_audio)}[v]" + ("[a]" if with_audio else ""))
    total = sum(probe.duration_s or 0.0 for _, probe in sources)
    out = out_dir / f"{name}.mp4"
    args += ["-filter_complex", ";".join(parts), "-map", "[v]", *(["-map", "[a]"] if with_audio else [])]
    args += ["-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-bsf:v", _SEI_FILTER["h264"]]
    args += ["-c:a", "aac", "-b:a", "128k"] if with_audio else ["-an"]
    args += [*CLEAN_OUTPUT, "-movflags", "+faststart", "-f", "mp4", str(out)]
    await tools.ffmpeg_run(args, duration_s=total, on_progress=on_progress)
    return VideoOutput(out, "video/mp4", width, height, total)
